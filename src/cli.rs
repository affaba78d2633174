//! Command-line interface: one binary, several subcommands.

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("imagecache={0},tower_http={0},warn", config.level))
    });
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

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for every TLS client in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve(cli.image_path)?;
            init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::server::serve(
                config,
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
        let Command::Serve(args) = cli.command;
        let c = args.resolve(cli.image_path).unwrap();
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        assert_eq!(c.default_registry, "quay.io");
        assert_eq!(c.image_path, PathBuf::from("/x"));
        assert_eq!(c.registries[0].endpoint_url(), "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["imagecache", "serve", "--tag-ttl", "soon"]).is_err());
        assert!(Cli::try_parse_from(["imagecache", "serve", "--addr", "nowhere"]).is_err());
    }
}
