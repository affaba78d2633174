//! The OpenShift-style Image API on the admin listener: `images.image.openshift.io/v1` (and the
//! legacy `/oapi/v1` alias) with Kubernetes list/watch semantics, and just enough discovery
//! (`/api`, `/apis`, `/apis/image.openshift.io/v1`) for `kubectl --server http://HOST:8081 get
//! images` to work without a cluster.
//!
//! - `resourceVersion` is the store-wide change counter. A list is consistent with one
//!   revision; a watch replays the changes after a revision from the store's bounded history
//!   (`changeHistory`), or gets an ERROR event with a 410 `Expired` Status when they are gone.
//!   Revisions restart from the clock when the server restarts, so older ones are expired.
//! - An object's `resourceVersion` is the revision of its last change while the change log the
//!   server keeps still has that change, else the revision just before the oldest change it
//!   has (the object has not changed since); in a list it never exceeds the list's revision.
//! - `limit`/`continue`: items are ordered by name; a continued list is read from the current
//!   cache but keeps the first page's revision (a watch from it replays what changed since),
//!   and is 410 Expired once that revision has left the history.
//! - Deleting an Image prunes it through the prune engine (an index takes the children only it
//!   holds along); deletecollection prunes every Image its selectors match.
//!
//! The pure parts live in the submodules: [`types`] (the Image object), [`selector`], [`table`],
//! [`params`], [`feed`] (the change log encoded once for all watchers) and [`watch`].

pub mod feed;
pub mod params;
pub mod selector;
pub mod status;
pub mod table;
pub mod types;
pub mod watch;

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get};
use axum::{Router, middleware};
use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde_json::{Value, json};

use self::feed::{Feed, Filter, oldest_retained};
use self::params::{ContinueToken, DEFAULT_WATCH_TIMEOUT, DeleteOptions, Params, table_format};
use self::status::ApiError;
use self::types::{encode, encode_json, from_record};
use self::watch::{Output, WatchRequest};
use crate::admin::AdminState;
use crate::api::image::{
    API_VERSION, GROUP, Image, KIND, LEGACY_API_VERSION, LIST_KIND, PLURAL, SINGULAR, VERSION,
};
use crate::api::{Decision, PruneRequest};
use crate::digest::Digest;
use crate::metrics::Trigger;
use crate::prune::PruneService;
use crate::store::Store;

type AppState = State<Arc<AdminState>>;

/// The API version objects are served under: the group's, or `v1` on the legacy prefix.
#[derive(Clone, Copy)]
struct ApiVersion(&'static str);

pub fn routes() -> Router<Arc<AdminState>> {
    let feed = Arc::new(Feed::default());
    Router::new()
        .route("/api", get(core_versions))
        .route("/api/v1", get(core_resources))
        .route("/apis", get(groups))
        .route(&format!("/apis/{GROUP}"), get(group))
        .route(&format!("/apis/{API_VERSION}"), get(group_resources))
        .route("/oapi", get(legacy_versions))
        .route("/oapi/v1", get(legacy_resources))
        .merge(image_routes(&format!("/apis/{API_VERSION}"), API_VERSION))
        .merge(image_routes("/oapi/v1", LEGACY_API_VERSION))
        // Anything else under the API prefixes (other groups, `/openapi/v2`, `/openapi/v3`)
        // is a NotFound Status, which kubectl treats as "not served here".
        .route("/api/{*rest}", any(no_such_path))
        .route("/apis/{*rest}", any(no_such_path))
        .route("/oapi/{*rest}", any(no_such_path))
        .route("/openapi/{*rest}", any(no_such_path))
        .layer(Extension(feed))
        .layer(middleware::map_response(no_store))
}

fn image_routes(prefix: &str, api_version: &'static str) -> Router<Arc<AdminState>> {
    let only = |m: MethodRouter<Arc<AdminState>>| m.fallback(method_not_allowed);
    Router::new()
        .route(
            &format!("{prefix}/{PLURAL}"),
            only(get(list_or_watch).delete(delete_collection)),
        )
        .route(
            &format!("{prefix}/{PLURAL}/{{name}}"),
            only(get(get_image).delete(delete_image)),
        )
        .route(&format!("{prefix}/watch/{PLURAL}"), only(get(watch_all)))
        .route(
            &format!("{prefix}/watch/{PLURAL}/{{name}}"),
            only(get(watch_one)),
        )
        .layer(Extension(ApiVersion(api_version)))
}

/// API responses describe live state; nothing in between should cache them.
async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache, private"));
    resp
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn ok_json(v: &Value) -> Response {
    json_response(StatusCode::OK, encode_json(v))
}

async fn no_such_path() -> ApiError {
    ApiError::NoSuchPath
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn service(state: &AdminState) -> Result<Arc<PruneService>, ApiError> {
    state.prune.get().cloned().ok_or(ApiError::Unavailable)
}

// ---- discovery ----

/// No core (`v1`) resources are served: client-go treats an empty core resource list as a
/// discovery error, but skips a core group with no versions.
async fn core_versions() -> Response {
    ok_json(&json!({
        "kind": "APIVersions",
        "versions": [],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
}

/// The legacy OpenShift prefix has one version, `v1`, serving images.
async fn legacy_versions() -> Response {
    ok_json(&json!({"kind": "APIVersions", "versions": ["v1"]}))
}

/// Kept for clients that ask anyway: no core resources are served.
async fn core_resources() -> Response {
    ok_json(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [],
    }))
}

fn group_version() -> Value {
    json!({"groupVersion": API_VERSION, "version": VERSION})
}

fn group_doc() -> Value {
    json!({
        "name": GROUP,
        "versions": [group_version()],
        "preferredVersion": group_version(),
    })
}

async fn groups() -> Response {
    ok_json(&json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc()]}))
}

async fn group() -> Response {
    let mut g = group_doc();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    ok_json(&g)
}

fn image_resource() -> Value {
    json!({
        "name": PLURAL,
        "singularName": SINGULAR,
        "namespaced": false,
        "kind": KIND,
        "verbs": ["delete", "deletecollection", "get", "list", "watch"],
        "categories": ["imagecache"],
    })
}

async fn group_resources() -> Response {
    ok_json(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": [image_resource()],
    }))
}

async fn legacy_resources() -> Response {
    ok_json(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": LEGACY_API_VERSION,
        "resources": [image_resource()],
    }))
}

// ---- list, get, watch ----

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

fn output(headers: &HeaderMap, p: &Params, v: ApiVersion) -> Output {
    Output {
        api_version: v.0,
        table: table_format(accept(headers), p.include_object),
    }
}

async fn list_or_watch(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let store = service(&state)?.store().clone();
    let out = output(&headers, &p, v);
    if p.watch {
        return start_watch(&state, feed, store, p, out);
    }
    list(&feed, &store, &p, out)
}

async fn watch_all(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let store = service(&state)?.store().clone();
    let out = output(&headers, &p, v);
    start_watch(&state, feed, store, p, out)
}

async fn watch_one(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut p = Params::parse(q.as_deref())?;
    p.field_selector.0.push(selector::FieldRequirement {
        field: types::Field::Name,
        value: name,
        negated: false,
    });
    let store = service(&state)?.store().clone();
    let out = output(&headers, &p, v);
    start_watch(&state, feed, store, p, out)
}

fn start_watch(
    state: &AdminState,
    feed: Arc<Feed>,
    store: Arc<Store>,
    p: Params,
    output: Output,
) -> Result<Response, ApiError> {
    let after = if p.initial_events()? {
        None
    } else {
        Some(p.watch_after()?.unwrap_or_else(|| store.revision()))
    };
    let req = WatchRequest {
        after,
        bookmarks: p.allow_watch_bookmarks,
        initial_events_end: p.send_initial_events == Some(true),
        timeout: p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
        filter: Filter {
            labels: p.label_selector,
            fields: p.field_selector,
        },
        output,
        stop: state.shutdown.clone(),
    };
    let lines = watch::watch(feed, store, req).map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Whether `rv` is too old for the history: changes after it are no longer all known.
fn expired(store: &Store, rv: u64, current: u64) -> Option<ApiError> {
    let oldest = oldest_retained(store);
    (rv + 1 < oldest && rv < current).then_some(ApiError::Expired {
        requested: rv,
        oldest,
    })
}

fn list(feed: &Feed, store: &Store, p: &Params, out: Output) -> Result<Response, ApiError> {
    let token = p
        .continue_token
        .as_deref()
        .map(ContinueToken::decode)
        .transpose()?;
    // Names are digests, so a page starts after the digest the token names.
    let after = token
        .as_ref()
        .map(|t| {
            t.start.parse::<Digest>().map_err(|_| {
                ApiError::BadRequest(format!("continue key is not valid: {:?}", t.start))
            })
        })
        .transpose()?;
    let filtered = !p.label_selector.is_empty() || !p.field_selector.is_empty();
    let limit = if p.limit == 0 { usize::MAX } else { p.limit };
    // Unfiltered, the page is the next `limit` images (one more tells whether more follow);
    // filtered, any number may have to be read to fill it.
    let page = store.page(
        after.as_ref(),
        (!filtered).then_some(limit.saturating_add(1)),
    );
    let list_rv = match &token {
        Some(t) => {
            if let Some(e) = expired(store, t.rv, page.revision) {
                return Err(e);
            }
            t.rv
        }
        None => page.revision,
    };
    if p.resource_version_match.as_deref() == Some("Exact")
        && let Ok(rv) = params::parse_revision(&p.resource_version)
        && rv != page.revision
    {
        // Only the current revision can be listed; an older one is gone.
        return Err(ApiError::Expired {
            requested: rv,
            oldest: page.revision,
        });
    }
    let revs = feed.object_revisions(store, page.revision);
    let filter = Filter {
        labels: p.label_selector.clone(),
        fields: p.field_selector.clone(),
    };
    let mut items = Vec::new();
    let mut more = false;
    let mut seen = 0;
    for (record, tags) in &page.manifests {
        seen += 1;
        let image = from_record(record, tags, revs.of(&record.digest.to_string()));
        if !filter.matches(&image) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(image);
    }
    let mut meta = ListMeta {
        resource_version: Some(list_rv.to_string()),
        ..Default::default()
    };
    if more && let Some(last) = items.last() {
        meta.continue_ = Some(
            ContinueToken {
                rv: list_rv,
                start: last.name().to_owned(),
            }
            .encode(),
        );
        // The API server only counts what is left when it need not filter.
        if !filtered {
            meta.remaining_item_count = Some((page.remaining - seen + 1) as i64);
        }
    }
    Ok(list_response(&items, meta, &out))
}

/// A list as a Table for kubectl, or as an ImageList.
fn list_response(items: &[Image], meta: ListMeta, out: &Output) -> Response {
    match out.table {
        Some(format) => ok_json(&table::table(items, meta, format, Timestamp::now())),
        None => json_response(StatusCode::OK, image_list(items, meta, out.api_version)),
    }
}

/// `{"apiVersion":..,"kind":"ImageList","metadata":..,"items":[..]}` from encoded items.
fn image_list(items: &[Image], meta: ListMeta, api_version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + items.len() * 2048);
    out.extend_from_slice(br#"{"apiVersion":"#);
    out.extend_from_slice(&encode_json(&api_version));
    out.extend_from_slice(br#","kind":""#);
    out.extend_from_slice(LIST_KIND.as_bytes());
    out.extend_from_slice(br#"","metadata":"#);
    out.extend_from_slice(&encode_json(&meta));
    out.extend_from_slice(br#","items":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&encode(item, api_version));
    }
    out.extend_from_slice(b"]}");
    out
}

/// The current Image named `name`, with its resource version.
fn find(feed: &Feed, store: &Store, name: &str) -> Result<(Digest, Image), ApiError> {
    let not_found = || ApiError::NotFound(name.to_owned());
    let digest: Digest = name.parse().map_err(|_| not_found())?;
    let record = store.manifest_record(&digest).ok_or_else(not_found)?;
    let tags = store.tags_of(&digest);
    let rv = feed.object_revision(store, name);
    Ok((digest, from_record(&record, &tags, rv)))
}

fn object_response(image: &Image, out: Output) -> Response {
    match out.table {
        Some(format) => {
            let meta = ListMeta {
                resource_version: image.metadata.resource_version.clone(),
                ..Default::default()
            };
            ok_json(&table::table(
                std::slice::from_ref(image),
                meta,
                format,
                Timestamp::now(),
            ))
        }
        None => json_response(StatusCode::OK, encode(image, out.api_version)),
    }
}

async fn get_image(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let svc = service(&state)?;
    let (_, image) = find(&feed, svc.store(), &name)?;
    Ok(object_response(&image, output(&headers, &p, v)))
}

// ---- delete ----

/// Prunes exactly `digests` (and the children only they hold); returns what went.
async fn prune(svc: &PruneService, digests: Vec<Digest>) -> Result<Vec<Digest>, ApiError> {
    let report = svc
        .run(PruneRequest::delete(digests), Trigger::api)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(why) = report.refused {
        return Err(ApiError::Conflict(why));
    }
    Ok(report
        .items
        .into_iter()
        .filter(|i| i.decision == Decision::Prune)
        .map(|i| i.digest)
        .collect())
}

async fn delete_image(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let opts = DeleteOptions::parse(&body)?;
    let svc = service(&state)?;
    let (digest, image) = find(&feed, svc.store(), &name)?;
    if let Some(pre) = &opts.preconditions {
        let uid = image.metadata.uid.as_deref();
        if let Some(want) = &pre.uid
            && Some(want.as_str()) != uid
        {
            return Err(ApiError::Conflict(format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                uid.unwrap_or("")
            )));
        }
        let rv = image.metadata.resource_version.as_deref();
        if let Some(want) = &pre.resource_version
            && Some(want.as_str()) != rv
        {
            return Err(ApiError::Conflict(format!(
                "Precondition failed: ResourceVersion in precondition: {want}, \
                 ResourceVersion in object meta: {}",
                rv.unwrap_or("")
            )));
        }
    }
    if !(p.dry_run || opts.is_dry_run()?) {
        let removed = prune(&svc, vec![digest.clone()]).await?;
        if !removed.contains(&digest) {
            return Err(ApiError::Conflict(format!(
                "{name} was pulled while it was being deleted; it is still cached"
            )));
        }
    }
    Ok(object_response(&image, output(&headers, &p, v)))
}

async fn delete_collection(
    State(state): AppState,
    Extension(feed): Extension<Arc<Feed>>,
    Extension(v): Extension<ApiVersion>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let dry = p.dry_run || DeleteOptions::parse(&body)?.is_dry_run()?;
    let svc = service(&state)?;
    let store = svc.store();
    let snap = store.snapshot();
    let revs = feed.object_revisions(store, snap.revision);
    let filter = Filter {
        labels: p.label_selector.clone(),
        fields: p.field_selector.clone(),
    };
    let mut images: Vec<(Digest, Image)> = snap
        .manifests
        .iter()
        .map(|(r, tags)| {
            let image = from_record(r, tags, revs.of(&r.digest.to_string()));
            (r.digest.clone(), image)
        })
        .collect();
    let selected: Vec<Digest> = images
        .iter()
        .filter(|(_, i)| filter.matches(i))
        .map(|(d, _)| d.clone())
        .collect();
    let removed: HashSet<Digest> = if dry || selected.is_empty() {
        selected.into_iter().collect()
    } else {
        prune(&svc, selected).await?.into_iter().collect()
    };
    // What went, children taken along with their index included.
    images.retain(|(d, _)| removed.contains(d));
    images.sort_by(|a, b| a.1.name().cmp(b.1.name()));
    let items: Vec<Image> = images.into_iter().map(|(_, i)| i).collect();
    let meta = ListMeta {
        resource_version: Some(store.revision().to_string()),
        ..Default::default()
    };
    let out = output(&headers, &p, v);
    Ok(list_response(&items, meta, &out))
}

#[cfg(test)]
mod tests;
