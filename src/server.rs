//! `imagecache serve`: binds the listeners, loads the cache, runs until a signal.
//!
//! Layer: the wiring of one registry process. It composes what sits below it (the store, the
//! upstreams, the registry's data plane, the prune service, and the admin listener with the
//! image APIs mounted on it) and is called only by the CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::imageapi;
use crate::metrics::Metrics;
use crate::peers::{PeerError, Peers};
use crate::prune::PruneService;
use crate::reference::{ImageRef, parse_image_reference};
use crate::registry::{self, AppState};
use crate::store::{Platform, Store, StoreError};
use crate::upstream::{UpstreamError, Upstreams};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Peers(#[from] PeerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

fn read_token(config: &Config) -> Result<Option<String>, ServeError> {
    let Some(path) = &config.admin_token_file else {
        return Ok(None);
    };
    let err = |message: String| ServeError::Token {
        path: path.display().to_string(),
        message,
    };
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim();
    if token.len() < 16 {
        return Err(err("the token must be at least 16 characters".into()));
    }
    Ok(Some(token.to_owned()))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The admin listener's app: probes, metrics and the administration API, with the Image API
/// (kubectl) and the Docker image API mounted beside them, all behind the admin token gate.
/// Composed here so that neither `admin` nor `imageapi` needs the other's routes.
pub fn admin_router(state: Arc<AdminState>) -> Router {
    admin::gate(admin::routes().merge(imageapi::routes()), state)
}

/// Runs the registry until SIGINT/SIGTERM or `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    config.validate()?;
    let token = read_token(&config)?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());

    // Admin first, so probes answer (not ready) while the index loads.
    let admin_state = AdminState::new(metrics.clone(), token, shutdown.clone());
    let admin_listener = bind(config.admin_addr).await?;
    let admin_app = admin_router(admin_state.clone());
    let admin_stop = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(admin_stop.cancelled_owned())
            .await
    });

    let started = Instant::now();
    let root = config.image_path.clone();
    let (store, report) = tokio::task::spawn_blocking(move || Store::open(&root))
        .await
        .map_err(std::io::Error::other)??;
    store.set_change_history(config.change_history);
    let store = Arc::new(store);
    tracing::info!(
        path = %config.image_path.display(),
        manifests = report.manifests,
        blobs = report.blobs,
        damaged = report.damaged,
        temp_files_removed = report.temp_files_removed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache index loaded"
    );
    let prune_schedule = config.prune_config.schedule()?;
    let upstreams = Upstreams::new(&config, metrics.upstream_retries.clone())?;
    let peers = Peers::new(&config, metrics.clone())?;
    let state = AppState::with_peers(
        config.clone(),
        store.clone(),
        upstreams,
        metrics.clone(),
        peers.clone(),
    );
    let listener = bind(config.addr).await?;
    let pruner = Arc::new(PruneService::new(store.clone(), metrics));
    let _ = admin_state.prune.set(pruner.clone());
    admin_state.ready.store(true, Ordering::Release);
    tracing::info!(
        addr = %config.addr,
        admin_addr = %config.admin_addr,
        upstreams = config.registries.len(),
        air_gapped = config.air_gapped,
        peers = config.has_peers(),
        "imagecache serving"
    );

    // Once the registry listener is bound, so this server can recognise itself among its peers.
    let membership = peers.map(|p| tokio::spawn(p.run(shutdown.clone())));
    let flusher = tokio::spawn(flush_loop(
        store.clone(),
        config.access_flush_interval,
        shutdown.clone(),
    ));
    let background = prune_schedule.map(|schedule| {
        let request = config.prune_config.request.clone();
        tokio::spawn(prune_loop(pruner, schedule, request, shutdown.clone()))
    });
    // Preloading runs beside the server in this task (its pull future is not `Send`-provable
    // for `tokio::spawn`); it ends when done or at shutdown.
    let preload = {
        let (state, preload, shutdown) = (state.clone(), config.preload.clone(), shutdown.clone());
        async move {
            if !preload.images.is_empty() {
                preload_loop(state, preload, shutdown).await;
            }
        }
    };
    let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
    let serve = axum::serve(listener, registry::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let (result, ()) = tokio::join!(serve, preload);
    shutdown.cancel();
    signals.abort();
    let _ = flusher.await;
    if let Some(m) = membership {
        let _ = m.await;
    }
    if let Some(b) = background {
        let _ = b.await;
    }

    let _ = admin_task.await;
    // Last word on pull statistics before exit.
    let flushed = tokio::task::spawn_blocking(move || store.flush_access())
        .await
        .map_err(std::io::Error::other)??;
    tracing::info!(flushed, "imagecache stopped");
    Ok(result?)
}

async fn flush_loop(store: Arc<Store>, every: std::time::Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.flush_access()).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(records = n, "flushed pull statistics"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot flush pull statistics"),
            Err(e) => tracing::warn!(error = %e, "flush task failed"),
        }
    }
}

/// Background pruning: the first run one period after start, then on every tick.
async fn prune_loop(
    pruner: Arc<PruneService>,
    schedule: crate::schedule::Schedule,
    request: crate::api::PruneRequest,
    stop: CancellationToken,
) {
    let mut after = jiff::Timestamp::now();
    while let Some(next) = schedule.next_after(after) {
        tracing::info!(next = %next, "next background prune");
        let wait = jiff::Timestamp::now().duration_until(next).unsigned_abs();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        // Failures are logged and counted by the service; the schedule goes on.
        let _ = pruner
            .run(request.clone(), crate::metrics::Trigger::background)
            .await;
        after = next.max(jiff::Timestamp::now());
    }
}

async fn stop_on_signal(stop: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; finishing requests in flight");
    stop.cancel();
}

/// First retry of a failed preload; doubles up to [`PRELOAD_MAX_BACKOFF`].
const PRELOAD_BACKOFF: Duration = Duration::from_secs(10);
const PRELOAD_MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Pulls every `preload` image through the cache (as a client pull would), retrying the
/// failures with backoff until all are cached or the server stops. The config was validated at
/// start, so references and platforms parse.
async fn preload_loop(
    state: Arc<registry::AppState>,
    preload: crate::config::PreloadConfig,
    shutdown: CancellationToken,
) {
    let platforms: Vec<Platform> = preload
        .platforms
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let mut pending: Vec<ImageRef> = preload
        .images
        .iter()
        .filter_map(|i| parse_image_reference(i, &state.config.default_registry).ok())
        .collect();
    let mut delay = PRELOAD_BACKOFF;
    loop {
        let mut failed = Vec::new();
        for image in pending {
            let pull = crate::registry::pull::pull_image(
                &state,
                &image.repo,
                image.reference(),
                &platforms,
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = pull => match result {
                    Ok(s) => tracing::info!(
                        image = %image,
                        digest = %s.digest,
                        bytes_fetched = s.bytes_fetched,
                        bytes_cached = s.bytes_cached,
                        "preloaded"
                    ),
                    Err(e) => {
                        tracing::warn!(image = %image, error = %e, retry_in = ?delay, "preload failed");
                        failed.push(image);
                    }
                },
            }
        }
        if failed.is_empty() {
            tracing::info!(images = preload.images.len(), "preload complete");
            return;
        }
        pending = failed;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(PRELOAD_MAX_BACKOFF);
    }
}
