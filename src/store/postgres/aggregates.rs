//! Counts on PostgreSQL: the per-minute roll-ups and the per-session, per-model and per-day
//! usage aggregates, added by each transaction to (sharded) shared rows; and what reads them
//! (window totals, sessions, analytics).

use sqlx::{
    PgConnection, Row,
    postgres::{PgPool, PgRow},
};

use super::{PgStore, count};
use crate::{
    domain::{Analytics, ModelUsage, SessionStats, WindowTotals},
    store::{
        StoreError,
        rows::{self, RollupSums, SessionRow},
        shared::{self, ModelSums, SESSION_COLUMNS},
        tally::Aggregates,
    },
};

/// The 24 sums `RollupSums` reads, in its order.
const ROLLUP_SUMS: &str = "COALESCE(SUM(ingested), 0)::int8, COALESCE(SUM(duplicates), 0)::int8, COALESCE(SUM(attempts), 0)::int8, \
     COALESCE(SUM(successes), 0)::int8, COALESCE(SUM(failures), 0)::int8, COALESCE(SUM(throttled), 0)::int8, \
     COALESCE(SUM(retries), 0)::int8, COALESCE(SUM(delivered), 0)::int8, COALESCE(SUM(dead_lettered), 0)::int8, \
     COALESCE(SUM(duration_sum_ms), 0)::int8, COALESCE(SUM(latency_sum_ms), 0)::int8, \
     COALESCE(SUM(d0), 0)::int8, COALESCE(SUM(d1), 0)::int8, COALESCE(SUM(d2), 0)::int8, COALESCE(SUM(d3), 0)::int8, \
     COALESCE(SUM(d4), 0)::int8, COALESCE(SUM(d5), 0)::int8, COALESCE(SUM(d6), 0)::int8, COALESCE(SUM(d7), 0)::int8, \
     COALESCE(SUM(d8), 0)::int8, COALESCE(SUM(d9), 0)::int8, COALESCE(SUM(d10), 0)::int8, COALESCE(SUM(d11), 0)::int8, \
     COALESCE(MAX(duration_max_ms), 0)::int8";

impl PgStore {
    /// Backs `Store::window_totals`.
    pub(super) async fn sum_rollups(
        &self,
        since_ms: Option<i64>,
    ) -> Result<WindowTotals, StoreError> {
        let since = since_ms.map_or(i64::MIN, |ms| ms.div_euclid(60_000));
        let row = sqlx::query(&format!(
            "SELECT {ROLLUP_SUMS} FROM rollups WHERE minute >= $1"
        ))
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let mut sums = [0; 24];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = row.try_get(i)?;
        }
        Ok(RollupSums(sums).into())
    }

    /// Backs `Store::series`.
    pub(super) async fn rollup_series(
        &self,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, WindowTotals)>, StoreError> {
        let since = since_ms.max(0).div_euclid(60_000);
        let step = (step_ms / 60_000).max(1);
        let rows = sqlx::query(&format!(
            "SELECT (minute - $1) / $2 AS bucket, {ROLLUP_SUMS} FROM rollups WHERE minute >= $1
             GROUP BY bucket ORDER BY bucket"
        ))
        .bind(since)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut buckets = Vec::with_capacity(rows.len());
        for row in rows {
            let mut sums = [0; 24];
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum = row.try_get(i + 1)?;
            }
            let bucket: i64 = row.try_get(0)?;
            buckets.push(((since + bucket * step) * 60_000, RollupSums(sums).into()));
        }
        Ok(buckets)
    }

    /// Backs `Store::session`.
    pub(super) async fn find_session(
        &self,
        session_id: String,
    ) -> Result<Option<SessionStats>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
        ))
        .bind(&session_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(
                complete_session(&self.pool, session_from_row(&row)?).await?,
            )),
            None => Ok(None),
        }
    }

    /// Backs `Store::sessions`.
    pub(super) async fn sessions_seen(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionStats>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE last_seen >= $1 AND last_seen < $2
             ORDER BY last_seen DESC, session_id LIMIT $3"
        ))
        .bind(since_ms)
        .bind(until_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            sessions.push(complete_session(&self.pool, session_from_row(&row)?).await?);
        }
        Ok(sessions)
    }

    /// Backs `Store::analytics`.
    pub(super) async fn usage_summary(
        &self,
        now_ms: i64,
        days: u32,
    ) -> Result<Analytics, StoreError> {
        // Whole UTC days, today included, as on SQLite: "7 days" is today and the six before.
        let first_day = now_ms.div_euclid(86_400_000) - i64::from(days) + 1;
        let since_ms = first_day * 86_400_000;
        let sessions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE last_seen >= $1")
                .bind(since_ms)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT model, SUM(queries)::int8, SUM(successes)::int8, SUM(tokens)::int8, SUM(response_time_sum_ms)::int8
             FROM usage_daily WHERE day >= $1 GROUP BY model ORDER BY SUM(tokens) DESC, model",
        )
        .bind(first_day)
        .fetch_all(&self.pool)
        .await?;
        let models = rows
            .iter()
            .map(|row| {
                Ok(ModelSums {
                    model: row.try_get(0)?,
                    queries: count(row, 1)?,
                    successes: count(row, 2)?,
                    tokens: count(row, 3)?,
                    response_time_sum_ms: count(row, 4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let daily = sqlx::query(
            "SELECT day, SUM(queries)::int8, SUM(successes)::int8, SUM(tokens)::int8
             FROM usage_daily WHERE day >= $1 GROUP BY day ORDER BY day",
        )
        .bind(first_day)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(shared::DaySums {
                day: row.try_get(0)?,
                queries: count(row, 1)?,
                successes: count(row, 2)?,
                tokens: count(row, 3)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(delivered), 0)::int8, COALESCE(SUM(dead_lettered), 0)::int8,
                 COALESCE(SUM(attempts), 0)::int8
             FROM rollups WHERE minute >= $1",
        )
        .bind(since_ms.div_euclid(60_000))
        .fetch_one(&self.pool)
        .await?;
        Ok(shared::analytics(
            since_ms,
            days,
            sessions.unsigned_abs(),
            models,
            daily,
            (count(&row, 0)?, count(&row, 1)?, count(&row, 2)?),
        ))
    }
}

/// Rows per minute of `rollups` and per day and model of `usage_daily`.
pub(super) const AGGREGATE_SHARDS: i16 = 16;

/// Adds a transaction's counts to the shared aggregate rows, each table in one statement and
/// in key order (so two instances' transactions take these row locks in the same order). The
/// hot rows (this minute, today) are sharded: a transaction adds to one shard picked at random,
/// so concurrent transactions rarely queue for the same row.
pub(super) async fn write_aggregates(
    conn: &mut PgConnection,
    a: Aggregates,
) -> Result<(), sqlx::Error> {
    let shard: i16 = rand::random_range(0..AGGREGATE_SHARDS);
    if !a.sessions.is_empty() {
        let mut ids = Vec::new();
        let mut columns: [Vec<i64>; 7] = Default::default();
        for (id, d) in a.sessions {
            ids.push(id);
            for (column, value) in columns.iter_mut().zip([
                d.first_seen,
                d.last_seen,
                d.queries,
                d.successes,
                d.failures,
                d.response_time_sum_ms,
                d.tokens,
            ]) {
                column.push(value);
            }
        }
        let [first, last, queries, successes, failures, response, tokens] = columns;
        sqlx::query(
            "INSERT INTO sessions AS s (session_id, first_seen, last_seen, queries, successes, failures, response_time_sum_ms, tokens)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[])
             ON CONFLICT (session_id) DO UPDATE SET
                 first_seen = LEAST(s.first_seen, excluded.first_seen),
                 last_seen = GREATEST(s.last_seen, excluded.last_seen),
                 queries = s.queries + excluded.queries, successes = s.successes + excluded.successes,
                 failures = s.failures + excluded.failures,
                 response_time_sum_ms = s.response_time_sum_ms + excluded.response_time_sum_ms,
                 tokens = s.tokens + excluded.tokens",
        )
        .bind(ids)
        .bind(first)
        .bind(last)
        .bind(queries)
        .bind(successes)
        .bind(failures)
        .bind(response)
        .bind(tokens)
        .execute(&mut *conn)
        .await?;
    }
    if !a.session_models.is_empty() {
        let (mut sessions, mut models, mut queries, mut tokens) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((session, model), (n, t)) in a.session_models {
            sessions.push(session);
            models.push(model);
            queries.push(n);
            tokens.push(t);
        }
        sqlx::query(
            "INSERT INTO session_models AS m (session_id, model, queries, tokens)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])
             ON CONFLICT (session_id, model) DO UPDATE SET queries = m.queries + excluded.queries,
                 tokens = m.tokens + excluded.tokens",
        )
        .bind(sessions)
        .bind(models)
        .bind(queries)
        .bind(tokens)
        .execute(&mut *conn)
        .await?;
    }
    if !a.daily.is_empty() {
        let (mut days, mut models) = (Vec::new(), Vec::new());
        let mut columns: [Vec<i64>; 4] = Default::default();
        for ((day, model), d) in a.daily {
            days.push(day);
            models.push(model);
            for (column, value) in
                columns
                    .iter_mut()
                    .zip([d.queries, d.successes, d.tokens, d.response_time_sum_ms])
            {
                column.push(value);
            }
        }
        let [queries, successes, tokens, response] = columns;
        sqlx::query(
            "INSERT INTO usage_daily AS u (day, model, shard, queries, successes, tokens, response_time_sum_ms)
             SELECT d.day, d.model, $7, d.queries, d.successes, d.tokens, d.response
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                  AS d(day, model, queries, successes, tokens, response)
             ON CONFLICT (day, model, shard) DO UPDATE SET queries = u.queries + excluded.queries,
                 successes = u.successes + excluded.successes, tokens = u.tokens + excluded.tokens,
                 response_time_sum_ms = u.response_time_sum_ms + excluded.response_time_sum_ms",
        )
        .bind(days)
        .bind(models)
        .bind(queries)
        .bind(successes)
        .bind(tokens)
        .bind(response)
        .bind(shard)
        .execute(&mut *conn)
        .await?;
    }
    for (minute, r) in a.rollups {
        let b = &r.buckets;
        sqlx::query(
            "INSERT INTO rollups AS r (minute, shard, ingested, duplicates, attempts, successes, failures, throttled, retries,
                 delivered, dead_lettered, duration_sum_ms, latency_sum_ms, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11,
                 duration_max_ms)
             VALUES ($1, $25, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $26)
             ON CONFLICT (minute, shard) DO UPDATE SET
                 ingested = r.ingested + excluded.ingested, duplicates = r.duplicates + excluded.duplicates,
                 attempts = r.attempts + excluded.attempts, successes = r.successes + excluded.successes,
                 failures = r.failures + excluded.failures, throttled = r.throttled + excluded.throttled,
                 retries = r.retries + excluded.retries, delivered = r.delivered + excluded.delivered,
                 dead_lettered = r.dead_lettered + excluded.dead_lettered,
                 duration_sum_ms = r.duration_sum_ms + excluded.duration_sum_ms,
                 latency_sum_ms = r.latency_sum_ms + excluded.latency_sum_ms,
                 d0 = r.d0 + excluded.d0, d1 = r.d1 + excluded.d1, d2 = r.d2 + excluded.d2, d3 = r.d3 + excluded.d3,
                 d4 = r.d4 + excluded.d4, d5 = r.d5 + excluded.d5, d6 = r.d6 + excluded.d6, d7 = r.d7 + excluded.d7,
                 d8 = r.d8 + excluded.d8, d9 = r.d9 + excluded.d9, d10 = r.d10 + excluded.d10, d11 = r.d11 + excluded.d11,
                 duration_max_ms = GREATEST(r.duration_max_ms, excluded.duration_max_ms)",
        )
        .bind(minute)
        .bind(r.ingested)
        .bind(r.duplicates)
        .bind(r.attempts)
        .bind(r.successes)
        .bind(r.failures)
        .bind(r.throttled)
        .bind(r.retries)
        .bind(r.delivered)
        .bind(r.dead_lettered)
        .bind(r.duration_sum_ms)
        .bind(r.latency_sum_ms)
        .bind(b[0])
        .bind(b[1])
        .bind(b[2])
        .bind(b[3])
        .bind(b[4])
        .bind(b[5])
        .bind(b[6])
        .bind(b[7])
        .bind(b[8])
        .bind(b[9])
        .bind(b[10])
        .bind(b[11])
        .bind(shard)
        .bind(r.duration_max_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn session_from_row(row: &PgRow) -> Result<SessionStats, sqlx::Error> {
    Ok(SessionStats::from(SessionRow {
        session_id: row.try_get(0)?,
        first_seen: row.try_get(1)?,
        last_seen: row.try_get(2)?,
        queries: row.try_get(3)?,
        successes: row.try_get(4)?,
        failures: row.try_get(5)?,
        response_time_sum_ms: row.try_get(6)?,
        tokens: row.try_get(7)?,
    }))
}

/// Adds a session's models and webhook counts.
async fn complete_session(
    pool: &PgPool,
    mut session: SessionStats,
) -> Result<SessionStats, sqlx::Error> {
    let models = sqlx::query(
        "SELECT model, queries, tokens FROM session_models WHERE session_id = $1 ORDER BY queries DESC, model",
    )
    .bind(&session.session_id)
    .fetch_all(pool)
    .await?;
    for row in models {
        session.models.push(ModelUsage {
            model: row.try_get(0)?,
            queries: count(&row, 1)?,
            tokens: count(&row, 2)?,
        });
    }
    let counts = sqlx::query(
        "SELECT d.status, COUNT(*) FROM events e JOIN deliveries d ON d.event_id = e.id
         WHERE e.session_id = $1 GROUP BY d.status",
    )
    .bind(&session.session_id)
    .fetch_all(pool)
    .await?;
    for row in counts {
        rows::set_webhook_count(&mut session.webhooks, row.try_get(0)?, count(&row, 1)?);
    }
    Ok(session)
}
