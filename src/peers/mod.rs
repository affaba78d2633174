//! The other replicas of this cache: who they are, who owns which digest, and the client that
//! asks them.
//!
//! Replicas find each other from `peers` (a static list) or `peerDiscovery` (a DNS name whose
//! A/AAAA records are the replicas, resolved again every `interval`; the operator points it at
//! the headless Service, which lists only ready pods). This server's own address is recognised
//! (its listener's address, or an address of this host on its port, or a peer answer carrying
//! this process's instance id) and never asked. Ownership is rendezvous hashing of the digest
//! over the live members ([`ring`]); on a miss the registry asks the owner, then the owner
//! before the last membership change ([`Membership::candidates`]), before the upstream.
//!
//! Peer requests are ordinary pull API requests carrying [`PEER_HEADER`]; a replica answering
//! one serves from its cache or its upstream and never asks a peer in turn. The header grants
//! nothing: the allowlist and every limit apply as to any request.
//!
//! Peers are not upstreams: their addresses come only from this server's configuration (or
//! the DNS name it names), never from a client, so the SSRF guard of [`crate::upstream`] does
//! not judge them; the peer client follows no redirect and uses no proxy.
//!
//! A peer that cannot be connected to, times out, cuts a transfer or sends bytes that do not
//! hash right is left out (down) until a probe (`GET /v2/`) answers; ownership moves to the
//! next replica meanwhile.
//!
//! Layer: beside the upstream clients, below the data plane. It reads the [`crate::config`] and
//! counts in [`crate::metrics`]; it knows no store, no registry handler, no admin surface and no
//! cluster.

pub mod hot;
pub mod membership;
pub mod ring;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::{Method, header};
use tokio_util::sync::CancellationToken;

pub use membership::{Ask, Member, Membership};

use crate::config::{Config, NonOwnerBlobs, PeeringConfig};
use crate::digest::Digest;
use crate::metrics::{Metrics, PeerFailure, PeerState, PeerStateLabels};
use crate::reference::RepoPath;

/// The request header that marks a request from a peer (its value: the asking process's
/// instance id); answers to peer requests carry the answering process's id in it.
pub const PEER_HEADER: &str = "imagecache-peer";

/// The request header that asks a peer to answer from its cache only (a 404 otherwise); the
/// owner of a digest sends it to the digest's previous owner.
pub const PEER_CACHED_HEADER: &str = "imagecache-peer-cached";

/// Why a peer could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot build the peer client: {0}")]
    Setup(#[source] reqwest::Error),
    #[error("peer {peer}: cannot connect: {}", chain(source))]
    Connect {
        peer: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer {peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error("peer {peer}: {}", chain(source))]
    Transport {
        peer: String,
        #[source]
        source: reqwest::Error,
    },
    /// The address is this server's own: it is left out from now on.
    #[error("peer {peer} is this server")]
    IsSelf { peer: String },
}

impl PeerError {
    /// The reason a request-path failure is counted under; `None` for this server's own address.
    pub fn reason(&self) -> Option<PeerFailure> {
        match self {
            PeerError::Setup(_) | PeerError::Connect { .. } => Some(PeerFailure::connect),
            PeerError::Timeout { .. } => Some(PeerFailure::timeout),
            PeerError::Transport { source, .. } if source.is_timeout() => {
                Some(PeerFailure::timeout)
            }
            PeerError::Transport { .. } => Some(PeerFailure::connect),
            PeerError::IsSelf { .. } => None,
        }
    }
}

/// An error with its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Where the member list comes from.
enum Discovery {
    Static(Vec<Member>),
    Dns {
        name: String,
        port: u16,
        interval: Duration,
    },
}

/// The peer set and the client for it; shared by every request handler.
pub struct Peers {
    discovery: Discovery,
    state: RwLock<Membership>,
    client: reqwest::Client,
    config: PeeringConfig,
    /// A random id of this process, sent in [`PEER_HEADER`].
    instance: String,
    /// This server's registry listener.
    own_addr: SocketAddr,
    metrics: Arc<Metrics>,
    /// The blobs relayed once (`nonOwnerBlobs: hot`).
    hot: Mutex<hot::HotSet>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("instance", &self.instance)
            .finish()
    }
}

impl Peers {
    /// The peer set of `config`; `None` when it names no peers.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Arc<Peers>>, PeerError> {
        let discovery = if let Some(d) = &config.peer_discovery {
            Discovery::Dns {
                name: d.name.clone(),
                port: d.port.unwrap_or(config.addr.port()),
                interval: d.interval,
            }
        } else if !config.peers.is_empty() {
            Discovery::Static(
                config
                    .peers
                    .iter()
                    .filter_map(|p| static_member(p))
                    .collect(),
            )
        } else {
            return Ok(None);
        };
        let p = config.peering;
        let client = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(p.connect_timeout)
            .read_timeout(p.idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("imagecache/", env!("CARGO_PKG_VERSION"), " peer"))
            .build()
            .map_err(PeerError::Setup)?;
        let mut state = Membership::default();
        if let Discovery::Static(members) = &discovery {
            state.set_known(members.clone());
        }
        let peers = Peers {
            discovery,
            state: RwLock::new(state),
            client,
            config: p,
            instance: format!("{:032x}", rand::random::<u128>()),
            own_addr: config.addr,
            metrics,
            hot: Mutex::default(),
        };
        peers.publish();
        Ok(Some(Arc::new(peers)))
    }

    /// This process's id, as sent in [`PEER_HEADER`].
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether a replica keeps a copy of every blob its peers serve it.
    pub fn keeps_blobs(&self) -> bool {
        self.config.non_owner_blobs == NonOwnerBlobs::Keep
    }

    /// Whether to keep the copy of `digest` a peer has just served this replica (verified):
    /// always with `keep`, never with `proxy`, with `hot` when it was relayed before.
    pub fn keep_relayed(&self, digest: &Digest) -> bool {
        match self.config.non_owner_blobs {
            NonOwnerBlobs::Keep => true,
            NonOwnerBlobs::Proxy => false,
            NonOwnerBlobs::Hot => {
                let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
                let keep = hot.relayed(digest, Instant::now());
                if keep {
                    self.metrics.hot_copies.inc();
                }
                keep
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Membership> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Membership) -> bool) -> bool {
        let changed = f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()));
        if changed {
            self.publish();
        }
        changed
    }

    /// Sets the peer gauges and logs the live set.
    fn publish(&self) {
        let m = self.read();
        let live = m.live_peers();
        let down = m.down().len();
        self.metrics
            .peers
            .get_or_create(&PeerStateLabels {
                state: PeerState::live,
            })
            .set(live as i64);
        self.metrics
            .peers
            .get_or_create(&PeerStateLabels {
                state: PeerState::down,
            })
            .set(down as i64);
        let ids: Vec<&str> = m.live().iter().map(|p| p.id.as_str()).collect();
        tracing::info!(me = m.me().unwrap_or("unrecognised"), live = ?ids, down, "peer set");
    }

    /// A snapshot of the membership (for tests and logs).
    pub fn membership(&self) -> Membership {
        self.read().clone()
    }

    /// Whom to ask for `digest` before the upstream, in order (at most two).
    pub fn candidates(&self, digest: &Digest) -> Vec<Member> {
        self.read().candidates(digest)
    }

    /// Whom to ask for `digest` before the upstream, and how ([`Membership::plan`]).
    pub fn plan(&self, digest: &Digest) -> Vec<(Member, Ask)> {
        self.read().plan(digest)
    }

    /// Whether this server owns `digest` among the live replicas.
    pub fn owns(&self, digest: &Digest) -> bool {
        self.read().owns(digest)
    }

    /// Counts a failed peer request; a peer that could not be reached, timed out, cut a
    /// transfer or sent wrong bytes is left out until a probe answers.
    pub fn failed(&self, member: &Member, reason: PeerFailure, error: &dyn std::fmt::Display) {
        self.metrics.peer_failed(reason);
        if reason == PeerFailure::status {
            tracing::info!(peer = %member.id, %error, "peer answer not usable; trying the next source");
            return;
        }
        tracing::warn!(peer = %member.id, ?reason, %error, "peer left out until it answers a probe");
        self.update(|m| m.mark_down(&member.id));
    }

    /// Sends `method /v2/<repository>/<suffix>?ns=<registry>` to `member` as a peer request
    /// (with [`Ask::Cached`], one it answers from its cache only).
    /// The caller judges the status; an answer from this very process is
    /// [`PeerError::IsSelf`] (and the address is left out from then on).
    pub async fn send(
        &self,
        member: &Member,
        method: Method,
        repo: &RepoPath,
        suffix: &str,
        ask: Ask,
        headers: header::HeaderMap,
    ) -> Result<reqwest::Response, PeerError> {
        let ns: String = form_urlencoded::byte_serialize(repo.registry.as_bytes()).collect();
        let url = format!(
            "{}/v2/{}/{suffix}?ns={ns}",
            member.url.trim_end_matches('/'),
            repo.repository
        );
        let req = self
            .client
            .request(method, url)
            .headers(headers)
            .header(PEER_HEADER, &self.instance);
        let req = match ask {
            Ask::Fetch => req,
            Ask::Cached => req.header(PEER_CACHED_HEADER, "1"),
        };
        let peer = || member.id.clone();
        let resp = match tokio::time::timeout(self.config.first_byte, req.send()).await {
            Err(_) => {
                return Err(PeerError::Timeout {
                    peer: peer(),
                    timeout: self.config.first_byte,
                });
            }
            Ok(Err(source)) if source.is_connect() => {
                return Err(PeerError::Connect {
                    peer: peer(),
                    source,
                });
            }
            Ok(Err(source)) => {
                return Err(PeerError::Transport {
                    peer: peer(),
                    source,
                });
            }
            Ok(Ok(r)) => r,
        };
        if self.is_own_answer(&resp) {
            self.recognise_me(member);
            return Err(PeerError::IsSelf { peer: peer() });
        }
        Ok(resp)
    }

    fn is_own_answer(&self, resp: &reqwest::Response) -> bool {
        resp.headers()
            .get(PEER_HEADER)
            .is_some_and(|v| v.as_bytes() == self.instance.as_bytes())
    }

    fn recognise_me(&self, member: &Member) {
        if self.update(|m| m.set_me(&member.id)) {
            tracing::info!(me = %member.id, "recognised this server among its peers");
        }
    }

    /// Keeps the peer set current until `stop`: resolves `peerDiscovery` every `interval`,
    /// probes the peers left out every `probeInterval` (all of them the first time).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut next_resolve = Instant::now();
        let mut first = true;
        loop {
            if Instant::now() >= next_resolve {
                self.resolve().await;
                if let Discovery::Dns { interval, .. } = &self.discovery {
                    next_resolve = Instant::now() + *interval;
                } else {
                    next_resolve = Instant::now() + Duration::from_secs(3600 * 24 * 365);
                }
            }
            self.probe(first).await;
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(self.config.probe_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Reads the member list again, and recognises this server's address in it.
    async fn resolve(&self) {
        let members = match &self.discovery {
            Discovery::Static(members) => members.clone(),
            Discovery::Dns { name, port, .. } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => addrs.map(Member::at).collect(),
                    Err(e) => {
                        // Keep the last answer: a DNS hiccup must not split the cache.
                        tracing::warn!(name, error = %e, "cannot resolve peerDiscovery.name; keeping the last peer set");
                        return;
                    }
                }
            }
        };
        let mut mine = None;
        for m in &members {
            if self.is_own_address(m).await {
                mine = Some(m.id.clone());
            }
        }
        self.update(|state| {
            let mut changed = state.set_known(members);
            if let Some(id) = &mine {
                changed |= state.set_me(id);
            }
            changed
        });
    }

    /// Whether a member's address is this server's listener: the same port, and the listener's
    /// address or (for a listener on every interface) an address of this host.
    async fn is_own_address(&self, member: &Member) -> bool {
        let Some((host, port)) = member.id.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.own_addr.port()) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, 0)).await {
                Ok(a) => a.map(|a| a.ip()).collect(),
                Err(_) => return false,
            },
        };
        let own = self.own_addr.ip();
        addrs
            .into_iter()
            .any(|ip| ip == own || (own.is_unspecified() && is_local_address(ip)))
    }

    /// Probes the peers left out (every known peer when `all`), taking back those that answer.
    async fn probe(&self, all: bool) {
        let targets: Vec<Member> = {
            let m = self.read();
            if all {
                m.known()
                    .iter()
                    .filter(|p| !m.is_me(&p.id))
                    .cloned()
                    .collect()
            } else {
                m.down().into_iter().cloned().collect()
            }
        };
        let probes = targets.iter().map(|member| async move {
            let ok = tokio::time::timeout(
                self.config.connect_timeout + Duration::from_secs(2),
                self.client
                    .get(format!("{}/v2/", member.url.trim_end_matches('/')))
                    .header(PEER_HEADER, &self.instance)
                    .send(),
            )
            .await;
            (member, ok)
        });
        for (member, outcome) in futures_util::future::join_all(probes).await {
            match outcome {
                Ok(Ok(resp)) if self.is_own_answer(&resp) => self.recognise_me(member),
                Ok(Ok(resp)) if resp.status().is_success() => {
                    if self.update(|m| m.mark_up(&member.id)) {
                        tracing::info!(peer = %member.id, "peer answers again");
                    }
                }
                _ => {
                    if self.update(|m| m.mark_down(&member.id)) {
                        tracing::warn!(peer = %member.id, "peer does not answer; left out");
                    }
                }
            }
        }
    }
}

/// A `peers` entry as a member: its `host:port` (the scheme's port when none is written).
fn static_member(url: &str) -> Option<Member> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    let port = u.port_or_known_default()?;
    let id = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(Member {
        id: id.to_ascii_lowercase(),
        url: format!("{}://{id}", u.scheme()),
    })
}

/// Whether `ip` is an address of this host: binding a socket to it succeeds only then.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests;
