//! The token flow against an in-process fake registry: one token per scope reused across
//! requests, refreshed before it lapses, and one pooled connection for many requests.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::*;
use crate::config::{AuthConfig, RegistryConfig};

#[derive(Default)]
struct Fake {
    addr: Mutex<String>,
    token_calls: AtomicUsize,
    challenges: AtomicUsize,
    issued: Mutex<HashSet<String>>,
    peers: Mutex<HashSet<SocketAddr>>,
    expires_in: AtomicUsize,
}

async fn token(State(f): State<Arc<Fake>>, headers: HeaderMap) -> impl IntoResponse {
    use base64::Engine as _;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:pw")
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(want.as_str())
    {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let n = f.token_calls.fetch_add(1, Ordering::SeqCst);
    let tok = format!("tok-{n}");
    f.issued.lock().unwrap().insert(tok.clone());
    let body = serde_json::json!({"token": tok, "expires_in": f.expires_in.load(Ordering::SeqCst)});
    (StatusCode::OK, body.to_string())
}

async fn manifest(
    State(f): State<Arc<Fake>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> axum::response::Response {
    f.peers.lock().unwrap().insert(peer);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if given.is_some_and(|t| f.issued.lock().unwrap().contains(&t)) {
        return (StatusCode::OK, "{}").into_response();
    }
    f.challenges.fetch_add(1, Ordering::SeqCst);
    let realm = format!(
        "Bearer realm=\"http://{}/token\",service=\"fake\"",
        f.addr.lock().unwrap()
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, realm)],
        "",
    )
        .into_response()
}

async fn start(expires_in: usize) -> (Arc<Fake>, Upstream) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = Arc::new(Fake::default());
    fake.expires_in.store(expires_in, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    *fake.addr.lock().unwrap() = addr.clone();
    let app = axum::Router::new()
        .route("/token", get(token))
        .route("/v2/{*rest}", get(manifest))
        .with_state(fake.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let cfg = RegistryConfig {
        endpoint: Some(format!("http://{addr}")),
        auth: Some(AuthConfig {
            username: Some("alice".into()),
            password_file: Some(pw),
            docker_config_file: None,
        }),
        ..RegistryConfig::named("fake.test")
    };
    (fake, Upstream::new(&cfg).unwrap())
}

async fn pull(up: &Upstream, repo: &str) -> StatusCode {
    up.send(
        Method::GET,
        repo,
        "manifests/latest",
        header::HeaderMap::new(),
    )
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn token_and_connection_are_reused() {
    let (fake, up) = start(300).await;
    for _ in 0..5 {
        assert_eq!(pull(&up, "team/app").await, StatusCode::OK);
    }
    assert_eq!(
        fake.token_calls.load(Ordering::SeqCst),
        1,
        "one token for one scope"
    );
    assert_eq!(
        fake.challenges.load(Ordering::SeqCst),
        1,
        "only the first request is challenged"
    );
    assert_eq!(fake.peers.lock().unwrap().len(), 1, "one pooled connection");
    // A new repository is a new scope: a token is fetched up front, without another 401.
    assert_eq!(pull(&up, "team/other").await, StatusCode::OK);
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2);
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let (fake, up) = start(1).await;
    assert_eq!(pull(&up, "team/app").await, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert_eq!(pull(&up, "team/app").await, StatusCode::OK);
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        fake.challenges.load(Ordering::SeqCst),
        1,
        "the refresh happened before a 401"
    );
}

#[tokio::test]
async fn refused_credentials_are_unauthorized_not_a_crash() {
    let (fake, _) = start(300).await;
    let cfg = RegistryConfig {
        endpoint: Some(format!("http://{}", fake.addr.lock().unwrap())),
        ..RegistryConfig::named("fake.test")
    };
    let anonymous = Upstream::new(&cfg).unwrap();
    let err = anonymous
        .send(
            Method::GET,
            "team/app",
            "manifests/latest",
            header::HeaderMap::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized { .. }), "{err:?}");
}
