//! Ingest: turns accepted events into stored events with one delivery per endpoint, and wakes
//! the worker. Durability and group commit come from the store: concurrent calls here are
//! committed together, and each returns only once its events are on disk.

mod payload;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

pub use self::payload::{
    Category, categorize, estimate_complexity, generic_payload, usage_payload,
};
use crate::{
    clock::Clock,
    config::QueryMode,
    domain::{EventId, EventType, GenericEvent, IdempotencyKey, InvalidEvent, UsageEvent},
    store::{InboundMessage, Ingested, NewEvent, Store, StoreError},
};

/// Most events in one batch request.
pub const MAX_BATCH: usize = 1000;

/// An event could not be accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The event is invalid; nothing was stored.
    #[error("invalid event: {0}")]
    Invalid(#[from] InvalidEvent),
    /// The batch was empty or too large; nothing was stored.
    #[error("{0}")]
    Batch(String),
    /// The request's `webhook-id` was accepted before: a replay; nothing was stored.
    #[error("webhook-id was already used: replayed request refused")]
    Replayed,
    /// The idempotency key was used before for a different request; nothing was stored.
    #[error(
        "idempotency key `{0}` was used before for a different request; send a new key with a new request"
    )]
    KeyReused(String),
    /// Storage failed; nothing was stored.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Replayed => Self::Replayed,
            StoreError::KeyReused(key) => Self::KeyReused(key),
            other => Self::Store(other),
        }
    }
}

/// What the client sent, as a short hash: the same request gives the same fingerprint (JSON
/// objects serialize with sorted keys), a different one another.
fn fingerprint(request: &impl serde::Serialize) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// Accepts events into the store.
pub struct Ingestor {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    query_mode: QueryMode,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("query_mode", &self.query_mode)
            .finish_non_exhaustive()
    }
}

impl Ingestor {
    /// An ingestor; the store fans each event out to the enabled endpoints whose filter
    /// matches its type.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        query_mode: QueryMode,
    ) -> Self {
        Self {
            store,
            clock,
            wake,
            query_mode,
        }
    }

    /// Stores usage events all or nothing. With a key, the first event is deduplicated under
    /// the key as is and item `i` of a batch under `key #i`: a request resent under its key in
    /// any other shape (one event where there were several, or the reverse) meets the first
    /// item's stored fingerprint and is refused as a reused key. With a message id, the request
    /// is refused as a replay if that id was accepted before.
    pub async fn usage(
        &self,
        events: Vec<UsageEvent>,
        key: Option<IdempotencyKey>,
        message: Option<InboundMessage>,
    ) -> Result<Vec<Ingested>, IngestError> {
        if events.is_empty() {
            return Err(IngestError::Batch(
                "the batch is empty: send at least one event".into(),
            ));
        }
        if events.len() > MAX_BATCH {
            return Err(IngestError::Batch(format!(
                "the batch holds {} events; at most {MAX_BATCH} are accepted per request",
                events.len()
            )));
        }
        for (index, event) in events.iter().enumerate() {
            event.validate().map_err(|e| {
                if events.len() > 1 {
                    e.at_index(index)
                } else {
                    e
                }
            })?;
        }
        let now = self.clock.now_ms();
        // The whole request, on each of its items: resending a batch under its key with an
        // item added or changed is another request.
        let request_fingerprint = key.as_ref().map(|_| fingerprint(&events));
        let new_events = events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                let id = EventId::generate();
                let payload = usage_payload(&id, now, &event, self.query_mode);
                NewEvent {
                    request_fingerprint: request_fingerprint.clone(),
                    idempotency_key: key.as_ref().map(|k| {
                        let key = if index == 0 {
                            k.clone()
                        } else {
                            k.for_item(index)
                        };
                        key.scoped(&EventType::usage_tracked())
                    }),
                    usage: Some(crate::domain::UsageFacts {
                        session_id: event.session_id.clone(),
                        model: event.model_name.clone(),
                        response_time_ms: event.response_time_ms,
                        tokens: event.estimated_tokens,
                        success: event.success,
                    }),
                    session_id: Some(event.session_id),
                    event_type: EventType::usage_tracked(),
                    payload: Bytes::from(payload),
                    created_at_ms: now,
                    id,
                }
            })
            .collect();
        self.store_events(new_events, message).await
    }

    /// Stores one event of any type (refused as a replay if `message` was accepted before).
    /// A `usage.tracked` event's data must be a usage event: it is validated and stored as one,
    /// so receivers and the session figures never see a usage event without its fields.
    pub async fn generic(
        &self,
        event: GenericEvent,
        message: Option<InboundMessage>,
    ) -> Result<Ingested, IngestError> {
        if event.event_type.as_str() == EventType::USAGE_TRACKED {
            let usage: UsageEvent =
                serde_path_to_error::deserialize(event.data).map_err(|error| {
                    let path = error.path().to_string();
                    let field = if path == "." {
                        "data".to_owned()
                    } else {
                        format!("data.{path}")
                    };
                    InvalidEvent::new(
                        field,
                        format!(
                            "{} (a usage.tracked event's data is a usage event)",
                            error.inner()
                        ),
                    )
                })?;
            let stored = self
                .usage(vec![usage], event.idempotency_key, message)
                .await?;
            return stored
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::database("no result for a stored event").into());
        }
        let now = self.clock.now_ms();
        let id = EventId::generate();
        let payload = generic_payload(&id, now, &event.event_type, &event.data);
        let stored = self
            .store_events(
                vec![NewEvent {
                    id,
                    request_fingerprint: event
                        .idempotency_key
                        .as_ref()
                        .map(|_| fingerprint(&(event.event_type.as_str(), &event.data))),
                    idempotency_key: event.idempotency_key.map(|k| k.scoped(&event.event_type)),
                    event_type: event.event_type,
                    session_id: None,
                    usage: None,
                    payload: Bytes::from(payload),
                    created_at_ms: now,
                }],
                message,
            )
            .await?;
        stored
            .into_iter()
            .next()
            .ok_or_else(|| IngestError::Store(StoreError::database("no result for a stored event")))
    }

    async fn store_events(
        &self,
        events: Vec<NewEvent>,
        message: Option<InboundMessage>,
    ) -> Result<Vec<Ingested>, IngestError> {
        let kind = if events
            .iter()
            .all(|e| e.event_type.as_str() == EventType::USAGE_TRACKED)
        {
            "usage"
        } else {
            "event"
        };
        let stored = match message {
            Some(message) => {
                let now = self.clock.now_ms();
                self.store.ingest_message(message, now, events).await?
            }
            None => self.store.ingest(events).await?,
        };
        let duplicates = stored.iter().filter(|s| s.duplicate).count() as u64;
        crate::metrics::ingested(kind, stored.len() as u64 - duplicates, duplicates);
        // Deliveries handed to the worker in memory need no wake-up; those stored due do.
        if stored.iter().any(|s| !s.duplicate)
            && self.store.handoff().is_none_or(|h| h.take_unleased())
        {
            self.wake.notify_one();
        }
        Ok(stored)
    }
}
