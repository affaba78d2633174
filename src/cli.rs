//! Command-line interface: one binary, several subcommands.
//!
//! Layer: the top. Flags are parsed here and turned into the values the modules below take
//! (a resolved [`Config`], `load::Options`, `nodeconfig::Options`, `operator::run::Options`);
//! nothing imports this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, RegistryConfig};

#[derive(Parser, Debug)]
#[command(
    name = "imagecache",
    version,
    about = "Pull-through caching OCI registry"
)]
pub struct Cli {
    /// The cache directory (config key `imagePath`).
    #[arg(long, global = true, value_name = "DIR", env = "IMAGECACHE_IMAGE_PATH")]
    pub image_path: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the registry.
    Serve(ConfigArgs),
    /// List cached manifests (works on the cache files; the server must be stopped).
    List(ListArgs),
    /// Prune the cache files (the server must be stopped; use /cmd/prune on a live server).
    Prune(PruneArgs),
    /// Check every cached file (blob digests, manifest records and their references, tags, temp
    /// files); the server must be stopped. Exits non-zero when problems remain.
    Verify(VerifyArgs),
    /// Preload the cache from image references, list files or image tarballs.
    Load(LoadArgs),
    /// Print the operator's CustomResourceDefinitions (multi-document YAML), or write them to a
    /// directory as `<plural>.imagecache.io.yaml`.
    Crds(CrdsArgs),
    /// Point this node's container runtime at the mirror: containerd `hosts.toml` files or CRI-O
    /// registries.conf drop-ins, one per registry, marked as ours.
    NodeConfig(NodeConfigArgs),
    /// Run the Kubernetes operator: the ImageCache, PrunePolicy and CachedImage controllers,
    /// one active replica under a Lease.
    Operator(OperatorArgs),
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "IMAGECACHE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the health (`/healthz`, `/readyz`) and `/metrics` listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Run under a coordination.k8s.io Lease so one replica reconciles at a time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "imagecache-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: `POD_NAMESPACE`, else the kubeconfig's namespace).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// Image of the registry pods (the same image as the operator's, normally).
    #[arg(long, env = "IMAGECACHE_REGISTRY_IMAGE", default_value = crate::operator::DEFAULT_REGISTRY_IMAGE)]
    pub registry_image: String,
    /// Least time between two last-pulled updates of one CachedImage (`30s`, `5m`).
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub min_update_interval: std::time::Duration,
    /// Log level (`info`, `debug`, ...); `RUST_LOG` wins when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::config::LogFormat,
    #[command(subcommand)]
    pub command: Option<OperatorCommand>,
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Delete ImageCaches while the operator still runs and wait until they are gone (their
    /// CachedImages released): the chart's pre-delete hook, so an uninstall leaves nothing.
    Teardown(TeardownArgs),
}

#[derive(Args, Debug)]
pub struct TeardownArgs {
    /// Namespace of the caches.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// How long to wait for them to go.
    #[arg(long, default_value = "2m", value_parser = crate::duration::parse)]
    pub timeout: std::time::Duration,
    /// The ImageCaches to delete.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NodeConfigArgs {
    /// The mirror's URL, e.g. `http://10.96.0.12:5000` (not needed with --uninstall).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// A registry to pull through the mirror (`docker.io`, `registry.local:5000`); repeatable
    /// and comma-separated. With --uninstall: only these (default: every file of ours).
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    pub registries: Vec<String>,
    /// The node's container runtime.
    #[arg(long, value_enum, default_value_t)]
    pub runtime: crate::nodeconfig::Runtime,
    /// Where the runtime reads registry configuration (default: `/etc/containerd/certs.d`, or
    /// `/etc/containers/registries.conf.d` for crio).
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Remove our files instead of writing them (files without our marker are never touched).
    #[arg(long)]
    pub uninstall: bool,
    /// Keep running and re-apply every --interval, until SIGTERM or SIGINT; then remove the files
    /// written for this mirror and exit 0.
    #[arg(long)]
    pub stay: bool,
    /// How often --stay re-applies.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub interval: Duration,
}

impl NodeConfigArgs {
    pub fn options(&self) -> crate::nodeconfig::Options {
        crate::nodeconfig::Options {
            mirror: self.mirror.clone(),
            registries: self.registries.clone(),
            runtime: self.runtime,
            hosts_dir: self.hosts_dir.clone(),
            uninstall: self.uninstall,
            stay: self.stay,
            interval: self.interval,
        }
    }
}

/// `imagecache load`: what to load and from where.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Image references to load, as in a list file (e.g. `quay.io/org/img:tag`).
    #[arg(value_name = "REFERENCE")]
    pub references: Vec<String>,
    /// A file of image references, one per line; `#` starts a comment (repeatable).
    #[arg(long = "list", value_name = "FILE")]
    pub lists: Vec<PathBuf>,
    /// A `docker save` or OCI-layout tarball, gzipped or not (repeatable).
    #[arg(long = "tarball", value_name = "FILE")]
    pub tarballs: Vec<PathBuf>,
    /// Only this platform of multi-platform images, `os/arch[/variant]` (repeatable; default:
    /// all platforms).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<crate::store::Platform>,
    /// Name for tarball images: `REGISTRY/REPO[:TAG]`. Required when a tarball carries no full
    /// image name (e.g. an OCI layout whose `org.opencontainers.image.ref.name` is only a tag).
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub repository: Option<String>,
    /// Stop at the first bad reference or tarball and exit non-zero, instead of skipping it.
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl LoadArgs {
    pub fn options(&self) -> crate::load::Options {
        crate::load::Options {
            references: self.references.clone(),
            lists: self.lists.clone(),
            tarballs: self.tarballs.clone(),
            platforms: self.platforms.clone(),
            repository: self.repository.clone(),
            fail_fast: self.fail_fast,
        }
    }
}

#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long, value_name = "DIR", conflicts_with = "reference")]
    pub out: Option<PathBuf>,
    /// Print a Markdown reference of every field instead (docs/crd-reference.md).
    #[arg(long)]
    pub reference: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Comma-separated regexes matched against manifest URLs (`registry/repo:tag`, `registry/repo@digest`).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Print a header row.
    #[arg(long)]
    pub header: bool,
    /// Shorten digests to 12 hex digits.
    #[arg(long)]
    pub short_digest: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// Most manifests to list (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub count: i64,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Remove corrupt blobs, broken manifest records, dangling tags and temp files.
    #[arg(long)]
    pub repair: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").required(true).multiple(true)
    .args(["pattern", "date", "unused_for", "older_than", "label", "untagged"])))]
pub struct PruneArgs {
    /// Comma-separated regexes matched against manifest URLs.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Manifests first cached before this local time, `YYYY-MM-DDTHH:MM:SS` (or RFC 3339).
    #[arg(long, value_parser = parse_local_time)]
    pub date: Option<jiff::Timestamp>,
    /// Manifests not pulled within this duration (e.g. 30d).
    #[arg(long, value_parser = parse_duration)]
    pub unused_for: Option<Duration>,
    /// Manifests first cached more than this long ago (e.g. 90d).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Config label selector `key`, `key=value` or `key!=value`; repeatable (all must match).
    #[arg(long)]
    pub label: Vec<String>,
    /// Manifests no tag points to.
    #[arg(long)]
    pub untagged: bool,
    /// Regexes of manifest URLs to keep whatever else matches.
    #[arg(long)]
    pub keep_pattern: Vec<String>,
    /// Most manifests to prune (-1: no limit).
    #[arg(long, default_value_t = crate::api::DEFAULT_COUNT, allow_negative_numbers = true)]
    pub count: i64,
    /// Never prune manifests first cached less than this long ago.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub min_age: Duration,
    /// Refuse a run that would delete more than this share of the cache (0 to 1).
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_DELETION_RATIO)]
    pub max_deletion_ratio: f64,
    /// Show what would be pruned; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Shorten digests to 12 hex digits.
    #[arg(long)]
    pub short_digest: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

impl PruneArgs {
    pub fn request(&self) -> crate::api::PruneRequest {
        crate::api::PruneRequest {
            unused_for: self.unused_for,
            older_than: self.older_than,
            created_before: self.date,
            patterns: self.pattern.iter().cloned().collect(),
            labels: self.label.clone(),
            untagged: self.untagged,
            keep_patterns: self.keep_pattern.clone(),
            min_age: Some(self.min_age),
            count: Some(self.count),
            max_deletion_ratio: Some(self.max_deletion_ratio),
            dry_run: self.dry_run,
            ..Default::default()
        }
    }
}

/// The seed's local `YYYY-MM-DDTHH:MM:SS`, or an RFC 3339 instant.
fn parse_local_time(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let civil: jiff::civil::DateTime = s
        .parse()
        .map_err(|_| format!("expected YYYY-MM-DDTHH:MM:SS (local time), got {s:?}"))?;
    civil
        .to_zoned(jiff::tz::TimeZone::system())
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Prune(#[from] crate::prune::PruneError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Crds(#[from] crate::crd::CrdError),
    #[error(transparent)]
    NodeConfig(#[from] crate::nodeconfig::NodeConfigError),
    #[error(transparent)]
    Operator(#[from] crate::operator::OperatorError),
}

/// The registry configuration: a file and a flag for every key; flags win over the file.
#[derive(Args, Debug, Default)]
pub struct ConfigArgs {
    /// YAML config file (see the README for every key).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registry listener (`addr`).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Admin listener (`adminAddr`): /metrics, /healthz, /readyz and the admin APIs.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// File holding the admin bearer token (`adminTokenFile`); required off loopback.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Registry for names without a host (`defaultRegistry`).
    #[arg(long, value_name = "HOST")]
    pub default_registry: Option<String>,
    /// Never contact an upstream (`airGapped`).
    #[arg(long)]
    pub air_gapped: bool,
    /// How long a cached tag is trusted before re-checking upstream (`tagTTL`), e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tag_ttl: Option<Duration>,
    /// Allow upstreams that are not listed (`allowAnyUpstream`).
    #[arg(long)]
    pub allow_any_upstream: bool,
    /// An allowlisted upstream `NAME[=ENDPOINT]`, repeatable; replaces the file's `registries`.
    /// Auth, TLS and timeouts per upstream are set in the config file.
    #[arg(long = "registry", value_name = "NAME[=ENDPOINT]")]
    pub registries: Vec<String>,
    /// How often pull statistics are written to disk (`accessFlushInterval`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub access_flush_interval: Option<Duration>,
    /// Changes kept for Image API watchers resuming from a resourceVersion (`changeHistory`).
    #[arg(long, value_name = "N")]
    pub change_history: Option<usize>,
    /// Another replica of this cache, `http://HOST:PORT`, repeatable; replaces the file's
    /// `peers` (this server's own address may be listed).
    #[arg(long = "peer", value_name = "URL")]
    pub peers: Vec<String>,
    /// A DNS name whose A/AAAA records are the replicas (`peerDiscovery.name`), on this
    /// server's port; replaces the file's `peerDiscovery` and `peers`.
    #[arg(long, value_name = "NAME", conflicts_with = "peers")]
    pub peer_discovery: Option<String>,
    /// Log level (`log.level`): error, warn, info, debug, trace. RUST_LOG overrides it.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format (`log.format`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

impl ConfigArgs {
    /// The effective configuration: defaults, then the file, then flags.
    pub fn resolve(
        &self,
        image_path: Option<PathBuf>,
    ) -> Result<Config, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.addr {
            c.addr = v;
        }
        if let Some(v) = self.admin_addr {
            c.admin_addr = v;
        }
        if let Some(v) = &self.admin_token_file {
            c.admin_token_file = Some(v.clone());
        }
        if let Some(v) = image_path {
            c.image_path = v;
        }
        if let Some(v) = &self.default_registry {
            c.default_registry = v.clone();
        }
        c.air_gapped |= self.air_gapped;
        if let Some(v) = self.tag_ttl {
            c.tag_ttl = v;
        }
        c.allow_any_upstream |= self.allow_any_upstream;
        if !self.registries.is_empty() {
            c.registries = self
                .registries
                .iter()
                .map(|spec| {
                    let (name, endpoint) = match spec.split_once('=') {
                        Some((n, e)) => (n, Some(e.to_owned())),
                        None => (spec.as_str(), None),
                    };
                    RegistryConfig {
                        endpoint,
                        ..RegistryConfig::named(name)
                    }
                })
                .collect();
        }
        if let Some(v) = self.access_flush_interval {
            c.access_flush_interval = v;
        }
        if let Some(v) = self.change_history {
            c.change_history = v;
        }
        if !self.peers.is_empty() {
            c.peers = self.peers.clone();
            c.peer_discovery = None;
        }
        if let Some(name) = &self.peer_discovery {
            c.peers.clear();
            c.peer_discovery = Some(crate::config::PeerDiscovery {
                name: name.clone(),
                port: None,
                interval: crate::config::PeerDiscovery::DEFAULT_INTERVAL,
            });
        }
        if let Some(v) = &self.log_level {
            c.log.level = v.clone();
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        Ok(c)
    }
}

fn init_logging(config: &crate::config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("imagecache={},warn", config.level)));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn default_image_path(p: Option<PathBuf>) -> PathBuf {
    p.unwrap_or_else(|| crate::config::Config::default().image_path)
}

/// Opens the cache files for a command that works without a server.
fn open_store(image_path: Option<PathBuf>) -> Result<crate::store::Store, CliError> {
    let path = default_image_path(image_path);
    if !path.join("blobs").is_dir() {
        return Err(CliError::Store(crate::store::StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no imagecache cache here (set --image-path)",
            ),
        }));
    }
    let (store, report) = crate::store::Store::open(&path)?;
    if report.damaged > 0 {
        eprintln!(
            "imagecache: skipped {} damaged entries (see the log of `serve`)",
            report.damaged
        );
    }
    Ok(store)
}

fn print(out: String) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
    {
        // `imagecache list | head` closes the pipe early: that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(CliError::Output),
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn list(args: ListArgs, image_path: Option<PathBuf>) -> Result<(), CliError> {
    let request = crate::api::PruneRequest {
        patterns: args.pattern.iter().cloned().collect(),
        ..Default::default()
    };
    let patterns = request
        .compile()
        .map_err(crate::prune::PruneError::from)?
        .patterns;
    let store = open_store(image_path)?;
    let inventory = crate::prune::inventory(&store);
    let rows = crate::listing::manifests(
        &inventory,
        &patterns,
        crate::listing::limit(Some(args.count)),
    )
    .collect::<Vec<_>>();
    match args.format {
        OutputFormat::Json => print(json(&rows)),
        OutputFormat::Text => {
            let cells: Vec<_> = rows.iter().map(crate::listing::manifest_cells).collect();
            let header = args.header.then_some(crate::listing::MANIFEST_HEADER);
            print(crate::listing::columns(header, &cells, args.short_digest))
        }
    }
}

fn prune(args: PruneArgs, image_path: Option<PathBuf>) -> Result<(), CliError> {
    let request = args.request();
    request.compile().map_err(crate::prune::PruneError::from)?;
    let store = open_store(image_path)?;
    let metrics = crate::metrics::Metrics::new();
    let result = crate::prune::run(&store, &request);
    crate::prune::service::record(&metrics, crate::metrics::Trigger::cli, &result);
    let report = result?;
    match args.format {
        OutputFormat::Json => print(json(&report))?,
        OutputFormat::Text => print(crate::listing::report_text(&report, args.short_digest))?,
    }
    match report.refused {
        Some(why) => Err(CliError::Refused(why)),
        None => Ok(()),
    }
}

fn verify(args: VerifyArgs, image_path: Option<PathBuf>) -> Result<(), CliError> {
    let path = default_image_path(image_path);
    if !path.join("blobs").is_dir() {
        return Err(CliError::Store(crate::store::StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no imagecache cache here (set --image-path)",
            ),
        }));
    }
    let report = crate::store::verify::run(&path, args.repair)?;
    match args.format {
        OutputFormat::Json => print(json(&report))?,
        OutputFormat::Text => print(report.text())?,
    }
    match report.problems {
        0 => Ok(()),
        n => Err(CliError::Refused(format!(
            "{n} problems in the cache at {}",
            path.display()
        ))),
    }
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<(), CliError> {
    let cli = Cli::parse();
    // One crypto provider for every TLS client in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve(cli.image_path)?;
            init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            runtime.block_on(crate::server::serve(
                config,
                tokio_util::sync::CancellationToken::new(),
            ))?;
            Ok(())
        }
        Command::List(args) => list(args, cli.image_path),
        Command::Prune(args) => {
            init_logging(&crate::config::LogConfig {
                level: "warn".into(),
                ..Default::default()
            });
            prune(args, cli.image_path)
        }
        Command::Verify(args) => verify(args, cli.image_path),
        Command::Load(args) => {
            init_logging(&crate::config::LogConfig {
                level: "warn".into(),
                ..Default::default()
            });
            let config = args.config.resolve(cli.image_path)?;
            crate::load::run(&args.options(), config)?;
            Ok(())
        }
        Command::Crds(args) if args.reference => {
            print(crate::crd::reference::markdown(&crate::crd::crds()))
        }
        Command::Crds(args) => match args.out {
            Some(dir) => {
                crate::crd::write_dir(&dir)?;
                Ok(())
            }
            None => print(crate::crd::to_multi_yaml()?),
        },
        Command::NodeConfig(args) => Ok(crate::nodeconfig::run(&args.options())?),
        Command::Operator(args) => {
            init_logging(&crate::config::LogConfig {
                level: args.log_level.clone(),
                format: args.log_format,
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            if let Some(OperatorCommand::Teardown(t)) = args.command {
                runtime.block_on(async {
                    let client = kube::Client::try_default()
                        .await
                        .map_err(crate::operator::OperatorError::from)?;
                    crate::operator::teardown::teardown(client, &t.namespace, &t.names, t.timeout)
                        .await
                })?;
                return Ok(());
            }
            let options = crate::operator::run::Options {
                namespace: args.namespace,
                listen: args.listen,
                leader_election: args.leader_elect,
                lease_name: args.lease_name,
                lease_namespace: args.lease_namespace,
                settings: crate::operator::Settings {
                    registry_image: args.registry_image,
                    min_update_interval: args.min_update_interval,
                },
            };
            runtime.block_on(crate::operator::run::run(
                options,
                tokio_util::sync::CancellationToken::new(),
            ))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "tagTTL: 1h\ndefaultRegistry: quay.io\nregistries: [{name: quay.io}]\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "imagecache",
            "--image-path",
            "/x",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--tag-ttl",
            "5m",
            "--registry",
            "upstream.test=http://127.0.0.1:5000",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let c = args.resolve(cli.image_path).unwrap();
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        assert_eq!(c.default_registry, "quay.io");
        assert_eq!(c.image_path, PathBuf::from("/x"));
        assert_eq!(c.registries[0].endpoint_url(), "http://127.0.0.1:5000");
    }

    #[test]
    fn prune_needs_a_selector_and_reads_the_seed_flags() {
        assert!(Cli::try_parse_from(["imagecache", "prune", "--dry-run"]).is_err());
        let cli = Cli::try_parse_from([
            "imagecache",
            "prune",
            "--pattern",
            "curl,cilium",
            "--date",
            "2024-03-01T22:17:31",
            "--count",
            "-1",
            "--dry-run",
        ])
        .unwrap();
        let Command::Prune(args) = cli.command else {
            panic!("not prune")
        };
        let r = args.request();
        assert_eq!(r.patterns, vec!["curl,cilium".to_owned()]);
        assert_eq!(r.count, Some(-1));
        assert!(r.dry_run && r.created_before.is_some());
        assert!(Cli::try_parse_from(["imagecache", "prune", "--date", "yesterday"]).is_err());
    }

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        load: LoadArgs,
    }

    #[test]
    fn flags() {
        let c = Cmd::try_parse_from([
            "load",
            "--list",
            "a.txt",
            "--list",
            "b.txt",
            "--tarball",
            "x.tar.gz",
            "--platform",
            "linux/arm64",
            "--platform",
            "linux/arm/v7",
            "--fail-fast",
            "--config",
            "c.yaml",
            "--registry",
            "upstream.test=http://127.0.0.1:5000",
            "nginx:1.27",
        ])
        .unwrap();
        assert_eq!(c.load.lists.len(), 2);
        assert_eq!(c.load.platforms[1].variant.as_deref(), Some("v7"));
        assert!(c.load.fail_fast);
        assert_eq!(c.load.references, ["nginx:1.27"]);
        assert_eq!(c.load.config.registries.len(), 1);
        assert!(Cmd::try_parse_from(["load", "--platform", "linux"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["imagecache", "serve", "--tag-ttl", "soon"]).is_err());
        assert!(Cli::try_parse_from(["imagecache", "serve", "--addr", "nowhere"]).is_err());
    }
}
