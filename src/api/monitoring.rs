//! `GET /metrics` (Prometheus), `GET /api/v1/health` and `GET /api/v1/alerts` (admin).

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, AppState, ErrorBody,
    extract::{QueryParams, page_limit},
};
use crate::{
    monitor::{self, Alert},
    relay::Relay,
};

/// `/metrics`; the caller decides whether it needs the admin token.
pub fn metrics_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The admin routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(alerts))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
)]
async fn metrics() -> Response {
    crate::metrics::install();
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
        .into_response()
}

/// The status report: health verdict with its reasons, queue, delivery figures and alerts.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "monitoring",
    operation_id = "getStatus",
    responses((status = 200, description = "The status report", body = monitor::StatusReport)),
)]
async fn health(State(relay): State<Relay>) -> Json<monitor::StatusReport> {
    Json(relay.report_here().await)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AlertsQuery {
    /// At most this many recent alerts (at most 1000).
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 0, maximum = 1000)]
    limit: usize,
}

/// Active and recent alerts.
#[derive(Serialize, ToSchema)]
struct Alerts {
    /// Alerts not yet resolved.
    active: Vec<Alert>,
    /// The most recent alerts, resolved or not, newest first.
    recent: Vec<Alert>,
}

fn default_limit() -> usize {
    50
}

/// Active and recent alerts.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "monitoring",
    operation_id = "listAlerts",
    params(AlertsQuery),
    responses(
        (status = 200, description = "Alerts", body = Alerts),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
)]
async fn alerts(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<AlertsQuery>,
) -> Result<Json<Alerts>, ApiError> {
    let recent = relay.recent_alerts(page_limit(query.limit, 1000)?).await?;
    let active: Vec<_> = recent
        .iter()
        .filter(|a| a.resolved_at_ms.is_none())
        .cloned()
        .collect();
    Ok(Json(Alerts { active, recent }))
}
