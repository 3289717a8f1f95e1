//! The dead-letter queue on SQLite: listing, one delivery with its attempts, replay, purge and
//! the queue's counts.

use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use crate::{
    domain::DeliveryId,
    store::{
        AttemptView, DeliveryDetail, DeliverySummary, QueueCounts, Selection, StoreError,
        rows::{self, AttemptRow, SummaryRow},
        shared::{ATTEMPT_COLUMNS, SUMMARY_COLUMNS},
    },
};

impl SqliteStore {
    /// Backs `Store::dead_letters`.
    pub(super) async fn list_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        self.read(move |conn| {
            let mut list = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.status = 'dead' ORDER BY d.finished_at DESC, d.id DESC LIMIT ?1"
            ))?;
            let rows = list
                .query_map([limit as i64], |row| {
                    summary_row(row).map(DeliverySummary::from)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Backs `Store::delivery`.
    pub(super) async fn find_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<DeliveryDetail>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.id = d.event_id
                         WHERE d.id = ?1"
                    ),
                    [id.as_str()],
                    |row| Ok((summary_row(row)?, row.get::<_, Vec<u8>>(14)?)),
                )
                .optional()?;
            let Some((summary, payload)) = found else {
                return Ok(None);
            };
            let mut attempts = conn.prepare_cached(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = ?1 ORDER BY id"
            ))?;
            let attempts_log = attempts
                .query_map([id.as_str()], |row| {
                    Ok(AttemptView::from(AttemptRow {
                        attempt_no: row.get(0)?,
                        started_at: row.get(1)?,
                        duration_ms: row.get(2)?,
                        status_code: row.get(3)?,
                        error_kind: row.get(4)?,
                        error_detail: row.get(5)?,
                        response_snippet: row.get(6)?,
                        outcome: row.get(7)?,
                    }))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(DeliveryDetail {
                summary: summary.into(),
                payload: rows::payload_json(&payload),
                attempts_log,
            }))
        })
        .await
    }

    /// Backs `Store::replay`.
    pub(super) async fn requeue_dead(
        &self,
        which: Selection,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let sql =
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                           lease_token = NULL, finished_at = NULL, updated_at = ?1
                       WHERE status = 'dead'";
            let changed = match which {
                Selection::One(id) => {
                    conn.execute(&format!("{sql} AND id = ?2"), params![now_ms, id.as_str()])?
                }
                Selection::All => conn.execute(sql, params![now_ms])?,
            };
            Ok(changed as u64)
        })
        .await
    }

    /// Backs `Store::replay_batch`.
    pub(super) async fn requeue_dead_batch(
        &self,
        after: Option<DeliveryId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(u64, Option<DeliveryId>), StoreError> {
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                         lease_token = NULL, finished_at = NULL, updated_at = ?1
                     WHERE id IN (SELECT id FROM deliveries WHERE status = 'dead' AND id > ?2
                                  ORDER BY id LIMIT ?3)
                     RETURNING id",
                )?
                .query_map(
                    params![
                        now_ms,
                        after.as_ref().map_or("", DeliveryId::as_str),
                        limit as i64
                    ],
                    |row| row.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let replayed = ids.len() as u64;
            Ok((
                replayed,
                ids.into_iter().max().map(DeliveryId::from_trusted),
            ))
        })
        .await
    }

    /// Backs `Store::purge`.
    pub(super) async fn delete_dead(&self, which: Selection) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let changed = match which {
                Selection::One(id) => conn.execute(
                    "DELETE FROM deliveries WHERE status = 'dead' AND id = ?1",
                    [id.as_str()],
                )?,
                Selection::All => {
                    conn.execute("DELETE FROM deliveries WHERE status = 'dead'", [])?
                }
            };
            Ok(changed as u64)
        })
        .await
    }

    /// Backs `Store::counts`.
    pub(super) async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        self.read(|conn| {
            let count = |sql: &str| -> Result<u64, StoreError> {
                let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
                Ok(n.unsigned_abs())
            };
            let pending = count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")?;
            let dead = count("SELECT COUNT(*) FROM deliveries WHERE status = 'dead'")?;
            let oldest_pending_ms: Option<i64> = conn.query_row(
                "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'",
                [],
                |row| row.get(0),
            )?;
            Ok(QueueCounts {
                pending,
                dead,
                oldest_pending_ms,
            })
        })
        .await
    }
}

fn summary_row(row: &Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        id: row.get(0)?,
        event_id: row.get(1)?,
        endpoint_id: row.get(2)?,
        event_type: row.get(3)?,
        session_id: row.get(4)?,
        status: row.get(5)?,
        attempts: row.get(6)?,
        total_attempts: row.get(7)?,
        last_status: row.get(8)?,
        last_error: row.get(9)?,
        created_at: row.get(10)?,
        next_attempt_at: row.get(11)?,
        finished_at: row.get(12)?,
        throttled: row.get(13)?,
    })
}
