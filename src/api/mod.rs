//! The HTTP API: one router per resource, one error type mapping to `{"code", "detail"}`.

mod dlq;
mod endpoints;
mod error;
mod extract;
mod guard;
mod health;
mod ingest;
mod monitoring;
mod ratelimit;
mod server;
mod sessions;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

pub use self::error::ApiError;
use self::{
    extract::{json_body, parse},
    guard::{Limits, ingest_guard, request_limits},
};
use crate::{guard::Guard, relay::Relay};

/// What every handler can reach.
pub type AppState = Relay;

/// The whole API.
pub fn router(relay: Relay) -> Router {
    let config = relay.config().clone();
    let max_body = config.server.max_body_bytes;
    let guard = Arc::new(Guard::new(&config, relay.clock()));
    let limits = Limits {
        in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
        timeout: config.server.request_timeout,
    };
    let management = Router::new()
        .merge(dlq::router())
        .merge(endpoints::router())
        .merge(ratelimit::router(Arc::clone(&guard)))
        .merge(monitoring::router())
        .merge(sessions::router())
        .route_layer(middleware::from_fn_with_state(relay.clone(), require_admin));
    let ingest = ingest::router().route_layer(middleware::from_fn_with_state(guard, ingest_guard));
    let metrics = if config.server.metrics_require_token {
        monitoring::metrics_router()
            .route_layer(middleware::from_fn_with_state(relay.clone(), require_admin))
    } else {
        monitoring::metrics_router()
    };
    Router::new()
        .merge(health::router())
        .merge(ingest)
        .merge(metrics)
        .merge(management)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(limits, request_limits))
        .with_state(relay)
}

/// Headers a proxy sets: their presence means the request did not come from this host.
const PROXY_HEADERS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "via",
];

/// Whether management routes may answer at all without an admin token: only on a loopback
/// listener with no trusted proxies, where a loopback peer is someone on this host.
pub fn management_without_token(config: &crate::Config) -> bool {
    config.server.listen.ip().to_canonical().is_loopback()
        && config.ingest.trusted_proxies.is_empty()
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110), the token is not.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Management routes need `Authorization: Bearer <HOOKRELAY_ADMIN_TOKEN>`; without a token
/// configured they answer loopback clients only.
async fn require_admin(
    State(relay): State<Relay>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &relay.config().server.admin_token {
        Some(token) => {
            let presented = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .ok_or_else(|| {
                    ApiError::unauthorized("send Authorization: Bearer <HOOKRELAY_ADMIN_TOKEN>")
                })?;
            // Comparing digests keeps the comparison constant-time whatever the lengths.
            let expected = Sha256::digest(token.expose().as_bytes());
            let given = Sha256::digest(presented.trim().as_bytes());
            if !bool::from(expected.ct_eq(&given)) {
                return Err(ApiError::unauthorized("the admin token is not valid"));
            }
        }
        None if !management_without_token(relay.config()) => {
            return Err(ApiError::forbidden(
                "management routes need HOOKRELAY_ADMIN_TOKEN when HOOKRELAY_TRUSTED_PROXIES is set or the listener is not on loopback",
            ));
        }
        // Loopback only, and only when no proxy is in front: behind a proxy on the same host
        // every request comes from loopback.
        None if peer.ip().to_canonical().is_loopback()
            && !PROXY_HEADERS
                .iter()
                .any(|name| request.headers().contains_key(*name)) => {}
        None => {
            return Err(ApiError::forbidden(
                "management routes answer only loopback clients while HOOKRELAY_ADMIN_TOKEN is unset",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests finish (bounded by `grace`).
pub async fn serve(
    relay: Relay,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let config = relay.config().clone();
    let limits = server::ServerLimits {
        max_connections: config.server.max_connections,
        max_connections_per_address: config.server.max_connections_per_address,
        max_header_bytes: config.server.max_header_bytes,
        header_timeout: config.server.header_timeout,
        shutdown_grace: grace,
    };
    server::run(router(relay), listener, shutdown, limits).await
}
