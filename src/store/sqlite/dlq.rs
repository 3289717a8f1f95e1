//! The dead-letter queue on SQLite: listing, one delivery with its attempts, replay, purge and
//! the queue's counts.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};

use super::{SqliteStore, search::values};
use crate::{
    domain::DeliveryId,
    store::{
        AttemptView, DeliveryDetail, DeliverySummary, IDS_PER_STATEMENT, QueueCounts, Selection,
        StoreError,
        filter::{Dialect, Predicates},
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
        self.act_on_dead(which, move |conn, target, mut args| {
            args.push(Value::Integer(now_ms));
            let now = args.len();
            let sql = format!(
                "UPDATE deliveries SET status = 'pending', attempts = 0, throttled = 0, next_attempt_at = ?{now},
                     lease_token = NULL, finished_at = NULL, updated_at = ?{now}
                 WHERE status = 'dead' AND {target}"
            );
            Ok(conn.prepare_cached(&sql)?.execute(params_from_iter(args))?)
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
                    "UPDATE deliveries SET status = 'pending', attempts = 0, throttled = 0, next_attempt_at = ?1,
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
        self.act_on_dead(which, |conn, target, args| {
            let sql = format!("DELETE FROM deliveries WHERE status = 'dead' AND {target}");
            Ok(conn.prepare_cached(&sql)?.execute(params_from_iter(args))?)
        })
        .await
    }

    /// Runs `statement` (a replay or a purge of dead letters) on the selection, in bounded
    /// steps. It gets the condition naming the deliveries (placeholders `?1`…) and their
    /// values, and returns how many rows it changed.
    async fn act_on_dead<F>(&self, which: Selection, statement: F) -> Result<u64, StoreError>
    where
        F: Fn(&Connection, &str, Vec<Value>) -> Result<usize, StoreError> + Send + Sync + 'static,
    {
        let statement = Arc::new(statement);
        let changed = match which {
            Selection::One(id) => {
                let id = Value::Text(id.as_str().to_owned());
                self.write(move |conn| statement(conn, "id = ?1", vec![id]))
                    .await?
            }
            Selection::All => {
                self.write(move |conn| statement(conn, "TRUE", vec![]))
                    .await?
            }
            Selection::Ids(ids) => {
                // One transaction; each statement names at most IDS_PER_STATEMENT ids.
                self.write(move |conn| {
                    let mut changed = 0;
                    for chunk in ids.chunks(IDS_PER_STATEMENT) {
                        let list: Vec<String> =
                            (1..=chunk.len()).map(|i| format!("?{i}")).collect();
                        let values = chunk
                            .iter()
                            .map(|id| Value::Text(id.as_str().to_owned()))
                            .collect();
                        changed +=
                            statement(conn, &format!("id IN ({})", list.join(", ")), values)?;
                    }
                    Ok(changed)
                })
                .await?
            }
            Selection::Matching(filter) => {
                // Batches in transactions of their own, so a large selection never holds the
                // writer (and every ingest queued behind it) for long, walking the ids
                // downwards: a replayed delivery that dies again at once (its endpoint still
                // refusing) is behind the cursor and is not replayed twice.
                let mut changed = 0;
                let mut cursor: Option<DeliveryId> = None;
                loop {
                    let statement = Arc::clone(&statement);
                    let filter = filter.clone();
                    let before = cursor.clone();
                    let (n, last) = self
                        .write(move |conn| {
                            let p = Predicates::new(Dialect::Sqlite, &filter, before.as_ref(), true);
                            let ids = conn
                                .prepare(&format!(
                                    "SELECT d.id FROM deliveries d {} ORDER BY d.id DESC LIMIT {IDS_PER_STATEMENT}",
                                    p.where_clause()
                                ))?
                                .query_map(params_from_iter(values(p.args)), |row| row.get::<_, String>(0))?
                                .collect::<Result<Vec<_>, _>>()?;
                            let Some(last) = ids.last().cloned() else {
                                return Ok((0, None));
                            };
                            let list: Vec<String> = (1..=ids.len()).map(|i| format!("?{i}")).collect();
                            let n = statement(
                                conn,
                                &format!("id IN ({})", list.join(", ")),
                                ids.into_iter().map(Value::Text).collect(),
                            )?;
                            Ok((n, Some(last)))
                        })
                        .await?;
                    changed += n;
                    match last {
                        Some(last) => cursor = Some(DeliveryId::from_trusted(last)),
                        None => break changed,
                    }
                }
            }
        };
        Ok(changed as u64)
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

pub(super) fn summary_row(row: &Row<'_>) -> rusqlite::Result<SummaryRow> {
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
