//! Ingest routes: `POST /api/webhook/usage` (the guide's path) and `POST /api/v1/events`.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, AppState, ErrorBody, ErrorCode, extract::Object, guard::WriteStarted, json_body,
    parse,
};
use crate::{
    domain::{EventType, GenericEvent, IdempotencyKey, UsageEvent},
    store::{InboundMessage, Ingested},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(track_usage))
        .routes(routes!(publish_event))
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| {
            let text = value.to_str().unwrap_or("\u{0}");
            IdempotencyKey::parse(text).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidHeader,
                    format!("Idempotency-Key {}", e.detail),
                )
            })
        })
        .transpose()
}

/// What `POST /api/webhook/usage` takes: one event, or an array of 1 to 1000 stored all or
/// nothing. Described by hand because the handler reads it by its first byte.
struct UsageRequest;

impl utoipa::PartialSchema for UsageRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{ArrayBuilder, OneOfBuilder, Ref};
        OneOfBuilder::new()
            .item(Ref::from_schema_name("UsageEvent"))
            .item(
                ArrayBuilder::new()
                    .items(Ref::from_schema_name("UsageEvent"))
                    .min_items(Some(1))
                    .max_items(Some(crate::ingest::MAX_BATCH)),
            )
            .description(Some(
                "One usage event, or an array of them stored all or nothing",
            ))
            .into()
    }
}

impl ToSchema for UsageRequest {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((UsageEvent::name().into(), UsageEvent::schema()));
    }
}

/// The answer to an array of usage events.
#[derive(Serialize, ToSchema)]
#[schema(as = BatchAccepted)]
struct Batch {
    /// The events' ids, in the order sent.
    ids: Vec<String>,
    /// Each event's id and whether it was a duplicate, in the order sent.
    events: Vec<Ingested>,
}

/// The answer to `POST /api/webhook/usage`: `Accepted` for an object, `BatchAccepted` for an array.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the answer; the handler builds one or the other.
enum UsageAccepted {
    /// One event.
    One(Ingested),
    /// An array of events.
    Batch(Batch),
}

/// From here the handler's answer is the store's: no 408 can overtake it.
fn mark(write: Option<&Extension<WriteStarted>>) {
    if let Some(Extension(write)) = write {
        write.mark();
    }
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

/// Records usage events.
///
/// One usage event as a JSON object, or an array of up to 1000 stored all or nothing. Answered
/// once the events are durable. A key sent again answers the original events with
/// `duplicate: true` and `Idempotent-Replayed: true`, and nothing is sent twice.
#[utoipa::path(
    post,
    path = "/api/webhook/usage",
    tag = "ingest",
    operation_id = "trackUsage",
    params(IdempotencyHeader),
    request_body(content = UsageRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored; delivery follows", body = UsageAccepted, headers(
            ("Idempotent-Replayed" = String, description = "`true` when every event was a duplicate"),
        )),
        (status = 400, description = "`malformed_json`, `empty_body`, `unreadable_body`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field` (the detail names it, `[2].model_name: …`), \
            `invalid_batch`, `invalid_body`, `invalid_header`, `idempotency_key_reused`", body = ErrorBody),
        (status = 507, description = "`storage_full`: nothing was stored", body = ErrorBody),
    ),
)]
async fn track_usage(
    State(relay): State<AppState>,
    message: Option<Extension<InboundMessage>>,
    write: Option<Extension<WriteStarted>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let key = idempotency_header(&headers)?;
    let message = message.map(|Extension(message)| message);
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        Some(b'[') => {
            let events: Vec<Object<UsageEvent>> = parse(&body)?;
            let events = events.into_iter().map(|Object(event)| event).collect();
            mark(write.as_ref());
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
            let Object(event): Object<UsageEvent> = parse(&body)?;
            mark(write.as_ref());
            let stored = relay.track_usage_message(vec![event], key, message).await?;
            let stored = stored.into_iter().next().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
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
                ErrorCode::InvalidBody,
                "expected a usage event object or an array of them",
            ))
        }
    }
}

/// Any event.
#[derive(Deserialize, ToSchema)]
#[schema(as = EventRequest)]
struct EventBody {
    /// The event type: lowercase letters, digits, `.`, `_` and `-`, e.g. `alert.fired`.
    #[serde(rename = "type")]
    #[schema(
        example = "alert.fired",
        max_length = 128,
        pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
    )]
    event_type: String,
    /// The payload, delivered as `data`.
    data: serde_json::Value,
    /// Same as the `Idempotency-Key` header; if both are sent they must agree.
    #[serde(default)]
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// The `Idempotency-Key` header.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes the header; handlers read it from the header map.
struct IdempotencyHeader {
    /// Makes a retry safe: a key seen before for the same event type answers the original
    /// event. Printable ASCII, at most 255 characters.
    #[param(rename = "Idempotency-Key", pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// Publishes any event.
///
/// Delivered as `{event_id, event_type, timestamp, data}` to every endpoint subscribed to its type.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "ingest",
    operation_id = "sendEvent",
    params(IdempotencyHeader),
    request_body(content = EventBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored; delivery follows", body = Ingested, headers(
            ("Idempotent-Replayed" = String, description = "`true` when the event was a duplicate"),
        )),
        (status = 400, description = "`malformed_json`, `empty_body`, `unreadable_body`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_header`, `idempotency_key_reused`, \
            `conflicting_idempotency_key`", body = ErrorBody),
        (status = 507, description = "`storage_full`: nothing was stored", body = ErrorBody),
    ),
)]
async fn publish_event(
    State(relay): State<AppState>,
    message: Option<Extension<InboundMessage>>,
    write: Option<Extension<WriteStarted>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let header_key = idempotency_header(&headers)?;
    let Object(event): Object<EventBody> = parse(&body)?;
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
                ErrorCode::ConflictingIdempotencyKey,
                "the Idempotency-Key header and the idempotency_key field differ",
            ));
        }
        (header, body) => header.or(body),
    };
    mark(write.as_ref());
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
