//! Counts on SQLite: the per-minute roll-ups and the per-session, per-model and per-day usage
//! aggregates, gathered on the writer thread during a group commit and written once before it
//! commits; and what reads them (window totals, sessions, analytics).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use crate::{
    domain::{Analytics, ModelUsage, SessionStats, WindowTotals},
    store::{
        StoreError,
        rows::{self, RollupSums, SessionRow},
        shared::{self, ModelSums, SESSION_COLUMNS},
        tally::{Aggregates, Rollup},
    },
};

/// The 24 sums `RollupSums` reads, in its order.
const ROLLUP_SUMS: &str = "COALESCE(SUM(ingested), 0), COALESCE(SUM(duplicates), 0), COALESCE(SUM(attempts), 0), \
     COALESCE(SUM(successes), 0), COALESCE(SUM(failures), 0), COALESCE(SUM(throttled), 0), \
     COALESCE(SUM(retries), 0), COALESCE(SUM(delivered), 0), COALESCE(SUM(dead_lettered), 0), \
     COALESCE(SUM(duration_sum_ms), 0), COALESCE(SUM(latency_sum_ms), 0), \
     COALESCE(SUM(d0), 0), COALESCE(SUM(d1), 0), COALESCE(SUM(d2), 0), COALESCE(SUM(d3), 0), \
     COALESCE(SUM(d4), 0), COALESCE(SUM(d5), 0), COALESCE(SUM(d6), 0), COALESCE(SUM(d7), 0), \
     COALESCE(SUM(d8), 0), COALESCE(SUM(d9), 0), COALESCE(SUM(d10), 0), COALESCE(SUM(d11), \
     0), COALESCE(MAX(duration_max_ms), 0)";

impl SqliteStore {
    /// Backs `Store::window_totals`.
    pub(super) async fn sum_rollups(
        &self,
        since_ms: Option<i64>,
    ) -> Result<WindowTotals, StoreError> {
        self.read(move |conn| {
            let since = since_ms.map_or(i64::MIN, |ms| ms.div_euclid(60_000));
            let totals = conn
                .prepare_cached(&format!(
                    "SELECT {ROLLUP_SUMS} FROM rollups WHERE minute >= ?1"
                ))?
                .query_row([since], |row| {
                    let mut sums = [0; 24];
                    for (i, sum) in sums.iter_mut().enumerate() {
                        *sum = row.get(i)?;
                    }
                    Ok(RollupSums(sums))
                })?;
            Ok(totals.into())
        })
        .await
    }

    /// Backs `Store::series`.
    pub(super) async fn rollup_series(
        &self,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, WindowTotals)>, StoreError> {
        let since = since_ms.max(0).div_euclid(60_000);
        let step = (step_ms / 60_000).max(1);
        self.read(move |conn| {
            let buckets = conn
                .prepare_cached(&format!(
                    "SELECT (minute - ?1) / ?2 AS bucket, {ROLLUP_SUMS} FROM rollups WHERE minute >= ?1
                     GROUP BY bucket ORDER BY bucket"
                ))?
                .query_map([since, step], |row| {
                    let mut sums = [0; 24];
                    for (i, sum) in sums.iter_mut().enumerate() {
                        *sum = row.get(i + 1)?;
                    }
                    let bucket: i64 = row.get(0)?;
                    Ok(((since + bucket * step) * 60_000, RollupSums(sums).into()))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(buckets)
        })
        .await
    }

    /// Backs `Store::session`.
    pub(super) async fn find_session(
        &self,
        session_id: String,
    ) -> Result<Option<SessionStats>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"
                ))?
                .query_row([&session_id], session_from_row)
                .optional()?;
            found
                .map(|session| complete_session(conn, session))
                .transpose()
        })
        .await
    }

    /// Backs `Store::sessions`.
    pub(super) async fn sessions_seen(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionStats>, StoreError> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE last_seen >= ?1 AND last_seen < ?2
                     ORDER BY last_seen DESC, session_id LIMIT ?3"
                ))?
                .query_map(params![since_ms, until_ms, limit as i64], session_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|session| complete_session(conn, session))
                .collect()
        })
        .await
    }

    /// Backs `Store::analytics`.
    pub(super) async fn usage_summary(
        &self,
        now_ms: i64,
        days: u32,
    ) -> Result<Analytics, StoreError> {
        self.read(move |conn| {
            // Whole UTC days, today included, for every figure alike (daily usage rows cannot
            // be split): "7 days" is today and the six before it.
            let first_day = now_ms.div_euclid(86_400_000) - i64::from(days) + 1;
            let since_ms = first_day * 86_400_000;
            let sessions: i64 =
                conn.prepare_cached("SELECT COUNT(*) FROM sessions WHERE last_seen >= ?1")?.query_row([since_ms], |r| r.get(0))?;
            let models = conn
                .prepare_cached(
                    "SELECT model, SUM(queries), SUM(successes), SUM(tokens), SUM(response_time_sum_ms)
                     FROM usage_daily WHERE day >= ?1 GROUP BY model ORDER BY SUM(tokens) DESC, model",
                )?
                .query_map([first_day], |row| {
                    let n = |i: usize| row.get::<_, i64>(i).map(i64::unsigned_abs);
                    Ok(ModelSums {
                        model: row.get(0)?,
                        queries: n(1)?,
                        successes: n(2)?,
                        tokens: n(3)?,
                        response_time_sum_ms: n(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let daily = conn
                .prepare_cached(
                    "SELECT day, SUM(queries), SUM(successes), SUM(tokens)
                     FROM usage_daily WHERE day >= ?1 GROUP BY day ORDER BY day",
                )?
                .query_map([first_day], |row| {
                    let n = |i: usize| row.get::<_, i64>(i).map(i64::unsigned_abs);
                    Ok(shared::DaySums {
                        day: row.get(0)?,
                        queries: n(1)?,
                        successes: n(2)?,
                        tokens: n(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let webhooks: (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(delivered), 0), COALESCE(SUM(dead_lettered), 0), COALESCE(SUM(attempts), 0)
                     FROM rollups WHERE minute >= ?1",
                )?
                .query_row([since_ms.div_euclid(60_000)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(shared::analytics(
                since_ms,
                days,
                sessions.unsigned_abs(),
                models,
                daily,
                (webhooks.0.unsigned_abs(), webhooks.1.unsigned_abs(), webhooks.2.unsigned_abs()),
            ))
        })
        .await
    }
}

fn session_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        session_id: row.get(0)?,
        first_seen: row.get(1)?,
        last_seen: row.get(2)?,
        queries: row.get(3)?,
        successes: row.get(4)?,
        failures: row.get(5)?,
        response_time_sum_ms: row.get(6)?,
        tokens: row.get(7)?,
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionStats> {
    session_row(row).map(SessionStats::from)
}

/// Adds a session's models and webhook counts (indexed look-ups by session).
fn complete_session(
    conn: &Connection,
    mut session: SessionStats,
) -> Result<SessionStats, StoreError> {
    session.models = conn
        .prepare_cached("SELECT model, queries, tokens FROM session_models WHERE session_id = ?1 ORDER BY queries DESC, model")?
        .query_map([&session.session_id], |r| {
            Ok(ModelUsage {
                model: r.get(0)?,
                queries: r.get::<_, i64>(1)?.unsigned_abs(),
                tokens: r.get::<_, i64>(2)?.unsigned_abs(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut counts = conn.prepare_cached(
        "SELECT d.status, COUNT(*) FROM events e JOIN deliveries d ON d.event_id = e.id
         WHERE e.session_id = ?1 GROUP BY d.status",
    )?;
    for row in counts.query_map([&session.session_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (status, n) = row?;
        rows::set_webhook_count(&mut session.webhooks, &status, n.unsigned_abs());
    }
    Ok(session)
}

thread_local! {
    /// The writer thread's aggregates for the group commit in progress.
    static AGGREGATES: std::cell::RefCell<Aggregates> = std::cell::RefCell::new(Aggregates::default());
}

pub(super) fn aggregate(add: impl FnOnce(&mut Aggregates)) {
    AGGREGATES.with(|a| add(&mut a.borrow_mut()));
}

pub(super) fn discard() {
    AGGREGATES.with(|a| *a.borrow_mut() = Aggregates::default());
}

/// Writes the group commit's aggregates (inside its transaction).
pub(super) fn flush(conn: &Connection) -> Result<(), StoreError> {
    let a = AGGREGATES.with(|a| std::mem::take(&mut *a.borrow_mut()));
    for (minute, rollup) in &a.rollups {
        add_rollup(conn, *minute, rollup)?;
    }
    let mut sessions = conn.prepare_cached(
        "INSERT INTO sessions (session_id, first_seen, last_seen, queries, successes, failures, response_time_sum_ms, tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (session_id) DO UPDATE SET
             first_seen = MIN(first_seen, excluded.first_seen), last_seen = MAX(last_seen, excluded.last_seen),
             queries = queries + excluded.queries, successes = successes + excluded.successes,
             failures = failures + excluded.failures,
             response_time_sum_ms = response_time_sum_ms + excluded.response_time_sum_ms, tokens = tokens + excluded.tokens",
    )?;
    for (id, d) in &a.sessions {
        sessions.execute(params![
            id,
            d.first_seen,
            d.last_seen,
            d.queries,
            d.successes,
            d.failures,
            d.response_time_sum_ms,
            d.tokens
        ])?;
    }
    let mut models = conn.prepare_cached(
        "INSERT INTO session_models (session_id, model, queries, tokens) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (session_id, model) DO UPDATE SET queries = queries + excluded.queries,
             tokens = tokens + excluded.tokens",
    )?;
    for ((session, model), (queries, tokens)) in &a.session_models {
        models.execute(params![session, model, queries, tokens])?;
    }
    let mut daily = conn.prepare_cached(
        "INSERT INTO usage_daily (day, model, queries, successes, tokens, response_time_sum_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (day, model) DO UPDATE SET queries = queries + excluded.queries,
             successes = successes + excluded.successes, tokens = tokens + excluded.tokens,
             response_time_sum_ms = response_time_sum_ms + excluded.response_time_sum_ms",
    )?;
    for ((day, model), d) in &a.daily {
        daily.execute(params![
            day,
            model,
            d.queries,
            d.successes,
            d.tokens,
            d.response_time_sum_ms
        ])?;
    }
    Ok(())
}

fn add_rollup(conn: &Connection, minute: i64, r: &Rollup) -> Result<(), StoreError> {
    let b = &r.buckets;
    conn.prepare_cached(
        "INSERT INTO rollups (minute, ingested, duplicates, attempts, successes, failures, throttled, retries,
             delivered, dead_lettered, duration_sum_ms, latency_sum_ms, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11,
             duration_max_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
         ON CONFLICT (minute) DO UPDATE SET
             ingested = ingested + excluded.ingested, duplicates = duplicates + excluded.duplicates,
             attempts = attempts + excluded.attempts, successes = successes + excluded.successes,
             failures = failures + excluded.failures, throttled = throttled + excluded.throttled,
             retries = retries + excluded.retries, delivered = delivered + excluded.delivered,
             dead_lettered = dead_lettered + excluded.dead_lettered,
             duration_sum_ms = duration_sum_ms + excluded.duration_sum_ms,
             latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
             d0 = d0 + excluded.d0, d1 = d1 + excluded.d1, d2 = d2 + excluded.d2, d3 = d3 + excluded.d3,
             d4 = d4 + excluded.d4, d5 = d5 + excluded.d5, d6 = d6 + excluded.d6, d7 = d7 + excluded.d7,
             d8 = d8 + excluded.d8, d9 = d9 + excluded.d9, d10 = d10 + excluded.d10, d11 = d11 + excluded.d11,
             duration_max_ms = MAX(duration_max_ms, excluded.duration_max_ms)",
    )?
    .execute(params![
        minute, r.ingested, r.duplicates, r.attempts, r.successes, r.failures, r.throttled, r.retries,
        r.delivered, r.dead_lettered, r.duration_sum_ms, r.latency_sum_ms,
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], r.duration_max_ms,
    ])?;
    Ok(())
}
