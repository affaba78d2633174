//! `imagecache operator`: health and metrics, leader election, then the three controllers
//! until SIGTERM (graceful: in-flight reconciles finish, the Lease is released).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::context::{Context, Settings};
use super::error::OperatorError;
use super::leader::{Elector, Ended, Timings};
use super::metrics::OperatorMetrics;
use super::pods::HttpRegistry;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace (all namespaces when unset).
    pub namespace: Option<String>,
    /// Health (`/healthz`, `/readyz`) and `/metrics`.
    pub listen: SocketAddr,
    /// Run under a Lease (turn off only for a single replica you run by hand).
    pub leader_election: bool,
    pub lease_name: String,
    /// Namespace of the Lease (the pod's namespace, else the kubeconfig's default).
    pub lease_namespace: Option<String>,
    pub settings: Settings,
}

/// The health and metrics listener cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Runs until `shutdown` is cancelled (SIGTERM/SIGINT do it) or leadership is lost (an error,
/// so the pod restarts and rejoins the election as client-go operators do).
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), OperatorError> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(OperatorMetrics::new());
    let registry = HttpRegistry::new().map_err(|e| OperatorError::Startup(e.into()))?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(registry),
        metrics.clone(),
        options.settings.clone(),
    ));
    spawn_signal_handler(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| {
            OperatorError::Startup(Box::new(ListenError {
                addr: options.listen,
                source,
            }))
        })?;
    tracing::info!(listen = %options.listen, namespace = options.namespace.as_deref().unwrap_or("(all)"), "operator starting");
    let server = tokio::spawn(
        axum::serve(listener, health_router(metrics.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let elector = if options.leader_election {
        let ns = options
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let identity = identity();
        let elector = Elector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            &options.lease_name,
            &identity,
            Timings::default(),
        );
        if !elector.acquire(&shutdown).await {
            let _ = server.await;
            return Ok(());
        }
        Some(elector)
    } else {
        None
    };
    metrics.leader.set(1);

    let controllers = shutdown.child_token();
    let run_all = {
        let ctx = ctx.clone();
        let ns = options.namespace.clone();
        let token = controllers.clone();
        async move {
            tokio::join!(
                super::imagecache::run(ctx.clone(), ns.clone(), token.clone()),
                super::prunepolicy::run(ctx.clone(), ns.clone(), token.clone()),
                super::cachedimage::run(ctx.clone(), ns.clone(), token.clone()),
            );
        }
    };
    let mut lost = false;
    match &elector {
        Some(elector) => {
            tokio::pin!(run_all);
            tokio::select! {
                _ = &mut run_all => {}
                ended = elector.hold(&shutdown) => {
                    lost = ended == Ended::Lost;
                    controllers.cancel();
                    run_all.await;
                }
            }
        }
        None => run_all.await,
    }
    metrics.leader.set(0);
    if let Some(elector) = &elector
        && !lost
    {
        elector.release().await;
    }
    shutdown.cancel();
    let _ = server.await;
    if lost {
        return Err(OperatorError::LostLeadership);
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// The pod name when running in a pod (downward API `POD_NAME`), else host name and pid.
fn identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    format!("{host}_{}", std::process::id())
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        shutdown.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
}

/// The probes answer as soon as the listener is up: it starts after the Kubernetes client is
/// built, and a standby replica (waiting for the Lease) is as ready as the leader.
fn health_router(metrics: Arc<OperatorMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Arc<OperatorMetrics>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
