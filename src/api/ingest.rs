//! Ingest routes: `POST /api/webhook/usage` (the guide's path) and `POST /api/v1/events`.

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, json_body, parse};
use crate::{
    domain::{EventType, GenericEvent, IdempotencyKey, UsageEvent},
    store::{InboundMessage, Ingested},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhook/usage", post(track_usage))
        .route("/api/v1/events", post(publish_event))
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| {
            let text = value.to_str().unwrap_or("\u{0}");
            IdempotencyKey::parse(text).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_header",
                    format!("Idempotency-Key {}", e.detail),
                )
            })
        })
        .transpose()
}

#[derive(Serialize)]
struct Batch {
    ids: Vec<String>,
    events: Vec<Ingested>,
}

fn accepted<T: Serialize>(body: T, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// One usage event as a JSON object, or an array of them stored all or nothing.
async fn track_usage(
    State(relay): State<AppState>,
    message: Option<Extension<InboundMessage>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let key = idempotency_header(&headers)?;
    let message = message.map(|Extension(message)| message);
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        Some(b'[') => {
            let events: Vec<UsageEvent> = parse(&body)?;
            let stored = relay.track_usage_message(events, key, message).await?;
            let replayed = stored.iter().all(|s| s.duplicate);
            Ok(accepted(
                Batch {
                    ids: stored.iter().map(|s| s.id.to_string()).collect(),
                    events: stored,
                },
                replayed,
            ))
        }
        Some(b'{') => {
            let event: UsageEvent = parse(&body)?;
            let stored = relay.track_usage_message(vec![event], key, message).await?;
            let stored = stored.into_iter().next().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "no result for a stored event",
                )
            })?;
            let replayed = stored.duplicate;
            Ok(accepted(stored, replayed))
        }
        _ => {
            // Valid JSON of the wrong kind is a 422; anything else is malformed.
            parse::<serde::de::IgnoredAny>(&body)?;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "expected a usage event object or an array of them",
            ))
        }
    }
}

#[derive(Deserialize)]
struct EventBody {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Any event: `{type, data, idempotency_key?}`.
async fn publish_event(
    State(relay): State<AppState>,
    message: Option<Extension<InboundMessage>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let header_key = idempotency_header(&headers)?;
    let event: EventBody = parse(&body)?;
    let invalid =
        |e: crate::domain::InvalidEvent| ApiError::from(crate::ingest::IngestError::Invalid(e));
    let event_type = EventType::parse(&event.event_type).map_err(invalid)?;
    let body_key = event
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(invalid)?;
    let idempotency_key = match (header_key, body_key) {
        (Some(header), Some(body)) if header != body => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "conflicting_idempotency_key",
                "the Idempotency-Key header and the idempotency_key field differ",
            ));
        }
        (header, body) => header.or(body),
    };
    let stored = relay
        .publish_message(
            GenericEvent {
                event_type,
                data: event.data,
                idempotency_key,
            },
            message.map(|Extension(message)| message),
        )
        .await?;
    let replayed = stored.duplicate;
    Ok(accepted(stored, replayed))
}
