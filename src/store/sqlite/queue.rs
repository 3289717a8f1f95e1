//! The delivery queue on SQLite: claims, attempt results (with endpoint health), releases and
//! the next due time per endpoint.

use bytes::Bytes;
use rusqlite::params;

use super::{SqliteStore, aggregates::aggregate, connections::Isolation};
use crate::{
    domain::{DeliveryId, EndpointId, EventId, EventType},
    store::{
        AttemptRecord, ClaimedDelivery, HealthUpdate, LeaseToken, NextState, StoreError,
        tally::Rollup,
    },
};

impl SqliteStore {
    /// `claim_due`, or with `retried_only` only deliveries attempted before.
    pub(super) async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
        retried_only: bool,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Fails only on a database error: no savepoint (see `Isolation::Bare`).
        self.write_isolated(Isolation::Bare, move |conn| {
            let token = LeaseToken(rand::random::<i64>());
            let mut claim = conn.prepare_cached(
                "UPDATE deliveries SET lease_token = ?1, next_attempt_at = ?2, updated_at = ?3, claimed_by = ?6
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE status = 'pending' AND endpoint_id = ?4 AND next_attempt_at <= ?3
                         AND (NOT ?7 OR total_attempts > 0)
                     ORDER BY next_attempt_at LIMIT ?5)
                 RETURNING id, event_id, attempts, total_attempts, throttled",
            )?;
            let mut event = conn.prepare_cached(
                "SELECT event_type, payload, created_at, session_id FROM events WHERE id = ?1",
            )?;
            let mut claimed = Vec::new();
            let mut events = std::collections::HashMap::new();
            for (endpoint, limit) in wanted.into_iter().filter(|(_, limit)| *limit > 0) {
                let rows = claim
                    .query_map(
                        params![
                            token.0,
                            now_ms + lease_ms,
                            now_ms,
                            endpoint.as_str(),
                            limit as i64,
                            claimant,
                            retried_only,
                        ],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, u32>(2)?,
                                row.get::<_, u32>(3)?,
                                row.get::<_, u32>(4)?,
                            ))
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                for (id, event_id, attempts, total_attempts, throttled) in rows {
                    // An event fanned out to many endpoints is read once per claim.
                    let (event_type, payload, created_at, session_id) = match events.get(&event_id) {
                        Some(read) => Clone::clone(read),
                        None => {
                            let read = event.query_row([&event_id], |row| {
                                Ok((
                                    row.get::<_, String>(0)?,
                                    Bytes::from(row.get::<_, Vec<u8>>(1)?),
                                    row.get::<_, i64>(2)?,
                                    row.get::<_, Option<String>>(3)?,
                                ))
                            })?;
                            events.insert(event_id.clone(), read.clone());
                            read
                        }
                    };
                    claimed.push(ClaimedDelivery {
                        id: DeliveryId::from_trusted(id),
                        event_id: EventId::from_trusted(event_id),
                        endpoint_id: endpoint.clone(),
                        event_type: EventType::from_trusted(event_type),
                        payload,
                        event_created_at_ms: created_at,
                        session_id,
                        attempts,
                        total_attempts,
                        throttled,
                        lease: token,
                    });
                }
            }
            Ok(claimed)
        }, |_| {})
        .await
    }

    /// Backs `Store::record_attempts`.
    pub(super) async fn store_attempts(
        &self,
        records: Vec<AttemptRecord>,
        health: Vec<HealthUpdate>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // Fails only on a database error: no savepoint (see `Isolation::Bare`).
        self.write_isolated(Isolation::Bare, move |conn| {
            let mut insert = conn.prepare_cached(
                // A delivery removed meanwhile (its endpoint deleted) has nothing to log against.
                "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code,
                     error_kind, error_detail, response_snippet, outcome)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)",
            )?;
            let mut update = conn.prepare_cached(
                "UPDATE deliveries SET status = ?1, attempts = attempts + ?9,
                     total_attempts = total_attempts + 1, throttled = throttled + ?10,
                     next_attempt_at = ?2, lease_token = NULL,
                     last_status = ?3, last_error = ?4, updated_at = ?5, finished_at = ?6
                 WHERE id = ?7 AND lease_token = ?8",
            )?;
            let mut rollup = Rollup::default();
            for record in records {
                let t = record.next.transition(now_ms);
                insert.execute(params![
                    record.delivery_id.as_str(),
                    record.attempt_no,
                    record.started_at_ms,
                    record.duration_ms,
                    record.status_code,
                    record.error_kind,
                    record.error_detail,
                    record.response_snippet,
                    t.outcome,
                ])?;
                let last_error = match record.next {
                    NextState::Delivered => None,
                    _ => record.error_detail.clone(),
                };
                let updated = update.execute(params![
                    t.status.as_str(),
                    t.next_attempt_at,
                    record.status_code,
                    last_error,
                    now_ms,
                    t.finished_at,
                    record.delivery_id.as_str(),
                    record.lease.0,
                    t.spent,
                    t.throttled,
                ])?;
                if updated == 0 {
                    tracing::warn!(delivery_id = %record.delivery_id, "lease lost before the attempt was recorded; its result is kept in the attempt log only");
                } else {
                    // Only attempts that moved their delivery count, once.
                    rollup.count(&record);
                }
            }
            let mut health_update = conn.prepare_cached(
                "UPDATE endpoints SET circuit_state = ?2, circuit_changed_at = ?3, consecutive_failures = ?4,
                     failing_since = ?5, last_attempt_at = ?6, last_success_at = ?7,
                     enabled = CASE WHEN ?8 IS NULL THEN enabled ELSE 0 END,
                     disabled_reason = COALESCE(?8, disabled_reason)
                 WHERE id = ?1",
            )?;
            for update in health {
                let h = update.health;
                health_update.execute(params![
                    update.endpoint_id.as_str(),
                    h.circuit.as_str(),
                    h.circuit_changed_at_ms,
                    h.consecutive_failures,
                    h.failing_since_ms,
                    h.last_attempt_at_ms,
                    h.last_success_at_ms,
                    update.disable,
                ])?;
            }
            // Last, so a failure above (which undoes this job) leaves no counts behind.
            aggregate(|a| a.add_rollup(now_ms.div_euclid(60_000), &rollup));
            Ok(())
        }, |_| {})
        .await
    }

    /// Backs `Store::release`.
    pub(super) async fn release_leases(
        &self,
        leases: Vec<(DeliveryId, LeaseToken)>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut release = conn.prepare_cached(
                "UPDATE deliveries SET lease_token = NULL, next_attempt_at = ?1, updated_at = ?1
                 WHERE id = ?2 AND lease_token = ?3 AND status = 'pending'",
            )?;
            for (id, lease) in leases {
                release.execute(params![now_ms, id.as_str(), lease.0])?;
            }
            Ok(())
        })
        .await
    }

    /// Backs `Store::next_due`.
    pub(super) async fn earliest_due(
        &self,
        endpoints: Vec<EndpointId>,
    ) -> Result<Vec<(EndpointId, i64)>, StoreError> {
        self.read(move |conn| {
            let mut next = conn.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending' AND endpoint_id = ?1",
            )?;
            let mut due = Vec::new();
            for endpoint in endpoints {
                let at: Option<i64> = next.query_row([endpoint.as_str()], |row| row.get(0))?;
                if let Some(at) = at {
                    due.push((endpoint, at));
                }
            }
            Ok(due)
        })
        .await
    }
}
