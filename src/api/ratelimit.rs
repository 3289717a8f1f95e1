//! `GET /api/v1/ratelimit`: where ingest clients stand against the rate limit (admin only).

use std::sync::Arc;

use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, ErrorBody, extract::QueryParams};
use crate::guard::{Guard, RateState};

pub fn router(guard: Arc<Guard>) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .layer(Extension(guard))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// One client (`203.0.113.7`, `2001:db8::/64`, `key:1`); without it, every client with a
    /// request in the current window.
    client: Option<String>,
}

/// The ingest rate limit and where clients stand against it.
#[derive(Serialize, ToSchema)]
struct RateLimitStatus {
    /// Requests a client may make at once, burst included.
    limit: u32,
    /// The refill rate.
    requests_per_second: f64,
    /// `WEBHOOK_RATE_WINDOW`, in seconds.
    window_seconds: f64,
    /// The clients.
    clients: Vec<RateState>,
}

/// Where ingest clients stand against the rate limit.
#[utoipa::path(
    get,
    path = "/api/v1/ratelimit",
    tag = "monitoring",
    operation_id = "getRateLimits",
    params(StatusQuery),
    responses(
        (status = 200, description = "The limit and the clients", body = RateLimitStatus),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
)]
async fn status(
    Extension(guard): Extension<Arc<Guard>>,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<RateLimitStatus>, ApiError> {
    let limiter = guard.limiter();
    let now = guard.now_ms();
    let limit = limiter.limit();
    let clients = match &query.client {
        Some(client) => vec![limiter.status(client, now)],
        None => limiter.active(now),
    };
    Ok(Json(RateLimitStatus {
        limit: limit.burst,
        requests_per_second: limit.per_second,
        window_seconds: limiter.window().as_secs_f64(),
        clients,
    }))
}
