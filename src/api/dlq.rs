//! The dead-letter queue under `/api/v1/dlq` (admin only).

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, AppState, ErrorBody, ErrorCode,
    extract::{QueryParams, page_limit},
};
use crate::{
    domain::DeliveryId,
    store::{DeliveryDetail, DeliverySummary, Selection},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, purge_all))
        .routes(routes!(replay_all))
        .routes(routes!(show, purge_one))
        .routes(routes!(replay_one))
}

/// A page of dead letters, newest first.
#[derive(Serialize, ToSchema)]
struct DeadLetters {
    /// How many are on this page.
    count: usize,
    /// The dead letters.
    dead_letters: Vec<DeliverySummary>,
}

/// How many dead letters went back to the queue.
#[derive(Serialize, ToSchema)]
struct Replayed {
    /// Deliveries replayed.
    replayed: u64,
}

/// How many dead letters were deleted.
#[derive(Serialize, ToSchema)]
struct Purged {
    /// Deliveries deleted.
    purged: u64,
}

fn delivery_id(raw: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many (at most 10000).
    #[serde(default = "default_limit")]
    #[param(default = 100, minimum = 0, maximum = 10000)]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Lists dead letters, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/dlq",
    tag = "dlq",
    operation_id = "listDeadLetters",
    params(ListQuery),
    responses(
        (status = 200, description = "Dead letters, newest first", body = DeadLetters),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
)]
async fn list(
    State(relay): State<AppState>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let dead = relay.dead_letters(page_limit(query.limit, 10_000)?).await?;
    Ok(Json(DeadLetters {
        count: dead.len(),
        dead_letters: dead,
    }))
}

/// Shows one delivery (dead or not) with its payload and every attempt.
#[utoipa::path(
    get,
    path = "/api/v1/dlq/{id}",
    tag = "dlq",
    operation_id = "getDelivery",
    params(("id" = DeliveryId, Path, description = "The delivery")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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

/// Puts one dead letter back in the queue with a fresh retry budget and the same `webhook-id`.
#[utoipa::path(
    post,
    path = "/api/v1/dlq/{id}/replay",
    tag = "dlq",
    operation_id = "replayDeadLetter",
    params(("id" = DeliveryId, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Back in the queue", body = Replayed),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no dead letter with that id", body = ErrorBody),
    ),
)]
async fn replay_one(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    let id = delivery_id(&id)?;
    match relay.replay(Selection::One(id.clone())).await? {
        0 => Err(ApiError::not_found(format!("no dead letter {id}"))),
        replayed => Ok(Json(Replayed { replayed })),
    }
}

/// Puts every dead letter back in the queue.
#[utoipa::path(
    post,
    path = "/api/v1/dlq/replay",
    tag = "dlq",
    operation_id = "replayAllDeadLetters",
    responses((status = 200, description = "Back in the queue", body = Replayed)),
)]
async fn replay_all(State(relay): State<AppState>) -> Result<Json<Replayed>, ApiError> {
    let replayed = relay.replay(Selection::All).await?;
    Ok(Json(Replayed { replayed }))
}

/// Deletes one dead letter.
#[utoipa::path(
    delete,
    path = "/api/v1/dlq/{id}",
    tag = "dlq",
    operation_id = "purgeDeadLetter",
    params(("id" = DeliveryId, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Deleted", body = Purged),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no dead letter with that id", body = ErrorBody),
    ),
)]
async fn purge_one(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Purged>, ApiError> {
    let id = delivery_id(&id)?;
    match relay.purge(Selection::One(id.clone())).await? {
        0 => Err(ApiError::not_found(format!("no dead letter {id}"))),
        purged => Ok(Json(Purged { purged })),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PurgeAllQuery {
    /// Must be `true`: purging every dead letter cannot be undone.
    #[serde(default)]
    #[param(required = true, value_type = Confirm, inline)]
    confirm: bool,
}

/// `true`, the only value that confirms.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the parameter; it is read as a bool.
enum Confirm {
    #[schema(rename = "true")]
    True,
}

/// Deletes every dead letter.
#[utoipa::path(
    delete,
    path = "/api/v1/dlq",
    tag = "dlq",
    operation_id = "purgeAllDeadLetters",
    params(PurgeAllQuery),
    responses(
        (status = 200, description = "Deleted", body = Purged),
        (status = 400, description = "`confirmation_required` without `?confirm=true`; `invalid_query`", body = ErrorBody),
    ),
)]
async fn purge_all(
    State(relay): State<AppState>,
    QueryParams(query): QueryParams<PurgeAllQuery>,
) -> Result<Json<Purged>, ApiError> {
    if !query.confirm {
        return Err(ApiError::bad_request(
            ErrorCode::ConfirmationRequired,
            "purging every dead letter cannot be undone; repeat with ?confirm=true",
        ));
    }
    let purged = relay.purge(Selection::All).await?;
    Ok(Json(Purged { purged }))
}
