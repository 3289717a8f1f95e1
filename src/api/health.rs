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

/// This instance can do its job: its listener answered, its database answers and, in the
/// roles that deliver, its worker runs.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// This instance's id, as the cluster's heartbeats and claims name it.
    pub instance: String,
    /// `all`, `api` or `worker`.
    pub role: String,
    /// How long the database took to answer, ms.
    pub database_ms: f64,
    /// Whether this instance runs a delivery worker (it does, and it is alive, when true).
    pub worker: bool,
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

/// Readiness of this instance (not the cluster): the database answers and, in the roles that
/// deliver, the delivery worker is running. `hookrelay health --self` asks it.
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
    let readiness = relay.ready().await.map_err(|reason| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, reason)
    })?;
    Ok(Json(Ready {
        status: "ready".into(),
        instance: readiness.instance,
        role: relay.config().server.role.as_str().to_owned(),
        database_ms: readiness.database_ms,
        worker: readiness.worker,
    }))
}
