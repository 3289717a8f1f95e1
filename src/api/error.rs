//! The one error type at the HTTP edge.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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

/// Every `code` an error body can carry: the stable, machine-readable half of an error that
/// clients branch on (the `detail` is for people and may change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: the body is empty.
    EmptyBody,
    /// 400: the body could not be read.
    UnreadableBody,
    /// 400: a query parameter is missing, of the wrong type or out of range.
    InvalidQuery,
    /// 400: a path id is not of the expected kind (`evt_…`, `dlv_…`, `ep_…`).
    InvalidId,
    /// 400: purging every dead letter needs `?confirm=true`.
    ConfirmationRequired,
    /// 401: management routes need the admin token.
    Unauthorized,
    /// 401: signed ingest is on and the request carries no signature.
    MissingSignature,
    /// 401: no ingest secret produces the signature sent.
    InvalidSignature,
    /// 401: the signature headers cannot be read.
    MalformedSignature,
    /// 401: the guide's body-only signature is refused (`HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE=false`).
    UnsupportedSignatureScheme,
    /// 401: the `webhook-timestamp` is outside the tolerance.
    SignatureExpired,
    /// 401: the `webhook-id` was accepted before.
    ReplayedRequest,
    /// 403: the client's address is not allowed, or management is closed to it.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route does not accept that method.
    MethodNotAllowed,
    /// 408: the request took longer than `HOOKRELAY_REQUEST_TIMEOUT_SECONDS`.
    RequestTimeout,
    /// 413: the body exceeds `HOOKRELAY_MAX_BODY_BYTES`.
    BodyTooLarge,
    /// 415: the content type is not JSON.
    UnsupportedMediaType,
    /// 422: a field is missing, of the wrong type or invalid; the detail names it.
    InvalidField,
    /// 422: an empty or oversized array of events.
    InvalidBatch,
    /// 422: JSON that is neither an event object nor an array of them.
    InvalidBody,
    /// 409: the change is to `ep_default`, which follows the configuration.
    ManagedByConfig,
    /// 422: the `Idempotency-Key` header is not a valid key.
    InvalidHeader,
    /// 422: the endpoint settings are not acceptable; the detail names the field.
    InvalidEndpoint,
    /// 422: the idempotency key was used before for a different request.
    IdempotencyKeyReused,
    /// 422: the `Idempotency-Key` header and the `idempotency_key` field differ.
    ConflictingIdempotencyKey,
    /// 429: over the client's rate limit (`Retry-After` says when to come back).
    RateLimited,
    /// 500: an answer the server could not form.
    Internal,
    /// 503: too many connections or requests in progress (`Retry-After`).
    Overloaded,
    /// 503: the database failed; nothing was stored (`Retry-After`).
    StorageUnavailable,
    /// 503: the database does not answer or no worker runs (`/ready`).
    NotReady,
    /// 507: the disk holding the database is full; nothing was stored (`Retry-After`).
    StorageFull,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ApiError)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people: names the field, header or limit at fault.
    pub detail: String,
}

/// An HTTP error answered as `{"code": "...", "detail": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    detail: String,
    /// The `WWW-Authenticate` challenge of a 401: how to authenticate.
    challenge: Option<&'static str>,
}

/// What management routes ask for.
const BEARER_CHALLENGE: &str = r#"Bearer realm="hookrelay management""#;

impl ApiError {
    /// An error with a status, a stable machine-readable code and a human-readable detail.
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
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
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    /// 401 from a management route, with its `Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, detail)
            .with_challenge(BEARER_CHALLENGE)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, detail)
    }

    /// 400 for a request that does not make sense.
    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
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
            Json(ErrorBody {
                code: self.code,
                detail: self.detail,
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

/// Lets one line through per interval and counts the rest: during a database outage every
/// refused request would log an ERROR line (about 1,000 in 3 s in the PostgreSQL fault test).
struct LogThrottle {
    last_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    const INTERVAL_MS: i64 = 1_000;

    const fn new() -> Self {
        Self {
            last_ms: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged at `now_ms`.
    fn admit(&self, now_ms: i64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= Self::INTERVAL_MS
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

static STORAGE_ERRORS: LogThrottle = LogThrottle::new();

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        // The cause is logged, not shown: it may describe the server's file system.
        let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        if let Some(suppressed) = STORAGE_ERRORS.admit(now_ms) {
            tracing::error!(error = %error, suppressed, "storage error while answering requests");
        }
        match error {
            StoreError::Full(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::StorageFull,
                "the disk holding the event store is full; nothing was stored, retry later",
            ),
            _ => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StorageUnavailable,
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
                ErrorCode::InvalidField,
                invalid.to_string(),
            ),
            IngestError::Batch(detail) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidBatch,
                detail,
            ),
            IngestError::KeyReused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                error.to_string(),
            ),
            IngestError::Replayed => Self::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::ReplayedRequest,
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
                ErrorCode::InvalidEndpoint,
                invalid.to_string(),
            ),
            EndpointError::NotFound(id) => Self::not_found(format!("no endpoint {id}")),
            EndpointError::ManagedByConfig(detail) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::ManagedByConfig, detail)
            }
            EndpointError::Store(store) => store.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogThrottle;

    #[test]
    fn storage_errors_are_logged_once_a_second_with_a_count_of_the_rest() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.admit(10_000), Some(0));
        assert_eq!(throttle.admit(10_400), None);
        assert_eq!(throttle.admit(10_999), None);
        assert_eq!(throttle.admit(11_000), Some(2), "two were held back");
        assert_eq!(throttle.admit(15_000), Some(0));
    }
}
