//! Sessions and analytics under `/api/v1` (admin only).

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
    domain::{Analytics, SessionStats},
    relay::Relay,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(analytics))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only sessions active at or after this time, unix ms.
    since: Option<i64>,
    /// Only sessions active before this time, unix ms.
    until: Option<i64>,
    /// At most this many (at most 1000).
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 0, maximum = 1000)]
    limit: usize,
}

/// Sessions, most recently active first.
#[derive(Serialize, ToSchema)]
struct Sessions {
    /// How many on this page.
    count: usize,
    /// The sessions.
    sessions: Vec<SessionStats>,
}

fn default_limit() -> usize {
    50
}

/// Lists sessions, most recently active first.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    operation_id = "listSessions",
    params(ListQuery),
    responses(
        (status = 200, description = "Sessions", body = Sessions),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
)]
async fn list(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Sessions>, ApiError> {
    let sessions = relay
        .sessions(
            query.since.unwrap_or(i64::MIN),
            query.until.unwrap_or(i64::MAX),
            page_limit(query.limit, 1000)?,
        )
        .await?;
    Ok(Json(Sessions {
        count: sessions.len(),
        sessions,
    }))
}

/// One session's figures: the guide's `get_session_stats`.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    operation_id = "getSession",
    params(("id" = String, Path, description = "The gateway's session id")),
    responses(
        (status = 200, description = "The session", body = SessionStats),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AnalyticsQuery {
    /// How many days back, 1–3650.
    #[serde(default = "default_days")]
    #[param(default = 7, minimum = 1, maximum = 3650)]
    days: u32,
}

fn default_days() -> u32 {
    7
}

/// Sessions, queries, tokens and delivery over the last days, by model and by day.
#[utoipa::path(
    get,
    path = "/api/v1/analytics",
    tag = "sessions",
    operation_id = "getAnalytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "The summary", body = Analytics),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    ),
)]
async fn analytics(
    State(relay): State<Relay>,
    QueryParams(query): QueryParams<AnalyticsQuery>,
) -> Result<Json<Analytics>, ApiError> {
    if !(1..=3650).contains(&query.days) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "days must be between 1 and 3650",
        ));
    }
    Ok(Json(relay.analytics(query.days).await?))
}
