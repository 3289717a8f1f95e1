//! Builders shared by the behaviours: events, endpoints, claims and attempt records.
//!
//! Every time is an explicit unix-ms number counted from [`START`]; nothing sleeps.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use hookrelay::{
    domain::{
        DeliveryId, Endpoint, EndpointHealth, EndpointId, EndpointUrl, EventFilter, EventId,
        EventType, UsageFacts,
    },
    store::{AttemptRecord, ClaimedDelivery, DeliveryDetail, Ingested, NewEvent, NextState, Store},
};

/// A fixed moment (2027-01-15), minute-aligned, so tests can reason about minutes and days.
pub const START: i64 = 1_800_000_000_000;
/// One minute, ms.
pub const MINUTE: i64 = 60_000;
/// One day, ms.
pub const DAY: i64 = 86_400_000;
/// The lease the behaviours claim with, ms.
pub const LEASE: i64 = 30_000;
/// A claim limit that takes everything a test queued.
pub const ALL: usize = 100_000;

/// The URL `ep_default` is synced to.
pub fn default_url() -> EndpointUrl {
    url("https://hooks.example.test/default")
}

pub fn url(raw: &str) -> EndpointUrl {
    EndpointUrl::parse(raw).expect("valid test url")
}

pub fn endpoint_id(raw: &str) -> EndpointId {
    EndpointId::parse(raw).expect("valid endpoint id")
}

pub fn ep_default() -> EndpointId {
    EndpointId::default_endpoint()
}

pub fn event_type(raw: &str) -> EventType {
    EventType::parse(raw).expect("valid event type")
}

/// Creates (or re-enables) `ep_default`, which takes every event type.
pub async fn with_default_endpoint(store: &Arc<dyn Store>) {
    store
        .sync_default_endpoint(Some(default_url()), START)
        .await
        .expect("sync ep_default");
}

/// A generic event of `kind` accepted at `at`, with a JSON payload that names it.
pub fn event(kind: &str, at: i64) -> NewEvent {
    let id = EventId::generate();
    let payload = serde_json::json!({ "id": id.as_str(), "type": kind, "at": at });
    NewEvent {
        id,
        event_type: event_type(kind),
        idempotency_key: None,
        request_fingerprint: None,
        session_id: None,
        payload: Bytes::from(serde_json::to_vec(&payload).expect("payload")),
        created_at_ms: at,
        usage: None,
    }
}

/// The same event with an idempotency key.
pub fn keyed(mut event: NewEvent, key: &str) -> NewEvent {
    event.idempotency_key = Some(key.to_owned());
    event
}

/// What a usage event reports.
#[derive(Debug, Clone)]
pub struct Usage<'a> {
    pub session: &'a str,
    pub model: &'a str,
    pub response_time_ms: u64,
    pub tokens: u64,
    pub success: bool,
}

impl<'a> Usage<'a> {
    /// A successful call answered in 100 ms using 10 tokens.
    pub fn ok(session: &'a str, model: &'a str) -> Self {
        Self {
            session,
            model,
            response_time_ms: 100,
            tokens: 10,
            success: true,
        }
    }

    pub fn failed(mut self) -> Self {
        self.success = false;
        self
    }

    pub fn took(mut self, response_time_ms: u64) -> Self {
        self.response_time_ms = response_time_ms;
        self
    }

    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = tokens;
        self
    }
}

/// A `usage.tracked` event with its usage facts, accepted at `at`.
pub fn usage_event(usage: Usage<'_>, at: i64) -> NewEvent {
    let mut event = event("usage.tracked", at);
    event.session_id = Some(usage.session.to_owned());
    event.usage = Some(UsageFacts {
        session_id: usage.session.to_owned(),
        model: usage.model.to_owned(),
        response_time_ms: usage.response_time_ms,
        tokens: usage.tokens,
        success: usage.success,
    });
    event
}

/// An enabled endpoint with every optional setting left unset.
pub fn endpoint(id: &str, patterns: &[&str], at: i64) -> Endpoint {
    Endpoint {
        id: endpoint_id(id),
        url: url(&format!("https://receiver.example.test/{id}")),
        description: format!("test endpoint {id}"),
        filter: EventFilter::parse(patterns.iter().map(|p| (*p).to_owned()).collect())
            .expect("valid filter"),
        secret: Some(format!("whsec_{}", "a".repeat(32))),
        previous_secret: None,
        previous_secret_until_ms: None,
        headers: BTreeMap::new(),
        timeout: None,
        max_retries: None,
        rate_limit: None,
        circuit_threshold: None,
        enabled: true,
        disabled_reason: None,
        managed_by_config: false,
        health: EndpointHealth::default(),
        created_at_ms: at,
        updated_at_ms: at,
    }
}

/// Creates an endpoint, which must be new.
pub async fn create(store: &Arc<dyn Store>, endpoint: Endpoint) {
    assert!(
        store
            .create_endpoint(endpoint)
            .await
            .expect("create endpoint"),
        "the endpoint id was new"
    );
}

/// Stores events, none of which may be a duplicate.
pub async fn ingest(store: &Arc<dyn Store>, events: Vec<NewEvent>) -> Vec<EventId> {
    let outcomes = store.ingest(events).await.expect("ingest");
    assert!(
        outcomes.iter().all(|o| !o.duplicate),
        "no event was a duplicate: {outcomes:?}"
    );
    outcomes.into_iter().map(|o: Ingested| o.id).collect()
}

/// Claims up to `limit` due deliveries of one endpoint at `now`, leased for [`LEASE`].
pub async fn claim(
    store: &Arc<dyn Store>,
    now: i64,
    endpoint: &EndpointId,
    limit: usize,
) -> Vec<ClaimedDelivery> {
    store
        .claim_due(
            now,
            LEASE,
            "conformance".into(),
            vec![(endpoint.clone(), limit)],
        )
        .await
        .expect("claim_due")
}

/// Claims exactly one due delivery of `ep_default`.
pub async fn claim_one(store: &Arc<dyn Store>, now: i64) -> ClaimedDelivery {
    let mut claimed = claim(store, now, &ep_default(), 1).await;
    assert_eq!(claimed.len(), 1, "one delivery was due at {now}");
    claimed.remove(0)
}

/// A finished attempt on a claimed delivery, started at `at`, taking `duration_ms`.
pub fn attempt(
    claimed: &ClaimedDelivery,
    next: NextState,
    at: i64,
    duration_ms: i64,
) -> AttemptRecord {
    let failed = !matches!(next, NextState::Delivered);
    AttemptRecord {
        delivery_id: claimed.id.clone(),
        lease: claimed.lease,
        attempt_no: claimed.total_attempts + 1,
        started_at_ms: at,
        duration_ms,
        status_code: Some(match next {
            NextState::Delivered => 200,
            NextState::Throttled(_) => 429,
            NextState::RetryAt(_) => 503,
            NextState::DeadLetter => 410,
        }),
        error_kind: failed.then(|| "status".to_owned()),
        error_detail: failed.then(|| format!("attempt at {at} failed")),
        response_snippet: Some(format!("answer to attempt at {at}")),
        next,
        latency_ms: at + duration_ms - claimed.event_created_at_ms,
    }
}

/// Records one attempt (no health change) at `at + 5`.
pub async fn record(store: &Arc<dyn Store>, claimed: &ClaimedDelivery, next: NextState, at: i64) {
    store
        .record_attempts(vec![attempt(claimed, next, at, 5)], vec![], at + 5)
        .await
        .expect("record_attempts");
}

/// Records the same outcome for every claimed delivery, in one call.
pub async fn record_all(
    store: &Arc<dyn Store>,
    claimed: &[ClaimedDelivery],
    next: NextState,
    at: i64,
) {
    let records = claimed.iter().map(|c| attempt(c, next, at, 5)).collect();
    store
        .record_attempts(records, vec![], at + 5)
        .await
        .expect("record_attempts");
}

/// Claims every due delivery of `ep_default` and records `next` for each.
pub async fn settle_all(store: &Arc<dyn Store>, now: i64, next: NextState) -> Vec<DeliveryId> {
    let claimed = claim(store, now, &ep_default(), ALL).await;
    record_all(store, &claimed, next, now).await;
    claimed.into_iter().map(|c| c.id).collect()
}

/// Claims every due delivery of `ep_default` and records `next` for those of events accepted at
/// or after `since` (the others stay claimed, still pending).
pub async fn settle_since(
    store: &Arc<dyn Store>,
    now: i64,
    since: i64,
    next: NextState,
) -> Vec<DeliveryId> {
    let claimed: Vec<_> = claim(store, now, &ep_default(), ALL)
        .await
        .into_iter()
        .filter(|c| c.event_created_at_ms >= since)
        .collect();
    record_all(store, &claimed, next, now).await;
    claimed.into_iter().map(|c| c.id).collect()
}

/// One delivery, which must exist.
pub async fn delivery(store: &Arc<dyn Store>, id: &DeliveryId) -> DeliveryDetail {
    store
        .delivery(id.clone())
        .await
        .expect("delivery")
        .unwrap_or_else(|| panic!("delivery {id} exists"))
}

/// The ids of a list of claims.
pub fn ids(claimed: &[ClaimedDelivery]) -> Vec<DeliveryId> {
    let mut ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    ids
}

/// A progress callback that keeps every report, and the reports.
pub fn recorded_progress() -> (
    hookrelay::store::OnProgress,
    Arc<std::sync::Mutex<Vec<hookrelay::store::Progress>>>,
) {
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = Arc::clone(&reports);
    let on_progress = hookrelay::store::OnProgress::new(move |progress| {
        kept.lock().expect("reports").push(progress);
    });
    (on_progress, reports)
}
