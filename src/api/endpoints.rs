//! Endpoints under `/api/v1/endpoints` (admin only).

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, json_body, parse};
use crate::{
    domain::EndpointId,
    endpoints::{EndpointChanges, EndpointSpec, EndpointView},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/endpoints", get(list).post(create))
        .route(
            "/api/v1/endpoints/{id}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/endpoints/{id}/enable", post(enable))
        .route("/api/v1/endpoints/{id}/disable", post(disable))
        .route("/api/v1/endpoints/{id}/rotate-secret", post(rotate_secret))
}

fn endpoint_id(raw: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(raw).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

/// An optional JSON body: empty means "no options".
fn optional<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        _ => parse(&json_body(headers, body)?),
    }
}

async fn list(State(relay): State<AppState>) -> Result<Json<Value>, ApiError> {
    let endpoints: Vec<EndpointView> = relay.endpoints().await?.iter().map(|e| e.view()).collect();
    Ok(Json(
        json!({ "count": endpoints.len(), "endpoints": endpoints }),
    ))
}

async fn create(
    State(relay): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: EndpointSpec = parse(&json_body(&headers, body)?)?;
    let (endpoint, secret) = relay.create_endpoint(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "endpoint": endpoint.view(), "secret": secret })),
    )
        .into_response())
}

async fn show(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    Ok(Json(relay.endpoint(&id).await?.view()))
}

async fn update(
    State(relay): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let changes: EndpointChanges = parse(&json_body(&headers, body)?)?;
    Ok(Json(relay.update_endpoint(&id, changes).await?.view()))
}

async fn remove(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = endpoint_id(&id)?;
    relay.remove_endpoint(&id).await?;
    Ok(Json(json!({ "removed": id })))
}

async fn enable(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    Ok(Json(
        relay.set_endpoint_enabled(&id, true, None).await?.view(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn disable(
    State(relay): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let body: DisableBody = optional(&headers, body)?;
    Ok(Json(
        relay
            .set_endpoint_enabled(&id, false, body.reason)
            .await?
            .view(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    overlap_hours: Option<f64>,
}

async fn rotate_secret(
    State(relay): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = endpoint_id(&id)?;
    let body: RotateBody = optional(&headers, body)?;
    let overlap = match body.overlap_hours {
        Some(hours) if hours.is_finite() && (0.0..=8760.0).contains(&hours) => {
            Some(Duration::from_secs_f64(hours * 3600.0))
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "overlap_hours must be between 0 and 8760",
            ));
        }
        None => None,
    };
    let (endpoint, secret) = relay.rotate_secret(&id, body.secret, overlap).await?;
    Ok(Json(
        json!({ "endpoint": endpoint.view(), "secret": secret }),
    ))
}
