//! HTTP clients for the upstream registries of the allowlist. One pooled client per upstream, so
//! connections are reused across pulls; bearer tokens are cached per repository scope. Every
//! request goes through the SSRF [`guard`] (the rules are documented there).
//!
//! Layer: below the data plane. It reads the [`crate::config`] and counts retries in
//! [`crate::metrics`]; it knows no store, no registry handler, no admin surface and no cluster.

pub mod auth;
pub mod guard;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::{Method, StatusCode, header};

use crate::config::{Config, RegistryConfig, RetryConfig, Timeouts};
use crate::metrics::{RetryLabels, RetryReason};
use auth::{CachedToken, Challenge, Credentials, TokenResponse, parse_challenge};
use guard::Guard;
use retry::{Decision, Failure};

/// Counts of upstream requests tried again, by reason (`imagecache_upstream_retries_total`).
pub type RetryCounters = Family<RetryLabels, Counter>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} is not in the allowlist")]
    NotAllowed(String),
    /// A destination the SSRF guard refuses: the upstream, its token realm or a redirect.
    #[error("upstream {registry}: {message}")]
    Forbidden { registry: String, message: String },
    #[error("upstream {registry}: {message}")]
    Setup { registry: String, message: String },
    #[error("upstream {registry} is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("upstream {registry} did not answer within {timeout:?}")]
    Timeout { registry: String, timeout: Duration },
    #[error("upstream {registry} refused our credentials ({status})")]
    Unauthorized {
        registry: String,
        status: StatusCode,
    },
    /// The upstream asked (`Retry-After`) not to be called again for longer than a request may
    /// wait; nothing was sent.
    #[error("upstream {registry} is rate limiting: retry after {}", retry::retry_after_header(*retry_after))]
    RateLimited {
        registry: String,
        retry_after: Duration,
    },
}

impl UpstreamError {
    /// Errors where serving a stale cached tag is the right answer.
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            UpstreamError::NotAllowed(_)
                | UpstreamError::Forbidden { .. }
                | UpstreamError::Setup { .. }
        )
    }
}

/// All upstream clients. Allowlisted ones are built at start; with `allowAnyUpstream` others
/// are built on first use with default settings.
pub struct Upstreams {
    allow_any: bool,
    guard: Guard,
    retries: RetryCounters,
    clients: RwLock<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    /// Clients for the config's upstreams; their retries are counted in `retries`.
    pub fn new(config: &Config, retries: RetryCounters) -> Result<Upstreams, UpstreamError> {
        let mut clients = HashMap::new();
        let endpoints: Vec<String> = config
            .registries
            .iter()
            .map(RegistryConfig::endpoint_url)
            .collect();
        let guard = Guard::new(endpoints.iter().map(String::as_str));
        for r in &config.registries {
            let up = Upstream::with_guard(r, guard.clone())?.counting(retries.clone());
            clients.insert(crate::reference::normalize_registry(&r.name), Arc::new(up));
        }
        Ok(Upstreams {
            allow_any: config.allow_any_upstream,
            guard,
            retries,
            clients: RwLock::new(clients),
        })
    }

    /// Whether the allowlist (or `allowAnyUpstream`) admits this (normalised) registry. The
    /// SSRF guard is not consulted: cached content (e.g. loaded from a tarball) may name any
    /// host; fetching from it goes through [`Upstreams::get`], which is guarded.
    pub fn is_allowed(&self, registry: &str) -> bool {
        self.allow_any
            || self
                .clients
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(registry)
    }

    /// Why requests for this (normalised) registry may not be served, if so: not in the
    /// allowlist, or (with `allowAnyUpstream`) a host the SSRF guard refuses. Names are judged
    /// again, address by address, when the client resolves them.
    pub fn admit(&self, registry: &str) -> Result<(), UpstreamError> {
        if self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(registry)
        {
            return Ok(());
        }
        if !self.allow_any {
            return Err(UpstreamError::NotAllowed(registry.to_owned()));
        }
        self.guard
            .check_host(registry)
            .map_err(|e| UpstreamError::Forbidden {
                registry: registry.to_owned(),
                message: e.0,
            })
    }

    /// The client for a normalised registry name, if the allowlist permits it.
    pub fn get(&self, registry: &str) -> Result<Arc<Upstream>, UpstreamError> {
        if let Some(u) = self
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
        {
            return Ok(u.clone());
        }
        self.admit(registry)?;
        let up = Arc::new(
            Upstream::with_guard(&RegistryConfig::named(registry), self.guard.clone())?
                .counting(self.retries.clone()),
        );
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        Ok(clients.entry(registry.to_owned()).or_insert(up).clone())
    }
}

pub struct Upstream {
    name: String,
    base: String,
    client: reqwest::Client,
    guard: Guard,
    credentials: Option<Credentials>,
    timeouts: Timeouts,
    retry: RetryConfig,
    retries: RetryCounters,
    /// No request before this instant: the upstream said so with `Retry-After`.
    hold_until: Mutex<Option<Instant>>,
    /// The last challenge seen, so new scopes fetch a token before the first request.
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish()
    }
}

impl Upstream {
    /// A client for a listed upstream alone: its own endpoint host is trusted, nothing else.
    pub fn new(r: &RegistryConfig) -> Result<Upstream, UpstreamError> {
        Upstream::with_guard(r, Guard::new([r.endpoint_url().as_str()]))
    }

    /// A client whose every connection (redirects and token realms included) `guard` judges.
    pub fn with_guard(r: &RegistryConfig, guard: Guard) -> Result<Upstream, UpstreamError> {
        let setup = |message: String| UpstreamError::Setup {
            registry: r.name.clone(),
            message,
        };
        let base = r.endpoint_url();
        // Docker config keys name the registry as host[:port].
        let host = reqwest::Url::parse(&base)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_default();
        let credentials = match &r.auth {
            Some(a) => {
                auth::load_credentials(&r.name, &host, a).map_err(|e| setup(e.to_string()))?
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(r.timeouts.connect)
            .read_timeout(r.timeouts.idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .dns_resolver(guard.resolver())
            .redirect(guard.redirect_policy())
            .user_agent(concat!("imagecache/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &r.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| setup(format!("cannot read {}: {e}", p.display())))
            };
            if let Some(ca) = &tls.ca_file {
                for cert in reqwest::Certificate::from_pem_bundle(&read(ca)?)
                    .map_err(|e| setup(format!("caFile {}: {e}", ca.display())))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let mut pem = read(cert)?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&read(key)?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| setup(format!("client certificate: {e}")))?;
                builder = builder.identity(id);
            }
            builder = builder.tls_danger_accept_invalid_certs(tls.insecure_skip_verify);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        Ok(Upstream {
            name: r.name.clone(),
            base,
            client,
            guard,
            credentials,
            timeouts: r.timeouts,
            retry: r.retry,
            retries: RetryCounters::default(),
            hold_until: Mutex::new(None),
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The same client, counting its retries in `retries`.
    pub fn counting(mut self, retries: RetryCounters) -> Upstream {
        self.retries = retries;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The retry settings of this upstream (the blob fetch resumes within the same budget).
    pub fn retry_config(&self) -> &RetryConfig {
        &self.retry
    }

    /// Sends `method /v2/<repository>/<suffix>` with authentication, trying again after
    /// transient failures as [`retry`] rules, and never before a `Retry-After` the upstream
    /// gave has passed. What comes back is the caller's to interpret, except a second 401/403
    /// which is [`UpstreamError::Unauthorized`].
    pub async fn send(
        &self,
        method: Method,
        repository: &str,
        suffix: &str,
        headers: header::HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{}/{}", self.base, repository, suffix);
        self.check(&url)?;
        let scope = format!("repository:{repository}:pull");
        let mut waited = Duration::ZERO;
        let mut tries = 0;
        loop {
            self.respect_hold(&mut waited).await?;
            tries += 1;
            let outcome = self.send_once(&method, &url, &scope, &headers).await;
            let (failure, retry_after) = match &outcome {
                Ok(resp) => {
                    let failure = Failure::Status(resp.status().as_u16());
                    if !failure.is_transient() {
                        return outcome;
                    }
                    let retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
                    (failure, retry_after)
                }
                Err(UpstreamError::Unreachable { .. }) => (Failure::Transport, None),
                Err(_) => return outcome,
            };
            if let Some(wait) = retry_after {
                self.hold(wait);
            }
            let decision = retry::decide(
                &self.retry,
                tries,
                failure,
                retry_after,
                waited,
                rand::random::<f64>(),
            );
            let Decision::Retry(wait) = decision else {
                return outcome;
            };
            let reason = match failure {
                Failure::Transport => RetryReason::transport,
                Failure::Status(429) => RetryReason::rate_limited,
                Failure::Status(_) => RetryReason::server_error,
            };
            self.retries.get_or_create(&RetryLabels { reason }).inc();
            tracing::debug!(
                registry = %self.name,
                ?failure,
                wait_ms = wait.as_millis() as u64,
                tries,
                "upstream request failed; trying again"
            );
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    /// Remembers that the upstream wants no request for `wait`.
    fn hold(&self, wait: Duration) {
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut hold = self.hold_until.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }

    /// Waits out a `Retry-After` hold when it fits the request's budget; otherwise refuses
    /// without calling the upstream, so no client can make us ignore its `Retry-After`.
    async fn respect_hold(&self, waited: &mut Duration) -> Result<(), UpstreamError> {
        let until = *self.hold_until.lock().unwrap_or_else(|p| p.into_inner());
        let Some(remaining) = until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|r| !r.is_zero())
        else {
            return Ok(());
        };
        if waited.saturating_add(remaining) > self.retry.max_wait || self.retry.attempts < 2 {
            return Err(UpstreamError::RateLimited {
                registry: self.name.clone(),
                retry_after: remaining,
            });
        }
        self.retries
            .get_or_create(&RetryLabels {
                reason: RetryReason::rate_limited,
            })
            .inc();
        tokio::time::sleep(remaining).await;
        *waited += remaining;
        Ok(())
    }

    /// One try: a 401 is answered once by fetching a token (or sending basic credentials).
    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        scope: &str,
        headers: &header::HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut auth = self.authorization(scope, false).await?;
        for attempt in 0..2 {
            let mut req = self
                .client
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = self.timed(req.send()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            if attempt == 1 || challenge.is_none() {
                return Err(UpstreamError::Unauthorized {
                    registry: self.name.clone(),
                    status: resp.status(),
                });
            }
            *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = challenge;
            auth = self.authorization(scope, true).await?;
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The Authorization header value for a scope, fetching a token when needed.
    async fn authorization(
        &self,
        scope: &str,
        refresh: bool,
    ) -> Result<Option<String>, UpstreamError> {
        let challenge = self
            .challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(basic)),
            Some(Challenge::Bearer { realm, service }) => {
                if !refresh {
                    let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(t) = tokens.get(scope).filter(|t| t.refresh_at > Instant::now()) {
                        return Ok(Some(format!("Bearer {}", t.token)));
                    }
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                let value = format!("Bearer {}", token.token);
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(scope.to_owned(), token);
                Ok(Some(value))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken, UpstreamError> {
        // The realm comes from the upstream: it may not send the cache anywhere it would not go.
        self.check(realm)?;
        let mut req = self.client.get(realm).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = self.timed(req.send()).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Unauthorized {
                registry: self.name.clone(),
                status,
            });
        }
        let unreachable = |message: String| UpstreamError::Unreachable {
            registry: self.name.clone(),
            message,
        };
        if !status.is_success() {
            return Err(unreachable(format!("token endpoint answered {status}")));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|t| t.into_cached(Instant::now()))
            .ok_or_else(|| unreachable("token endpoint returned no token".to_owned()))
    }

    /// Judges a URL by the SSRF guard before any connection is attempted.
    fn check(&self, url: &str) -> Result<(), UpstreamError> {
        let forbidden = |message: String| UpstreamError::Forbidden {
            registry: self.name.clone(),
            message,
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| forbidden(format!("invalid URL {:?}: {e}", redact_query(url))))?;
        self.guard.check_url(&parsed).map_err(|e| forbidden(e.0))
    }

    async fn timed(
        &self,
        fut: impl Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(self.timeouts.first_byte, fut).await {
            Err(_) => Err(UpstreamError::Timeout {
                registry: self.name.clone(),
                timeout: self.timeouts.first_byte,
            }),
            Ok(Err(e)) => Err(match Guard::find(&e) {
                // A redirect or a resolved address refused by the guard.
                Some(refused) => UpstreamError::Forbidden {
                    registry: self.name.clone(),
                    message: refused.0,
                },
                None => UpstreamError::Unreachable {
                    registry: self.name.clone(),
                    message: error_chain(&e),
                },
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

fn basic(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A URL without its query, which could carry a token.
fn redact_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// An error with its causes, without the URL's query (where a token could sit).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    match out.find('?') {
        Some(i) => {
            let end = out[i..]
                .find(|c: char| c == ')' || c.is_whitespace())
                .map_or(out.len(), |j| i + j);
            out.replace_range(i..end, "");
            out
        }
        None => out,
    }
}

#[cfg(test)]
mod tests;
