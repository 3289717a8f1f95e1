//! Endpoints under `/api/v1/endpoints` (admin only).

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, ErrorBody, ErrorCode, extract::Object, json_body, parse};
use crate::{
    domain::EndpointId,
    endpoints::{EndpointChanges, EndpointSpec, EndpointView},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(rotate_secret))
}

/// Every endpoint.
#[derive(Serialize, ToSchema)]
struct Endpoints {
    /// How many.
    count: usize,
    /// The endpoints, without their secrets.
    endpoints: Vec<EndpointView>,
}

/// An endpoint with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
struct EndpointWithSecret {
    /// The endpoint.
    endpoint: EndpointView,
    /// Its signing secret (`whsec_…` when generated): store it now, it is not shown again.
    secret: String,
}

/// The endpoint that was removed.
#[derive(Serialize, ToSchema)]
struct Removed {
    /// Its id.
    removed: EndpointId,
}

fn endpoint_id(raw: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))
}

/// An optional JSON body: empty or `null` means "no options".
fn optional<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        _ => Ok(parse::<Option<Object<T>>>(&json_body(headers, body)?)?
            .map(|Object(options)| options)
            .unwrap_or_default()),
    }
}

/// Lists every endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/endpoints",
    tag = "endpoints",
    operation_id = "listEndpoints",
    responses((status = 200, description = "Every endpoint", body = Endpoints)),
)]
async fn list(State(relay): State<AppState>) -> Result<Json<Endpoints>, ApiError> {
    let endpoints: Vec<EndpointView> = relay.endpoints().await?.iter().map(|e| e.view()).collect();
    Ok(Json(Endpoints {
        count: endpoints.len(),
        endpoints,
    }))
}

/// Adds an endpoint; its secret is answered this once.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints",
    tag = "endpoints",
    operation_id = "createEndpoint",
    request_body(content = EndpointSpec, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = EndpointWithSecret),
        (status = 400, description = "`malformed_json`, `empty_body`, `unreadable_body`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_endpoint` (the detail names the field)", body = ErrorBody),
    ),
)]
async fn create(
    State(relay): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Object(spec): Object<EndpointSpec> = parse(&json_body(&headers, body)?)?;
    let (endpoint, secret) = relay.create_endpoint(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(EndpointWithSecret {
            endpoint: endpoint.view(),
            secret,
        }),
    )
        .into_response())
}

/// Shows one endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    operation_id = "getEndpoint",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
async fn show(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    Ok(Json(relay.endpoint(&id).await?.view()))
}

/// Changes an endpoint: absent fields stay, `null` resets a setting to the default.
#[utoipa::path(
    patch,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    operation_id = "updateEndpoint",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    request_body(content = EndpointChanges, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint as changed", body = EndpointView),
        (status = 400, description = "`invalid_id`, `malformed_json`, `empty_body`, `unreadable_body`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`managed_by_config`: `ep_default`'s URL follows ZAPIER_WEBHOOK_URL", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_endpoint`", body = ErrorBody),
    ),
)]
async fn update(
    State(relay): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let Object(changes): Object<EndpointChanges> = parse(&json_body(&headers, body)?)?;
    Ok(Json(relay.update_endpoint(&id, changes).await?.view()))
}

/// Removes an endpoint.
#[utoipa::path(
    delete,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    operation_id = "removeEndpoint",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
async fn remove(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    let id = endpoint_id(&id)?;
    relay.remove_endpoint(&id).await?;
    Ok(Json(Removed { removed: id }))
}

/// Enables an endpoint (and closes its circuit).
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/enable",
    tag = "endpoints",
    operation_id = "enableEndpoint",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
async fn enable(
    State(relay): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    Ok(Json(
        relay.set_endpoint_enabled(&id, true, None).await?.view(),
    ))
}

/// Why an endpoint is disabled (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    /// Shown with the endpoint.
    #[serde(default)]
    reason: Option<String>,
}

/// Disables an endpoint: its events wait, undelivered, until it is enabled.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/disable",
    tag = "endpoints",
    operation_id = "disableEndpoint",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    request_body(content = Option<DisableBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 400, description = "`invalid_id`, `malformed_json`, `unreadable_body`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
    ),
)]
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

// No `Debug`: it holds the secret.
/// A secret rotation (the body is optional).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// The new secret; generated (`whsec_…`) when absent.
    #[serde(default)]
    secret: Option<String>,
    /// How long the previous secret keeps signing beside the new one, in hours (0–8760).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 8760)]
    overlap_hours: Option<f64>,
}

/// Rotates an endpoint's signing secret; the new one is answered this once.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/rotate-secret",
    tag = "endpoints",
    operation_id = "rotateEndpointSecret",
    params(("id" = EndpointId, Path, description = "The endpoint")),
    request_body(content = Option<RotateBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint and its new secret", body = EndpointWithSecret),
        (status = 400, description = "`invalid_id`, `malformed_json`, `unreadable_body`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`managed_by_config`: `ep_default` signs with WEBHOOK_SECRET", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_endpoint`", body = ErrorBody),
    ),
)]
async fn rotate_secret(
    State(relay): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndpointWithSecret>, ApiError> {
    let id = endpoint_id(&id)?;
    let body: RotateBody = optional(&headers, body)?;
    let overlap = match body.overlap_hours {
        Some(hours) if hours.is_finite() && (0.0..=8760.0).contains(&hours) => {
            Some(Duration::from_secs_f64(hours * 3600.0))
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidField,
                "overlap_hours must be between 0 and 8760",
            ));
        }
        None => None,
    };
    let (endpoint, secret) = relay.rotate_secret(&id, body.secret, overlap).await?;
    Ok(Json(EndpointWithSecret {
        endpoint: endpoint.view(),
        secret,
    }))
}
