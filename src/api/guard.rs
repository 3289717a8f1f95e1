//! The guards as axum middleware: the ingest guard's checks in order (allowlist 403, body size
//! 413, signature 401, rate 429), the request-level limits every route gets (load shedding 503,
//! timeout 408), and the mapping of a [`Rejection`] to a response.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    body::{Body, to_bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use super::{ApiError, ErrorCode};
use crate::guard::{Guard, RateState, Rejection, SignatureError};

/// The ingest guard's checks around the ingest routes; the response carries `RateLimit-*`.
pub async fn ingest_guard(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let response = match admit(&guard, peer, request, next).await {
        Ok(response) => response,
        Err(rejection) => rejection_response(rejection),
    };
    if response.status().is_client_error() || response.status().is_server_error() {
        crate::metrics::rejected(response.status().as_u16());
    }
    response
}

/// Bodies above this are verified on the blocking pool: their HMACs take long enough to hold
/// up every other request on the same async worker thread.
const OFFLOAD_BYTES: usize = 64 * 1024;

async fn admit(
    guard: &Arc<Guard>,
    peer: SocketAddr,
    request: Request,
    next: Next,
) -> Result<Response, Rejection> {
    let client = guard.admit_address(peer.ip(), request.headers())?;
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, guard.max_body_bytes())
        .await
        .map_err(|_| Rejection::BodyTooLarge(guard.max_body_bytes()))?;
    let policy = guard.limiter().allowance();
    let window = guard.limiter().window();
    let admitted = if body.len() > OFFLOAD_BYTES {
        let (guard, headers, body) = (Arc::clone(guard), parts.headers.clone(), body.clone());
        tokio::task::spawn_blocking(move || guard.admit(client, &headers, &body))
            .await
            .map_err(|_| Rejection::Overloaded)??
    } else {
        guard.admit(client, &parts.headers, &body)?
    };
    let mut request = Request::from_parts(parts, Body::from(body));
    // The ingest handler records it with the events: a replay is refused there.
    if let Some(message) = admitted.verified.and_then(|verified| verified.message) {
        request.extensions_mut().insert(message);
    }
    let mut response = next.run(request).await;
    rate_headers(response.headers_mut(), &admitted.rate);
    policy_header(response.headers_mut(), policy.0, window);
    Ok(response)
}

/// Request-level limits for every route.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests handled at once.
    pub in_flight: Arc<Semaphore>,
    /// Time to read and answer a request.
    pub timeout: Duration,
}

/// Marked by a handler once it hands the store a write that goes on whatever happens to the
/// request. From then on the request timeout no longer cuts it short: a 408 would say nothing
/// was done while the events are stored anyway, and a client retrying without a key would
/// store them twice. The answer is the write's own, for as long again as the timeout; past
/// that (a stalled disk or database) a 503 says the outcome is unknown, so requests cannot pile
/// up holding every request slot.
#[derive(Debug, Clone, Default)]
pub struct WriteStarted(Arc<AtomicBool>);

impl WriteStarted {
    /// The request's write is under way: let it answer.
    pub fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Sheds load beyond the concurrency cap (503 with `Retry-After`, nothing queued) and bounds
/// how long a request may take, body reading included (408), until its handler starts a write
/// ([`WriteStarted`]).
pub async fn request_limits(
    State(limits): State<Limits>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        return rejection_response(Rejection::Overloaded);
    };
    let write = WriteStarted::default();
    request.extensions_mut().insert(write.clone());
    let response = next.run(request);
    tokio::pin!(response);
    match tokio::time::timeout(limits.timeout, &mut response).await {
        Ok(response) => response,
        Err(_) if write.is_marked() => match tokio::time::timeout(limits.timeout, response).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(
                    waited_s = 2.0 * limits.timeout.as_secs_f64(),
                    "a write outlived twice the request timeout; answered 503 with its outcome unknown"
                );
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StorageUnavailable,
                    "the event store did not answer in time: the events may yet be stored; \
                     retry with the same Idempotency-Key so they are stored once",
                )
                .into_response()
            }
        },
        Err(_) => rejection_response(Rejection::TimedOut(limits.timeout)),
    }
}

/// The status, body and headers a rejection is answered with.
fn rejection_response(rejection: Rejection) -> Response {
    let status = match &rejection {
        Rejection::AddressNotAllowed(_) | Rejection::Unidentified { .. } => StatusCode::FORBIDDEN,
        Rejection::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
        Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Rejection::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
    };
    let mut error = ApiError::new(status, error_code(&rejection), rejection.to_string());
    if let Rejection::Signature(_) = rejection {
        // Not an HTTP authentication scheme, but a 401 says how to authenticate.
        error = error.with_challenge(
            r#"Webhook-Signature realm="hookrelay ingest", schemes="standard-webhooks webhook-signature-header""#,
        );
    }
    let mut response = error.into_response();
    if let Rejection::RateLimited {
        state,
        requests,
        window,
        ..
    } = &rejection
    {
        rate_headers(response.headers_mut(), state);
        policy_header(response.headers_mut(), *requests, *window);
        response.headers_mut().insert(
            "retry-after",
            HeaderValue::from(state.retry_after_seconds.max(1)),
        );
    }
    response
}

/// The code a rejection is answered with; the same words the guard logs (`Rejection::code`).
fn error_code(rejection: &Rejection) -> ErrorCode {
    match rejection {
        Rejection::AddressNotAllowed(_) | Rejection::Unidentified { .. } => ErrorCode::Forbidden,
        Rejection::BodyTooLarge(_) => ErrorCode::BodyTooLarge,
        Rejection::Signature(error) => match error {
            SignatureError::Missing(_) => ErrorCode::MissingSignature,
            SignatureError::Invalid => ErrorCode::InvalidSignature,
            SignatureError::Malformed(_) | SignatureError::MalformedLegacy(_) => {
                ErrorCode::MalformedSignature
            }
            SignatureError::BodySchemeRefused(_) => ErrorCode::UnsupportedSignatureScheme,
            SignatureError::Expired(..) => ErrorCode::SignatureExpired,
        },
        Rejection::RateLimited { .. } => ErrorCode::RateLimited,
        Rejection::Overloaded => ErrorCode::Overloaded,
        Rejection::TimedOut(_) => ErrorCode::RequestTimeout,
    }
}

fn rate_headers(headers: &mut HeaderMap, state: &RateState) {
    let mut put = |name: &'static str, value: u64| {
        headers.insert(name, HeaderValue::from(value));
    };
    put("ratelimit-limit", u64::from(state.limit));
    put("ratelimit-remaining", u64::from(state.remaining));
    put("ratelimit-reset", state.reset_seconds);
}

/// `RateLimit-Policy: <requests>;w=<window seconds>` (draft-ietf-httpapi-ratelimit-headers): the
/// configured quota, beside `RateLimit-Limit` (what the client may send at once, burst
/// included), `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the full allowance).
fn policy_header(headers: &mut HeaderMap, requests: u32, window: Duration) {
    if let Ok(value) = HeaderValue::from_str(&format!("{requests};w={}", window.as_secs())) {
        headers.insert("ratelimit-policy", value);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    /// The API answers with the code the guard logs, for every kind of rejection.
    #[test]
    fn each_rejection_is_answered_with_the_code_the_guard_logs() {
        let rejections = [
            Rejection::AddressNotAllowed(Ipv4Addr::LOCALHOST.into()),
            Rejection::Unidentified {
                via: Ipv4Addr::LOCALHOST.into(),
            },
            Rejection::BodyTooLarge(10),
            Rejection::Signature(SignatureError::Missing("X-Webhook-Signature".into())),
            Rejection::Signature(SignatureError::Invalid),
            Rejection::Signature(SignatureError::Malformed("no timestamp")),
            Rejection::Signature(SignatureError::MalformedLegacy(
                "X-Webhook-Signature".into(),
            )),
            Rejection::Signature(SignatureError::BodySchemeRefused(
                "X-Webhook-Signature".into(),
            )),
            Rejection::Signature(SignatureError::Expired(400, 300)),
            Rejection::Overloaded,
            Rejection::TimedOut(Duration::from_secs(1)),
        ];
        for rejection in rejections {
            let answered = serde_json::to_value(error_code(&rejection)).expect("serializes");
            assert_eq!(answered, rejection.code(), "{rejection:?}");
        }
    }
}
