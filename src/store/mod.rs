//! Durable storage: the [`Store`] trait and its two implementations, SQLite and PostgreSQL. All
//! SQL lives here.
//!
//! The queue is the `deliveries` table. A delivery is `pending` until it ends `delivered` or
//! `dead` (the dead-letter queue). A pending delivery is due when `next_attempt_at <= now`.
//! Claiming it moves `next_attempt_at` forward by the lease and stamps a `lease_token`; so a
//! worker that dies mid-delivery needs no clean-up: its deliveries simply fall due again when
//! the lease runs out. Results are written only if the lease token still matches, so a worker
//! whose lease expired cannot overwrite what a newer claimant decided.

mod delegate;
mod error;
mod filter;
mod handoff;
mod postgres;
mod progress;
mod rows;
mod shared;
mod sqlite;
mod tally;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

pub use self::{
    error::{Cause, StoreError},
    handoff::{Handoff, Lease, Leased},
    postgres::PgStore,
    progress::{OnProgress, Progress},
    sqlite::{SqliteStore, restore, restore_with_progress},
};
use crate::{
    config::{DatabaseLocation, SqliteSync},
    domain::{
        Alert, Analytics, CleanupReport, Condition, DeliveryId, Endpoint, EndpointHealth,
        EndpointId, EndpointUrl, EventId, EventType, SessionStats, UsageFacts, WindowTotals,
    },
};

/// Opens (creating and migrating as needed) the store at `location`: a SQLite file written
/// with `sync`, or a PostgreSQL schema.
pub async fn open(
    location: &DatabaseLocation,
    sync: SqliteSync,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match location {
        DatabaseLocation::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path, sync).await?),
        DatabaseLocation::Postgres(settings) => std::sync::Arc::new(PgStore::open(settings).await?),
    })
}

/// One table's share of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TableStats {
    /// The table.
    pub name: String,
    /// Its rows.
    pub rows: u64,
    /// Bytes of the table and its indexes.
    pub bytes: u64,
}

/// The database's vital signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DbStats {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Bytes of the main file.
    pub file_bytes: u64,
    /// Bytes of the write-ahead log.
    pub wal_bytes: u64,
    /// Page size.
    pub page_size: u64,
    /// Pages in the file.
    pub page_count: u64,
    /// Pages free for reuse (returned by `db maintain`).
    pub free_pages: u64,
    /// Newest applied migration.
    pub schema_version: i64,
    /// Each table, largest first.
    pub tables: Vec<TableStats>,
}

/// What `db maintain` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MaintenanceReport {
    /// `ok`, or the problems `PRAGMA integrity_check` found.
    pub integrity: Vec<String>,
    /// Free pages before.
    pub free_pages_before: u64,
    /// Free pages after.
    pub free_pages_after: u64,
    /// `incremental` or `full`.
    pub vacuum: String,
}

/// Takes a leader lease if it is free, expired or already ours (`?1` task, `?2` holder,
/// `?3` new expiry, `?4` now); returns a row only when the caller holds it. The same statement
/// runs on both backends.
const LEAD_SQL: &str = "INSERT INTO leader_leases (task, holder, expires_at) VALUES ($1, $2, $3)
     ON CONFLICT (task) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
     WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $4
     RETURNING holder";

/// A sender's message id (a verified Standard Webhooks `webhook-id`, scoped to the secret
/// that signed it) that may be accepted once until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The id, as stored.
    pub id: String,
    /// Until when a second request with this id is a replay, unix ms.
    pub expires_at_ms: i64,
}

/// Expired message ids swept with each new one: more than one, so the table shrinks back after
/// a burst; few, so the sweep costs next to nothing.
pub(crate) const MESSAGE_SWEEP: i64 = 8;

/// An event ready to be stored, with the endpoints it must be delivered to.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its id (also the `webhook-id` of its deliveries).
    pub id: EventId,
    /// Its type, e.g. `usage.tracked`.
    pub event_type: EventType,
    /// The client's idempotency key, scoped by event type ([`crate::domain::IdempotencyKey::scoped`]).
    pub idempotency_key: Option<String>,
    /// A fingerprint of what the client sent: an event whose key was seen with another
    /// fingerprint is refused ([`StoreError::KeyReused`]), not answered as a duplicate.
    pub request_fingerprint: Option<String>,
    /// The gateway session of a usage event.
    pub session_id: Option<String>,
    /// The exact bytes every delivery will send: serialized once, signed as is.
    pub payload: Bytes,
    /// When it was accepted, unix ms.
    pub created_at_ms: i64,
    /// For usage events: what the session aggregates and analytics count.
    pub usage: Option<UsageFacts>,
}

/// The outcome of storing one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Accepted)]
pub struct Ingested {
    /// The event's id: the original one when this was a duplicate.
    pub id: EventId,
    /// True when the idempotency key had been seen: nothing new was stored or will be sent.
    pub duplicate: bool,
}

/// Identifies one claim; results are applied only while it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseToken(pub(crate) i64);

/// A delivery the worker has claimed and must attempt.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The delivery.
    pub id: DeliveryId,
    /// Its event.
    pub event_id: EventId,
    /// Where it goes.
    pub endpoint_id: EndpointId,
    /// The event's type.
    pub event_type: EventType,
    /// The bytes to send.
    pub payload: Bytes,
    /// When the event was accepted, unix ms (for ingest-to-delivery latency).
    pub event_created_at_ms: i64,
    /// The usage event's session, for logs.
    pub session_id: Option<String>,
    /// Attempts already spent from the retry budget (reset by a replay).
    pub attempts: u32,
    /// Attempts ever made, across replays.
    pub total_attempts: u32,
    /// Attempts answered 429 (or sent back by a circuit probe) so far.
    pub throttled: u32,
    /// The claim.
    pub lease: LeaseToken,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    /// It succeeded: done.
    Delivered,
    /// Try again at this time (unix ms).
    RetryAt(i64),
    /// Give up: move it to the dead-letter queue.
    DeadLetter,
    /// The receiver is busy (429) or its circuit is probing: try again at this time without
    /// spending the retry budget.
    Throttled(i64),
}

/// An endpoint's health after an attempt, written in the same transaction.
#[derive(Debug, Clone)]
pub struct HealthUpdate {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its new health.
    pub health: EndpointHealth,
    /// Set when the endpoint is to be disabled, with the reason.
    pub disable: Option<String>,
    /// What every instance sharing the database must honour from now on (its gate).
    pub shared: SharedChange,
}

/// A change to an endpoint's gate ([`crate::domain::Gate`]) that one instance saw and every
/// instance on a shared database must honour. SQLite has one worker and ignores it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedChange {
    /// The receiver asked for a pause (429 with `Retry-After`) until then, unix ms.
    pub pause_until_ms: Option<i64>,
    /// The circuit opened or closed here.
    pub circuit: Option<CircuitEvent>,
}

/// A circuit's change of state, as the gate records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitEvent {
    /// Opened: nothing goes to the endpoint before `until_ms` (the cool-down's end).
    Opened {
        /// The cool-down's end, unix ms.
        until_ms: i64,
    },
    /// A probe went through: deliveries resume.
    Closed,
}

/// What a gated claim took, and which endpoints the gates held back, until when (unix ms):
/// the claimant asks for those again no sooner, instead of asking in a loop.
#[derive(Debug, Default)]
pub struct GatedClaim {
    /// The deliveries claimed.
    pub deliveries: Vec<ClaimedDelivery>,
    /// Endpoints a gate refused, and until when.
    pub held: Vec<(EndpointId, i64)>,
}

/// One endpoint a claim asks for, with the limits this claimant applies to it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedWant {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// How many, and whether they start a probe round.
    pub ask: crate::domain::Ask,
    /// Its rate limit.
    pub limits: crate::domain::GateLimits,
}

/// One finished attempt and what follows from it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// The claim it was attempted under.
    pub lease: LeaseToken,
    /// 1 for the first attempt ever made for this delivery.
    pub attempt_no: u32,
    /// When the request started, unix ms.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// The HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// `timeout`, `connect`, `redirect`, … when the attempt failed.
    pub error_kind: Option<String>,
    /// A human-readable reason for the failure.
    pub error_detail: Option<String>,
    /// The first bytes of the response body.
    pub response_snippet: Option<String>,
    /// The state the delivery moves to.
    pub next: NextState,
    /// Time from acceptance to this attempt's end, ms (for delivered ones' latency).
    pub latency_ms: i64,
}

/// The lifecycle state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for (another) attempt.
    Pending,
    /// Accepted by the receiver.
    Delivered,
    /// In the dead-letter queue.
    Dead,
}

impl DeliveryStatus {
    /// The database spelling: `pending`, `delivered` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    fn from_db(value: &str) -> Self {
        match value {
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            _ => Self::Pending,
        }
    }
}

/// A delivery as listed by `dlq list` and shown by `dlq show`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliverySummary {
    /// The delivery.
    pub id: DeliveryId,
    /// Its event (and `webhook-id`).
    pub event_id: EventId,
    /// Where it goes.
    pub endpoint_id: EndpointId,
    /// The event's type.
    pub event_type: String,
    /// The usage event's session, if any.
    pub session_id: Option<String>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts spent from the current retry budget.
    pub attempts: u32,
    /// Attempts ever made.
    pub total_attempts: u32,
    /// Attempts rescheduled because the receiver was busy (429) or a circuit probe failed.
    pub throttled: u32,
    /// Last HTTP status received.
    pub last_status: Option<u16>,
    /// Last failure reason.
    pub last_error: Option<String>,
    /// When the event was accepted, unix ms.
    pub created_at_ms: i64,
    /// When the next attempt is due, unix ms (pending only).
    pub next_attempt_at_ms: Option<i64>,
    /// When it was delivered or dead-lettered, unix ms.
    pub finished_at_ms: Option<i64>,
}

/// One recorded attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt ever made.
    pub attempt_no: u32,
    /// When it started, unix ms.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// Failure kind, when it failed.
    pub error_kind: Option<String>,
    /// Failure reason.
    pub error_detail: Option<String>,
    /// First bytes of the response body.
    pub response_snippet: Option<String>,
    /// `delivered`, `retry` or `dead`.
    pub outcome: String,
}

/// A delivery with its payload and every attempt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub summary: DeliverySummary,
    /// The payload as sent (JSON).
    pub payload: serde_json::Value,
    /// Every attempt, oldest first.
    pub attempts_log: Vec<AttemptView>,
}

/// Which dead letters a replay or purge acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One delivery.
    One(DeliveryId),
    /// Every dead letter.
    All,
    /// These deliveries (those that are dead letters; others are left alone). Any number may be
    /// given; each statement takes at most [`IDS_PER_STATEMENT`] of them, so a long list runs
    /// as several statements (in one transaction). Callers taking ids from outside should cap
    /// how many they accept.
    Ids(Vec<DeliveryId>),
    /// Every dead letter that matches (the filter's status is ignored: replay and purge act on
    /// dead letters only). Done in transactions of at most [`IDS_PER_STATEMENT`] deliveries,
    /// so a large selection never holds the database for long; not all or nothing.
    Matching(DeliveryFilter),
}

/// The most deliveries one replay or purge statement names or touches (see [`Selection`]).
pub const IDS_PER_STATEMENT: usize = 1000;

/// Which deliveries a search, a count, a replay or a purge acts on. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// The usage event's session (exact).
    pub session_id: Option<String>,
    /// One event's deliveries.
    pub event_id: Option<EventId>,
    /// One endpoint's deliveries.
    pub endpoint_id: Option<EndpointId>,
    /// Deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Deliveries created (their event accepted) at or after this time, unix ms.
    pub since_ms: Option<i64>,
    /// Deliveries created before this time, unix ms.
    pub until_ms: Option<i64>,
    /// Deliveries that finished (delivered or dead-lettered) at or before this time, unix ms:
    /// what a confirmation counted, so letters that die afterwards are not acted on too.
    pub finished_until_ms: Option<i64>,
}

/// One page of deliveries, newest first (by id: UUIDv7, so creation order).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryPage {
    /// The deliveries, newest first.
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `before` for the next (older) page; None on the last page.
    pub next_before: Option<DeliveryId>,
}

/// The most deliveries one page holds: larger `limit`s are cut to this.
pub const MAX_PAGE: usize = 1000;

/// One endpoint's attempts over a period, for the endpoints page.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointActivity {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Attempts, excluding throttled ones (429s and circuit probes sent back).
    pub attempts: u64,
    /// Attempts that delivered.
    pub successes: u64,
    /// Attempts that failed (retried or dead-lettered).
    pub failures: u64,
    /// The latest failed attempts, newest first.
    pub last_errors: Vec<AttemptError>,
}

/// A failed attempt, as the endpoints page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptError {
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// When the attempt started, unix ms.
    pub at_ms: i64,
    /// The HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// `timeout`, `connect`, `status`, … .
    pub error_kind: Option<String>,
    /// A human-readable reason.
    pub error_detail: Option<String>,
}

/// Queue sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueCounts {
    /// Deliveries waiting for an attempt (including those in flight).
    pub pending: u64,
    /// Deliveries in the dead-letter queue.
    pub dead: u64,
    /// When the oldest pending delivery's event was accepted, unix ms.
    pub oldest_pending_ms: Option<i64>,
}

/// Storage behind the relay. One implementation per backend; every method is a short
/// transaction, and concurrent writes are committed together (group commit).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores each group of events all or nothing, with their deliveries; events whose
    /// idempotency key was seen before are answered with the original id and not stored again.
    /// Returns only once the events are durable.
    async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError>;

    /// Where ingest hands deliveries, leased in the transaction that stores them, straight to
    /// this process's worker ([`Handoff`]); `None` when the backend always goes through claims.
    fn handoff(&self) -> Option<std::sync::Arc<Handoff>> {
        None
    }

    /// [`Store::ingest`] for a request carrying a sender's message id: the id is recorded in
    /// the same transaction as the events. If it was recorded before and has not expired
    /// (at `now_ms`), nothing is stored and the answer is [`StoreError::Replayed`]. A few expired
    /// ids are deleted each time, so the record stays as small as the replay window needs.
    async fn ingest_message(
        &self,
        message: InboundMessage,
        now_ms: i64,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Ingested>, StoreError>;

    /// Claims up to `limit` due deliveries of each listed endpoint, leasing them for `lease_ms`
    /// to `claimant` (an instance id). Concurrent claimants never get the same delivery.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Claims, as [`Store::claim_due`] does, up to `limit` due deliveries of `endpoint` that
    /// have been attempted before: an open circuit's probes take half their deliveries from
    /// these, so a receiver that fails only first attempts is not judged dead.
    async fn claim_retried(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        endpoint: EndpointId,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Claims for several endpoints at once, each as its [`GatedWant`] asks: a probe round
    /// takes half its deliveries from retried ones ([`Store::claim_retried`]), the rest from the
    /// oldest due. On a database several instances share, each endpoint's gate decides how many
    /// may be taken ([`crate::domain::grant`]): the rate limit and concurrency cap hold for all
    /// instances together, a pause or an open circuit holds them all, one instance at a time
    /// probes. Alone on its database (SQLite), a claimant takes what it asks.
    async fn claim_gated(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wants: Vec<GatedWant>,
    ) -> Result<GatedClaim, StoreError> {
        let flowing = wants
            .iter()
            .filter(|w| !w.ask.probe)
            .map(|w| (w.endpoint.clone(), w.ask.slots))
            .collect();
        let mut claimed = self
            .claim_due(now_ms, lease_ms, claimant.clone(), flowing)
            .await?;
        for want in wants.iter().filter(|w| w.ask.probe) {
            // Half the probes re-try deliveries that failed before, the rest are the oldest
            // due: a receiver that fails only first attempts, or only some events, answers
            // one of them and closes the circuit; a dead one fails them all.
            let mut probes = self
                .claim_retried(
                    now_ms,
                    lease_ms,
                    claimant.clone(),
                    want.endpoint.clone(),
                    want.ask.slots.div_ceil(2),
                )
                .await?;
            let rest = want.ask.slots - probes.len();
            probes.extend(
                self.claim_due(
                    now_ms,
                    lease_ms,
                    claimant.clone(),
                    vec![(want.endpoint.clone(), rest)],
                )
                .await?,
            );
            claimed.extend(probes);
        }
        Ok(GatedClaim {
            deliveries: claimed,
            held: Vec::new(),
        })
    }

    /// Delivery workers that reported in since `since_ms` (their heartbeats), `instance`
    /// included whether or not its own heartbeat is written yet, and `instance`'s rank among
    /// them (their ids in order): the per-endpoint concurrency cap is split between them by
    /// rank, so the shares add up to the cap. Alone on its database (SQLite): one, rank 0.
    async fn live_workers(
        &self,
        _since_ms: i64,
        _instance: String,
    ) -> Result<(usize, usize), StoreError> {
        Ok((1, 0))
    }

    /// The gates of the endpoints, where several instances share them (PostgreSQL); none
    /// alone. A worker takes from them what another instance saw: an open circuit, a pause.
    async fn gates(&self) -> Result<Vec<(EndpointId, crate::domain::Gate)>, StoreError> {
        Ok(Vec::new())
    }

    /// Records attempts and moves each delivery to its next state (only if still leased),
    /// with the endpoints' new health, in one transaction.
    async fn record_attempts(
        &self,
        records: Vec<AttemptRecord>,
        health: Vec<HealthUpdate>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Returns leased deliveries to the queue, due at once, without spending an attempt.
    async fn release(
        &self,
        leases: Vec<(DeliveryId, LeaseToken)>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// When the earliest pending delivery of each of these endpoints falls due, unix ms
    /// (endpoints with nothing pending are left out).
    async fn next_due(
        &self,
        endpoints: Vec<EndpointId>,
    ) -> Result<Vec<(EndpointId, i64)>, StoreError>;

    /// Every endpoint, `ep_default` first.
    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError>;

    /// One endpoint.
    async fn endpoint(&self, id: EndpointId) -> Result<Option<Endpoint>, StoreError>;

    /// Creates an endpoint; false if the id exists.
    async fn create_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError>;

    /// Replaces an endpoint's settings (not its enabled state or health); false if it does
    /// not exist.
    async fn update_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError>;

    /// Enables an endpoint (resetting its health) or disables it with a reason; false if it
    /// does not exist.
    async fn set_endpoint_state(
        &self,
        id: EndpointId,
        enabled: bool,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes an endpoint with its pending and dead deliveries (delivered ones stay as
    /// history); false if it did not exist.
    async fn delete_endpoint(&self, id: EndpointId) -> Result<bool, StoreError>;

    /// Makes `ep_default` mirror `ZAPIER_WEBHOOK_URL`: created or updated when set, disabled
    /// (with its pending deliveries kept) when not.
    /// Records how the serving process signs `ep_default`: a fingerprint of `WEBHOOK_SECRET`
    /// (the secret itself stays in the configuration), or `None` for unsigned, so that reports
    /// from any shell tell the truth. Does nothing if there is no `ep_default`.
    async fn record_default_signing(&self, fingerprint: Option<String>) -> Result<(), StoreError>;

    async fn sync_default_endpoint(
        &self,
        url: Option<EndpointUrl>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeliverySummary>, StoreError>;

    /// One delivery with its payload and attempts.
    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError>;

    /// Puts dead letters back in the queue with a fresh retry budget; returns how many.
    async fn replay(&self, which: Selection, now_ms: i64) -> Result<u64, StoreError>;

    /// Puts up to `limit` dead letters back in the queue as [`Store::replay`] does: those whose
    /// id sorts after `after` (all with `None`), in id order, in one short transaction. Returns
    /// how many, and the last id replayed: the `after` of the next batch. Walking the ids
    /// forward replays each dead letter at most once, even one that dies again meanwhile.
    async fn replay_batch(
        &self,
        after: Option<DeliveryId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(u64, Option<DeliveryId>), StoreError>;

    /// Deletes dead letters and their attempts; returns how many.
    async fn purge(&self, which: Selection) -> Result<u64, StoreError>;

    /// One page of the deliveries that match `filter`, newest first, older than `before` (the
    /// previous page's `next_before`) when given. `limit` is at least 1 and at most
    /// [`MAX_PAGE`].
    async fn search_deliveries(
        &self,
        filter: DeliveryFilter,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError>;

    /// How many deliveries match `filter`.
    async fn count_deliveries(&self, filter: DeliveryFilter) -> Result<u64, StoreError>;

    /// The roll-ups from `since_ms` grouped into buckets of `step_ms` (a multiple of 60_000;
    /// other values are rounded down to whole minutes, at least one), oldest first; buckets
    /// with no rows are absent. Bucket `k` starts at the minute holding `since_ms` plus `k`
    /// steps (pass a `since_ms` that is a multiple of `step_ms` for buckets that stay put as
    /// time passes); the buckets sum to [`Store::window_totals`] from `since_ms`.
    async fn series(
        &self,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, WindowTotals)>, StoreError>;

    /// Each endpoint's attempts started at or after `since_ms`, with its `errors` latest failed
    /// ones; endpoints with no attempts in that time are absent. Sorted by endpoint id.
    async fn endpoint_activity(
        &self,
        since_ms: i64,
        errors: usize,
    ) -> Result<Vec<EndpointActivity>, StoreError>;

    /// Queue sizes.
    async fn counts(&self) -> Result<QueueCounts, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Sums the per-minute roll-ups since `since_ms` (all of them with `None`).
    async fn window_totals(&self, since_ms: Option<i64>) -> Result<WindowTotals, StoreError>;

    /// Alerts not resolved yet.
    async fn active_alerts(&self) -> Result<Vec<Alert>, StoreError>;

    /// The latest alerts, active or not, newest first.
    async fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError>;

    /// Fires and resolves alerts in one transaction; returns (fired, resolved) as stored.
    async fn apply_alerts(
        &self,
        fire: Vec<Condition>,
        resolve: Vec<i64>,
        now_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError>;

    /// Alerts whose firing, and alerts whose resolution, no notification has carried yet
    /// (since `since_ms`).
    async fn unsent_alerts(&self, since_ms: i64) -> Result<(Vec<Alert>, Vec<Alert>), StoreError>;

    /// Records that a notification carried these firings and resolutions.
    async fn mark_alerts_sent(
        &self,
        fired: Vec<i64>,
        resolved: Vec<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Records that a delivery worker instance is alive.
    async fn heartbeat(
        &self,
        instance: String,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Removes `instance`'s heartbeat: it stopped cleanly, so reports must not show its worker
    /// running (nor `restore` wait for it) until the heartbeat would have gone stale.
    async fn sign_off(&self, instance: String) -> Result<(), StoreError>;

    /// Takes or renews the lease on a singleton `task` (alert evaluation, retention) for
    /// `holder` until `now_ms + ttl_ms`; true while `holder` has it. Another holder gets it
    /// only once the lease has expired.
    async fn try_lead(
        &self,
        task: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives up `holder`'s lease on `task` (at shutdown), so another instance takes it over at
    /// once instead of when it lapses. Does nothing if `holder` does not hold it.
    async fn resign(&self, task: String, holder: String) -> Result<(), StoreError>;

    /// Wakes `wake` whenever any instance sharing the database queues work, so an idle worker
    /// starts at once rather than at its next poll. The default does nothing: with SQLite the
    /// worker is woken by ingest in its own process and finds other processes' work by polling.
    async fn watch_work(&self, _wake: std::sync::Arc<tokio::sync::Notify>) {}

    /// The most recent worker heartbeat, unix ms.
    async fn latest_heartbeat(&self) -> Result<Option<i64>, StoreError>;

    /// One session's aggregate, with its models and webhook counts.
    async fn session(&self, session_id: String) -> Result<Option<SessionStats>, StoreError>;

    /// Sessions last seen in `[since, until)`, most recent first.
    async fn sessions(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionStats>, StoreError>;

    /// The summary of the `days` days up to `now_ms`.
    async fn analytics(&self, now_ms: i64, days: u32) -> Result<Analytics, StoreError>;

    /// Removes, in small transactions, delivered events older than `cutoff_ms` with their
    /// deliveries and attempts, idle sessions, resolved alerts and roll-ups; never pending or
    /// dead-lettered work. With `dry_run`, only counts. Each batch is reported to `progress`
    /// (against a total counted first when it is watched).
    async fn cleanup(
        &self,
        cutoff_ms: i64,
        dry_run: bool,
        progress: OnProgress,
    ) -> Result<CleanupReport, StoreError>;

    /// Sizes and counts.
    async fn db_stats(&self) -> Result<DbStats, StoreError>;

    /// Integrity check, `ANALYZE`, and an incremental (or, with `full`, complete) vacuum;
    /// each phase, and the steps of those that have steps, reported to `progress`.
    async fn maintain(
        &self,
        full: bool,
        progress: OnProgress,
    ) -> Result<MaintenanceReport, StoreError>;

    /// Writes a consistent copy of the database to `path` while it is in use, reporting the
    /// pages copied to `progress`.
    async fn backup(
        &self,
        path: std::path::PathBuf,
        progress: OnProgress,
    ) -> Result<(), StoreError>;
}
