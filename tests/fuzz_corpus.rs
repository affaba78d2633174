//! Replays every seed and regression input under `fuzz/corpus/<target>/` through the same parser
//! entry points the cargo-fuzz targets drive (`fuzz/harness.rs`), on stable Rust: a parser that
//! panics on any checked-in input fails this test. See `fuzz/README.md` for fuzzing itself.

use std::path::{Path, PathBuf};

#[path = "../fuzz/harness.rs"]
mod harness;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_input_parses_without_panicking() {
    // Keep the replay output readable: the panics are collected and reported below.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, run) in harness::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let inputs = sorted_entries(&dir);
        assert!(
            inputs.len() >= 3,
            "{name}: fewer than 3 seeds in {}",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).expect("corpus file");
            replayed += 1;
            if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", input.display()));
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "parsers panicked:\n{}",
        failures.join("\n")
    );
    assert!(replayed > 0);
}

/// A corpus directory without a target, or a target without its fuzz_targets file or corpus,
/// would silently go unfuzzed or unreplayed.
#[test]
fn targets_corpora_and_fuzz_crate_agree() {
    let names: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    for dir in sorted_entries(&fuzz_dir().join("corpus")) {
        let n = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            names.contains(&n.as_str()),
            "corpus {n} has no harness target"
        );
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for n in names {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{n}.rs"));
        let src =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            src.contains(&format!("harness::{n}(")),
            "{} does not call harness::{n}",
            file.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{n}\"")),
            "fuzz/Cargo.toml lacks [[bin]] {n}"
        );
    }
}
