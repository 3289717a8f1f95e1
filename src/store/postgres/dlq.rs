//! The dead-letter queue on PostgreSQL: listing, one delivery with its attempts, replay, purge
//! and the queue's counts.

use sqlx::{Row, postgres::PgRow};

use super::{PgStore, count, notify::WORK_CHANNEL, search::bind};
use crate::{
    domain::DeliveryId,
    store::{
        AttemptView, DeliveryDetail, DeliverySummary, IDS_PER_STATEMENT, QueueCounts, Selection,
        StoreError,
        filter::{Arg, Dialect, Predicates},
        rows::{self, AttemptRow, SummaryRow},
        shared::{ATTEMPT_COLUMNS, SUMMARY_COLUMNS},
    },
};

impl PgStore {
    /// Backs `Store::dead_letters`.
    pub(super) async fn list_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' ORDER BY d.finished_at DESC, d.id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| summary_row(row).map(DeliverySummary::from))
            .collect::<Result<_, _>>()?)
    }

    /// Backs `Store::delivery`.
    pub(super) async fn find_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<DeliveryDetail>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let summary = summary_row(&row)?.into();
        let payload: &[u8] = row.try_get("payload")?;
        let payload = rows::payload_json(payload);
        let attempts = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = $1 ORDER BY id"
        ))
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut attempts_log = Vec::with_capacity(attempts.len());
        for row in attempts {
            attempts_log.push(AttemptView::from(AttemptRow {
                attempt_no: row.try_get("attempt_no")?,
                started_at: row.try_get("started_at")?,
                duration_ms: row.try_get("duration_ms")?,
                status_code: row.try_get("status_code")?,
                error_kind: row.try_get("error_kind")?,
                error_detail: row.try_get("error_detail")?,
                response_snippet: row.try_get("response_snippet")?,
                outcome: row.try_get("outcome")?,
            }));
        }
        Ok(Some(DeliveryDetail {
            summary,
            payload,
            attempts_log,
        }))
    }

    /// Backs `Store::replay`.
    pub(super) async fn requeue_dead(
        &self,
        which: Selection,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let changed = self
            .act_on_dead(which, move |target, mut args| {
                args.push(Arg::Int(now_ms));
                let now = args.len();
                let sql = format!(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, throttled = 0, next_attempt_at = ${now},
                         lease_token = NULL, finished_at = NULL, updated_at = ${now}
                     WHERE status = 'dead' AND {target}"
                );
                (sql, args)
            })
            .await?;
        if changed > 0 {
            let _ = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WORK_CHANNEL)
                .bind(&self.schema)
                .execute(&self.pool)
                .await;
        }
        Ok(changed)
    }

    /// Backs `Store::replay_batch`.
    pub(super) async fn requeue_dead_batch(
        &self,
        after: Option<DeliveryId>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(u64, Option<DeliveryId>), StoreError> {
        let row = sqlx::query(
            "WITH batch AS (
                 SELECT id FROM deliveries WHERE status = 'dead' AND id > $2 ORDER BY id LIMIT $3 FOR UPDATE),
             replayed AS (
                 UPDATE deliveries d SET status = 'pending', attempts = 0, throttled = 0, next_attempt_at = $1,
                     lease_token = NULL, finished_at = NULL, updated_at = $1
                 FROM batch WHERE d.id = batch.id AND d.status = 'dead'
                 RETURNING d.id)
             SELECT COUNT(*), MAX(id) FROM replayed",
        )
        .bind(now_ms)
        .bind(after.as_ref().map_or("", DeliveryId::as_str))
        .bind(limit as i64)
        .fetch_one(&self.pool)
        .await?;
        let replayed = count(&row, 0)?;
        let last: Option<String> = row.try_get(1)?;
        if replayed > 0 {
            let _ = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WORK_CHANNEL)
                .bind(&self.schema)
                .execute(&self.pool)
                .await;
        }
        Ok((replayed, last.map(DeliveryId::from_trusted)))
    }

    /// Backs `Store::purge`.
    pub(super) async fn delete_dead(&self, which: Selection) -> Result<u64, StoreError> {
        self.act_on_dead(which, |target, args| {
            let sql = format!("DELETE FROM deliveries WHERE status = 'dead' AND {target}");
            (sql, args)
        })
        .await
    }

    /// Runs a replay or a purge of dead letters on the selection, in bounded steps. `statement`
    /// writes it from the condition naming the deliveries (placeholders `$1`…) and their values.
    async fn act_on_dead<F>(&self, which: Selection, statement: F) -> Result<u64, StoreError>
    where
        F: Fn(&str, Vec<Arg>) -> (String, Vec<Arg>),
    {
        Ok(match which {
            Selection::One(id) => {
                let (sql, args) = statement("id = $1", vec![Arg::Text(id.as_str().to_owned())]);
                bind(sqlx::query(&sql), args)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
            }
            Selection::All => {
                let (sql, args) = statement("TRUE", vec![]);
                bind(sqlx::query(&sql), args)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
            }
            Selection::Ids(ids) => {
                // One transaction; each statement names at most IDS_PER_STATEMENT ids.
                let mut tx = self.pool.begin().await?;
                let mut changed = 0;
                for chunk in ids.chunks(IDS_PER_STATEMENT) {
                    let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let values = chunk
                        .iter()
                        .map(|id| Arg::Text(id.as_str().to_owned()))
                        .collect();
                    let (sql, args) = statement(&format!("id IN ({})", list.join(", ")), values);
                    changed += bind(sqlx::query(&sql), args)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                changed
            }
            Selection::Matching(filter) => {
                // Batches of their own, so a large selection never holds its rows locked for
                // long, walking the ids downwards: a replayed delivery that dies again at once
                // (its endpoint still refusing) is behind the cursor and is not replayed twice.
                let mut changed = 0;
                let mut cursor: Option<DeliveryId> = None;
                loop {
                    let p = Predicates::new(Dialect::Postgres, &filter, cursor.as_ref(), true);
                    let ids: Vec<String> = bind(
                        sqlx::query(&format!(
                            "SELECT d.id FROM deliveries d {} ORDER BY d.id DESC LIMIT {IDS_PER_STATEMENT}",
                            p.where_clause()
                        )),
                        p.args,
                    )
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<_, _>>()?;
                    let Some(last) = ids.last().cloned() else {
                        break changed;
                    };
                    let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                    let (sql, args) = statement(
                        &format!("id IN ({})", list.join(", ")),
                        ids.into_iter().map(Arg::Text).collect(),
                    );
                    changed += bind(sqlx::query(&sql), args)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    cursor = Some(DeliveryId::from_trusted(last));
                }
            }
        })
    }

    /// Backs `Store::counts`.
    pub(super) async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                    (SELECT COUNT(*) FROM deliveries WHERE status = 'dead'),
                    (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueCounts {
            pending: count(&row, 0)?,
            dead: count(&row, 1)?,
            oldest_pending_ms: row.try_get(2)?,
        })
    }
}

pub(super) fn summary_row(row: &PgRow) -> Result<SummaryRow, sqlx::Error> {
    Ok(SummaryRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_type: row.try_get("event_type")?,
        session_id: row.try_get("session_id")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        total_attempts: row.try_get("total_attempts")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        finished_at: row.try_get("finished_at")?,
        throttled: row.try_get("throttled")?,
    })
}
