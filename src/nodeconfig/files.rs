//! The thin IO of node-config: compare, write atomically, remove only what carries our marker.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::NodeConfigError;
use super::render::{
    self, CRIO_PREFIX, CRIO_SUFFIX, HOSTS_TOML, Mirror, Registry, Runtime, is_ours, recorded_mirror,
};

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Wrote,
    Unchanged,
    Removed,
    /// A file without our marker where ours would go: left alone.
    SkippedNotOurs,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Wrote => "wrote",
            Outcome::Unchanged => "unchanged",
            Outcome::Removed => "removed",
            Outcome::SkippedNotOurs => "skipped (not ours)",
        })
    }
}

/// One output line: `wrote /etc/containerd/certs.d/docker.io/hosts.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub outcome: Outcome,
    pub path: PathBuf,
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.outcome, self.path.display())
    }
}

/// What to do with a file we want to hold `desired`, given what is on disk.
pub fn decide(existing: Option<&[u8]>, desired: &str) -> Outcome {
    match existing {
        None => Outcome::Wrote,
        Some(old) if old == desired.as_bytes() => Outcome::Unchanged,
        Some(old) if is_ours(old) => Outcome::Wrote,
        Some(_) => Outcome::SkippedNotOurs,
    }
}

/// Is this one of our files for `mirror` that no requested registry wants any more? Files of
/// another mirror belong to another cache writing to the same node and are left alone.
pub fn is_stale(content: &[u8], mirror: &Mirror) -> bool {
    is_ours(content) && recorded_mirror(content).as_deref() == Some(mirror.url().as_str())
}

/// Writes one file per registry (only when its content differs) and removes this mirror's files
/// for registries no longer requested.
pub fn apply(
    dir: &Path,
    runtime: Runtime,
    registries: &[Registry],
    mirror: &Mirror,
) -> Result<Vec<FileReport>, NodeConfigError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut reports = Vec::new();
    let mut wanted = Vec::new();
    for registry in registries {
        let file = render::render(runtime, registry, mirror);
        let path = dir.join(&file.path);
        let existing = read_existing(&path)?;
        let outcome = decide(existing.as_deref(), &file.content);
        if outcome == Outcome::Wrote {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            write_atomic(&path, file.content.as_bytes())?;
        }
        reports.push(FileReport { outcome, path });
        wanted.push(file.path);
    }
    let unwanted = candidates(dir, runtime)?
        .into_iter()
        .filter(|rel| !wanted.contains(rel));
    reports.extend(remove_where(
        dir,
        runtime,
        unwanted,
        |c| is_stale(c, mirror),
        false,
    )?);
    Ok(reports)
}

/// Takes back what [`apply`] wrote for `mirror`: the files of `registries` that are ours and
/// record `mirror`. Another cache's files (another mirror) and a user's files stay.
pub fn withdraw(
    dir: &Path,
    runtime: Runtime,
    registries: &[Registry],
    mirror: &Mirror,
) -> Result<Vec<FileReport>, NodeConfigError> {
    let rels = registries.iter().map(|r| render::relative_path(runtime, r));
    remove_where(dir, runtime, rels, |c| is_stale(c, mirror), false)
}

/// Removes our files: those of `registries`, or every one in `dir` when none is named. A named
/// registry whose file lacks the marker is reported as skipped; unnamed ones are not looked at.
pub fn uninstall(
    dir: &Path,
    runtime: Runtime,
    registries: &[Registry],
) -> Result<Vec<FileReport>, NodeConfigError> {
    let named = !registries.is_empty();
    let rels = if named {
        registries
            .iter()
            .map(|r| render::relative_path(runtime, r))
            .collect()
    } else {
        candidates(dir, runtime)?
    };
    remove_where(dir, runtime, rels, is_ours, named)
}

/// Removes each existing file of `rels` (relative to `dir`) whose content passes `should_remove`,
/// reporting it as removed; one that fails is left alone, and reported as skipped when
/// `report_skipped`. Missing files are passed over.
fn remove_where(
    dir: &Path,
    runtime: Runtime,
    rels: impl IntoIterator<Item = PathBuf>,
    should_remove: impl Fn(&[u8]) -> bool,
    report_skipped: bool,
) -> Result<Vec<FileReport>, NodeConfigError> {
    let mut reports = Vec::new();
    for rel in rels {
        let path = dir.join(rel);
        let Some(content) = read_existing(&path)? else {
            continue;
        };
        if should_remove(&content) {
            remove(dir, &path, runtime)?;
            reports.push(FileReport {
                outcome: Outcome::Removed,
                path,
            });
        } else if report_skipped {
            reports.push(FileReport {
                outcome: Outcome::SkippedNotOurs,
                path,
            });
        }
    }
    Ok(reports)
}

/// Paths (relative to `dir`) where one of our files could be: `*/hosts.toml` for containerd,
/// `imagecache-*.conf` for CRI-O. Sorted; empty when `dir` does not exist.
fn candidates(dir: &Path, runtime: Runtime) -> Result<Vec<PathBuf>, NodeConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("read", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        match runtime {
            Runtime::Containerd => {
                let rel = Path::new(name).join(HOSTS_TOML);
                if entry.path().is_dir() && dir.join(&rel).is_file() {
                    out.push(rel);
                }
            }
            Runtime::Crio => {
                if name.starts_with(CRIO_PREFIX) && name.ends_with(CRIO_SUFFIX) {
                    out.push(PathBuf::from(name));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The file's bytes, `None` when it does not exist.
fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, NodeConfigError> {
    match std::fs::read(path) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Removes a file; for containerd also its registry folder when that is left empty (a folder
/// still holding the user's certificates stays).
fn remove(dir: &Path, path: &Path, runtime: Runtime) -> Result<(), NodeConfigError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", path)(e)),
    }
    if runtime == Runtime::Containerd
        && let Some(parent) = path.parent()
        && parent != dir
    {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// Writes a temporary file next to `path`, flushes it to disk, then renames it over `path`: a
/// runtime reading concurrently sees the old file or the new one, never half of one. The
/// temporary name does not end in `.conf` or `hosts.toml`, so no runtime picks it up.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), NodeConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", path)(e));
    }
    Ok(())
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeConfigError {
    let path = path.to_path_buf();
    move |source| NodeConfigError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(list: &[&str]) -> Vec<Registry> {
        list.iter().map(|r| Registry::parse(r).unwrap()).collect()
    }

    fn mirror(s: &str) -> Mirror {
        Mirror::parse(s).unwrap()
    }

    fn outcomes(reports: &[FileReport], dir: &Path) -> Vec<(String, String)> {
        reports
            .iter()
            .map(|r| {
                let rel = r.path.strip_prefix(dir).unwrap().display().to_string();
                (r.outcome.to_string(), rel)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn decisions() {
        let ours = "# Managed by imagecache node-config\nold\n";
        assert_eq!(decide(None, "new"), Outcome::Wrote);
        assert_eq!(decide(Some(ours.as_bytes()), ours), Outcome::Unchanged);
        assert_eq!(decide(Some(ours.as_bytes()), "new"), Outcome::Wrote);
        assert_eq!(
            decide(Some(b"server = \"https://mine\"\n"), "new"),
            Outcome::SkippedNotOurs
        );
        let m = mirror("http://10.0.0.1:5000");
        assert!(is_stale(
            b"# Managed by imagecache node-config\n# mirror: http://10.0.0.1:5000\n",
            &m
        ));
        assert!(!is_stale(
            b"# Managed by imagecache node-config\n# mirror: http://10.0.0.2:5000\n",
            &m
        ));
        assert!(!is_stale(b"# mirror: http://10.0.0.1:5000\n", &m));
    }

    #[test]
    fn apply_is_idempotent_and_prunes_only_its_own_stale_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = mirror("http://10.0.0.1:5000");
        let r = apply(
            dir,
            Runtime::Containerd,
            &regs(&["docker.io", "quay.io"]),
            &m,
        )
        .unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[
                ("wrote", "docker.io/hosts.toml"),
                ("wrote", "quay.io/hosts.toml")
            ])
        );
        let r = apply(
            dir,
            Runtime::Containerd,
            &regs(&["docker.io", "quay.io"]),
            &m,
        )
        .unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[
                ("unchanged", "docker.io/hosts.toml"),
                ("unchanged", "quay.io/hosts.toml")
            ])
        );
        // Another cache's file (another mirror) and a user's file are not pruned.
        let other = render::render(
            Runtime::Containerd,
            &Registry::parse("ghcr.io").unwrap(),
            &mirror("http://10.9.9.9:5000"),
        );
        std::fs::create_dir_all(dir.join("ghcr.io")).unwrap();
        std::fs::write(dir.join(&other.path), &other.content).unwrap();
        std::fs::create_dir_all(dir.join("mine.example")).unwrap();
        std::fs::write(dir.join("mine.example/hosts.toml"), "server = \"x\"\n").unwrap();
        // quay.io leaves the list: its file and folder go; a certificate keeps docker.io's folder.
        std::fs::write(dir.join("docker.io/ca.crt"), "cert").unwrap();
        let r = apply(dir, Runtime::Containerd, &regs(&["docker.io"]), &m).unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[
                ("unchanged", "docker.io/hosts.toml"),
                ("removed", "quay.io/hosts.toml")
            ])
        );
        assert!(!dir.join("quay.io").exists());
        assert!(dir.join("ghcr.io/hosts.toml").exists());
        assert!(dir.join("mine.example/hosts.toml").exists());
        // A new mirror URL rewrites our file.
        let r = apply(
            dir,
            Runtime::Containerd,
            &regs(&["docker.io"]),
            &mirror("http://10.0.0.7:5000"),
        )
        .unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[("wrote", "docker.io/hosts.toml")])
        );
        // Uninstall of everything: ours (both mirrors) go, the user's file and the cert stay.
        let r = uninstall(dir, Runtime::Containerd, &[]).unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[
                ("removed", "docker.io/hosts.toml"),
                ("removed", "ghcr.io/hosts.toml")
            ])
        );
        assert!(dir.join("docker.io/ca.crt").exists());
        assert!(!dir.join("ghcr.io").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("mine.example/hosts.toml")).unwrap(),
            "server = \"x\"\n"
        );
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("docker.io"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["ca.crt"]);
    }

    #[test]
    fn withdraw_takes_back_only_this_mirrors_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = mirror("http://10.0.0.1:5000");
        apply(
            dir,
            Runtime::Containerd,
            &regs(&["docker.io", "quay.io"]),
            &m,
        )
        .unwrap();
        // Another cache writes ghcr.io; the user keeps a file of their own for mine.example.
        apply(
            dir,
            Runtime::Containerd,
            &regs(&["ghcr.io"]),
            &mirror("http://10.9.9.9:5000"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("mine.example")).unwrap();
        std::fs::write(dir.join("mine.example/hosts.toml"), "server = \"x\"\n").unwrap();
        std::fs::write(dir.join("quay.io/ca.crt"), "cert").unwrap();
        let r = withdraw(
            dir,
            Runtime::Containerd,
            &regs(&["docker.io", "quay.io", "ghcr.io", "mine.example"]),
            &m,
        )
        .unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[
                ("removed", "docker.io/hosts.toml"),
                ("removed", "quay.io/hosts.toml")
            ])
        );
        assert!(!dir.join("docker.io").exists());
        assert!(
            dir.join("quay.io/ca.crt").exists(),
            "a folder with the user's files stays"
        );
        assert!(dir.join("ghcr.io/hosts.toml").exists());
        assert!(dir.join("mine.example/hosts.toml").exists());
        // Nothing left to take back: a second withdraw reports nothing.
        let r = withdraw(dir, Runtime::Containerd, &regs(&["docker.io"]), &m).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn a_users_file_is_never_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = mirror("http://10.0.0.1:5000");
        std::fs::create_dir_all(dir.join("docker.io")).unwrap();
        let mine = "server = \"https://my-own-mirror\"\n";
        std::fs::write(dir.join("docker.io/hosts.toml"), mine).unwrap();
        let r = apply(dir, Runtime::Containerd, &regs(&["docker.io"]), &m).unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[("skipped (not ours)", "docker.io/hosts.toml")])
        );
        let r = uninstall(dir, Runtime::Containerd, &regs(&["docker.io", "quay.io"])).unwrap();
        assert_eq!(
            outcomes(&r, dir),
            pairs(&[("skipped (not ours)", "docker.io/hosts.toml")])
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap(),
            mine
        );
    }

    #[test]
    fn crio_drop_ins() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("registries.conf.d");
        let m = mirror("http://10.0.0.1:5000");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("000-shortnames.conf"), "[aliases]\n").unwrap();
        let r = apply(
            &dir,
            Runtime::Crio,
            &regs(&["docker.io", "registry.local:5000"]),
            &m,
        )
        .unwrap();
        assert_eq!(
            outcomes(&r, &dir),
            pairs(&[
                ("wrote", "imagecache-docker.io.conf"),
                ("wrote", "imagecache-registry.local_5000.conf")
            ])
        );
        let r = apply(&dir, Runtime::Crio, &regs(&["docker.io"]), &m).unwrap();
        assert_eq!(
            outcomes(&r, &dir),
            pairs(&[
                ("unchanged", "imagecache-docker.io.conf"),
                ("removed", "imagecache-registry.local_5000.conf")
            ])
        );
        let r = uninstall(&dir, Runtime::Crio, &[]).unwrap();
        assert_eq!(
            outcomes(&r, &dir),
            pairs(&[("removed", "imagecache-docker.io.conf")])
        );
        assert!(dir.join("000-shortnames.conf").exists());
        assert!(dir.is_dir());
    }

    #[test]
    fn uninstall_of_a_missing_dir_is_a_no_op_and_io_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert!(
            uninstall(&missing, Runtime::Containerd, &[])
                .unwrap()
                .is_empty()
        );
        // The hosts dir is a file: apply cannot create it and says where.
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = apply(
            &file,
            Runtime::Containerd,
            &regs(&["docker.io"]),
            &mirror("http://10.0.0.1:5000"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
    }
}
