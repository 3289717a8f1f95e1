//! The delivery queue on PostgreSQL: claims, attempt results (with endpoint health and the
//! minute's roll-up, group-committed in one statement), releases and the next due time per
//! endpoint.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use sqlx::{
    Row,
    postgres::{PgPool, PgRow},
};
use tokio::sync::mpsc;

use super::{
    PgStore,
    aggregates::AGGREGATE_SHARDS,
    commit::{self, COMMITTERS, Job, group_commit, retrying},
};
use crate::{
    domain::{DeliveryId, EndpointId, EventId, EventType, bucket},
    store::{
        AttemptRecord, CircuitEvent, ClaimedDelivery, HealthUpdate, LeaseToken, NextState,
        StoreError,
    },
};

impl PgStore {
    /// `claim_due`, or with `retried_only` only deliveries attempted before.
    pub(super) async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
        retried_only: bool,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let token = LeaseToken(rand::random::<i64>());
        retrying(|| async {
            let mut conn = self.pool.acquire().await?;
            let claim = Claim {
                now_ms,
                lease_ms,
                claimant: &claimant,
                retried_only,
                gated: false,
            };
            claim_rows(&mut conn, token, claim, &wanted).await
        })
        .await
    }

    /// Backs `Store::record_attempts`: hands the results to a group committer.
    pub(super) async fn store_attempts(
        &self,
        records: Vec<AttemptRecord>,
        health: Vec<HealthUpdate>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if records.is_empty() && health.is_empty() {
            return Ok(());
        }
        let results = Results {
            records,
            health,
            now_ms,
        };
        commit::submit(&self.results, results).await
    }

    /// Backs `Store::release`.
    pub(super) async fn release_leases(
        &self,
        leases: Vec<(DeliveryId, LeaseToken)>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // The worker's shutdown releases nothing first to wait for ingest in progress, which
        // may still hand it deliveries (as on SQLite, where the writer takes writes in order).
        if leases.is_empty() {
            return self.settle_ingest().await;
        }
        let (ids, tokens): (Vec<String>, Vec<i64>) = leases
            .into_iter()
            .map(|(id, lease)| (id.as_str().to_owned(), lease.0))
            .unzip();
        retrying(|| {
            sqlx::query(
                "UPDATE deliveries AS d SET lease_token = NULL, next_attempt_at = $1, updated_at = $1
                 FROM UNNEST($2::text[], $3::int8[]) AS r(id, lease)
                 WHERE d.id = ANY($2) AND d.id = r.id AND d.lease_token = r.lease AND d.status = 'pending'",
            )
            .bind(now_ms)
            .bind(&ids)
            .bind(&tokens)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    /// Backs `Store::next_due`.
    pub(super) async fn earliest_due(
        &self,
        endpoints: Vec<EndpointId>,
    ) -> Result<Vec<(EndpointId, i64)>, StoreError> {
        let ids: Vec<String> = endpoints.iter().map(|e| e.as_str().to_owned()).collect();
        // The index gives each endpoint's earliest pending delivery in one lookup.
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT w.endpoint_id, (SELECT MIN(next_attempt_at) FROM deliveries
                                    WHERE status = 'pending' AND endpoint_id = w.endpoint_id)
             FROM UNNEST($1::text[]) AS w(endpoint_id)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, at)| Some((EndpointId::from_trusted(id), at?)))
            .collect())
    }
}

/// How a claim is made.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim<'a> {
    pub(super) now_ms: i64,
    pub(super) lease_ms: i64,
    pub(super) claimant: &'a str,
    /// Only deliveries attempted before (an open circuit's probes).
    pub(super) retried_only: bool,
    /// Skip endpoints whose gate holds everyone (a receiver's pause, a circuit not closed).
    pub(super) gated: bool,
}

/// Claims up to the wanted number of due deliveries of each endpoint on `conn` (a pooled
/// connection or a transaction's), leased with `token`.
pub(super) async fn claim_rows(
    conn: &mut sqlx::PgConnection,
    token: LeaseToken,
    claim: Claim<'_>,
    wanted: &[(EndpointId, usize)],
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    let Claim {
        now_ms,
        lease_ms,
        claimant,
        retried_only,
        gated,
    } = claim;
    let (endpoints, limits): (Vec<String>, Vec<i64>) = wanted
        .iter()
        .filter(|(_, limit)| *limit > 0)
        .map(|(endpoint, limit)| (endpoint.as_str().to_owned(), *limit as i64))
        .unzip();
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for every endpoint: the rows another claimant holds are skipped, not
    // waited for, and the claim is atomic without an explicit transaction.
    let rows = sqlx::query(
        "WITH picked AS (
             SELECT due.id FROM (
                 SELECT * FROM UNNEST($4::text[], $5::int8[]) AS u(endpoint_id, wanted)
                 -- A pause or a circuit another instance saw holds this one too (read, not
                 -- locked: it shows what has committed when the claim starts).
                 WHERE NOT $8 OR NOT EXISTS (
                     SELECT 1 FROM endpoint_gates g WHERE g.endpoint_id = u.endpoint_id
                         AND (g.paused_until_ms > $3 OR g.circuit <> 'closed'))) AS w
             CROSS JOIN LATERAL (
                 SELECT id FROM deliveries
                 WHERE status = 'pending' AND endpoint_id = w.endpoint_id AND next_attempt_at <= $3
                     AND (NOT $7 OR total_attempts > 0)
                 ORDER BY next_attempt_at LIMIT w.wanted
                 FOR UPDATE SKIP LOCKED) AS due),
         claimed AS (
             UPDATE deliveries d SET lease_token = $1, next_attempt_at = $2, updated_at = $3,
                 claimed_by = $6
             FROM picked WHERE d.id = picked.id
             RETURNING d.id, d.event_id, d.endpoint_id, d.attempts, d.total_attempts, d.throttled,
                 d.next_attempt_at)
         SELECT c.id, c.event_id, c.endpoint_id, c.attempts, c.total_attempts, c.throttled,
             e.event_type, e.payload, e.created_at, e.session_id
         FROM claimed c CROSS JOIN LATERAL (
             SELECT event_type, payload, created_at, session_id FROM events WHERE id = c.event_id) e
         ORDER BY c.endpoint_id, c.next_attempt_at",
    )
    .bind(token.0)
    .bind(now_ms + lease_ms)
    .bind(now_ms)
    .bind(&endpoints)
    .bind(&limits)
    .bind(claimant)
    .bind(retried_only)
    .bind(gated)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ClaimedDelivery {
                id: DeliveryId::from_trusted(row.try_get("id")?),
                event_id: EventId::from_trusted(row.try_get("event_id")?),
                endpoint_id: EndpointId::from_trusted(row.try_get("endpoint_id")?),
                event_type: EventType::from_trusted(row.try_get("event_type")?),
                payload: Bytes::from(row.try_get::<Vec<u8>, _>("payload")?),
                event_created_at_ms: row.try_get("created_at")?,
                session_id: row.try_get("session_id")?,
                attempts: small(row, "attempts")?,
                total_attempts: small(row, "total_attempts")?,
                throttled: small(row, "throttled")?,
                lease: token,
            })
        })
        .collect()
}

/// A claimed delivery's count, clamped to what the domain keeps.
fn small(row: &PgRow, column: &str) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i64, _>(column)?.max(0)).unwrap_or(u32::MAX))
}

/// Attempt results and endpoint health reported by one `record_attempts` call.
pub(super) struct Results {
    records: Vec<AttemptRecord>,
    health: Vec<HealthUpdate>,
    now_ms: i64,
}

/// Starts the group committers of attempt results; returns where
/// [`PgStore::store_attempts`] queues.
pub(super) fn start_committers(pool: &PgPool) -> mpsc::Sender<Job<Results, ()>> {
    let (results, queue) = commit::queue();
    for _ in 0..COMMITTERS {
        let pool = pool.clone();
        tokio::spawn(group_commit(
            Arc::clone(&queue),
            |r: &Results| r.records.len() + r.health.len(),
            async move |jobs: &[&Results]| {
                let mut records: Vec<AttemptRecord> = Vec::new();
                // The latest report of each endpoint's health wins.
                let mut health: BTreeMap<String, HealthUpdate> = BTreeMap::new();
                let mut now_ms = i64::MIN;
                for job in jobs {
                    records.extend(job.records.iter().cloned());
                    for update in &job.health {
                        let mut update = update.clone();
                        // What earlier reports in the group changed for every instance stays.
                        if let Some(earlier) = health.get(update.endpoint_id.as_str()) {
                            update.shared.pause_until_ms = update
                                .shared
                                .pause_until_ms
                                .max(earlier.shared.pause_until_ms);
                            update.shared.circuit =
                                update.shared.circuit.or(earlier.shared.circuit);
                        }
                        health.insert(update.endpoint_id.as_str().to_owned(), update);
                    }
                    now_ms = now_ms.max(job.now_ms);
                }
                // Key order, so concurrent transactions lock rows in the same order.
                records.sort_by(|a, b| a.delivery_id.as_str().cmp(b.delivery_id.as_str()));
                let health: Vec<HealthUpdate> = health.into_values().collect();
                let columns = AttemptColumns::new(&records, now_ms);
                retrying(|| record_tx(&pool, &records, &columns, &health, now_ms)).await?;
                Ok(vec![(); jobs.len()])
            },
        ));
    }
    results
}

/// The columns an attempt writes, one array per column (rows sorted by delivery id).
#[derive(Default)]
struct AttemptColumns {
    ids: Vec<String>,
    leases: Vec<i64>,
    statuses: Vec<&'static str>,
    next_at: Vec<i64>,
    http_status: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
    finished: Vec<Option<i64>>,
    spent: Vec<i64>,
    throttled: Vec<i64>,
    attempt_no: Vec<i64>,
    started: Vec<i64>,
    duration: Vec<i64>,
    error_kind: Vec<Option<String>>,
    error_detail: Vec<Option<String>>,
    snippet: Vec<Option<String>>,
    outcome: Vec<&'static str>,
    /// The duration's histogram bucket ([`crate::domain::bucket`]).
    bucket: Vec<i64>,
    /// Acceptance to the end of this attempt, ms.
    latency: Vec<i64>,
}

impl AttemptColumns {
    fn new(records: &[AttemptRecord], now_ms: i64) -> Self {
        let mut c = Self::default();
        for record in records {
            let t = record.next.transition(now_ms);
            c.ids.push(record.delivery_id.as_str().to_owned());
            c.leases.push(record.lease.0);
            c.statuses.push(t.status.as_str());
            c.next_at.push(t.next_attempt_at);
            c.http_status.push(record.status_code.map(i64::from));
            c.last_error.push(match record.next {
                NextState::Delivered => None,
                _ => record.error_detail.clone(),
            });
            c.finished.push(t.finished_at);
            c.spent.push(t.spent);
            c.throttled.push(t.throttled);
            c.attempt_no.push(i64::from(record.attempt_no));
            c.started.push(record.started_at_ms);
            c.duration.push(record.duration_ms);
            c.error_kind.push(record.error_kind.clone());
            c.error_detail.push(record.error_detail.clone());
            c.snippet.push(record.response_snippet.clone());
            c.outcome.push(t.outcome);
            c.bucket.push(bucket(record.duration_ms) as i64);
            c.latency.push(record.latency_ms);
        }
        c
    }
}

async fn record_tx(
    pool: &PgPool,
    records: &[AttemptRecord],
    columns: &AttemptColumns,
    health: &[HealthUpdate],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let health = HealthColumns::new(health);
    // One statement, so one round trip and one commit: it moves the deliveries, logs the
    // attempts, writes endpoint health and counts what moved into the minute's roll-up. All
    // parts see the same snapshot; the roll-up reads what `moved` returns.
    //
    // - A result applies only while its claim holds: a worker whose lease expired (and whose
    //   delivery someone else claimed since) must not overwrite the newer claimant's result.
    //   `d.id = ANY($1)` beside the join makes the planner fetch rows by primary key; joined to
    //   an unnest alone, a young table's missing statistics led it to scan the whole table.
    // - Every attempt is logged, even one whose lease was lost; a delivery removed meanwhile
    //   (its endpoint deleted) has nothing to log against. (Locking the rows here would not
    //   do: `moved` has already updated them in this very statement, which hides them from a
    //   locking read. A delete racing this statement fails it, and the retry finds no row.)
    // - Every instance's every batch reports its endpoints' health; writing the rows each time
    //   would make them all queue for the locks. A change of state is written at once; the
    //   attempt and success times alone are refreshed at most once a second. A row the WHERE
    //   rejects is skipped without waiting for its lock.
    // - Only attempts that moved their delivery count, once; a throttled one counts only as
    //   throttled. The minute's row is sharded like every roll-up write.
    let moved: Vec<String> = sqlx::query_scalar(
        "WITH r AS (
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[],
                                  $7::int8[], $8::int8[], $9::int8[], $11::int8[], $12::int8[], $13::int8[],
                                  $14::text[], $15::text[], $16::text[], $17::text[], $18::int8[], $19::int8[])
                  AS r(id, lease, status, next_at, http_status, last_error, finished, spent, throttled,
                       attempt_no, started_at, duration_ms, error_kind, error_detail, snippet, outcome,
                       bucket, latency_ms)),
         moved AS (
             UPDATE deliveries AS d SET status = r.status, attempts = d.attempts + r.spent,
                 total_attempts = d.total_attempts + 1, throttled = d.throttled + r.throttled,
                 next_attempt_at = r.next_at, lease_token = NULL, last_status = r.http_status,
                 last_error = r.last_error, updated_at = $10, finished_at = r.finished
             FROM r WHERE d.id = ANY($1) AND d.id = r.id AND d.lease_token = r.lease
             RETURNING d.id, r.lease),
         logged AS (
             INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code,
                 error_kind, error_detail, response_snippet, outcome)
             SELECT r.id, r.attempt_no, r.started_at, r.duration_ms, r.http_status, r.error_kind,
                 r.error_detail, r.snippet, r.outcome
             FROM r WHERE r.id IN (SELECT id FROM deliveries WHERE id = ANY($1))),
         health AS (
             UPDATE endpoints AS e SET circuit_state = h.circuit, circuit_changed_at = h.changed_at,
                 consecutive_failures = h.failures, failing_since = h.failing_since,
                 last_attempt_at = GREATEST(e.last_attempt_at, h.last_attempt),
                 last_success_at = GREATEST(e.last_success_at, h.last_success),
                 enabled = CASE WHEN h.disable IS NULL THEN e.enabled ELSE FALSE END,
                 disabled_reason = COALESCE(h.disable, e.disabled_reason)
             FROM UNNEST($20::text[], $21::text[], $22::int8[], $23::int8[], $24::int8[], $25::int8[],
                         $26::int8[], $27::text[])
                  AS h(id, circuit, changed_at, failures, failing_since, last_attempt, last_success, disable)
             WHERE e.id = h.id AND (
                 e.circuit_state IS DISTINCT FROM h.circuit OR e.circuit_changed_at IS DISTINCT FROM h.changed_at
                 OR e.consecutive_failures IS DISTINCT FROM h.failures
                 OR e.failing_since IS DISTINCT FROM h.failing_since OR h.disable IS NOT NULL
                 OR e.last_attempt_at IS NULL OR e.last_attempt_at < h.last_attempt - 1000
                 OR (e.last_success_at IS NULL AND h.last_success IS NOT NULL)
                 OR e.last_success_at < h.last_success - 1000)),
         gated AS (
             UPDATE endpoint_gates AS g SET
                 paused_until_ms = GREATEST(g.paused_until_ms, COALESCE(s.pause_until, 0)),
                 circuit = COALESCE(s.circuit, g.circuit),
                 open_until_ms = CASE s.circuit WHEN 'open' THEN s.open_until WHEN 'closed' THEN 0
                                                ELSE g.open_until_ms END,
                 probe_holder = CASE WHEN s.circuit IS NULL THEN g.probe_holder END,
                 probe_until_ms = CASE WHEN s.circuit IS NULL THEN g.probe_until_ms ELSE 0 END,
                 changed_at_ms = CASE WHEN s.circuit IS NULL THEN g.changed_at_ms ELSE $10 END
             FROM UNNEST($20::text[], $30::int8[], $31::text[], $32::int8[])
                  AS s(id, pause_until, circuit, open_until)
             WHERE g.endpoint_id = s.id AND (s.pause_until > g.paused_until_ms OR s.circuit IS NOT NULL)),
         counted AS (
             INSERT INTO rollups AS ru (minute, shard, attempts, successes, failures, throttled, retries,
                 delivered, dead_lettered, duration_sum_ms, latency_sum_ms,
                 d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, duration_max_ms)
             SELECT $28, $29,
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled'),
                 COUNT(*) FILTER (WHERE r.outcome = 'delivered'),
                 COUNT(*) FILTER (WHERE r.outcome IN ('retry', 'dead')),
                 COUNT(*) FILTER (WHERE r.outcome = 'throttled'),
                 COUNT(*) FILTER (WHERE r.outcome = 'retry'),
                 COUNT(*) FILTER (WHERE r.outcome = 'delivered'),
                 COUNT(*) FILTER (WHERE r.outcome = 'dead'),
                 COALESCE(SUM(GREATEST(r.duration_ms, 0)) FILTER (WHERE r.outcome <> 'throttled'), 0),
                 COALESCE(SUM(GREATEST(r.latency_ms, 0)) FILTER (WHERE r.outcome = 'delivered'), 0),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 0),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 1),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 2),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 3),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 4),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 5),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 6),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 7),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 8),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 9),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 10),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 11),
                 COALESCE(MAX(r.duration_ms) FILTER (WHERE r.outcome <> 'throttled'), 0)
             FROM r JOIN moved ON moved.id = r.id AND moved.lease = r.lease
             HAVING COUNT(*) > 0
             ON CONFLICT (minute, shard) DO UPDATE SET
                 attempts = ru.attempts + excluded.attempts, successes = ru.successes + excluded.successes,
                 failures = ru.failures + excluded.failures, throttled = ru.throttled + excluded.throttled,
                 retries = ru.retries + excluded.retries, delivered = ru.delivered + excluded.delivered,
                 dead_lettered = ru.dead_lettered + excluded.dead_lettered,
                 duration_sum_ms = ru.duration_sum_ms + excluded.duration_sum_ms,
                 latency_sum_ms = ru.latency_sum_ms + excluded.latency_sum_ms,
                 d0 = ru.d0 + excluded.d0, d1 = ru.d1 + excluded.d1, d2 = ru.d2 + excluded.d2,
                 d3 = ru.d3 + excluded.d3, d4 = ru.d4 + excluded.d4, d5 = ru.d5 + excluded.d5,
                 d6 = ru.d6 + excluded.d6, d7 = ru.d7 + excluded.d7, d8 = ru.d8 + excluded.d8,
                 d9 = ru.d9 + excluded.d9, d10 = ru.d10 + excluded.d10, d11 = ru.d11 + excluded.d11,
                 duration_max_ms = GREATEST(ru.duration_max_ms, excluded.duration_max_ms))
         SELECT id FROM moved",
    )
    .bind(&columns.ids)
    .bind(&columns.leases)
    .bind(&columns.statuses)
    .bind(&columns.next_at)
    .bind(&columns.http_status)
    .bind(&columns.last_error)
    .bind(&columns.finished)
    .bind(&columns.spent)
    .bind(&columns.throttled)
    .bind(now_ms)
    .bind(&columns.attempt_no)
    .bind(&columns.started)
    .bind(&columns.duration)
    .bind(&columns.error_kind)
    .bind(&columns.error_detail)
    .bind(&columns.snippet)
    .bind(&columns.outcome)
    .bind(&columns.bucket)
    .bind(&columns.latency)
    .bind(&health.ids)
    .bind(&health.circuit)
    .bind(&health.changed_at)
    .bind(&health.failures)
    .bind(&health.failing_since)
    .bind(&health.last_attempt)
    .bind(&health.last_success)
    .bind(&health.disable)
    .bind(now_ms.div_euclid(60_000))
    .bind(rand::random_range(0..AGGREGATE_SHARDS))
    .bind(&health.pause_until)
    .bind(&health.circuit_event)
    .bind(&health.open_until)
    .fetch_all(pool)
    .await?;
    if moved.len() < records.len() {
        let moved: std::collections::HashSet<&str> = moved.iter().map(String::as_str).collect();
        for record in records {
            if !moved.contains(record.delivery_id.as_str()) {
                tracing::warn!(delivery_id = %record.delivery_id, "lease lost before the attempt was recorded; its result is kept in the attempt log only");
            }
        }
    }
    Ok(())
}

/// Endpoint health reports, one array per column.
#[derive(Default)]
struct HealthColumns {
    ids: Vec<String>,
    circuit: Vec<&'static str>,
    changed_at: Vec<Option<i64>>,
    failures: Vec<i64>,
    failing_since: Vec<Option<i64>>,
    last_attempt: Vec<Option<i64>>,
    last_success: Vec<Option<i64>>,
    disable: Vec<Option<String>>,
    /// For the endpoint's gate: a receiver's pause, a circuit's change.
    pause_until: Vec<Option<i64>>,
    circuit_event: Vec<Option<&'static str>>,
    open_until: Vec<Option<i64>>,
}

impl HealthColumns {
    fn new(updates: &[HealthUpdate]) -> Self {
        let mut c = Self::default();
        for update in updates {
            let h = &update.health;
            c.ids.push(update.endpoint_id.as_str().to_owned());
            c.circuit.push(h.circuit.as_str());
            c.changed_at.push(h.circuit_changed_at_ms);
            c.failures.push(i64::from(h.consecutive_failures));
            c.failing_since.push(h.failing_since_ms);
            c.last_attempt.push(h.last_attempt_at_ms);
            c.last_success.push(h.last_success_at_ms);
            c.disable.push(update.disable.clone());
            c.pause_until.push(update.shared.pause_until_ms);
            let (event, until) = match update.shared.circuit {
                Some(CircuitEvent::Opened { until_ms }) => (Some("open"), Some(until_ms)),
                Some(CircuitEvent::Closed) => (Some("closed"), None),
                None => (None, None),
            };
            c.circuit_event.push(event);
            c.open_until.push(until);
        }
        c
    }
}
