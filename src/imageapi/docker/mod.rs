//! The Docker Engine image API subset on the admin listener, so the docker CLI manages the
//! cache: `docker -H tcp://HOST:8081 image ls|inspect|history|rm|prune`.
//!
//! Endpoints (each also under a `/v1.NN` prefix, which the CLI adds after `/_ping` tells it our
//! version): `/_ping` (GET, HEAD), `/version`, `GET /images/json`, `GET /images/{name}/json`,
//! `GET /images/{name}/history`, `DELETE /images/{name}`, `POST /images/prune`. The pure core is
//! in the submodules: [`catalog`] (what an image is, lookups, selections, delete plans),
//! [`filters`], [`names`] and [`views`] (the response shapes). Deletes go through the prune
//! engine, so an index takes its platform manifests along and every removal is counted in the
//! prune metrics. Errors are `{"message": ...}`, which the CLI prints as
//! "Error response from daemon: ...".
//!
//! Behind the admin token gate like the rest of the listener: the docker CLI sends the token
//! from `HttpHeaders` in its `config.json` (`{"HttpHeaders": {"Authorization": "Bearer ..."}}`).

pub mod catalog;
pub mod error;
pub mod filters;
pub mod names;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

use self::catalog::{Catalog, DeletePlan, host_platform};
use self::error::DockerError;
use self::filters::Filters;
use self::names::familiar_tag;
use self::views::{ConfigFile, DeleteItem, PruneResponse};
use crate::admin::AdminState;
use crate::api::{Decision, Item, PruneRequest};
use crate::digest::Digest;
use crate::metrics::Trigger;
use crate::prune::PruneService;
use crate::store::{ManifestRecord, Platform, Store};

/// The API version of the reference this implements; clients use the lower of theirs and this.
pub const API_VERSION: &str = "1.51";
const API_MINOR: u32 = 51;
/// The oldest version the daemon still accepts; older clients get its error.
pub const MIN_API_VERSION: &str = "1.24";
const MIN_MINOR: u32 = 24;
/// Image configs are small; anything bigger is not read into memory.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

pub fn routes() -> Router<Arc<AdminState>> {
    let mut router = Router::new();
    for prefix in ["", "/{version}"] {
        router = router
            .route(&format!("{prefix}/_ping"), get(ping))
            .route(&format!("{prefix}/version"), get(version))
            // `DELETE` of these two paths removes images named `json` and `prune`.
            .route(
                &format!("{prefix}/images/json"),
                get(list).delete(image_delete),
            )
            .route(
                &format!("{prefix}/images/prune"),
                post(prune).delete(image_delete),
            )
            .route(
                &format!("{prefix}/images/{{*rest}}"),
                get(image_get).delete(image_delete),
            );
    }
    router.layer(axum::middleware::map_response(stamp))
}

/// Every answer carries the daemon's identification headers.
async fn stamp(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!(
            "imagecache/",
            env!("CARGO_PKG_VERSION"),
            " (linux)"
        )),
    );
    res
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "docker API request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({"message": self.to_string()})),
        )
            .into_response()
    }
}

/// The API version a request was made with: from its `/v1.NN` prefix, else ours.
struct ApiVersion {
    minor: u32,
}

impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = DockerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = parts.uri.path();
        let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
        // The unversioned routes start with these; anything else came through `/{version}`.
        if segment == "_ping" || segment == "images" || path == "/version" {
            return Ok(ApiVersion { minor: API_MINOR });
        }
        let (major, minor) = segment
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or(DockerError::NotFound)?;
        let shown = || format!("{major}.{minor}");
        if major > 1 || (major == 1 && minor > API_MINOR) {
            return Err(DockerError::TooNew(shown()));
        }
        if major < 1 || minor < MIN_MINOR {
            return Err(DockerError::TooOld(shown()));
        }
        Ok(ApiVersion { minor })
    }
}

/// Query parameters, repeated keys kept (`platforms` is sent once per platform).
struct Params(Vec<(String, String)>);

impl Params {
    fn of(uri: &Uri) -> Params {
        Params(
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The daemon's boolean form values: empty, `0`, `no`, `false` and `none` are false.
    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "no" | "false" | "none"
            )
        })
    }

    /// A JSON-encoded OCI platform (`{"os":"linux","architecture":"arm64"}`); empty is none.
    fn platform(value: &str, param: &'static str) -> Result<Option<Platform>, DockerError> {
        #[derive(Deserialize)]
        struct Wire {
            os: String,
            architecture: String,
            #[serde(default)]
            variant: Option<String>,
        }
        if value.trim().is_empty() {
            return Ok(None);
        }
        let w: Wire = serde_json::from_str(value).map_err(|e| DockerError::Param {
            param,
            message: format!("{value:?} is not a JSON OCI platform: {e}"),
        })?;
        Ok(Some(Platform {
            os: w.os.into(),
            architecture: w.architecture.into(),
            variant: w.variant.filter(|v| !v.is_empty()).map(Into::into),
        }))
    }
}

/// The `platform`/`platforms` query parameter parser, public only for the fuzz targets.
#[doc(hidden)]
pub fn parse_platform(value: &str) -> Result<Option<Platform>, DockerError> {
    Params::platform(value, "platform")
}

fn service(state: &AdminState) -> Result<Arc<PruneService>, DockerError> {
    state.prune.get().cloned().ok_or(DockerError::Loading)
}

fn catalog(svc: &PruneService) -> Catalog {
    Catalog::build(svc.store().snapshot(), &host_platform())
}

/// The image name of `/images/{name}/...`: the path after `/images/` (and the version prefix),
/// percent-decoded, since names carry slashes.
fn image_path(uri: &Uri) -> String {
    let path = uri.path();
    let rest = path
        .find("/images/")
        .map_or("", |i| &path[i + "/images/".len()..]);
    percent_encoding::percent_decode_str(rest)
        .decode_utf8_lossy()
        .into_owned()
}

async fn ping(ApiVersion { .. }: ApiVersion) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::HeaderName::from_static("ostype"), "linux"),
            (
                header::HeaderName::from_static("docker-experimental"),
                "false",
            ),
        ],
        "OK",
    )
        .into_response()
}

async fn version(ApiVersion { .. }: ApiVersion) -> Response {
    let arch = host_platform().architecture;
    let version = env!("CARGO_PKG_VERSION");
    let details = serde_json::json!({
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": arch,
        "GitCommit": "",
        "GoVersion": "n/a",
        "KernelVersion": "",
        "BuildTime": "",
        "Experimental": "false",
    });
    axum::Json(serde_json::json!({
        "Platform": {"Name": "imagecache"},
        "Components": [{"Name": "Engine", "Version": version, "Details": details}],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "n/a",
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": "",
        "BuildTime": "",
    }))
    .into_response()
}

async fn list(
    State(state): State<Arc<AdminState>>,
    api: ApiVersion,
    uri: Uri,
) -> Result<Response, DockerError> {
    let svc = service(&state)?;
    let params = Params::of(&uri);
    let filters = Filters::parse(params.get("filters"))?;
    let catalog = catalog(&svc);
    let listed = catalog.list(&filters, Timestamp::now(), &TimeZone::system())?;
    let shared = params.flag("shared-size").then(|| catalog.shared_sizes());
    let manifests = params.flag("manifests");
    let body: Vec<_> = listed
        .into_iter()
        .map(|l| {
            let s = shared
                .as_ref()
                .map(|m| m.get(&l.image.record.digest).copied().unwrap_or(0));
            views::summary(&catalog, l, s, manifests, api.minor)
        })
        .collect();
    Ok(axum::Json(body).into_response())
}

/// `GET /images/{name}/json` and `GET /images/{name}/history`.
async fn image_get(
    State(state): State<Arc<AdminState>>,
    api: ApiVersion,
    uri: Uri,
) -> Result<Response, DockerError> {
    let path = image_path(&uri);
    let (name, history) = if let Some(n) = path.strip_suffix("/json") {
        (n, false)
    } else if let Some(n) = path.strip_suffix("/history") {
        (n, true)
    } else {
        return Err(DockerError::NotFound);
    };
    let svc = service(&state)?;
    let params = Params::of(&uri);
    let want = params
        .get("platform")
        .map(|p| Params::platform(p, "platform"))
        .transpose()?
        .flatten();
    let catalog = catalog(&svc);
    let image = catalog.resolve(name)?.image();
    let chosen: Option<&ManifestRecord> = match &want {
        Some(w) => Some(
            image
                .for_platform(w)
                .ok_or_else(|| DockerError::NoPlatform {
                    image: name.to_owned(),
                    platform: w.to_string(),
                })?,
        ),
        None => image.primary(),
    };
    let config = read_config(svc.store(), chosen).await;
    if history {
        return Ok(axum::Json(views::history(image, chosen, &config)).into_response());
    }
    Ok(axum::Json(views::inspect(
        &catalog,
        image,
        chosen,
        want.is_some(),
        &config,
        params.flag("manifests"),
        api.minor,
    ))
    .into_response())
}

/// The image config of `record`, when it is cached; an unreadable one reads as empty.
async fn read_config(store: &Store, record: Option<&ManifestRecord>) -> ConfigFile {
    let Some(config) = record.and_then(|r| r.config.as_ref()) else {
        return ConfigFile::default();
    };
    match store.blob_size(&config.digest) {
        Some(n) if n <= MAX_CONFIG_BYTES => {}
        _ => return ConfigFile::default(),
    }
    match tokio::fs::read(store.blob_path(&config.digest)).await {
        Ok(bytes) => ConfigFile::parse(&bytes),
        Err(e) => {
            tracing::debug!(digest = %config.digest, error = %e, "cannot read image config");
            ConfigFile::default()
        }
    }
}

async fn image_delete(
    State(state): State<Arc<AdminState>>,
    _api: ApiVersion,
    uri: Uri,
) -> Result<Response, DockerError> {
    let name = image_path(&uri);
    let svc = service(&state)?;
    let params = Params::of(&uri);
    let platforms: Vec<Platform> = params
        .all("platforms")
        .map(|p| Params::platform(p, "platforms"))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // `noprune` has nothing to act on: cached images have no parent images.
    let plan = catalog(&svc).plan_delete(&name, params.flag("force"), &platforms)?;
    let items = match plan {
        DeletePlan::Untag { repo, tag } => {
            let store = svc.store().clone();
            let (r, t) = (repo.clone(), tag.clone());
            tokio::task::spawn_blocking(move || store.remove_tag(&r, &t))
                .await
                .map_err(|e| DockerError::Internal(e.to_string()))??;
            vec![DeleteItem::Untagged(familiar_tag(&repo, &tag))]
        }
        DeletePlan::Remove { digests, untagged } => {
            let deleted = remove(&svc, &digests).await?;
            if let Some(missed) = digests.iter().find(|d| !deleted.contains(d)) {
                return Err(DockerError::PulledDuringDelete(
                    missed.hex().chars().take(12).collect(),
                ));
            }
            untagged
                .into_iter()
                .map(DeleteItem::Untagged)
                .chain(deleted.iter().map(|d| DeleteItem::Deleted(d.to_string())))
                .collect()
        }
    };
    Ok(axum::Json(items).into_response())
}

/// Removes exactly these manifests through the prune engine; returns every manifest removed
/// (the requested ones first, then the platform manifests they took along).
async fn remove(svc: &PruneService, digests: &[Digest]) -> Result<Vec<Digest>, DockerError> {
    let report = svc
        .run(PruneRequest::delete(digests.to_vec()), Trigger::api)
        .await?;
    Ok(pruned_in_order(&report.items, digests))
}

fn pruned_in_order(items: &[Item], first: &[Digest]) -> Vec<Digest> {
    let pruned: Vec<&Digest> = items
        .iter()
        .filter(|i| i.decision == Decision::Prune)
        .map(|i| &i.digest)
        .collect();
    let mut out: Vec<Digest> = first
        .iter()
        .filter(|d| pruned.contains(d))
        .cloned()
        .collect();
    out.extend(pruned.into_iter().filter(|d| !first.contains(d)).cloned());
    out
}

async fn prune(
    State(state): State<Arc<AdminState>>,
    _api: ApiVersion,
    uri: Uri,
) -> Result<Response, DockerError> {
    let svc = service(&state)?;
    let params = Params::of(&uri);
    let filters = Filters::parse(params.get("filters"))?;
    let catalog = catalog(&svc);
    let candidates = catalog.prune_candidates(&filters, Timestamp::now(), &TimeZone::system())?;
    if candidates.is_empty() {
        return Ok(axum::Json(PruneResponse {
            images_deleted: None,
            space_reclaimed: 0,
        })
        .into_response());
    }
    // An explicit, user-chosen selection like a delete by name (no age, count or ratio
    // limits), except that pinned images (pause) stay, as images in use do for the daemon.
    let request = PruneRequest {
        pinned: None,
        ..PruneRequest::delete(candidates.iter().map(|i| i.record.digest.clone()).collect())
    };
    let report = svc.run(request, Trigger::api).await?;
    let pruned: std::collections::HashSet<&Digest> = report
        .items
        .iter()
        .filter(|i| i.decision == Decision::Prune)
        .map(|i| &i.digest)
        .collect();
    let mut items = Vec::new();
    for image in candidates
        .iter()
        .filter(|i| pruned.contains(&i.record.digest))
    {
        items.extend(image.repo_tags().into_iter().map(DeleteItem::Untagged));
        items.extend(image.repo_digests().into_iter().map(DeleteItem::Untagged));
        items.push(DeleteItem::Deleted(image.id()));
        items.extend(
            image
                .children
                .iter()
                .filter(|c| pruned.contains(&c.child.digest))
                .map(|c| DeleteItem::Deleted(c.child.digest.to_string())),
        );
    }
    Ok(axum::Json(PruneResponse {
        images_deleted: (!items.is_empty()).then_some(items),
        space_reclaimed: report.totals.bytes,
    })
    .into_response())
}

#[cfg(test)]
mod fixture;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use crate::metrics::Metrics;

    async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, Response) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        (res.status(), res)
    }

    async fn json(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn app(loaded: Option<&std::path::Path>) -> Router {
        let metrics = Arc::new(Metrics::new());
        let state = AdminState::new(metrics.clone(), None, CancellationToken::new());
        if let Some(dir) = loaded {
            let (store, _) = Store::open(dir).unwrap();
            let svc = PruneService::new(Arc::new(store), metrics);
            let _ = state.prune.set(Arc::new(svc));
        }
        crate::admin::gate(crate::admin::routes().merge(super::routes()), state)
    }

    #[tokio::test]
    async fn ping_and_version_with_and_without_prefix() {
        let app = app(None);
        for path in ["/_ping", "/v1.50/_ping"] {
            for method in ["GET", "HEAD"] {
                let (st, res) = call(&app, method, path).await;
                assert_eq!(st, StatusCode::OK, "{method} {path}");
                let h = res.headers();
                assert_eq!(h["api-version"], API_VERSION);
                assert_eq!(h["ostype"], "linux");
                assert_eq!(h["docker-experimental"], "false");
            }
        }
        for path in ["/version", "/v1.24/version", "/v1.51/version"] {
            let (st, res) = call(&app, "GET", path).await;
            assert_eq!(st, StatusCode::OK, "{path}");
            let v = json(res).await;
            assert_eq!(v["ApiVersion"], API_VERSION);
            assert_eq!(v["MinAPIVersion"], MIN_API_VERSION);
            assert_eq!(v["Os"], "linux");
            assert_eq!(v["Components"][0]["Name"], "Engine");
        }
        let (st, res) = call(&app, "GET", "/v1.52/version").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            json(res).await["message"]
                .as_str()
                .unwrap()
                .contains("too new")
        );
        let (st, res) = call(&app, "GET", "/v1.12/images/json").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            json(res).await["message"]
                .as_str()
                .unwrap()
                .contains("too old")
        );
        let (st, _) = call(&app, "GET", "/vx/images/json").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // Not loaded yet: Docker-shaped 503.
        let (st, res) = call(&app, "GET", "/v1.50/images/json").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(json(res).await["message"].is_string());
    }

    #[tokio::test]
    async fn errors_are_docker_shaped() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Some(dir.path()));
        let (st, res) = call(&app, "GET", "/images/json").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(res).await, serde_json::json!([]));
        let (st, res) = call(&app, "GET", "/v1.50/images/upstream.test/team/app:1/json").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(
            json(res).await["message"],
            "No such image: upstream.test/team/app:1"
        );
        let (st, _) = call(&app, "GET", "/v1.50/images/nginx/history").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = call(&app, "DELETE", "/v1.50/images/nginx").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, res) = call(&app, "DELETE", "/images/prune").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(json(res).await["message"], "No such image: prune:latest");
        let (st, _) = call(&app, "GET", "/v1.50/images/nginx/other").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let bad = "/images/json?filters=%7B%22colour%22%3A%5B%22red%22%5D%7D";
        let (st, res) = call(&app, "GET", bad).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(json(res).await["message"], "invalid filter 'colour'");
        let (st, res) = call(&app, "POST", "/v1.50/images/prune?filters=%7B").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            json(res).await["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid filter")
        );
        let (st, res) = call(&app, "POST", "/v1.50/images/prune").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            json(res).await,
            serde_json::json!({"ImagesDeleted": null, "SpaceReclaimed": 0})
        );
        let (st, _) = call(&app, "GET", "/v1.50/images/nginx/json?platform=%7Bx").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // The rest of the admin listener is untouched.
        let (st, _) = call(&app, "GET", "/healthz").await;
        assert_eq!(st, StatusCode::OK);
    }
}
