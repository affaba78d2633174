//! `imagecache load`: preloads the cache from lists of image references (pulled from the
//! upstreams through the registry's own code paths) and from `docker save` / OCI-layout
//! tarballs. Additive and idempotent: what is cached is skipped, nothing is ever removed.
//!
//! It works on the cache files directly, so it takes the cache lock like a server does and
//! refuses to run while one holds it.
//!
//! Layer: below the CLI. It takes an [`Options`] value and a resolved [`Config`], never the
//! command-line flags, and pulls through the [`crate::registry`] and [`crate::upstream`] code.

mod tarball;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::reference::parse_image_reference;
use crate::registry::AppState;
use crate::registry::pull::pull_image_observed;
use crate::store::{Platform, Store, StoreError};
use crate::upstream::{UpstreamError, Upstreams};

/// What `imagecache load` loads and how; the CLI builds it from its flags
/// (`cli::LoadArgs::options`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Image references, as in a list file (e.g. `quay.io/org/img:tag`).
    pub references: Vec<String>,
    /// Files of image references, one per line; `#` starts a comment.
    pub lists: Vec<PathBuf>,
    /// `docker save` or OCI-layout tarballs, gzipped or not.
    pub tarballs: Vec<PathBuf>,
    /// Only these platforms of multi-platform images (empty: all).
    pub platforms: Vec<Platform>,
    /// Name for tarball images that carry no full name: `REGISTRY/REPO[:TAG]`.
    pub repository: Option<String>,
    /// Stop at the first bad reference or tarball instead of skipping it.
    pub fail_fast: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("nothing to load: give image references, --list FILE or --tarball FILE")]
    NothingToLoad,
    #[error("--repository {value:?}: {message}")]
    Repository { value: String, message: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A bad reference or tarball under `--fail-fast`.
    #[error("{item}: {message}")]
    Item { item: String, message: String },
}

/// What a load did, summed over every reference and tarball.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub images: u64,
    pub manifests_added: u64,
    pub manifests_cached: u64,
    pub blobs_added: u64,
    pub blobs_cached: u64,
    pub bytes_added: u64,
    /// Bad references and tarballs that were skipped.
    pub failures: Vec<LoadFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    /// `FILE:LINE: REFERENCE` or the tarball path.
    pub item: String,
    pub error: String,
}

/// The references of a list file with their line numbers: blank lines and `#` comments
/// (whole-line or trailing) are skipped.
pub fn parse_list(text: &str) -> Vec<(usize, &str)> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            (!line.is_empty()).then_some((i + 1, line))
        })
        .collect()
}

/// One reference to pull: where it was written (`FILE:LINE`; none on the command line), and
/// the text.
struct ListItem {
    origin: Option<String>,
    text: String,
}

/// Runs `imagecache load`. Bad references and tarballs are reported on stderr and skipped
/// (returned in [`LoadReport::failures`]) unless `--fail-fast`, where the first one is the error.
pub fn run(args: &Options, config: Config) -> Result<LoadReport, LoadError> {
    config.validate()?;
    if args.references.is_empty() && args.lists.is_empty() && args.tarballs.is_empty() {
        return Err(LoadError::NothingToLoad);
    }
    let repository = args
        .repository
        .as_deref()
        .map(|v| parse_repository(v, &config.default_registry))
        .transpose()?;
    let (store, _) = Store::open(&config.image_path)?;
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(&config, metrics.upstream_retries.clone())?;
    let config = Arc::new(config);
    let state = AppState::new(config.clone(), store.clone(), upstreams, metrics);
    let mut out = Output {
        bar: progress_bar(),
        report: LoadReport::default(),
        fail_fast: args.fail_fast,
    };

    let mut items = Vec::new();
    for list in &args.lists {
        match std::fs::read_to_string(list) {
            Ok(text) => items.extend(parse_list(&text).into_iter().map(|(n, r)| ListItem {
                origin: Some(format!("{}:{n}", list.display())),
                text: r.to_owned(),
            })),
            Err(e) => out.fail(list.display().to_string(), format!("cannot read: {e}"))?,
        }
    }
    items.extend(args.references.iter().map(|r| ListItem {
        origin: None,
        text: r.clone(),
    }));
    if !items.is_empty() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(LoadError::Runtime)?;
        runtime.block_on(load_references(&state, &items, &args.platforms, &mut out))?;
    }
    for path in &args.tarballs {
        load_tarball(&state, path, &args.platforms, repository.as_ref(), &mut out)?;
    }
    out.bar.finish_and_clear();
    let r = &out.report;
    println!(
        "loaded {} image(s): {} manifest(s) and {} blob(s) added ({}), {} manifest(s) and {} blob(s) already cached{}",
        r.images,
        r.manifests_added,
        r.blobs_added,
        HumanBytes(r.bytes_added),
        r.manifests_cached,
        r.blobs_cached,
        match r.failures.len() {
            0 => String::new(),
            n => format!("; {n} skipped (see above)"),
        }
    );
    Ok(out.report)
}

fn parse_repository(value: &str, default_registry: &str) -> Result<tarball::Name, LoadError> {
    let err = |message: String| LoadError::Repository {
        value: value.to_owned(),
        message,
    };
    let r = parse_image_reference(value, default_registry).map_err(|e| err(e.to_string()))?;
    if r.digest.is_some() {
        return Err(err(
            "give a repository (and optionally a tag), not a digest".into(),
        ));
    }
    Ok(tarball::Name {
        repo: r.repo,
        tag: r.tag,
    })
}

async fn load_references(
    state: &Arc<AppState>,
    items: &[ListItem],
    platforms: &[Platform],
    out: &mut Output,
) -> Result<(), LoadError> {
    out.bar.set_length(items.len() as u64);
    out.bar.set_style(style(
        "{spinner} [{pos}/{len}] {wide_msg} {elapsed}",
        ProgressStyle::default_spinner(),
    ));
    for item in items {
        let name = match &item.origin {
            Some(origin) => format!("{origin}: {}", item.text),
            None => item.text.clone(),
        };
        let image = match parse_image_reference(&item.text, &state.config.default_registry) {
            Ok(r) => r,
            Err(e) => {
                out.fail(name, e.to_string())?;
                out.bar.inc(1);
                continue;
            }
        };
        if !state.upstreams.is_allowed(&image.repo.registry) {
            out.fail(name, not_allowed(&image.repo.registry))?;
            out.bar.inc(1);
            continue;
        }
        let fetched = AtomicU64::new(0);
        let label = image.to_string();
        out.bar.set_message(label.clone());
        let on_bytes = |n: u64| {
            let total = fetched.fetch_add(n, Ordering::Relaxed) + n;
            out.bar
                .set_message(format!("{label} {}", HumanBytes(total)));
        };
        let result =
            pull_image_observed(state, &image.repo, image.reference(), platforms, &on_bytes).await;
        out.bar.inc(1);
        match result {
            Ok(s) => {
                let r = &mut out.report;
                r.images += 1;
                r.manifests_added += s.manifests_fetched;
                r.manifests_cached += s.manifests_cached;
                r.blobs_added += s.blobs_fetched;
                r.blobs_cached += s.blobs_cached;
                r.bytes_added += s.bytes_fetched;
                out.line(format!(
                    "{label} ({}): {} manifest(s) and {} blob(s) fetched ({}), {} manifest(s) and {} blob(s) already cached",
                    s.digest,
                    s.manifests_fetched,
                    s.blobs_fetched,
                    HumanBytes(s.bytes_fetched),
                    s.manifests_cached,
                    s.blobs_cached
                ));
            }
            Err(e) => {
                let mut message = e.to_string();
                if state.config.air_gapped {
                    message.push_str(" (airGapped is set: no upstream is contacted)");
                }
                out.fail(name, message)?;
            }
        }
    }
    Ok(())
}

fn load_tarball(
    state: &Arc<AppState>,
    path: &Path,
    platforms: &[Platform],
    repository: Option<&tarball::Name>,
    out: &mut Output,
) -> Result<(), LoadError> {
    out.bar.reset();
    out.bar
        .set_length(std::fs::metadata(path).map_or(0, |m| m.len()));
    out.bar.set_style(style(
        "{spinner} {wide_msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}",
        ProgressStyle::default_bar(),
    ));
    out.bar.set_message(path.display().to_string());
    let allowed = |registry: &str| state.upstreams.is_allowed(registry);
    let options = tarball::Options {
        platforms,
        repository,
        allowed: &allowed,
    };
    match tarball::import(&state.store, path, &options, &out.bar) {
        Ok(imported) => {
            let r = &mut out.report;
            r.images += imported.images.len() as u64;
            r.manifests_added += imported.manifests_added;
            r.manifests_cached += imported.manifests_cached;
            r.blobs_added += imported.blobs_added;
            r.blobs_cached += imported.blobs_cached;
            r.bytes_added += imported.bytes_added;
            for (names, digest) in &imported.images {
                out.line(format!(
                    "{} ({digest}) from {}",
                    names.join(", "),
                    path.display()
                ));
            }
            if imported.children_missing > 0 {
                out.note(format!(
                    "{}: {} platform manifest(s) listed by an index are not in the tarball and were left out",
                    path.display(),
                    imported.children_missing
                ));
            }
            out.line(format!(
                "{}: {} manifest(s) and {} blob(s) added ({}), {} manifest(s) and {} blob(s) already cached",
                path.display(),
                imported.manifests_added,
                imported.blobs_added,
                HumanBytes(imported.bytes_added),
                imported.manifests_cached,
                imported.blobs_cached
            ));
            Ok(())
        }
        Err(e) => out.fail(path.display().to_string(), e.to_string()),
    }
}

fn not_allowed(registry: &str) -> String {
    format!(
        "registry {registry} is not in the allowlist (add it to `registries` in the config, or set allowAnyUpstream)"
    )
}

/// Progress and messages: the bar on stderr only when it is a terminal; messages are printed
/// around it so they never tear it.
struct Output {
    bar: ProgressBar,
    report: LoadReport,
    fail_fast: bool,
}

impl Output {
    /// Records a bad item, or ends the load with it under `--fail-fast`.
    fn fail(&mut self, item: String, message: String) -> Result<(), LoadError> {
        if self.fail_fast {
            return Err(LoadError::Item { item, message });
        }
        self.note(format!("skipped {item}: {message}"));
        self.report.failures.push(LoadFailure {
            item,
            error: message,
        });
        Ok(())
    }

    fn note(&self, message: String) {
        self.bar.suspend(|| eprintln!("imagecache load: {message}"));
    }

    fn line(&self, message: String) {
        self.bar.suspend(|| println!("{message}"));
    }
}

fn progress_bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(
            "{spinner} {wide_msg}",
            ProgressStyle::default_spinner(),
        ));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    }
}

fn style(template: &str, fallback: ProgressStyle) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files() {
        let text = "\u{feff}# images\n\nnginx\n  quay.io/org/img:v1  # pinned below\n#x\nregistry.k8s.io/pause@sha256:aa\r\n";
        assert_eq!(
            parse_list(text),
            vec![
                (3, "nginx"),
                (4, "quay.io/org/img:v1"),
                (6, "registry.k8s.io/pause@sha256:aa")
            ]
        );
        assert!(parse_list("\n# only comments\n   \n").is_empty());
    }

    #[test]
    fn repository_flag() {
        let n = parse_repository("upstream.test/team/app:v3", "docker.io").unwrap();
        assert_eq!(n.repo.to_string(), "upstream.test/team/app");
        assert_eq!(n.tag.as_deref(), Some("v3"));
        let d = format!("upstream.test/a@sha256:{}", "0".repeat(64));
        assert!(parse_repository(&d, "docker.io").is_err());
    }

    #[test]
    fn nothing_to_load_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            image_path: dir.path().to_owned(),
            ..Config::default()
        };
        assert!(matches!(
            run(&Options::default(), config),
            Err(LoadError::NothingToLoad)
        ));
    }
}
