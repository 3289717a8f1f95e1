//! Inbound protection for ingest: IP allowlist (with forwarded headers believed only from
//! trusted proxies), signature verification, per-client rate limiting; and the request-level
//! limits every route gets (timeout, concurrency cap with load shedding).

mod client;
mod ratelimit;
mod signature;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::{Body, to_bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ipnet::IpNet;
use tokio::sync::Semaphore;

pub use self::{
    client::client_ip,
    ratelimit::{RateLimiter, RateState},
    signature::{SignatureError, Verifier},
};
use crate::{
    api::ApiError,
    clock::Clock,
    config::{Config, ForwardedHeader},
};

/// Everything ingest requests pass through before a handler sees them.
pub struct Guard {
    allowed_ips: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
    verifier: Verifier,
    limiter: RateLimiter,
    max_body_bytes: usize,
    clock: Arc<dyn Clock>,
}

fn rate_headers(headers: &mut HeaderMap, state: &RateState) {
    let mut put = |name: &'static str, value: u64| {
        headers.insert(name, HeaderValue::from(value));
    };
    put("ratelimit-limit", u64::from(state.limit));
    put("ratelimit-remaining", u64::from(state.remaining));
    put("ratelimit-reset", state.reset_seconds);
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allowed_ips", &self.allowed_ips)
            .field("signed", &self.verifier.enabled())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// The guard the configuration describes.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        Self {
            allowed_ips: config.allowed_ips.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_header: config.forwarded_header,
            verifier: Verifier::new(
                config.ingest_secrets.clone(),
                config.signature_header.clone(),
                config.signature_algorithm,
                crate::clock::millis(config.signature_tolerance),
            ),
            limiter: RateLimiter::new(
                config.rate_limit,
                config.rate_window,
                config.burst_allowance,
            ),
            max_body_bytes: config.max_body_bytes,
            clock,
        }
    }

    /// The rate limiter, for `ratelimit status`.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The current time on the guard's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The checks, in order: allowlist (403), body size (413), signature (401), rate (429).
    /// On success, the request goes on with its body and the response carries `RateLimit-*`.
    pub async fn check(&self, peer: SocketAddr, request: Request, next: Next) -> Response {
        let ip = client_ip(
            peer.ip(),
            request.headers(),
            &self.trusted_proxies,
            self.forwarded_header,
        );
        if !self.allowed_ips.is_empty() && !self.allowed_ips.iter().any(|net| net.contains(&ip)) {
            tracing::warn!(client = %ip, "ingest refused: address not in WEBHOOK_ALLOWED_IPS");
            return ApiError::forbidden(format!(
                "{ip} is not allowed to send events (WEBHOOK_ALLOWED_IPS)"
            ))
            .into_response();
        }

        let (parts, body) = request.into_parts();
        let body = match to_bytes(body, self.max_body_bytes).await {
            Ok(body) => body,
            Err(_) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the body exceeds the size limit (HOOKRELAY_MAX_BODY_BYTES) or could not be read",
                )
                .into_response();
            }
        };

        let now = self.clock.now_ms();
        // An IPv6 client usually holds a whole /64: limit it as one, or rotating addresses
        // inside it would evade the limit and flood the limiter's table.
        let address = match ip {
            std::net::IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
                .map_or_else(|_| ip.to_string(), |net| net.trunc().to_string()),
            std::net::IpAddr::V4(_) => ip.to_string(),
        };
        let verified = match self.verifier.verify(&parts.headers, &body, now) {
            Ok(verified) => verified,
            Err(error) => {
                tracing::warn!(client = %ip, reason = error.code(), "ingest refused: bad signature");
                // Failures count against the address, so guessing is rate-limited too.
                if let Err(state) = self.limiter.check(&address, now) {
                    return self.too_many(&state);
                }
                return ApiError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
                    .into_response();
            }
        };
        let client = verified
            .as_ref()
            .map_or(address, |v| format!("key:{}", v.key));
        match self.limiter.check(&client, now) {
            Ok(state) => {
                let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
                if !response.status().is_success()
                    && let Some(verified) = &verified
                {
                    // Not accepted: the sender may retry with the same webhook-id.
                    self.verifier.release(verified);
                }
                rate_headers(response.headers_mut(), &state);
                response
            }
            Err(state) => {
                if let Some(verified) = &verified {
                    self.verifier.release(verified);
                }
                tracing::warn!(client, "ingest refused: rate limit");
                self.too_many(&state)
            }
        }
    }

    fn too_many(&self, state: &RateState) -> Response {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per {} s (WEBHOOK_RATE_LIMIT, WEBHOOK_BURST_ALLOWANCE); retry in {} s",
                state.limit,
                self.limiter.window().as_secs(),
                state.retry_after_seconds
            ),
        )
        .into_response();
        rate_headers(response.headers_mut(), state);
        response.headers_mut().insert(
            "retry-after",
            HeaderValue::from(state.retry_after_seconds.max(1)),
        );
        response
    }
}

/// The axum middleware for ingest routes.
pub async fn ingest_guard(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let response = guard.check(peer, request, next).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        crate::metrics::rejected(response.status().as_u16());
    }
    response
}

/// Request-level limits for every route.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests handled at once.
    pub in_flight: Arc<Semaphore>,
    /// Time to read and answer a request.
    pub timeout: Duration,
}

/// Sheds load beyond the concurrency cap (503 with `Retry-After`, nothing queued) and bounds
/// how long a request may take, body reading included (408).
pub async fn request_limits(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry shortly",
        )
        .into_response();
    };
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} s (HOOKRELAY_REQUEST_TIMEOUT_SECONDS)",
                limits.timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}
