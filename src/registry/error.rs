//! The registry's error type and its mapping to the OCI error envelope.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::reference::PathError;
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Errors of the distribution API. Cloneable (messages, not sources) so one upstream failure
/// can be handed to every client waiting on the same fetch.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    /// Distribution answers a delete by tag with `UNSUPPORTED` but status 400.
    #[error("manifests can only be deleted by digest")]
    DeleteByTag,
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("query parameter n must be a non-negative integer")]
    PaginationInvalid,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Option<String>,
    },
    /// The upstream could not be reached or timed out.
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered with something we cannot serve.
    #[error("{0}")]
    BadUpstream(String),
    #[error("upstream content does not match its digest: {0}")]
    UpstreamDigest(String),
    #[error("{0}")]
    ManifestTooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The spec's error code and HTTP status.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use RegistryError::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestUnknown => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            NotFound(_) => ("NOT_FOUND", StatusCode::NOT_FOUND),
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            TagInvalid(_) => ("TAG_INVALID", StatusCode::BAD_REQUEST),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            DeleteByTag => ("UNSUPPORTED", StatusCode::BAD_REQUEST),
            Denied(_) => ("DENIED", StatusCode::FORBIDDEN),
            PaginationInvalid => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            RangeNotSatisfiable { .. } => ("SIZE_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            TooManyRequests { .. } => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            Unavailable(_) => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            BadUpstream(_) => ("UNKNOWN", StatusCode::BAD_GATEWAY),
            UpstreamDigest(_) => ("DIGEST_INVALID", StatusCode::BAD_GATEWAY),
            ManifestTooLarge(_) => ("MANIFEST_INVALID", StatusCode::BAD_GATEWAY),
            Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<PathError> for RegistryError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NotFound => RegistryError::NotFound("no such endpoint".to_owned()),
            PathError::Name(_) | PathError::Host(_) => RegistryError::NameInvalid(e.to_string()),
            PathError::Tag(_) => RegistryError::TagInvalid(e.to_string()),
            PathError::Digest(d) => RegistryError::DigestInvalid(d.to_string()),
        }
    }
}

impl From<UpstreamError> for RegistryError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NotAllowed(_) | UpstreamError::Forbidden { .. } => {
                RegistryError::Denied(e.to_string())
            }
            UpstreamError::Unauthorized { .. } => RegistryError::Denied(e.to_string()),
            UpstreamError::Setup { .. } => RegistryError::Internal(e.to_string()),
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => {
                RegistryError::Unavailable(e.to_string())
            }
            UpstreamError::RateLimited { retry_after, .. } => RegistryError::TooManyRequests {
                message: e.to_string(),
                retry_after: Some(crate::upstream::retry::retry_after_header(retry_after)),
            },
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Manifest(m) => {
                RegistryError::BadUpstream(format!("upstream manifest: {m}"))
            }
            StoreError::DigestMismatch { .. } => RegistryError::UpstreamDigest(e.to_string()),
            other => RegistryError::Internal(other.to_string()),
        }
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

/// A failed blocking task (a panic in the store) is an internal error, not a crash.
impl From<tokio::task::JoinError> for RegistryError {
    fn from(e: tokio::task::JoinError) -> Self {
        RegistryError::Internal(format!("background task failed: {e}"))
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        }
        let body = serde_json::json!({
            "errors": [{"code": code, "message": self.to_string(), "detail": serde_json::Value::Null}]
        });
        let mut resp = (status, axum::Json(body)).into_response();
        match &self {
            RegistryError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            RegistryError::TooManyRequests {
                retry_after: Some(r),
                ..
            } => {
                if let Ok(v) = HeaderValue::from_str(r) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope_has_code_and_status() {
        let resp =
            RegistryError::Denied("upstream x is not in the allowlist".into()).into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        assert_eq!(
            RegistryError::DeleteByTag.into_response().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            RegistryError::Unsupported("push is not supported".into())
                .into_response()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn upstream_auth_failure_is_not_a_500() {
        let e: RegistryError = UpstreamError::Unauthorized {
            registry: "r".into(),
            status: reqwest::StatusCode::UNAUTHORIZED,
        }
        .into();
        assert_eq!(e.code_and_status().1, StatusCode::FORBIDDEN);
    }
}
