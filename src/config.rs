//! The registry configuration: the YAML file of the design (section 2), embedded defaults, and
//! the rule that flags win over the file.
//!
//! Layer: a leaf every process reads. It imports only the wire shapes ([`crate::api`]) and the
//! value modules (digest, duration, reference, schedule): no cache, no network, no CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::serde_human;
use crate::reference::{PlatformSpec, is_host, normalize_registry, parse_image_reference};

/// Changes the Image API keeps for watchers resuming from a resourceVersion (`changeHistory`).
/// The store starts with the same number (`store::CHANGE_HISTORY`) until the server sets this.
pub const CHANGE_HISTORY: usize = 4096;

/// Upstreams allowed by the embedded default configuration.
pub const WELL_KNOWN_REGISTRIES: &[&str] = &[
    "docker.io",
    "registry.k8s.io",
    "quay.io",
    "ghcr.io",
    "gcr.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
    "nvcr.io",
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
    pub image_path: PathBuf,
    pub default_registry: String,
    pub air_gapped: bool,
    #[serde(rename = "tagTTL", with = "serde_human")]
    pub tag_ttl: Duration,
    pub allow_any_upstream: bool,
    pub registries: Vec<RegistryConfig>,
    /// How often in-memory pull statistics are written to disk.
    #[serde(with = "serde_human")]
    pub access_flush_interval: Duration,
    /// Changes the Image API can replay to a watcher resuming from a resourceVersion.
    pub change_history: usize,
    pub prune_config: PruneConfig,
    /// Images pulled into the cache at start-up.
    #[serde(skip_serializing_if = "PreloadConfig::is_empty")]
    pub preload: PreloadConfig,
    /// The other replicas of this cache, as URLs (`http://10.0.0.12:8080`). This server's own
    /// address may be listed: it is recognised and left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// The other replicas of this cache, as the A/AAAA records of a DNS name (a headless
    /// Service), resolved again every `interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_discovery: Option<PeerDiscovery>,
    /// How replicas work together; used only with `peers` or `peerDiscovery`.
    pub peering: PeeringConfig,
    pub log: LogConfig,
}

/// Peers found through DNS (`peerDiscovery`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerDiscovery {
    /// A DNS name whose A/AAAA records are the replicas (`mirror-headless.ns.svc`).
    pub name: String,
    /// The registry port of the replicas; default the port of `addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How often the name is resolved again.
    #[serde(default = "default_discovery_interval", with = "serde_human")]
    pub interval: Duration,
}

impl PeerDiscovery {
    /// How often the name is resolved again unless `interval` says otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
}

fn default_discovery_interval() -> Duration {
    PeerDiscovery::DEFAULT_INTERVAL
}

/// What a replica keeps of a blob it streamed from the peer that owns it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NonOwnerBlobs {
    /// Nothing: each blob is stored once, on its owner, so the cluster holds the sum of the
    /// replicas' volumes.
    Proxy,
    /// A copy of what it relays a second time within an hour: content pulled once is stored
    /// once, content pulled again (an image rolling out to many nodes) is read from local disk
    /// on every replica that serves it instead of funnelling through its owner.
    #[default]
    Hot,
    /// A copy of everything: later pulls through this replica are served from its own disk.
    Keep,
}

/// How the replicas of one cache work together (`peering`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PeeringConfig {
    /// What a replica keeps of a blob a peer served it (manifests are always kept).
    pub non_owner_blobs: NonOwnerBlobs,
    /// Connecting to a peer; past it the peer is skipped (left out until it answers a probe).
    #[serde(with = "serde_human")]
    pub connect_timeout: Duration,
    /// Until a peer's response headers arrive (the owner may be waiting for its upstream).
    #[serde(with = "serde_human")]
    pub first_byte: Duration,
    /// Longest silence while reading a peer's body.
    #[serde(with = "serde_human")]
    pub idle: Duration,
    /// How often peers left out after a failure are probed (`GET /v2/`) to take them back.
    #[serde(with = "serde_human")]
    pub probe_interval: Duration,
}

impl Default for PeeringConfig {
    fn default() -> Self {
        PeeringConfig {
            non_owner_blobs: NonOwnerBlobs::Hot,
            connect_timeout: Duration::from_millis(500),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            probe_interval: Duration::from_secs(2),
        }
    }
}

/// Images the server pulls into the cache when it starts (in the background, after it is
/// ready), retrying failures with backoff until each one is cached. Already cached content is
/// not fetched again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PreloadConfig {
    /// References as `load` reads them (`nginx:1.27`, `quay.io/org/app@sha256:...`).
    pub images: Vec<String>,
    /// Platforms fetched from indexes (`linux/amd64`, `linux/arm64/v8`); all when empty.
    pub platforms: Vec<String>,
}

impl PreloadConfig {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.platforms.is_empty()
    }
}

/// Background pruning (design section 4).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PruneConfig {
    pub enabled: bool,
    /// 5-field cron expression, e.g. `0 3 * * *`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone for `schedule` (default UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Run every this long instead of on a schedule.
    #[serde(
        with = "crate::duration::serde_human_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub frequency: Option<Duration>,
    pub request: crate::api::PruneRequest,
}

impl PruneConfig {
    /// The schedule when enabled; errors name the key at fault.
    pub fn schedule(&self) -> Result<Option<crate::schedule::Schedule>, ConfigError> {
        use crate::schedule::Schedule;
        if !self.enabled {
            return Ok(None);
        }
        let invalid =
            |e: crate::schedule::ScheduleError| ConfigError::Invalid(format!("pruneConfig: {e}"));
        match (&self.schedule, self.frequency) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "pruneConfig: set schedule or frequency, not both".into(),
            )),
            (Some(expr), None) => Schedule::cron(expr, self.time_zone.as_deref())
                .map(Some)
                .map_err(invalid),
            (None, Some(f)) => Schedule::every(f).map(Some).map_err(invalid),
            (None, None) => Err(ConfigError::Invalid(
                "pruneConfig: enabled needs a schedule (cron) or a frequency".into(),
            )),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token_file: None,
            image_path: PathBuf::from("./imagecache-data"),
            default_registry: "docker.io".to_owned(),
            air_gapped: false,
            tag_ttl: Duration::from_secs(15 * 60),
            allow_any_upstream: false,
            registries: WELL_KNOWN_REGISTRIES
                .iter()
                .map(|n| RegistryConfig::named(n))
                .collect(),
            access_flush_interval: Duration::from_secs(10),
            change_history: CHANGE_HISTORY,
            prune_config: PruneConfig::default(),
            preload: PreloadConfig::default(),
            peers: Vec::new(),
            peer_discovery: None,
            peering: PeeringConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry as it appears in-path or in `?ns=`.
    pub name: String,
    /// Base URL of the upstream; default `<scheme>://<name>` (Docker Hub: registry-1.docker.io).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub scheme: Option<Scheme>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryConfig,
}

impl RegistryConfig {
    pub fn named(name: &str) -> RegistryConfig {
        RegistryConfig {
            name: name.to_owned(),
            endpoint: None,
            scheme: None,
            auth: None,
            tls: None,
            timeouts: Timeouts::default(),
            retry: RetryConfig::default(),
        }
    }

    /// The endpoint URL this upstream is reached at.
    pub fn endpoint_url(&self) -> String {
        if let Some(e) = &self.endpoint {
            return e.trim_end_matches('/').to_owned();
        }
        let scheme = match self.scheme.unwrap_or(Scheme::Https) {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", crate::reference::api_host(&self.name))
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A Docker `config.json` or a `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson`.
    pub docker_config_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(with = "serde_human")]
    pub connect: Duration,
    /// Until the upstream's response headers arrive.
    #[serde(with = "serde_human")]
    pub first_byte: Duration,
    /// Longest silence while reading a body.
    #[serde(with = "serde_human")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// How transient upstream failures are retried (see `upstream::retry`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per request, the first included; 1 turns retrying off.
    pub attempts: u32,
    /// The most a request waits between its tries in all, `Retry-After` included; a longer
    /// `Retry-After` goes back to the client as a 429 instead.
    #[serde(with = "serde_human")]
    pub max_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            max_wait: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: YamlError,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Why a config text is not a configuration: YAML syntax, an unknown key, a bad value.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct YamlError(#[from] serde_saphyr::Error);

impl Config {
    /// Reads a config file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses a config text; keys it leaves out keep their defaults.
    pub fn from_yaml(text: &str) -> Result<Config, YamlError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        Ok(serde_saphyr::from_str(text)?)
    }

    /// Whether this server works with other replicas (`peers` or `peerDiscovery`).
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty() || self.peer_discovery.is_some()
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.peers.is_empty() && self.peer_discovery.is_some() {
            return invalid("set peers or peerDiscovery, not both".into());
        }
        for p in &self.peers {
            match reqwest::Url::parse(p) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && matches!(u.path(), "" | "/")
                        && u.query().is_none()
                        && u.username().is_empty() => {}
                _ => {
                    return invalid(format!(
                        "peers: {p:?} is not a peer URL (http://HOST:PORT, nothing after the port)"
                    ));
                }
            }
        }
        if let Some(d) = &self.peer_discovery {
            if !is_host(&d.name) || d.name.contains(':') {
                return invalid(format!(
                    "peerDiscovery.name {:?} is not a DNS name (set the port in peerDiscovery.port)",
                    d.name
                ));
            }
            if d.interval < Duration::from_millis(100) || d.port == Some(0) {
                return invalid(
                    "peerDiscovery: interval must be at least 100ms and port not 0".into(),
                );
            }
        }
        let p = &self.peering;
        if [p.connect_timeout, p.first_byte, p.idle, p.probe_interval]
            .iter()
            .any(Duration::is_zero)
        {
            return invalid("peering: timeouts and probeInterval must be more than 0".into());
        }
        Ok(())
    }

    /// Checks what serde cannot: hosts, endpoints, duplicates, the admin token rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !is_host(&self.default_registry) {
            return invalid(format!(
                "defaultRegistry {:?} is not a registry host",
                self.default_registry
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.registries {
            if !is_host(&r.name) {
                return invalid(format!("registries: {:?} is not a registry host", r.name));
            }
            if !seen.insert(normalize_registry(&r.name)) {
                return invalid(format!("registries: {:?} is listed twice", r.name));
            }
            let url = r.endpoint_url();
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return invalid(format!(
                        "registries: {:?}: endpoint {url:?} is not an http(s) URL",
                        r.name
                    ));
                }
            }
            if !(1..=10).contains(&r.retry.attempts) {
                return invalid(format!(
                    "registries: {:?}: retry.attempts must be between 1 and 10",
                    r.name
                ));
            }
            if let Some(tls) = &r.tls
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return invalid(format!(
                    "registries: {:?}: tls needs both certFile and keyFile",
                    r.name
                ));
            }
        }
        for image in &self.preload.images {
            parse_image_reference(image, &self.default_registry)
                .map_err(|e| ConfigError::Invalid(format!("preload.images: {e}")))?;
        }
        for platform in &self.preload.platforms {
            platform
                .parse::<PlatformSpec>()
                .map_err(|e| ConfigError::Invalid(format!("preload.platforms: {e}")))?;
        }
        self.validate_peers()?;
        self.prune_config.schedule()?;
        self.prune_config
            .request
            .compile()
            .map_err(|e| ConfigError::Invalid(format!("pruneConfig.request: {e}")))?;
        if !self.admin_addr.ip().is_loopback() && self.admin_token_file.is_none() {
            return invalid(format!(
                "adminAddr {} is not a loopback address: set adminTokenFile (--admin-token-file) so the admin API is not open to the network",
                self.admin_addr
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses() {
        let yaml = r#"
addr: 0.0.0.0:8080
adminAddr: 127.0.0.1:8081
adminTokenFile: /etc/imagecache/admin-token
imagePath: ./imagecache-data
defaultRegistry: docker.io
airGapped: false
tagTTL: 15m
allowAnyUpstream: false
registries:
  - name: docker.io
    endpoint: https://registry-1.docker.io
    auth: {username: u, passwordFile: /s/pw}
    tls: {caFile: /s/ca.crt, certFile: /c, keyFile: /k, insecureSkipVerify: false}
    timeouts: {connect: 10s, firstByte: 60s, idle: 60s}
  - name: 127.0.0.1:5000
    endpoint: http://127.0.0.1:5000
pruneConfig: {enabled: true, schedule: "0 3 * * *", request: {unusedFor: 30d, count: -1}}
log: {level: info, format: json}
"#;
        let c = Config::from_yaml(yaml).unwrap();
        assert_eq!(c.tag_ttl, Duration::from_secs(900));
        assert_eq!(c.registries.len(), 2);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            c.registries[0].auth.as_ref().unwrap().username.as_deref(),
            Some("u")
        );
        c.validate().unwrap();
    }

    #[test]
    fn defaults_allow_well_known_registries() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c, Config::default());
        let registry = |name: &str| c.registries.iter().find(|r| r.name == name);
        assert!(registry("quay.io").is_some());
        assert_eq!(
            registry("docker.io").unwrap().endpoint_url(),
            "https://registry-1.docker.io"
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_yaml("adress: 1.2.3.4:5").is_err());
        assert!(Config::from_yaml("tagTTL: soon").is_err());
        let c = Config::from_yaml("adminAddr: 0.0.0.0:8081").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("adminTokenFile"), "{err}");
        let c = Config::from_yaml("registries: [{name: a.io}, {name: A.io}]").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_yaml("registries: [{name: a.io, endpoint: 'ftp://x'}]").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_yaml("pruneConfig: {enabled: true, schedule: '0 3 * *'}").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("5 fields"));
        let c = Config::from_yaml("pruneConfig: {enabled: true}").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_yaml(
            "pruneConfig: {enabled: true, frequency: 1h, request: {patterns: ['(']}}",
        )
        .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("pruneConfig.request")
        );
    }
}
