//! The cache administration REST API: the seed's `/cmd/*` endpoints (columnar text by default,
//! `format=json` for machines) and `POST /admin/v1/prune` with the full prune request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use regex::Regex;

use super::AdminState;
use super::stream::{self, Rows};
use crate::api::{CacheStatus, PruneRequest};
use crate::listing;
use crate::metrics::Trigger;
use crate::prune::{PruneError, PruneService};

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/cmd/prune", delete(cmd_prune))
        .route("/cmd/image/list", get(image_list))
        .route("/cmd/blob/list", get(blob_list))
        .route("/cmd/manifest/list", get(manifest_list))
        .route("/cmd/stop", any(stop))
        .route("/admin/v1/prune", post(admin_prune))
        .route("/admin/v1/status", get(admin_status))
}

/// Errors of the admin API: one line of text, or `{"error": ...}` for JSON callers.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    status: StatusCode,
    message: String,
    json: bool,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if self.json {
            (
                self.status,
                axum::Json(serde_json::json!({"error": self.message})),
            )
                .into_response()
        } else {
            (self.status, format!("error: {}\n", self.message)).into_response()
        }
    }
}

type Params = Query<HashMap<String, String>>;

fn wants_json(q: &HashMap<String, String>) -> bool {
    q.get("format")
        .is_some_and(|f| f.eq_ignore_ascii_case("json"))
}

fn bad(json: bool, message: impl Into<String>) -> AdminError {
    AdminError {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
        json,
    }
}

fn service(state: &AdminState, json: bool) -> Result<Arc<PruneService>, AdminError> {
    state.prune.get().cloned().ok_or(AdminError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the cache index is still loading".into(),
        json,
    })
}

fn count(q: &HashMap<String, String>, json: bool) -> Result<Option<usize>, AdminError> {
    match q.get("count") {
        None => Ok(listing::limit(None)),
        Some(c) => c
            .trim()
            .parse::<i64>()
            .map(|n| listing::limit(Some(n)))
            .map_err(|_| {
                bad(
                    json,
                    format!("count must be a number (-1 for no limit), got {c:?}"),
                )
            }),
    }
}

fn patterns(q: &HashMap<String, String>, key: &str, json: bool) -> Result<Vec<Regex>, AdminError> {
    q.get(key)
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            Regex::new(p).map_err(|e| {
                bad(
                    json,
                    format!(
                        "invalid {key} regex {p:?}: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                )
            })
        })
        .collect()
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn manifest_list(
    State(state): State<Arc<AdminState>>,
    Query(q): Params,
) -> Result<Response, AdminError> {
    let json = wants_json(&q);
    let svc = service(&state, json)?;
    let (pats, n) = (patterns(&q, "pattern", json)?, count(&q, json)?);
    let inv = crate::prune::inventory(svc.store());
    let format = Rows {
        json,
        header: listing::MANIFEST_HEADER,
        cells: listing::manifest_cells,
    };
    Ok(stream::rows(format, move |emit| {
        listing::manifests(&inv, &pats, n).try_for_each(|row| emit(&row))
    }))
}

async fn image_list(
    State(state): State<Arc<AdminState>>,
    Query(q): Params,
) -> Result<Response, AdminError> {
    let json = wants_json(&q);
    let svc = service(&state, json)?;
    let (pats, n) = (patterns(&q, "pattern", json)?, count(&q, json)?);
    let digest = q.get("digest").filter(|d| !d.is_empty()).cloned();
    let inv = crate::prune::inventory(svc.store());
    let format = Rows {
        json,
        header: listing::IMAGE_HEADER,
        cells: listing::image_cells,
    };
    Ok(stream::rows(format, move |emit| {
        listing::images(&inv, &pats, digest.as_deref(), n).try_for_each(|row| emit(&row))
    }))
}

async fn blob_list(
    State(state): State<Arc<AdminState>>,
    Query(q): Params,
) -> Result<Response, AdminError> {
    let json = wants_json(&q);
    let svc = service(&state, json)?;
    let n = count(&q, json)?;
    let substr = q.get("substr").filter(|s| !s.is_empty()).cloned();
    let refs = svc.store().blob_refs();
    let format = Rows {
        json,
        header: listing::BLOB_HEADER,
        cells: listing::blob_cells,
    };
    Ok(stream::rows(format, move |emit| {
        listing::blobs(refs, substr.as_deref(), n).try_for_each(|row| emit(&row))
    }))
}

/// The seed's query parameters as a prune request.
fn seed_request(q: &HashMap<String, String>, json: bool) -> Result<PruneRequest, AdminError> {
    let dur = || -> Result<std::time::Duration, AdminError> {
        let d = q.get("dur").ok_or_else(|| {
            bad(
                json,
                "dur is required for type accessed and created (e.g. dur=30d)",
            )
        })?;
        crate::duration::parse(d).map_err(|e| bad(json, e.to_string()))
    };
    let mut r = PruneRequest::default();
    match q.get("type").map(String::as_str) {
        Some("accessed") => r.unused_for = Some(dur()?),
        Some("created") => r.older_than = Some(dur()?),
        Some("pattern") => {
            let expr = q
                .get("expr")
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| {
                    bad(
                        json,
                        "expr is required for type pattern (e.g. expr=calico,cilium)",
                    )
                })?;
            r.patterns = vec![expr.clone()];
        }
        Some(other) => {
            return Err(bad(
                json,
                format!("type must be accessed, created or pattern, got {other:?}"),
            ));
        }
        None => return Err(bad(json, "type is required: accessed, created or pattern")),
    }
    if let Some(c) = q.get("count") {
        r.count = Some(c.trim().parse().map_err(|_| {
            bad(
                json,
                format!("count must be a number (-1 for no limit), got {c:?}"),
            )
        })?);
    }
    r.dry_run = match q.get("dryRun").map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" => false,
        Some(v) => {
            return Err(bad(
                json,
                format!("dryRun must be true or false, got {v:?}"),
            ));
        }
    };
    // Engine settings beyond the seed's, for callers that need them.
    if let Some(v) = q.get("minAge") {
        r.min_age = Some(crate::duration::parse(v).map_err(|e| bad(json, e.to_string()))?);
    }
    if let Some(v) = q.get("maxDeletionRatio") {
        r.max_deletion_ratio = Some(v.parse().map_err(|_| {
            bad(
                json,
                format!("maxDeletionRatio must be a number from 0 to 1, got {v:?}"),
            )
        })?);
    }
    Ok(r)
}

/// `count`, the `pattern`s and the prune request (or why it is refused) of a `/cmd/*` query.
#[doc(hidden)]
pub type CmdQuery = (Option<usize>, Vec<Regex>, Result<PruneRequest, AdminError>);

/// The `/cmd/*` query parsers (`format`, `count`, `pattern`, the prune parameters) in one call, for
/// the fuzz targets: the listing settings, and the prune request or why it is refused.
#[doc(hidden)]
pub fn parse_query(q: &HashMap<String, String>) -> Result<CmdQuery, AdminError> {
    let json = wants_json(q);
    Ok((
        count(q, json)?,
        patterns(q, "pattern", json)?,
        seed_request(q, json),
    ))
}

fn prune_error(e: PruneError, json: bool) -> AdminError {
    let status = match e {
        PruneError::Request(_) => StatusCode::BAD_REQUEST,
        PruneError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    AdminError {
        status,
        message: e.to_string(),
        json,
    }
}

async fn cmd_prune(
    State(state): State<Arc<AdminState>>,
    Query(q): Params,
) -> Result<Response, AdminError> {
    let json = wants_json(&q);
    let svc = service(&state, json)?;
    let request = seed_request(&q, json)?;
    let report = svc
        .run(request, Trigger::api)
        .await
        .map_err(|e| prune_error(e, json))?;
    if json {
        return Ok(stream::json(report));
    }
    Ok(text(listing::report_text(&report, false)))
}

async fn admin_prune(
    State(state): State<Arc<AdminState>>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let svc = service(&state, true)?;
    let request: PruneRequest =
        serde_json::from_slice(&body).map_err(|e| bad(true, format!("prune request: {e}")))?;
    let report = svc
        .run(request, Trigger::api)
        .await
        .map_err(|e| prune_error(e, true))?;
    Ok(stream::json(report))
}

async fn admin_status(State(state): State<Arc<AdminState>>) -> Result<Response, AdminError> {
    let svc = service(&state, true)?;
    let store = svc.store();
    let stats = store.stats();
    let volume = crate::prune::volume(store);
    let status = CacheStatus {
        manifests: stats.manifests,
        blobs: stats.blobs,
        bytes: stats.bytes,
        capacity_bytes: volume.map(|v| v.total),
        free_bytes: volume.map(|v| v.free),
        revision: store.revision(),
        last_prune: svc.last_run(),
    };
    Ok(axum::Json(status).into_response())
}

async fn stop(State(state): State<Arc<AdminState>>) -> Response {
    tracing::info!("stop requested through /cmd/stop");
    state.shutdown.cancel();
    text("stopping\n".into())
}
