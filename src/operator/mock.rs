//! Test harness for the reconcilers: a mocked API server (the ApiServerVerifier pattern of
//! kube-rs controller-rs) and a fake set of registry pods.
//!
//! A test builds a [`Context`] on [`mock_client`], runs the reconcile in a task, and answers the
//! requests it makes, in order, with [`ApiServer::expect`]: each call asserts the method and path
//! (query included when given) and hands back the request body for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::Value;

use super::context::{Context, Settings};
use super::metrics::OperatorMetrics;
use super::pods::{BoxFuture, PodTarget, RegistryApi, RegistryError};
use crate::api::{CacheStatus, PruneRequest, Report};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mocked API server's side of the client.
pub struct ApiServer(Handle);

/// A client wired to a mocked API server.
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// A context on a mocked API server and `registry`, with the clock at `now`.
pub fn context(registry: Arc<FakeRegistry>, now: &str) -> (Arc<Context>, ApiServer) {
    let (client, server) = mock_client();
    let now: Timestamp = now.parse().expect("test timestamp");
    let ctx = Context::new(
        client,
        registry,
        Arc::new(OperatorMetrics::new()),
        Settings::default(),
    )
    .with_clock(now);
    (Arc::new(ctx), server)
}

/// One request the code under test made, waiting for its answer.
pub struct Exchange {
    pub method: Method,
    /// Path and query, as sent.
    pub uri: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Exchange {
    pub fn respond(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers 200 with the request's own body (what an apply or a create returns).
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(200, body);
    }

    /// Answers 404 NotFound as the API server does.
    pub fn not_found(self) {
        self.respond(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }

    /// A query parameter of the request.
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.uri.split_once('?')?.1;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

impl ApiServer {
    /// The next request; panics after 5 s of silence (the code under test is stuck or done).
    pub async fn next(&mut self) -> Exchange {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
                .await
                .expect("timed out waiting for an API request")
                .expect("client dropped before the expected request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Exchange {
            method: parts.method,
            uri: parts.uri.to_string(),
            body,
            respond,
        }
    }

    /// The next request, asserted to be `method` on `path` (compared without the query unless
    /// `path` has one).
    pub async fn expect(&mut self, method: Method, path: &str) -> Exchange {
        let ex = self.next().await;
        let got = if path.contains('?') {
            ex.uri.as_str()
        } else {
            ex.uri.split('?').next().unwrap_or_default()
        };
        assert_eq!(
            (&ex.method, got),
            (&method, path),
            "unexpected request {} {}",
            ex.method,
            ex.uri
        );
        ex
    }

    /// Asserts no further request comes within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.0.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// Registry pods played by the test: a status and a prune report per pod, or an error.
#[derive(Default)]
pub struct FakeRegistry {
    pub statuses: Mutex<BTreeMap<String, Result<CacheStatus, String>>>,
    pub reports: Mutex<BTreeMap<String, Result<Report, String>>>,
    /// Every prune request received, with the pod it went to.
    pub prunes: Mutex<Vec<(String, PruneRequest)>>,
}

impl FakeRegistry {
    pub fn new() -> Arc<FakeRegistry> {
        Arc::new(FakeRegistry::default())
    }

    pub fn set_status(&self, pod: &str, status: Result<CacheStatus, String>) {
        self.statuses
            .lock()
            .unwrap()
            .insert(pod.to_string(), status);
    }

    pub fn set_report(&self, pod: &str, report: Result<Report, String>) {
        self.reports.lock().unwrap().insert(pod.to_string(), report);
    }

    pub fn prunes(&self) -> Vec<(String, PruneRequest)> {
        self.prunes.lock().unwrap().clone()
    }
}

impl RegistryApi for FakeRegistry {
    fn status<'a>(
        &'a self,
        pod: &'a PodTarget,
    ) -> BoxFuture<'a, Result<CacheStatus, RegistryError>> {
        let answer = self.statuses.lock().unwrap().get(&pod.pod).cloned();
        Box::pin(async move {
            match answer {
                Some(Ok(s)) => Ok(s),
                Some(Err(e)) => Err(RegistryError::Http(e.into())),
                None => Err(RegistryError::Http("connection refused".into())),
            }
        })
    }

    fn prune<'a>(
        &'a self,
        pod: &'a PodTarget,
        request: &'a PruneRequest,
    ) -> BoxFuture<'a, Result<Report, RegistryError>> {
        self.prunes
            .lock()
            .unwrap()
            .push((pod.pod.clone(), request.clone()));
        let answer = self.reports.lock().unwrap().get(&pod.pod).cloned();
        Box::pin(async move {
            match answer {
                Some(Ok(r)) => Ok(r),
                Some(Err(e)) => Err(RegistryError::Status {
                    status: 500,
                    message: e,
                }),
                None => Err(RegistryError::Http("connection refused".into())),
            }
        })
    }

    fn image_client(&self, pod: &PodTarget) -> Result<Client, RegistryError> {
        Err(RegistryError::Http(
            format!("no Image API for {} in this fake", pod.pod).into(),
        ))
    }
}
