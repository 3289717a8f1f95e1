//! Sessions and analytics under `/api/v1` (admin only).

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, extract::QueryParams};
use crate::{domain::SessionStats, relay::Relay};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", get(list))
        .route("/api/v1/sessions/{id}", get(show))
        .route("/api/v1/analytics", get(analytics))
}

#[derive(Deserialize)]
struct ListQuery {
    /// Unix ms.
    since: Option<i64>,
    /// Unix ms.
    until: Option<i64>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn list(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let sessions = relay
        .sessions(
            query.since.unwrap_or(i64::MIN),
            query.until.unwrap_or(i64::MAX),
            query.limit.min(1000),
        )
        .await?;
    Ok(Json(
        json!({ "count": sessions.len(), "sessions": sessions }),
    ))
}

async fn show(
    State(relay): State<Relay>,
    Path(id): Path<String>,
) -> Result<Json<SessionStats>, ApiError> {
    relay.session_stats(&id).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no session {}",
            id.chars().take(80).collect::<String>()
        ))
    })
}

#[derive(Deserialize)]
struct AnalyticsQuery {
    #[serde(default = "default_days")]
    days: u32,
}

fn default_days() -> u32 {
    7
}

async fn analytics(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<AnalyticsQuery>,
) -> Result<Json<crate::domain::Analytics>, ApiError> {
    if !(1..=3650).contains(&query.days) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "days must be between 1 and 3650",
        ));
    }
    Ok(Json(relay.analytics(query.days).await?))
}
