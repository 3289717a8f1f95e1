//! The dead-letter queue under `/api/v1/dlq` (admin only).

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, extract::QueryParams};
use crate::{
    domain::DeliveryId,
    store::{DeliveryDetail, Selection},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/dlq", get(list).delete(purge_all))
        .route("/api/v1/dlq/replay", post(replay_all))
        .route("/api/v1/dlq/{id}", get(show).delete(purge_one))
        .route("/api/v1/dlq/{id}/replay", post(replay_one))
}

fn delivery_id(raw: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn list(
    State(relay): State<AppState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let dead = relay.dead_letters(query.limit.min(10_000)).await?;
    Ok(Json(json!({ "count": dead.len(), "dead_letters": dead })))
}

async fn show(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = delivery_id(&id)?;
    relay
        .delivery(id.clone())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))
}

async fn replay_one(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = delivery_id(&id)?;
    match relay.replay(Selection::One(id.clone())).await? {
        0 => Err(ApiError::not_found(format!("no dead letter {id}"))),
        n => Ok(Json(json!({ "replayed": n }))),
    }
}

async fn replay_all(State(relay): State<AppState>) -> Result<Json<Value>, ApiError> {
    let replayed = relay.replay(Selection::All).await?;
    Ok(Json(json!({ "replayed": replayed })))
}

async fn purge_one(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = delivery_id(&id)?;
    match relay.purge(Selection::One(id.clone())).await? {
        0 => Err(ApiError::not_found(format!("no dead letter {id}"))),
        n => Ok(Json(json!({ "purged": n }))),
    }
}

#[derive(Deserialize)]
struct PurgeAllQuery {
    #[serde(default)]
    confirm: bool,
}

async fn purge_all(
    State(relay): State<AppState>,
    QueryParams(query): QueryParams<PurgeAllQuery>,
) -> Result<Json<Value>, ApiError> {
    if !query.confirm {
        return Err(ApiError::bad_request(
            "confirmation_required",
            "purging every dead letter cannot be undone; repeat with ?confirm=true",
        ));
    }
    let purged = relay.purge(Selection::All).await?;
    Ok(Json(json!({ "purged": purged })))
}
