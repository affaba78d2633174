//! Byte counts as people read them, the same in `kubectl get images` (the Image API's SIZE
//! column) and in the ImageCache and PrunePolicy status the operator writes.

/// Binary units with one decimal below 100: `900B`, `1.5KiB`, `27.8MiB`, `512MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 100.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(900), "900B");
        assert_eq!(human_size(1536), "1.5KiB");
        assert_eq!(human_size(29_150_000), "27.8MiB");
        assert_eq!(human_size(512 << 20), "512MiB");
        assert_eq!(human_size(3 << 30), "3.0GiB");
    }
}
