//! The Image API over HTTP against a real store, without a network.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body::Body as _;
use jiff::Timestamp;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::metrics::Metrics;
use crate::reference::RepoPath;

const GV: &str = "/apis/image.openshift.io/v1";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

struct Fixture {
    app: Router,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn repo(path: &str) -> RepoPath {
    let (registry, repository) = path.split_once('/').unwrap();
    RepoPath {
        registry: registry.into(),
        repository: repository.into(),
    }
}

fn manifest(seed: u32) -> (Digest, Bytes) {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":{},"digest":"{}"}}],"annotations":{{"seed":"{seed}"}}}}"#,
        Digest::sha256_of(b"{}"),
        1000 + seed,
        Digest::sha256_of(format!("layer{seed}").as_bytes()),
    );
    (Digest::sha256_of(body.as_bytes()), Bytes::from(body))
}

fn put(store: &Store, path: &str, tag: Option<&str>, seed: u32) -> Digest {
    let (d, b) = manifest(seed);
    store
        .put_manifest(&repo(path), tag, &d, None, &b, Timestamp::now())
        .unwrap();
    d
}

/// An index of two cached children, tagged in `docker.io/library/multi`.
fn put_index(store: &Store) -> (Digest, Vec<Digest>) {
    let children: Vec<(Digest, Bytes)> = (100..102).map(manifest).collect();
    let entries: Vec<String> = children
        .iter()
        .enumerate()
        .map(|(i, (d, b))| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":{},"digest":"{d}","platform":{{"os":"linux","architecture":"{}"}}}}"#,
                b.len(),
                ["amd64", "arm64"][i]
            )
        })
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    let d = Digest::sha256_of(body.as_bytes());
    let r = repo("docker.io/library/multi");
    for (cd, cb) in &children {
        store
            .put_manifest(&r, None, cd, None, cb, Timestamp::now())
            .unwrap();
    }
    store
        .put_manifest(&r, Some("1"), &d, None, &body.into(), Timestamp::now())
        .unwrap();
    (d, children.into_iter().map(|(d, _)| d).collect())
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let state = AdminState::new(metrics.clone(), None, CancellationToken::new());
    let _ = state
        .prune
        .set(Arc::new(PruneService::new(store.clone(), metrics)));
    Fixture {
        app: routes().with_state(state),
        store,
        _dir: dir,
    }
}

struct Resp {
    status: StatusCode,
    json: Value,
}

async fn call(app: &Router, method: &str, uri: &str, accept: Option<&str>, body: &str) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}: {}", String::from_utf8_lossy(&bytes)));
    Resp { status, json }
}

async fn get_json(app: &Router, uri: &str) -> Resp {
    call(app, "GET", uri, None, "").await
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_status(r: &Resp, code: u16, reason: &str) {
    assert_eq!(r.status.as_u16(), code, "{}", r.json);
    assert_eq!(r.json["kind"], "Status");
    assert_eq!(r.json["apiVersion"], "v1");
    assert_eq!(r.json["status"], "Failure");
    assert_eq!(r.json["code"], code);
    assert_eq!(r.json["reason"], reason);
    assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn discovery() {
    let f = fixture();
    let api = get_json(&f.app, "/api").await;
    assert_eq!(api.json["kind"], "APIVersions");
    assert_eq!(
        api.json["versions"],
        serde_json::json!([]),
        "no core resources here"
    );
    let groups = get_json(&f.app, "/apis").await;
    assert_eq!(groups.json["kind"], "APIGroupList");
    assert_eq!(groups.json["groups"][0]["name"], "image.openshift.io");
    assert_eq!(
        groups.json["groups"][0]["preferredVersion"]["groupVersion"],
        "image.openshift.io/v1"
    );
    let group = get_json(&f.app, "/apis/image.openshift.io").await;
    assert_eq!(group.json["kind"], "APIGroup");
    let res = get_json(&f.app, GV).await;
    assert_eq!(res.json["kind"], "APIResourceList");
    assert_eq!(res.json["groupVersion"], "image.openshift.io/v1");
    let images = &res.json["resources"][0];
    assert_eq!(images["name"], "images");
    assert_eq!(images["kind"], "Image");
    assert_eq!(images["namespaced"], false);
    assert_eq!(
        images["verbs"],
        serde_json::json!(["delete", "deletecollection", "get", "list", "watch"])
    );
    assert_eq!(get_json(&f.app, "/oapi").await.json["versions"][0], "v1");
    assert_eq!(
        get_json(&f.app, "/oapi/v1").await.json["groupVersion"],
        "v1"
    );
    for missing in [
        "/openapi/v2",
        "/openapi/v3",
        "/apis/apps/v1",
        "/api/v1/pods",
        "/apis/image.openshift.io/v1/imagestreams",
    ] {
        assert_status(&get_json(&f.app, missing).await, 404, "NotFound");
    }
}

#[tokio::test]
async fn list_get_and_tables() {
    let f = fixture();
    let a = put(&f.store, "docker.io/library/nginx", Some("1.27"), 1);
    let b = put(&f.store, "127.0.0.1:5000/team/app", Some("v2"), 2);
    let list = get_json(&f.app, &format!("{GV}/images")).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json["kind"], "ImageList");
    assert_eq!(list.json["apiVersion"], "image.openshift.io/v1");
    assert_eq!(
        list.json["metadata"]["resourceVersion"],
        f.store.revision().to_string()
    );
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(names(&list.json), want);
    let item = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == b.to_string())
        .unwrap();
    assert_eq!(item["kind"], "Image");
    assert_eq!(
        item["metadata"]["labels"]["imagecache.io/registry"],
        "127.0.0.1_5000"
    );
    assert_eq!(
        item["metadata"]["labels"]["imagecache.io/repository"],
        "team.app"
    );
    assert_eq!(
        item["dockerImageReference"],
        format!("127.0.0.1:5000/team/app@{b}")
    );

    let one = get_json(&f.app, &format!("{GV}/images/{a}")).await;
    assert_eq!(one.json["metadata"]["name"], a.to_string());
    assert_eq!(
        one.json["metadata"]["annotations"]["imagecache.io/tags"],
        "docker.io/library/nginx:1.27"
    );
    let legacy = get_json(&f.app, &format!("/oapi/v1/images/{a}")).await;
    assert_eq!(legacy.json["apiVersion"], "v1");
    let legacy_list = get_json(&f.app, "/oapi/v1/images").await;
    assert_eq!(legacy_list.json["apiVersion"], "v1");
    assert_eq!(legacy_list.json["items"][0]["apiVersion"], "v1");

    let missing = format!("sha256:{}", "0".repeat(64));
    let r = get_json(&f.app, &format!("{GV}/images/{missing}")).await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.json["details"]["name"], missing);
    assert_status(
        &get_json(&f.app, &format!("{GV}/images/nope")).await,
        404,
        "NotFound",
    );

    let t = call(&f.app, "GET", &format!("{GV}/images"), Some(TABLE), "").await;
    assert_eq!(t.json["kind"], "Table");
    let cols: Vec<&str> = t.json["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        ["Name", "Reference", "Tags", "Size", "Last-Pulled", "Age"]
    );
    assert_eq!(t.json["rows"].as_array().unwrap().len(), 2);
    let t1 = call(&f.app, "GET", &format!("{GV}/images/{a}"), Some(TABLE), "").await;
    assert_eq!(t1.json["rows"][0]["cells"][2], "1.27");
}

#[tokio::test]
async fn selectors_and_errors() {
    let f = fixture();
    let a = put(&f.store, "docker.io/library/nginx", Some("1.27"), 1);
    let b = put(&f.store, "quay.io/team/app", None, 2);
    let sel = |s: &str| format!("{GV}/images?labelSelector={}", percent(s));
    let l = get_json(&f.app, &sel("imagecache.io/repository=library.nginx")).await;
    assert_eq!(names(&l.json), vec![a.to_string()]);
    let l = get_json(&f.app, &sel("imagecache.io/registry in (quay.io, ghcr.io)")).await;
    assert_eq!(names(&l.json), vec![b.to_string()]);
    let l = get_json(&f.app, &sel("imagecache.io/tagged!=true")).await;
    assert_eq!(names(&l.json), vec![b.to_string()]);
    let l = get_json(
        &f.app,
        &sel("!imagecache.io/nothing,imagecache.io/type=image"),
    )
    .await;
    assert_eq!(names(&l.json).len(), 2);
    let l = get_json(
        &f.app,
        &format!(
            "{GV}/images?fieldSelector={}",
            percent(&format!("dockerImageReference=quay.io/team/app@{b}"))
        ),
    )
    .await;
    assert_eq!(names(&l.json), vec![b.to_string()]);
    let l = get_json(
        &f.app,
        &format!(
            "{GV}/images?fieldSelector={}",
            percent(&format!("metadata.name!={b}"))
        ),
    )
    .await;
    assert_eq!(names(&l.json), vec![a.to_string()]);

    assert_status(&get_json(&f.app, &sel("a in (")).await, 400, "BadRequest");
    assert_status(
        &get_json(&f.app, &format!("{GV}/images?fieldSelector=spec.x%3D1")).await,
        400,
        "BadRequest",
    );
    for method in ["POST", "PUT", "PATCH"] {
        let r = call(&f.app, method, &format!("{GV}/images"), None, "{}").await;
        assert_status(&r, 405, "MethodNotAllowed");
        let r = call(&f.app, method, &format!("{GV}/images/{a}"), None, "{}").await;
        assert_status(&r, 405, "MethodNotAllowed");
    }
}

fn percent(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn pagination() {
    let f = fixture();
    let mut all: Vec<String> = (0..7)
        .map(|i| put(&f.store, &format!("docker.io/team/app{i}"), Some("v1"), i).to_string())
        .collect();
    all.sort();
    let mut seen = Vec::new();
    let mut uri = format!("{GV}/images?limit=3");
    let mut rvs = Vec::new();
    let mut remaining = Vec::new();
    loop {
        let page = get_json(&f.app, &uri).await;
        seen.extend(names(&page.json));
        rvs.push(page.json["metadata"]["resourceVersion"].clone());
        remaining.push(page.json["metadata"]["remainingItemCount"].clone());
        match page.json["metadata"]["continue"].as_str() {
            Some(c) => uri = format!("{GV}/images?limit=3&continue={c}"),
            None => break,
        }
        // Changes between pages do not move the list's revision.
        put(&f.store, "docker.io/other/x", None, 50 + seen.len() as u32);
    }
    // Every item there at the start is listed exactly once; ones added meanwhile may be too.
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "{seen:?}");
    assert!(all.iter().all(|n| seen.contains(n)));
    assert!(rvs.iter().all(|r| *r == rvs[0]), "{rvs:?}");
    assert_eq!(remaining[0], 4);
    let r = get_json(&f.app, &format!("{GV}/images?limit=3&continue=garbage")).await;
    assert_status(&r, 400, "BadRequest");
    // A continue token whose revision has left the history is Expired.
    f.store.set_change_history(1);
    put(&f.store, "docker.io/other/y", None, 90);
    put(&f.store, "docker.io/other/z", None, 91);
    let first = get_json(&f.app, &format!("{GV}/images?limit=1")).await;
    let token = first.json["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_owned();
    put(&f.store, "docker.io/other/w", None, 92);
    put(&f.store, "docker.io/other/v", None, 93);
    let r = get_json(&f.app, &format!("{GV}/images?limit=1&continue={token}")).await;
    assert_status(&r, 410, "Expired");
}

#[tokio::test]
async fn delete_prunes_and_deletecollection_selects() {
    let f = fixture();
    let a = put(&f.store, "docker.io/library/nginx", Some("1.27"), 1);
    let b = put(&f.store, "docker.io/library/redis", Some("7"), 2);
    let (index, children) = put_index(&f.store);

    // Dry run leaves it.
    let r = call(
        &f.app,
        "DELETE",
        &format!("{GV}/images/{a}"),
        None,
        r#"{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(f.store.has_manifest(&a));
    // A failed precondition leaves it.
    let r = call(
        &f.app,
        "DELETE",
        &format!("{GV}/images/{a}"),
        None,
        r#"{"preconditions":{"uid":"other"}}"#,
    )
    .await;
    assert_status(&r, 409, "Conflict");

    let r = call(
        &f.app,
        "DELETE",
        &format!("{GV}/images/{a}"),
        None,
        r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["kind"], "Image");
    assert_eq!(r.json["metadata"]["name"], a.to_string());
    assert!(!f.store.has_manifest(&a));
    assert_status(
        &call(&f.app, "DELETE", &format!("{GV}/images/{a}"), None, "").await,
        404,
        "NotFound",
    );

    // Deleting the index by label takes its children along and lists them all.
    let r = call(
        &f.app,
        "DELETE",
        &format!(
            "{GV}/images?labelSelector={}",
            percent("imagecache.io/type=index")
        ),
        None,
        "",
    )
    .await;
    assert_eq!(r.json["kind"], "ImageList");
    let mut want: Vec<String> = children
        .iter()
        .chain(std::iter::once(&index))
        .map(|d| d.to_string())
        .collect();
    want.sort();
    assert_eq!(names(&r.json), want);
    assert!(!f.store.has_manifest(&index));
    assert!(children.iter().all(|c| !f.store.has_manifest(c)));
    assert!(f.store.has_manifest(&b));
    assert_status(
        &call(
            &f.app,
            "DELETE",
            &format!("{GV}/images?labelSelector=a%20in"),
            None,
            "",
        )
        .await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn unavailable_until_loaded() {
    let state = AdminState::new(Arc::new(Metrics::new()), None, CancellationToken::new());
    let app = routes().with_state(state);
    assert_status(
        &get_json(&app, &format!("{GV}/images")).await,
        503,
        "ServiceUnavailable",
    );
    // Discovery needs no cache.
    assert_eq!(get_json(&app, "/apis").await.status, StatusCode::OK);
}

/// Reads whole event lines from a streaming body.
struct Lines {
    body: Body,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx));
            let frame = tokio::time::timeout(Duration::from_secs(5), frame)
                .await
                .expect("an event in time")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

async fn watch(app: &Router, uri: &str, accept: Option<&str>) -> Lines {
    let mut req = Request::builder().uri(uri);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    Lines {
        body: resp.into_body(),
        buf: Vec::new(),
    }
}

#[tokio::test]
async fn watch_over_http() {
    let f = fixture();
    let a = put(&f.store, "docker.io/library/nginx", Some("1.27"), 1);
    let list = get_json(&f.app, &format!("{GV}/images")).await;
    let rv = list.json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut w = watch(
        &f.app,
        &format!("{GV}/images?watch=true&resourceVersion={rv}"),
        None,
    )
    .await;
    let mut legacy = watch(
        &f.app,
        &format!("/oapi/v1/watch/images?resourceVersion={rv}"),
        None,
    )
    .await;
    let mut table = watch(
        &f.app,
        &format!("{GV}/images?watch=1&resourceVersion={rv}"),
        Some(TABLE),
    )
    .await;
    let mut one = watch(
        &f.app,
        &format!("{GV}/watch/images/{a}?resourceVersion={rv}"),
        None,
    )
    .await;
    let b = put(&f.store, "docker.io/library/redis", Some("7"), 2);
    let e = w.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some(b.to_string().as_str()))
    );
    let e = legacy.next().await.unwrap();
    assert_eq!(e["object"]["apiVersion"], "v1");
    let e = table.next().await.unwrap();
    assert_eq!(e["object"]["kind"], "Table");
    assert_eq!(e["object"]["rows"][0]["cells"][0], b.to_string());
    // Retagging nginx moves the tag: one MODIFIED for it.
    f.store
        .set_tag(
            &repo("docker.io/library/nginx"),
            "latest",
            &a,
            Timestamp::now(),
        )
        .unwrap();
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(
        e["object"]["metadata"]["annotations"]["imagecache.io/tags"],
        "docker.io/library/nginx:1.27,docker.io/library/nginx:latest"
    );
    let e = one.next().await.unwrap();
    assert_eq!(e["type"], "MODIFIED", "the single-object watch skips redis");
    // A watch with no resourceVersion starts with the current objects.
    let mut fresh = watch(&f.app, &format!("{GV}/images?watch=true"), None).await;
    let mut initial = [fresh.next().await.unwrap(), fresh.next().await.unwrap()];
    initial.sort_by_key(|e| e["object"]["metadata"]["name"].as_str().unwrap().to_owned());
    assert!(initial.iter().all(|e| e["type"] == "ADDED"));
    // Too old: an ERROR event with a 410 Expired Status, then the end.
    let mut old = watch(
        &f.app,
        &format!("{GV}/images?watch=true&resourceVersion=5"),
        None,
    )
    .await;
    let e = old.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(old.next().await.is_none());
    // timeoutSeconds ends the stream, with a bookmark when asked for.
    let mut short = watch(
        &f.app,
        &format!("{GV}/images?watch=true&resourceVersion={rv}&timeoutSeconds=1&allowWatchBookmarks=true&labelSelector=x%3Dy"),
        None,
    )
    .await;
    let e = short.next().await.unwrap();
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        f.store.revision().to_string()
    );
    assert!(short.next().await.is_none());
}
