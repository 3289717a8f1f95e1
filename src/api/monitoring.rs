//! `GET /metrics` (Prometheus), `GET /api/v1/health` and `GET /api/v1/alerts` (admin).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, extract::QueryParams};
use crate::{monitor, relay::Relay};

/// `/metrics`; the caller decides whether it needs the admin token.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/alerts", get(alerts))
}

async fn metrics() -> Response {
    crate::metrics::install();
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
        .into_response()
}

async fn health(State(relay): State<Relay>) -> Json<monitor::StatusReport> {
    // An API-only instance judges the workers by their heartbeats in the database.
    let alive = relay
        .config()
        .server
        .role
        .delivers()
        .then(|| relay.worker().is_alive());
    Json(relay.report(alive).await)
}

#[derive(Deserialize)]
struct AlertsQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn alerts(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<AlertsQuery>,
) -> Result<Json<Value>, ApiError> {
    let recent = relay.recent_alerts(query.limit.min(1000)).await?;
    let active: Vec<_> = recent
        .iter()
        .filter(|a| a.resolved_at_ms.is_none())
        .cloned()
        .collect();
    Ok(Json(json!({ "active": active, "recent": recent })))
}
