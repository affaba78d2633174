//! The admin listener: health, readiness, metrics, the cache administration API (`/cmd/*`,
//! `/admin/v1/prune`) and the bearer-token gate in front of everything but the probes.
//!
//! Layer: an HTTP surface over the prune service and the store. It owns the listener's state
//! ([`AdminState`]) and gate; the image APIs take that state and are mounted beside these
//! routes by `server::admin_router`. It never imports `imageapi`, the registry data plane or
//! the operator.

mod cmd;
mod stream;

#[doc(hidden)]
pub use cmd::{AdminError, CmdQuery, parse_query as parse_cmd_query};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::prune::PruneService;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once the index is loaded; `/readyz` answers 503 until then.
    pub prune: OnceLock<Arc<PruneService>>,
    pub ready: AtomicBool,
    /// Cancelled by `/cmd/stop`.
    pub shutdown: CancellationToken,
    token: Option<String>,
}

impl AdminState {
    pub fn new(
        metrics: Arc<Metrics>,
        token: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<AdminState> {
        Arc::new(AdminState {
            metrics,
            prune: OnceLock::new(),
            ready: AtomicBool::new(false),
            shutdown,
            token,
        })
    }
}

/// Largest request body the admin API reads (a prune request is a few KiB); larger gets 413.
/// Header sections are bounded by hyper (about 400 KiB and 100 headers per HTTP/1 request, 431
/// beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The admin listener's own routes: probes, metrics, `/cmd/*` and `/admin/v1/*`.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(cmd::routes())
}

/// Puts the admin listener's gates in front of `routes` (these and whatever is mounted beside
/// them, such as the image APIs): the bearer token for everything but the probes and metrics,
/// and the request body limit.
pub fn gate(routes: Router<Arc<AdminState>>, state: Arc<AdminState>) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn(limit_declared_body))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Refuses a body declared too large before reading any of it; bodies without a length are
/// cut at the same size by [`axum::extract::DefaultBodyLimit`] as they are read.
async fn limit_declared_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes; at most {MAX_BODY_BYTES} are accepted\n"),
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the cache index\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let stats = state.prune.get().map(|p| p.store().stats());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(stats),
    )
        .into_response()
}

/// Paths a load balancer or Prometheus must reach without credentials.
fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(req).await;
    };
    if is_open_path(req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"imagecache-admin\"",
            )],
            "admin token required: send Authorization: Bearer <token>\n",
        )
            .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn status(app: &Router, path: &str, auth: Option<&str>) -> StatusCode {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        app.clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn token_gates_everything_but_probes_and_metrics() {
        let state = AdminState::new(
            Arc::new(Metrics::new()),
            Some("s3cret".into()),
            CancellationToken::new(),
        );
        let app = gate(routes(), state.clone());
        assert_eq!(status(&app, "/healthz", None).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/readyz", None).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Release);
        assert_eq!(status(&app, "/readyz", None).await, StatusCode::OK);
        assert_eq!(status(&app, "/metrics", None).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/cmd/image/list", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, "/cmd/image/list", Some("Bearer nope")).await,
            StatusCode::UNAUTHORIZED
        );
        // Past the gate; the cache is not loaded in this test.
        assert_eq!(
            status(&app, "/cmd/image/list", Some("Bearer s3cret")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
