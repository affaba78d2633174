//! Errors of the Image API and the Kubernetes `Status` objects they become at the boundary.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::selector::SelectorError;
use crate::api::image::{GROUP, PLURAL};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{PLURAL}.{GROUP} {0:?} not found")]
    NotFound(String),
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("{0}")]
    BadRequest(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the cache index is still loading")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
}

/// A `metav1.Status`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: serde_json::Value,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    pub code: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Details {
    pub name: String,
    pub group: &'static str,
    pub kind: &'static str,
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::NoSuchPath => StatusCode::NOT_FOUND,
            ApiError::Selector(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn status(&self) -> Status {
        let reason = match self {
            ApiError::NotFound(_) | ApiError::NoSuchPath => "NotFound",
            ApiError::Selector(_) | ApiError::BadRequest(_) => "BadRequest",
            ApiError::Expired { .. } => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Unavailable => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        };
        let details = match self {
            ApiError::NotFound(name) => Some(Details {
                name: name.clone(),
                group: GROUP,
                kind: PLURAL,
            }),
            _ => None,
        };
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: serde_json::json!({}),
            status: "Failure",
            message: self.to_string(),
            reason,
            details,
            code: self.code().as_u16(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            self.code(),
            [(header::CONTENT_TYPE, "application/json")],
            super::types::encode_json(&status),
        )
            .into_response();
        if matches!(self, ApiError::MethodNotAllowed) {
            resp.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static("GET, DELETE"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_kubernetes() {
        let s = ApiError::NotFound("sha256:x".into()).status();
        assert_eq!(s.code, 404);
        assert_eq!(s.reason, "NotFound");
        assert_eq!(
            s.message,
            "images.image.openshift.io \"sha256:x\" not found"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["details"]["kind"], "images");
        let e = ApiError::Expired {
            requested: 5,
            oldest: 9,
        }
        .status();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        assert_eq!(e.message, "too old resource version: 5 (9)");
        let b = ApiError::from(SelectorError::Label("x".into())).status();
        assert_eq!((b.code, b.reason), (400, "BadRequest"));
        assert_eq!(ApiError::MethodNotAllowed.status().code, 405);
        assert_eq!(ApiError::Unavailable.status().reason, "ServiceUnavailable");
    }
}
