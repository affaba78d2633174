//! The registry pods of an ImageCache and how the operator talks to them: their admin API
//! (`GET /admin/v1/status`, `POST /admin/v1/prune`) and their Image API (a kube client whose
//! server is the pod).
//!
//! [`registry_pod`] is pure (a Pod in, what the operator needs of it out); [`RegistryApi`] is the
//! IO, a trait so reconciler tests can stand in for the pods.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::desired::{self, ADMIN_PORT, ADMIN_TOKEN_KEY, CONTAINER_NAME};
use super::error::OperatorError;
use crate::api::{CacheStatus, PruneRequest, Report};
use crate::crd::ImageCache;

/// Name of the registry container's admin port in the pod spec.
pub const ADMIN_PORT_NAME: &str = "admin";

/// Where a ready registry pod's admin listener answers.
#[derive(Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub pod: String,
    /// `http://<podIP>:<admin port>`.
    pub base_url: String,
    /// The admin token (never logged: `Debug` leaves it out).
    pub token: Option<String>,
}

impl std::fmt::Debug for PodTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTarget")
            .field("pod", &self.pod)
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One registry pod of a cache.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistryPod {
    pub name: String,
    /// Running, Ready, not being deleted, with an IP.
    pub ready: bool,
    /// Set when ready.
    pub target: Option<PodTarget>,
}

/// What the operator makes of a Pod: ready (PodReady condition True, an IP, not terminating)
/// and the admin port the pod declares (named `admin` on the registry container, else 8081).
pub fn registry_pod(pod: &Pod, token: Option<&str>) -> RegistryPod {
    let name = pod.name_any();
    let status = pod.status.as_ref();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let pod_ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty());
    let port = admin_port(pod);
    let ready = pod_ready && !terminating && ip.is_some();
    let target = ip.filter(|_| ready).map(|ip| PodTarget {
        pod: name.clone(),
        base_url: format!("http://{}:{port}", bracket_ipv6(&ip)),
        token: token.map(str::to_owned),
    });
    RegistryPod {
        name,
        ready,
        target,
    }
}

fn bracket_ipv6(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn admin_port(pod: &Pod) -> i32 {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER_NAME))
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        })
        .map(|p| p.container_port)
        .unwrap_or(ADMIN_PORT)
}

/// The admin token in a cache's token Secret, if it holds a non-empty one.
pub fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(ADMIN_TOKEN_KEY)?;
    let token = String::from_utf8(bytes.0.clone()).ok()?;
    (!token.trim().is_empty()).then_some(token)
}

/// The registry pods of `ic` (by its selector labels), sorted by name, with the admin token
/// read from its Secret (absent while the Secret is not there yet).
pub async fn list(client: &Client, ic: &ImageCache) -> Result<Vec<RegistryPod>, OperatorError> {
    let ns = ic
        .namespace()
        .ok_or(OperatorError::MissingField("namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let token = secrets
        .get_opt(&desired::admin_token_secret_name(ic)?)
        .await?
        .as_ref()
        .and_then(token_of);
    list_with_token(client, ic, token.as_deref()).await
}

/// [`list`] for a caller that holds the token already (the ImageCache controller just applied
/// it), saving the Secret read.
pub async fn list_with_token(
    client: &Client,
    ic: &ImageCache,
    token: Option<&str>,
) -> Result<Vec<RegistryPod>, OperatorError> {
    let ns = ic
        .namespace()
        .ok_or(OperatorError::MissingField("namespace"))?;
    let selector = desired::selector_labels(ic)?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut out: Vec<RegistryPod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(|p| registry_pod(p, token))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a registry pod could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request could not be made or its answer not read. The message carries the whole
    /// chain of causes on one line (it ends up in conditions and events); the source is kept.
    #[error("{}", error_chain(.0.as_ref()))]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The pod answered with an error status and this message.
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer: {0}")]
    Decode(#[source] serde_json::Error),
}

impl RegistryError {
    pub fn at(self, pod: &str) -> OperatorError {
        OperatorError::Registry {
            pod: pod.to_string(),
            message: self.to_string(),
        }
    }
}

/// The calls the operator makes to a registry pod.
pub trait RegistryApi: Send + Sync {
    /// `GET /admin/v1/status`.
    fn status<'a>(
        &'a self,
        pod: &'a PodTarget,
    ) -> BoxFuture<'a, Result<CacheStatus, RegistryError>>;
    /// `POST /admin/v1/prune` with the full request; the report of the run.
    fn prune<'a>(
        &'a self,
        pod: &'a PodTarget,
        request: &'a PruneRequest,
    ) -> BoxFuture<'a, Result<Report, RegistryError>>;
    /// A kube client whose server is the pod's admin listener, for its Image API
    /// (`image.openshift.io/v1` images: list, watch).
    fn image_client(&self, pod: &PodTarget) -> Result<Client, RegistryError>;
}

/// [`RegistryApi`] over HTTP.
pub struct HttpRegistry {
    http: reqwest::Client,
}

/// How long a prune may take on a pod before the operator gives up waiting (the run goes on).
const PRUNE_TIMEOUT: Duration = Duration::from_secs(600);
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpRegistry {
    pub fn new() -> Result<HttpRegistry, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RegistryError::Http(e.into()))?;
        Ok(HttpRegistry { http })
    }

    fn request(
        &self,
        method: reqwest::Method,
        pod: &PodTarget,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", pod.base_url));
        if let Some(token) = &pod.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, RegistryError> {
    let resp = resp.map_err(|e| RegistryError::Http(e.into()))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| RegistryError::Http(e.into()))?;
    if !status.is_success() {
        // The admin API answers errors as {"error": "..."}.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(512).collect());
        return Err(RegistryError::Status {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(RegistryError::Decode)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

impl RegistryApi for HttpRegistry {
    fn status<'a>(
        &'a self,
        pod: &'a PodTarget,
    ) -> BoxFuture<'a, Result<CacheStatus, RegistryError>> {
        Box::pin(async move {
            let resp = self
                .request(reqwest::Method::GET, pod, "/admin/v1/status")
                .timeout(STATUS_TIMEOUT)
                .send()
                .await;
            decode(resp).await
        })
    }

    fn prune<'a>(
        &'a self,
        pod: &'a PodTarget,
        request: &'a PruneRequest,
    ) -> BoxFuture<'a, Result<Report, RegistryError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(request).map_err(RegistryError::Decode)?;
            let resp = self
                .request(reqwest::Method::POST, pod, "/admin/v1/prune")
                .timeout(PRUNE_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            decode(resp).await
        })
    }

    fn image_client(&self, pod: &PodTarget) -> Result<Client, RegistryError> {
        let url = pod
            .base_url
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| RegistryError::Http(e.into()))?;
        let mut config = kube::Config::new(url);
        if let Some(token) = &pod.token {
            config.auth_info.token = Some(token.clone().into());
        }
        // Watches are long; the pod ends them with timeoutSeconds and the watcher resumes.
        config.read_timeout = Some(Duration::from_secs(330));
        Client::try_from(config).map_err(|e| RegistryError::Http(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_ready_pod_is_reached_on_its_declared_admin_port() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "cache-0", "namespace": "ns"},
            "spec": {"containers": [{"name": "registry", "ports": [
                {"name": "registry", "containerPort": 8080},
                {"name": "admin", "containerPort": 18081}]}]},
            "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let rp = registry_pod(&p, Some("secret"));
        assert!(rp.ready);
        let t = rp.target.unwrap();
        assert_eq!(t.base_url, "http://10.1.2.3:18081");
        assert!(
            !format!("{t:?}").contains("secret"),
            "token must not be printed"
        );
    }

    #[test]
    fn pods_not_ready_terminating_or_without_ip_have_no_target() {
        let base = serde_json::json!({
            "metadata": {"name": "cache-0"},
            "spec": {"containers": [{"name": "registry"}]},
            "status": {"podIP": "fd00::1", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let rp = registry_pod(&pod(base.clone()), None);
        assert_eq!(rp.target.unwrap().base_url, "http://[fd00::1]:8081");

        let mut not_ready = base.clone();
        not_ready["status"]["conditions"][0]["status"] = "False".into();
        assert!(!registry_pod(&pod(not_ready), None).ready);

        let mut terminating = base.clone();
        terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert!(registry_pod(&pod(terminating), None).target.is_none());

        let mut no_ip = base;
        no_ip["status"]["podIP"] = serde_json::Value::Null;
        assert!(!registry_pod(&pod(no_ip), None).ready);
    }
}
