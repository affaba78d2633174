//! `imagecache node-config`: points a node's container runtime at the mirror.
//!
//! For containerd it keeps one `<hosts-dir>/<registry>/hosts.toml` per registry (the mirror
//! first, the registry itself as the fallback); for CRI-O one `imagecache-<registry>.conf`
//! registries.conf v2 drop-in per registry. Every file starts with [`MARKER`]: only such files
//! are rewritten or removed, a user's own file is left alone. The operator's node-config
//! DaemonSet runs it with `--stay` so wiped files come back, and so that the files go with the
//! DaemonSet's Pod (SIGTERM): a node never keeps pointing at a mirror that was uninstalled.
//!
//! - [`render`]: pure: registry + mirror + runtime -> file path and content.
//! - [`files`]: compare, atomic write, marker-guarded removal.
//!
//! Layer: node files from a mirror URL. It imports only the value modules: no cache, no
//! cluster.

pub mod files;
pub mod render;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use files::{FileReport, Outcome};
pub use render::{MARKER, ManagedFile, Mirror, Registry, Runtime};

/// How often `--stay` re-applies when not told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Why node-config failed; each renders as one readable line.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("--mirror {value:?}: {why}")]
    Mirror { value: String, why: &'static str },
    #[error("--registry {value:?}: {why}")]
    Registry { value: String, why: &'static str },
    #[error("--registry: empty registry name")]
    EmptyRegistry,
    #[error("--registry is required (e.g. --registry docker.io)")]
    NoRegistry,
    #[error("--mirror is required (e.g. --mirror http://10.96.0.12:5000)")]
    NoMirror,
    #[error("--interval must be more than zero")]
    Interval,
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot handle signals: {0}")]
    Signal(std::io::Error),
}

/// The command line, as given.
#[derive(Clone, Debug)]
pub struct Options {
    pub mirror: Option<String>,
    pub registries: Vec<String>,
    pub runtime: Runtime,
    pub hosts_dir: Option<PathBuf>,
    pub uninstall: bool,
    pub stay: bool,
    pub interval: Duration,
}

/// A validated run: what to do, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply {
        dir: PathBuf,
        runtime: Runtime,
        registries: Vec<Registry>,
        mirror: Mirror,
    },
    Uninstall {
        dir: PathBuf,
        runtime: Runtime,
        /// Empty: every file of ours in `dir`.
        registries: Vec<Registry>,
    },
}

impl Operation {
    /// Validates the options; nothing is touched yet.
    pub fn from_options(o: &Options) -> Result<Self, NodeConfigError> {
        let registries = Registry::parse_list(&o.registries)?;
        let dir = o
            .hosts_dir
            .clone()
            .unwrap_or_else(|| o.runtime.default_dir());
        if o.uninstall {
            return Ok(Operation::Uninstall {
                dir,
                runtime: o.runtime,
                registries,
            });
        }
        let mirror = Mirror::parse(o.mirror.as_deref().ok_or(NodeConfigError::NoMirror)?)?;
        if registries.is_empty() {
            return Err(NodeConfigError::NoRegistry);
        }
        Ok(Operation::Apply {
            dir,
            runtime: o.runtime,
            registries,
            mirror,
        })
    }

    /// Takes back what an apply wrote for its mirror (nothing for an uninstall).
    pub fn withdraw(&self) -> Result<Vec<FileReport>, NodeConfigError> {
        match self {
            Operation::Apply {
                dir,
                runtime,
                registries,
                mirror,
            } => files::withdraw(dir, *runtime, registries, mirror),
            Operation::Uninstall { .. } => Ok(Vec::new()),
        }
    }

    /// Performs it once.
    pub fn run(&self) -> Result<Vec<FileReport>, NodeConfigError> {
        match self {
            Operation::Apply {
                dir,
                runtime,
                registries,
                mirror,
            } => files::apply(dir, *runtime, registries, mirror),
            Operation::Uninstall {
                dir,
                runtime,
                registries,
            } => files::uninstall(dir, *runtime, registries),
        }
    }
}

/// Runs the command: once, or with `--stay` until SIGTERM/SIGINT, re-applying every interval,
/// then removing the files it wrote for its mirror.
pub fn run(options: &Options) -> Result<(), NodeConfigError> {
    let op = Operation::from_options(options)?;
    if options.interval.is_zero() {
        return Err(NodeConfigError::Interval);
    }
    if !options.stay {
        report(&op.run()?, true);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeConfigError::Runtime)?;
    runtime.block_on(stay(op, options.interval))
}

async fn stay(op: Operation, interval: Duration) -> Result<(), NodeConfigError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a SIGTERM during the first run must still end in a clean exit.
    let mut term = signal(SignalKind::terminate()).map_err(NodeConfigError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(NodeConfigError::Signal)?;
    // A first failure is fatal (the pod restarts, visibly); later ones are retried.
    report(&op.run()?, true);
    eprintln!(
        "imagecache: node-config: re-applying every {}; SIGTERM removes the files and stops",
        crate::duration::format(interval)
    );
    loop {
        tokio::select! {
            _ = term.recv() => return withdraw(&op),
            _ = int.recv() => return withdraw(&op),
            _ = tokio::time::sleep(interval) => {}
        }
        match op.run() {
            Ok(reports) => report(&reports, false),
            Err(e) => eprintln!("imagecache: {e}"),
        }
    }
}

/// The end of `--stay`: the node stops pulling through this mirror (its runtime goes straight to
/// each registry), whether the DaemonSet is being deleted (the cache, node mirroring or the
/// release removed) or rolled (its next Pod writes the files again at once).
fn withdraw(op: &Operation) -> Result<(), NodeConfigError> {
    report(&op.withdraw()?, true);
    Ok(())
}

/// Prints one line per file (with `all` false, only the files that changed) and a warning for
/// each file left alone.
fn report(reports: &[FileReport], all: bool) {
    let mut out = std::io::stdout().lock();
    for r in reports {
        if !all && r.outcome == Outcome::Unchanged {
            continue;
        }
        // Output is best effort: a closed stdout must not stop the node from being configured.
        let _ = writeln!(out, "{r}");
        if r.outcome == Outcome::SkippedNotOurs {
            eprintln!(
                "imagecache: warning: {} has no {MARKER:?} first line; left alone",
                r.path.display()
            );
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mirror: Option<&str>, registries: &[&str]) -> Options {
        Options {
            mirror: mirror.map(str::to_owned),
            registries: registries.iter().map(|s| s.to_string()).collect(),
            runtime: Runtime::Containerd,
            hosts_dir: None,
            uninstall: false,
            stay: false,
            interval: DEFAULT_INTERVAL,
        }
    }

    #[test]
    fn operations_from_options() {
        let op = Operation::from_options(&options(Some("http://10.0.0.1:5000"), &["docker.io"]))
            .unwrap();
        let Operation::Apply { dir, .. } = op else {
            panic!("not apply")
        };
        assert_eq!(dir, PathBuf::from("/etc/containerd/certs.d"));
        let mut o = options(None, &[]);
        o.uninstall = true;
        o.runtime = Runtime::Crio;
        assert_eq!(
            Operation::from_options(&o).unwrap(),
            Operation::Uninstall {
                dir: PathBuf::from("/etc/containers/registries.conf.d"),
                runtime: Runtime::Crio,
                registries: vec![],
            }
        );
        assert!(matches!(
            Operation::from_options(&options(None, &["docker.io"])),
            Err(NodeConfigError::NoMirror)
        ));
        assert!(matches!(
            Operation::from_options(&options(Some("http://10.0.0.1:5000"), &[])),
            Err(NodeConfigError::NoRegistry)
        ));
        assert!(matches!(
            Operation::from_options(&options(Some("http://10.0.0.1:5000"), &[""])),
            Err(NodeConfigError::EmptyRegistry)
        ));
    }
}
