//! The one error type at the HTTP edge.

use axum::{
    Json,
    http::{
        HeaderValue, StatusCode,
        header::{RETRY_AFTER, WWW_AUTHENTICATE},
    },
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{endpoints::EndpointError, ingest::IngestError, store::StoreError};

/// An HTTP error answered as `{"code": "...", "detail": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// The `WWW-Authenticate` challenge of a 401: how to authenticate.
    challenge: Option<&'static str>,
}

/// What management routes ask for.
const BEARER_CHALLENGE: &str = r#"Bearer realm="hookrelay management""#;

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    detail: &'a str,
}

impl ApiError {
    /// An error with a status, a stable machine-readable code and a human-readable detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            challenge: None,
        }
    }

    /// The same error, with the `WWW-Authenticate` challenge a 401 must carry.
    pub fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 401 from a management route, with its `Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).with_challenge(BEARER_CHALLENGE)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 400 for a request that does not make sense.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(Body {
                code: self.code,
                detail: &self.detail,
            }),
        )
            .into_response();
        if let Some(challenge) = self.challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        // Both are the server's state, not the request's: the client should come back.
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
        ) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        // The cause is logged, not shown: it may describe the server's file system.
        tracing::error!(error = %error, "storage error while answering a request");
        match error {
            StoreError::Full(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the disk holding the event store is full; nothing was stored, retry later",
            ),
            _ => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the event store is unavailable; nothing was stored, retry later",
            ),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Invalid(invalid) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                invalid.to_string(),
            ),
            IngestError::Batch(detail) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch", detail)
            }
            IngestError::KeyReused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                error.to_string(),
            ),
            IngestError::Replayed => Self::new(
                StatusCode::UNAUTHORIZED,
                "replayed_request",
                error.to_string(),
            ),
            IngestError::Store(store) => store.into(),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(error: EndpointError) -> Self {
        match error {
            EndpointError::Invalid(invalid) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_endpoint",
                invalid.to_string(),
            ),
            EndpointError::NotFound(id) => Self::not_found(format!("no endpoint {id}")),
            EndpointError::Store(store) => store.into(),
        }
    }
}
