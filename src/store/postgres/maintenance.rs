//! Upkeep on PostgreSQL: retention, statistics, vacuum; backups are pg_dump's business.

use sqlx::{Row, postgres::PgPool};

use super::{PgStore, commit::retrying, count, quoted};
use crate::{
    domain::CleanupReport,
    store::{
        DbStats, MaintenanceReport, OnProgress, Progress, StoreError, TableStats,
        shared::RETENTION_BATCH,
    },
};

impl PgStore {
    /// Backs `Store::ping`.
    pub(super) async fn ping_database(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Backs `Store::cleanup`.
    pub(super) async fn remove_expired(
        &self,
        cutoff_ms: i64,
        dry_run: bool,
        progress: OnProgress,
    ) -> Result<CleanupReport, StoreError> {
        const EVENTS: &str = "removing delivered events";
        const SESSIONS: &str = "removing idle sessions";
        if dry_run {
            progress.report(Progress::phase("counting what would go"));
            let row = sqlx::query(
                "WITH finished AS (
                     SELECT id FROM events e WHERE created_at < $1
                         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')),
                 doomed AS (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM finished))
                 SELECT (SELECT COUNT(*) FROM finished), (SELECT COUNT(*) FROM doomed),
                        (SELECT COUNT(*) FROM attempts WHERE delivery_id IN (SELECT id FROM doomed)),
                        (SELECT COUNT(*) FROM sessions WHERE last_seen < $1),
                        (SELECT COUNT(*) FROM alerts WHERE resolved_at < $1),
                        (SELECT COUNT(DISTINCT minute) FROM rollups WHERE minute < $2)",
            )
            .bind(cutoff_ms)
            .bind(cutoff_ms.div_euclid(60_000))
            .fetch_one(&self.pool)
            .await?;
            return Ok(CleanupReport {
                events: count(&row, 0)?,
                deliveries: count(&row, 1)?,
                attempts: count(&row, 2)?,
                sessions: count(&row, 3)?,
                alerts: count(&row, 4)?,
                rollups: count(&row, 5)?,
                dry_run: true,
            });
        }
        // Totals for the progress bar, counted only when somebody watches it: more events may
        // finish meanwhile, so the bar's end moves out if the batches pass it.
        let count_first = |sql: &'static str| {
            let watched = progress.is_watched();
            async move {
                if !watched {
                    return Ok::<_, StoreError>(None);
                }
                let n: i64 = sqlx::query_scalar(sql)
                    .bind(cutoff_ms)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Some(n.unsigned_abs()))
            }
        };
        let report_step = |phase, done: u64, total: Option<u64>| {
            progress.report(Progress {
                phase,
                done,
                total: total.map(|t| t.max(done)),
            });
        };
        let mut report = CleanupReport::default();
        let events_total = count_first(
            "SELECT COUNT(*) FROM events e WHERE created_at < $1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')",
        )
        .await?;
        report_step(EVENTS, 0, events_total);
        // Each batch starts where the last one stopped, so old events that must stay (pending,
        // dead-lettered) are walked past once per pass, not once per batch.
        let mut cursor = i64::MIN;
        loop {
            let (events, deliveries, attempts, last) =
                retrying(|| retention_batch(&self.pool, cutoff_ms, cursor)).await?;
            report.events += events;
            report.deliveries += deliveries;
            report.attempts += attempts;
            report_step(EVENTS, report.events, events_total);
            match last {
                Some(last) if events == RETENTION_BATCH => cursor = last,
                _ => break,
            }
        }
        let sessions_total =
            count_first("SELECT COUNT(*) FROM sessions WHERE last_seen < $1").await?;
        report_step(SESSIONS, 0, sessions_total);
        loop {
            let removed = retrying(|| {
                sqlx::query(
                    "DELETE FROM sessions WHERE session_id IN
                     (SELECT session_id FROM sessions WHERE last_seen < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(cutoff_ms)
                .bind(RETENTION_BATCH as i64)
                .execute(&self.pool)
            })
            .await?
            .rows_affected();
            report.sessions += removed;
            report_step(SESSIONS, report.sessions, sessions_total);
            if removed < RETENTION_BATCH {
                break;
            }
        }
        progress.report(Progress::phase("removing resolved alerts and roll-ups"));
        // Deliveries whose endpoint is gone (an ingest that raced the endpoint's deletion):
        // nothing would ever claim them.
        report.deliveries += sqlx::query(
            "DELETE FROM deliveries d WHERE status IN ('pending', 'dead')
                 AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = d.endpoint_id)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        report.alerts = sqlx::query("DELETE FROM alerts WHERE resolved_at < $1")
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Minutes, as on SQLite, not the shards each minute is kept in.
        let removed: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM rollups WHERE minute < $1 RETURNING minute)
             SELECT COUNT(DISTINCT minute) FROM gone",
        )
        .bind(cutoff_ms.div_euclid(60_000))
        .fetch_one(&self.pool)
        .await?;
        report.rollups = removed.unsigned_abs();
        Ok(report)
    }

    /// Backs `Store::db_stats`.
    pub(super) async fn stats(&self) -> Result<DbStats, StoreError> {
        let page_size: i64 = sqlx::query_scalar("SELECT current_setting('block_size')::int8")
            .fetch_one(&self.pool)
            .await?;
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.relname::text, pg_total_relation_size(c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tables = Vec::with_capacity(sizes.len());
        for (name, bytes) in sizes {
            let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", quoted(&name)))
                .fetch_one(&self.pool)
                .await?;
            tables.push(TableStats {
                name,
                rows: rows.unsigned_abs(),
                bytes: bytes.unsigned_abs(),
            });
        }
        tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        let total: u64 = tables.iter().map(|t| t.bytes).sum();
        let schema_version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?;
        Ok(DbStats {
            backend: "postgres".into(),
            // The schema's share of the server's files; its log is the server's own business.
            file_bytes: total,
            wal_bytes: 0,
            page_size: page_size.unsigned_abs(),
            page_count: total / page_size.unsigned_abs().max(1),
            // PostgreSQL reuses freed space inside each table (VACUUM); nothing is "free" here.
            free_pages: 0,
            schema_version,
            tables,
        })
    }

    /// Backs `Store::maintain`.
    pub(super) async fn maintain_database(
        &self,
        full: bool,
        progress: OnProgress,
    ) -> Result<MaintenanceReport, StoreError> {
        progress.report(Progress::phase("integrity check"));
        // What the server knows of corrupt pages (counted when data checksums are on).
        let failures: Option<i64> = sqlx::query_scalar(
            "SELECT checksum_failures FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        let integrity = match failures.unwrap_or(0) {
            0 => vec!["ok".to_owned()],
            n => vec![format!("PostgreSQL has counted {n} page checksum failures")],
        };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        // VACUUM cannot run in a transaction; each table on its own keeps the locks short.
        // FULL rewrites each table under an exclusive lock: for quiet hours, as on SQLite.
        let verb = if full {
            "VACUUM (FULL, ANALYZE)"
        } else {
            "VACUUM (ANALYZE)"
        };
        vacuum(&self.pool, verb, &tables, &progress).await?;
        Ok(MaintenanceReport {
            integrity,
            free_pages_before: 0,
            free_pages_after: 0,
            vacuum: if full {
                "full".into()
            } else {
                "incremental".into()
            },
        })
    }

    /// Backs `Store::backup`.
    pub(super) async fn copy_database(
        &self,
        _path: std::path::PathBuf,
        _progress: OnProgress,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "`hookrelay backup` copies the SQLite file; back up a PostgreSQL database with pg_dump \
             (e.g. pg_dump --schema=SCHEMA DATABASE_URL)"
                .into(),
        ))
    }
}

/// Deletes up to a batch of old, fully delivered events (with their deliveries and attempts,
/// by cascade) created in `[cursor, cutoff)`; returns the counts and the newest one removed.
async fn retention_batch(
    pool: &PgPool,
    cutoff_ms: i64,
    cursor: i64,
) -> Result<(u64, u64, u64, Option<i64>), sqlx::Error> {
    // Every part of one statement sees the same snapshot: the counts are of what is deleted.
    let row = sqlx::query(
        "WITH batch AS (
             SELECT id, created_at FROM events e WHERE created_at < $1 AND created_at >= $2
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')
             ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED),
         doomed AS (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM batch)),
         gone AS (DELETE FROM events WHERE id IN (SELECT id FROM batch) RETURNING created_at)
         SELECT (SELECT COUNT(*) FROM gone), (SELECT COUNT(*) FROM doomed),
                (SELECT COUNT(*) FROM attempts WHERE delivery_id IN (SELECT id FROM doomed)),
                (SELECT MAX(created_at) FROM gone)",
    )
    .bind(cutoff_ms)
    .bind(cursor)
    .bind(RETENTION_BATCH as i64)
    .fetch_one(pool)
    .await?;
    Ok((
        count(&row, 0)?,
        count(&row, 1)?,
        count(&row, 2)?,
        row.try_get(3)?,
    ))
}

/// Runs `verb` (a VACUUM) on each table, on one connection without the statement timeout: a
/// large table's VACUUM FULL may rightly take longer than any statement of the relay's own.
/// Reports the tables done to `progress`.
async fn vacuum(
    pool: &PgPool,
    verb: &'static str,
    tables: &[String],
    progress: &OnProgress,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let mut vacuumed = Ok(());
    let total = tables.len() as u64;
    for (done, table) in (0..).zip(tables) {
        progress.report(Progress::step(verb, done, total));
        let statement = format!("{verb} {}", quoted(table));
        vacuumed = sqlx::query(&statement)
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map(|_| ());
        if vacuumed.is_err() {
            break;
        }
        progress.report(Progress::step(verb, done + 1, total));
    }
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    vacuumed
}
