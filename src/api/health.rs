//! Liveness and readiness.

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, ErrorBody, ErrorCode};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// The process answers.
#[derive(Serialize, ToSchema)]
struct Alive {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
    /// hookrelay's version.
    version: &'static str,
}

/// The instance can do its job.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    status: &'static str,
}

/// Liveness: the process answers. Cheap enough for a probe every second.
#[utoipa::path(
    get,
    path = "/health",
    tag = "monitoring",
    operation_id = "liveness",
    responses((status = 200, description = "Alive", body = Alive)),
)]
async fn health() -> Json<Alive> {
    Json(Alive {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: the database answers and the delivery worker is running.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "monitoring",
    operation_id = "readiness",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`not_ready`: the detail says what is missing", body = ErrorBody),
    ),
)]
async fn ready(State(relay): State<AppState>) -> Result<Json<Ready>, ApiError> {
    relay.ready().await.map_err(|reason| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, reason)
    })?;
    Ok(Json(Ready { status: "ready" }))
}
