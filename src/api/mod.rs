//! The HTTP API: one router per resource, one error type mapping to `{"code", "detail"}`.

mod dlq;
mod endpoints;
mod error;
mod extract;
mod guard;
mod health;
mod ingest;
mod monitoring;
mod openapi;
mod ratelimit;
mod server;
mod sessions;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, openapi::security::SecurityRequirement};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use self::error::{ApiError, ErrorBody, ErrorCode};
use self::{
    extract::{json_body, parse},
    guard::{Limits, ingest_guard, request_limits},
};
use crate::{
    guard::{Guard, admin},
    relay::Relay,
};

/// What every handler can reach.
pub type AppState = Relay;

/// The whole API, with its OpenAPI document at `GET /api/openapi.json`.
pub fn router(relay: Relay) -> Router {
    let config = relay.config().clone();
    let max_body = config.server.max_body_bytes;
    let guard = Arc::new(Guard::new(&config, relay.clock()));
    let limits = Limits {
        in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
        timeout: config.server.request_timeout,
    };
    let admin = || SecurityRequirement::new(openapi::ADMIN, Vec::<String>::new());

    let mut management = OpenApiRouter::new()
        .merge(dlq::router())
        .merge(endpoints::router())
        .merge(ratelimit::router(Arc::clone(&guard)))
        .merge(monitoring::router())
        .merge(sessions::router());
    openapi::secure(management.get_openapi_mut(), &[admin()]);
    openapi::add_responses(management.get_openapi_mut(), &admin_responses());
    let management =
        management.route_layer(middleware::from_fn_with_state(relay.clone(), require_admin));

    let mut ingest = ingest::router();
    // Unsigned requests are accepted while no ingest secret is set: either scheme, or none.
    let mut schemes = vec![
        SecurityRequirement::new(openapi::STANDARD_WEBHOOKS, Vec::<String>::new()),
        SecurityRequirement::new(openapi::BODY_SIGNATURE, Vec::<String>::new()),
    ];
    if config.ingest.secrets.is_empty() {
        schemes.push(SecurityRequirement::default());
    }
    openapi::secure(ingest.get_openapi_mut(), &schemes);
    openapi::add_responses(ingest.get_openapi_mut(), &guard_responses());
    let ingest = ingest.route_layer(middleware::from_fn_with_state(guard, ingest_guard));

    let mut metrics = monitoring::metrics_router();
    let metrics = if config.server.metrics_require_token {
        openapi::secure(metrics.get_openapi_mut(), &[admin()]);
        openapi::add_responses(metrics.get_openapi_mut(), &admin_responses());
        metrics.route_layer(middleware::from_fn_with_state(relay.clone(), require_admin))
    } else {
        metrics
    };

    let (routes, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(ingest)
        .merge(metrics)
        .merge(management)
        .split_for_parts();
    let (meta, meta_document) = OpenApiRouter::<AppState>::new()
        .routes(routes!(openapi::serve_document))
        .split_for_parts();
    document.merge(meta_document);
    openapi::add_responses(&mut document, &openapi::shared_responses());
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // Serialized once; each request shares the bytes.
    let document = bytes::Bytes::from(
        document
            .to_pretty_json()
            .unwrap_or_else(|error| format!(r#"{{"error": "{error}"}}"#)),
    );

    Router::new()
        .merge(routes)
        .merge(meta.layer(Extension(document)))
        .merge(crate::dashboard::router(&relay))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(limits, request_limits))
        .with_state(relay)
}

/// What the admin check answers.
fn admin_responses() -> Vec<(
    &'static str,
    utoipa::openapi::RefOr<utoipa::openapi::Response>,
)> {
    vec![
        (
            "401",
            openapi::error_response(
                "`unauthorized`: the admin token is missing or wrong",
                &[("WWW-Authenticate", "The Bearer challenge")],
            ),
        ),
        (
            "403",
            openapi::error_response(
                "`forbidden`: no admin token is configured and the client is not on loopback",
                &[],
            ),
        ),
    ]
}

/// What the ingest guard answers, before a handler sees the request.
fn guard_responses() -> Vec<(
    &'static str,
    utoipa::openapi::RefOr<utoipa::openapi::Response>,
)> {
    const RATE: [(&str, &str); 4] = [
        (
            "RateLimit-Limit",
            "Requests the client may make at once, burst included",
        ),
        ("RateLimit-Remaining", "Requests left"),
        (
            "RateLimit-Reset",
            "Seconds until the full allowance is back",
        ),
        ("RateLimit-Policy", "The configured quota: `N;w=SECONDS`"),
    ];
    let with_retry: Vec<(&str, &str)> =
        RATE.iter().copied().chain([openapi::RETRY_AFTER]).collect();
    vec![
        (
            "401",
            openapi::error_response(
                "`missing_signature`, `invalid_signature`, `malformed_signature`, \
                 `unsupported_signature_scheme`, `signature_expired`, `replayed_request`: signed \
                 ingest is on and the signature is missing, wrong, of a refused scheme, stale or \
                 replayed",
                &[("WWW-Authenticate", "The signature schemes accepted")],
            ),
        ),
        (
            "403",
            openapi::error_response(
                "`forbidden`: the client's address is not in WEBHOOK_ALLOWED_IPS",
                &[],
            ),
        ),
        (
            "413",
            openapi::error_response(
                "`body_too_large`: the body exceeds HOOKRELAY_MAX_BODY_BYTES",
                &[],
            ),
        ),
        (
            "429",
            openapi::error_response("`rate_limited`: over the client's allowance", &with_retry),
        ),
    ]
}

/// Whether management routes may answer at all without an admin token.
pub fn management_without_token(config: &crate::Config) -> bool {
    admin::open_without_token(config)
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
            if !admin::token_matches(token.expose(), presented) {
                return Err(ApiError::unauthorized("the admin token is not valid"));
            }
        }
        None => admin::local_without_token(relay.config(), peer, request.headers())
            .map_err(|refusal| ApiError::forbidden(refusal.to_string()))?,
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
