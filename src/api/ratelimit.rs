//! `GET /api/v1/ratelimit`: where ingest clients stand against the rate limit (admin only).

use std::sync::Arc;

use axum::{Extension, Json, Router, routing::get};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, extract::QueryParams};
use crate::guard::Guard;

pub fn router(guard: Arc<Guard>) -> Router<AppState> {
    Router::new()
        .route("/api/v1/ratelimit", get(status))
        .layer(Extension(guard))
}

#[derive(Deserialize)]
struct StatusQuery {
    client: Option<String>,
}

async fn status(
    Extension(guard): Extension<Arc<Guard>>,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let limiter = guard.limiter();
    let now = guard.now_ms();
    let limit = limiter.limit();
    let clients = match &query.client {
        Some(client) => vec![limiter.status(client, now)],
        None => limiter.active(now),
    };
    Ok(Json(json!({
        "limit": limit.burst,
        "requests_per_second": limit.per_second,
        "window_seconds": limiter.window().as_secs_f64(),
        "clients": clients,
    })))
}
