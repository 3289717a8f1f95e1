//! The embedded SQLite store.
//!
//! One writer thread owns the only write connection. Every write is a job sent to it; the
//! thread takes all jobs waiting in its channel, runs each in its own savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers each caller. Under load
//! hundreds of ingests share one fsync (group commit); when idle, a lone ingest commits at once.
//! Reads go to a small pool of separate connections (WAL lets them run beside the writer).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params, types::Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    AttemptRecord, AttemptView, ClaimedDelivery, DbStats, DeliveryDetail, DeliverySummary,
    HealthUpdate, Ingested, LEAD_SQL, LeaseToken, MaintenanceReport, NewEvent, NextState,
    QueueCounts, Selection, Store, StoreError, TableStats,
    rows::{self, AlertRow, AttemptRow, EndpointRow, SessionRow, SummaryRow},
    shared::{
        self, ALERT_COLUMNS, ATTEMPT_COLUMNS, DEFAULT_DESCRIPTION, DefaultEndpointSync,
        ENDPOINT_COLUMNS, ModelSums, RETENTION_BATCH, SESSION_COLUMNS, SUMMARY_COLUMNS,
        UNSET_REASON, json_text,
    },
    tally::{Aggregates, Rollup},
};
use crate::{
    config::SqliteSync,
    domain::{
        Alert, Analytics, CleanupReport, Condition, DeliveryId, Endpoint, EndpointId, EndpointUrl,
        EventFilter, EventId, EventType, ModelUsage, SessionStats, WindowTotals,
    },
};

/// Versioned schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "delivery_core",
        include_str!("../../migrations/sqlite/0001_delivery_core.sql"),
    ),
    (
        2,
        "endpoints",
        include_str!("../../migrations/sqlite/0002_endpoints.sql"),
    ),
    (
        3,
        "monitoring",
        include_str!("../../migrations/sqlite/0003_monitoring.sql"),
    ),
    (
        4,
        "sessions",
        include_str!("../../migrations/sqlite/0004_sessions.sql"),
    ),
    (
        5,
        "pending_age",
        include_str!("../../migrations/sqlite/0005_pending_age.sql"),
    ),
    (
        6,
        "alert_delivery",
        include_str!("../../migrations/sqlite/0006_alert_delivery.sql"),
    ),
    (
        7,
        "scale_out",
        include_str!("../../migrations/sqlite/0007_scale_out.sql"),
    ),
];

/// Most jobs committed in one transaction; bounds how long one commit holds the lock.
const MAX_GROUP: usize = 2048;
/// Write jobs that may wait for the writer; beyond this, callers wait (backpressure).
const WRITE_QUEUE: usize = 16_384;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(error.to_string()),
            _ => StoreError::caused("SQLite", error),
        }
    }
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Finish + Send>;

/// Idle read connections, opened on demand.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, SqliteSync::Normal),
        }
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < 8
        {
            idle.push(conn);
        }
    }
}

/// hookrelay's data in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<ReaderPool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish()
    }
}

fn open_connection(path: &Path, sync: SqliteSync) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Query-planner stability: without it SQLite re-prepares a statement whenever a bound
    // value that fed its plan changes (a `LIMIT ?`, STAT4 estimates). Every hot statement of
    // ours is such a statement, and re-parsing cost 12% of the writer thread in profiles; our
    // queries have one good plan whatever the values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let synchronous = match sync {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    // auto_vacuum first: it only takes effect on a new, empty database, before WAL mode writes
    // the header; it lets `db maintain` return free pages without a full VACUUM.
    conn.execute_batch(&format!(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;"
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    // IMMEDIATE: two processes starting at once must not both apply a migration.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, now],
        )?;
        tracing::info!(version, name, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}

fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Job>, wal: PathBuf) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut wal_checked = std::time::Instant::now();
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
            .map(|_| ())
            .map_err(StoreError::from);
        // SQLite itself may roll the whole transaction back on some errors (disk full, I/O).
        // Jobs that ran before that must not be told they succeeded, and later jobs must not
        // run outside the transaction: the whole group fails.
        let mut lost: Option<StoreError> = begun.as_ref().err().cloned();
        let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match &lost {
                Some(error) => finishes.push(job(Err(error.clone()))),
                None => {
                    finishes.push(job(Ok(&conn)));
                    if conn.is_autocommit() {
                        lost = Some(StoreError::database(
                            "the database rolled the transaction back; nothing in it was stored",
                        ));
                    }
                }
            }
        }
        if begun.is_ok()
            && lost.is_none()
            && let Err(e) = flush_aggregates(&conn)
        {
            lost = Some(e);
        }
        discard_aggregates();
        let committed = match (&begun, lost) {
            // BEGIN failed: each job already carries the error.
            (Err(_), _) => Ok(()),
            (Ok(()), Some(error)) => {
                // Whatever failed, the transaction must not stay open: it would hold the write
                // lock and turn every later write into "transaction within a transaction".
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(error)
            }
            (Ok(()), None) => conn
                .prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(|_| ())
                .map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    StoreError::from(e)
                }),
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = finishes.len(), "database commit failed");
            // The fan-out list may have been cached at a generation this group bumped and
            // then lost; a later change could bring the counter back to it.
            DESTINATIONS.with(|cached| cached.borrow_mut().take());
        }
        for finish in finishes {
            finish(committed.clone());
        }
        // Under continuous writes the side thread's passive checkpoints never reach the log's
        // end, so the log only grows (seen: 2.6 GiB in a long retention pass). Between two
        // commits the writer can finish the checkpoint; the passive ones copied most of it.
        if wal_checked.elapsed() >= Duration::from_secs(1) {
            wal_checked = std::time::Instant::now();
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES)
                && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::debug!(error = %e, "log truncation skipped");
            }
        }
    }
}

/// Past this size the writer checkpoints the log itself between two commits. Small commits
/// write whole pages, so at 1,000 events/s the log grows by over 10 MiB a second, and the side
/// thread's passive checkpoints, racing the writer, never reach its end, so it would never
/// restart. The writer's own checkpoint does reach it (the side thread has already copied
/// nearly everything, so it is short), the next commit starts the log afresh, and
/// `journal_size_limit` trims the file back to this size.
const WAL_RESTART_BYTES: u64 = 64 << 20;

/// Copies the write-ahead log into the database five times a second (PASSIVE: never waits
/// for, nor blocks, the writer or readers), until the store is dropped. The writer finishes
/// the job between commits once the log passes `WAL_RESTART_BYTES`.
fn checkpoint_loop(path: &Path, alive: &mpsc::WeakSender<Job>, sync: SqliteSync) {
    let Ok(conn) = open_connection(path, sync) else {
        tracing::warn!(
            "cannot open the checkpoint connection; the log is checkpointed when the store closes"
        );
        return;
    };
    while alive.upgrade().is_some() {
        std::thread::sleep(Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

/// Runs `work` in a savepoint so that its failure undoes only its own writes.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached: these run for every write, and parsing them showed up in profiles.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match work(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path, sync: SqliteSync) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let writer_path = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            if let Some(parent) = writer_path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::caused(format!("cannot create {}", parent.display()), e)
                })?;
            }
            let mut conn = open_connection(&writer_path, sync)?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|_| StoreError::Closed)??;

        // Checkpoints run beside the writer, not inside its commits: an automatic checkpoint
        // would fsync the database file in the middle of a group commit and stall every
        // waiting ingest (seen as 100+ ms p99 spikes at a steady 1,000 events/s).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let (jobs, receiver) = mpsc::channel(WRITE_QUEUE);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        std::thread::Builder::new()
            .name("hookrelay-sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver, wal))
            .map_err(|e| StoreError::caused("cannot start the writer thread", e))?;
        let alive = jobs.downgrade();
        let checkpoint_path = path.clone();
        std::thread::Builder::new()
            .name("hookrelay-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_path, &alive, sync))
            .map_err(|e| StoreError::caused("cannot start the checkpoint thread", e))?;
        Ok(Self {
            jobs,
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `work` on the writer connection, in the next group commit; returns once committed.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(|conn| in_savepoint(conn, work));
            Box::new(move |committed| {
                let _ = reply.send(committed.and(result));
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Checkpoints the write-ahead log from a side connection; `truncate` also shrinks the log
    /// file (waiting for the writer between two commits).
    async fn checkpoint(&self, truncate: bool) -> Result<(), StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
            let result = conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .map_err(StoreError::from);
            readers.put(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a read connection, off the async threads.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// `claim_due`, or with `retried_only` only deliveries attempted before.
    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
        retried_only: bool,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.write(move |conn| {
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
                    let (event_type, payload, created_at, session_id) =
                        event.query_row([&event_id], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, Vec<u8>>(1)?,
                                row.get::<_, i64>(2)?,
                                row.get::<_, Option<String>>(3)?,
                            ))
                        })?;
                    claimed.push(ClaimedDelivery {
                        id: DeliveryId::from_trusted(id),
                        event_id: EventId::from_trusted(event_id),
                        endpoint_id: endpoint.clone(),
                        event_type: EventType::from_trusted(event_type),
                        payload: Bytes::from(payload),
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

fn add_rollup(conn: &Connection, minute: i64, r: &Rollup) -> Result<(), StoreError> {
    let b = &r.buckets;
    conn.prepare_cached(
        "INSERT INTO rollups (minute, ingested, duplicates, attempts, successes, failures, throttled, retries,
             delivered, dead_lettered, duration_sum_ms, latency_sum_ms, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)
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
             d8 = d8 + excluded.d8, d9 = d9 + excluded.d9, d10 = d10 + excluded.d10, d11 = d11 + excluded.d11",
    )?
    .execute(params![
        minute, r.ingested, r.duplicates, r.attempts, r.successes, r.failures, r.throttled, r.retries,
        r.delivered, r.dead_lettered, r.duration_sum_ms, r.latency_sum_ms,
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
    ])?;
    Ok(())
}

fn alert_row(row: &Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: row.get(0)?,
        rule: row.get(1)?,
        level: row.get(2)?,
        message: row.get(3)?,
        value: row.get(4)?,
        threshold: row.get(5)?,
        fired_at: row.get(6)?,
        resolved_at: row.get(7)?,
    })
}

fn alert_from_row(row: &Row<'_>) -> rusqlite::Result<Alert> {
    alert_row(row).map(Alert::from)
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
        .prepare_cached("SELECT model, queries FROM session_models WHERE session_id = ?1 ORDER BY queries DESC, model")?
        .query_map([&session.session_id], |r| {
            Ok(ModelUsage {
                model: r.get(0)?,
                queries: r.get::<_, i64>(1)?.unsigned_abs(),
                tokens: 0,
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
        let n = n.unsigned_abs();
        match status.as_str() {
            "delivered" => session.webhooks.delivered = n,
            "dead" => session.webhooks.dead = n,
            _ => session.webhooks.pending = n,
        }
    }
    Ok(session)
}

thread_local! {
    /// The writer thread's aggregates for the group commit in progress.
    static AGGREGATES: std::cell::RefCell<Aggregates> = std::cell::RefCell::new(Aggregates::default());
}

fn aggregate(add: impl FnOnce(&mut Aggregates)) {
    AGGREGATES.with(|a| add(&mut a.borrow_mut()));
}

fn discard_aggregates() {
    AGGREGATES.with(|a| *a.borrow_mut() = Aggregates::default());
}

/// Writes the group commit's aggregates (inside its transaction).
fn flush_aggregates(conn: &Connection) -> Result<(), StoreError> {
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
        "INSERT INTO session_models (session_id, model, queries) VALUES (?1, ?2, ?3)
         ON CONFLICT (session_id, model) DO UPDATE SET queries = queries + excluded.queries",
    )?;
    for ((session, model), queries) in &a.session_models {
        models.execute(params![session, model, queries])?;
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

/// Replaces the database at `target` with the backup at `backup`, after checking the backup.
/// The caller makes sure no process has the database open.
pub fn restore(backup: &Path, target: &Path) -> Result<(), StoreError> {
    let check = Connection::open_with_flags(backup, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let verdict: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::database(format!(
            "the backup fails its integrity check: {verdict}"
        )));
    }
    let _: i64 = check
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(|e| StoreError::caused("the file is not a hookrelay database", e))?;
    drop(check);
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::caused(format!("cannot create {}", parent.display()), e))?;
    }
    let mut staging = target.as_os_str().to_owned();
    staging.push(".restoring");
    let staging = std::path::PathBuf::from(staging);
    std::fs::copy(backup, &staging).map_err(|e| StoreError::caused("cannot copy the backup", e))?;
    // On disk before it replaces anything.
    std::fs::File::open(&staging)
        .and_then(|file| file.sync_all())
        .map_err(|e| StoreError::caused("cannot flush the copy", e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    std::fs::rename(&staging, target)
        .map_err(|e| StoreError::caused("cannot replace the database", e))?;
    Ok(())
}

fn endpoint_row(row: &Row<'_>) -> rusqlite::Result<EndpointRow> {
    Ok(EndpointRow {
        id: row.get(0)?,
        url: row.get(1)?,
        description: row.get(2)?,
        event_types: row.get(3)?,
        secret: row.get(4)?,
        previous_secret: row.get(5)?,
        previous_secret_until: row.get(6)?,
        headers: row.get(7)?,
        timeout_ms: row.get(8)?,
        max_retries: row.get(9)?,
        rate_limit: row.get(10)?,
        rate_burst: row.get(11)?,
        circuit_threshold: row.get(12)?,
        enabled: row.get(13)?,
        disabled_reason: row.get(14)?,
        managed_by_config: row.get(15)?,
        circuit_state: row.get(16)?,
        circuit_changed_at: row.get(17)?,
        consecutive_failures: row.get(18)?,
        failing_since: row.get(19)?,
        last_attempt_at: row.get(20)?,
        last_success_at: row.get(21)?,
        created_at: row.get(22)?,
        updated_at: row.get(23)?,
    })
}

/// `?1` the id, `?2`–`?15` the settings (url to disabled_reason, in table order), then `extra`:
/// the parameters shared by the endpoint INSERT and UPDATE.
fn endpoint_values<const N: usize>(endpoint: &Endpoint, extra: [Value; N]) -> Vec<Value> {
    let optional = |value: Option<Value>| value.unwrap_or(Value::Null);
    let mut values = vec![
        Value::from(endpoint.id.as_str().to_owned()),
        Value::from(endpoint.url.as_str().to_owned()),
        Value::from(endpoint.description.clone()),
        Value::from(json_text(&endpoint.filter)),
        optional(endpoint.secret.clone().map(Value::from)),
        optional(endpoint.previous_secret.clone().map(Value::from)),
        optional(endpoint.previous_secret_until_ms.map(Value::from)),
        Value::from(json_text(&endpoint.headers)),
        optional(endpoint.timeout.map(|t| Value::from(t.as_millis() as i64))),
        optional(endpoint.max_retries.map(Value::from)),
        optional(endpoint.rate_limit.map(|r| Value::from(r.per_second))),
        optional(endpoint.rate_limit.map(|r| Value::from(r.burst))),
        optional(endpoint.circuit_threshold.map(Value::from)),
        Value::from(endpoint.enabled),
        optional(endpoint.disabled_reason.clone().map(Value::from)),
    ];
    values.extend(extra);
    values
}

/// The enabled endpoints and their filters.
type Destinations = Arc<Vec<(EndpointId, EventFilter)>>;

thread_local! {
    /// The fan-out list, cached on the writer thread (where every ingest runs) with the
    /// endpoint generation it was read at: reading and parsing it for every event cost more
    /// than storing the event. Any process's change to fan-out bumps the generation (a trigger),
    /// so one cheap read per ingest tells whether the list is still right.
    static DESTINATIONS: std::cell::RefCell<Option<(i64, Destinations)>> =
        const { std::cell::RefCell::new(None) };
}

/// The enabled endpoints and their filters, from the cache while no endpoint has changed.
fn destinations(conn: &Connection) -> Result<Destinations, StoreError> {
    let generation: i64 = conn
        .prepare_cached("SELECT n FROM endpoint_generation")?
        .query_row([], |row| row.get(0))?;
    let fresh = DESTINATIONS.with(|cached| {
        cached
            .borrow()
            .as_ref()
            .filter(|(at, _)| *at == generation)
            .map(|(_, list)| Arc::clone(list))
    });
    if let Some(list) = fresh {
        return Ok(list);
    }
    let list = Arc::new(enabled_filters(conn)?);
    DESTINATIONS.with(|cached| *cached.borrow_mut() = Some((generation, Arc::clone(&list))));
    Ok(list)
}

fn enabled_filters(conn: &Connection) -> Result<Vec<(EndpointId, EventFilter)>, StoreError> {
    // An endpoint disabled automatically (failing for too long) keeps queuing, so nothing is
    // lost when it is enabled again; one disabled by an operator or unconfigured does not.
    let mut select = conn.prepare_cached(
        "SELECT id, event_types FROM endpoints
         WHERE enabled = 1 OR disabled_reason LIKE 'failing continuously%'",
    )?;
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut list = Vec::with_capacity(rows.len());
    for (id, event_types) in rows {
        list.push((
            EndpointId::from_trusted(id),
            rows::event_filter(&event_types)?,
        ));
    }
    Ok(list)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
        self.write(move |conn| {
            let mut find = conn.prepare_cached("SELECT id FROM events WHERE idempotency_key = ?1")?;
            let mut insert_event = conn.prepare_cached(
                "INSERT INTO events (id, event_type, session_id, idempotency_key, payload, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut insert_delivery = conn.prepare_cached(
                "INSERT INTO deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
            )?;
            // Fan-out is decided inside the transaction, so an event goes to exactly the
            // endpoints enabled when it was stored.
            let destinations = destinations(conn)?;
            let minute = events.first().map_or(0, |e| e.created_at_ms.div_euclid(60_000));
            let mut outcomes = Vec::with_capacity(events.len());
            let mut usages = Vec::new();
            for event in events {
                if let Some(key) = &event.idempotency_key {
                    let existing: Option<String> =
                        find.query_row([key.as_str()], |row| row.get(0)).optional()?;
                    if let Some(existing) = existing {
                        outcomes.push(Ingested {
                            id: EventId::from_trusted(existing),
                            duplicate: true,
                        });
                        continue;
                    }
                }
                insert_event.execute(params![
                    event.id.as_str(),
                    event.event_type.as_str(),
                    event.session_id,
                    event.idempotency_key,
                    &event.payload[..],
                    event.created_at_ms,
                ])?;
                let matching = destinations
                    .iter()
                    .filter(|(_, filter)| filter.matches(event.event_type.as_str()))
                    .map(|(endpoint, _)| endpoint);
                for endpoint in matching {
                    insert_delivery.execute(params![
                        DeliveryId::generate().as_str(),
                        event.id.as_str(),
                        endpoint.as_str(),
                        event.created_at_ms,
                    ])?;
                }
                if let Some(usage) = event.usage {
                    usages.push((usage, event.created_at_ms));
                }
                outcomes.push(Ingested {
                    id: event.id,
                    duplicate: false,
                });
            }
            let duplicates = outcomes.iter().filter(|o| o.duplicate).count() as i64;
            let rollup = Rollup {
                ingested: outcomes.len() as i64 - duplicates,
                duplicates,
                ..Rollup::default()
            };
            // Counted once per group commit, just before it commits.
            aggregate(|a| {
                a.add_rollup(minute, &rollup);
                for (usage, at_ms) in &usages {
                    a.add_usage(usage, *at_ms);
                }
            });
            Ok(outcomes)
        })
        .await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claim(now_ms, lease_ms, claimant, wanted, false).await
    }

    async fn claim_retried(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        endpoint: EndpointId,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claim(now_ms, lease_ms, claimant, vec![(endpoint, limit)], true)
            .await
    }

    async fn record_attempts(
        &self,
        records: Vec<AttemptRecord>,
        health: Vec<HealthUpdate>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
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
        })
        .await
    }

    async fn release(
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

    async fn next_due(
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

    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.read(|conn| {
            let mut list = conn.prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY id = 'ep_default' DESC, created_at, id"
            ))?;
            let rows = list.query_map([], endpoint_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows.into_iter().map(Endpoint::try_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn endpoint(&self, id: EndpointId) -> Result<Option<Endpoint>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?1"),
                    [id.as_str()],
                    endpoint_row,
                )
                .optional()?;
            Ok(found.map(Endpoint::try_from).transpose()?)
        })
        .await
    }

    async fn create_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO endpoints (id, url, description, event_types, secret, previous_secret,
                     previous_secret_until, headers, timeout_ms, max_retries, rate_limit, rate_burst,
                     circuit_threshold, enabled, disabled_reason, managed_by_config, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17)
                 ON CONFLICT (id) DO NOTHING",
                rusqlite::params_from_iter(endpoint_values(
                    &endpoint,
                    [Value::from(endpoint.managed_by_config), Value::from(endpoint.created_at_ms)],
                )),
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn update_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let updated = conn.execute(
                // Settings only: enabled state and health belong to `set_endpoint_state` and the
                // worker, so a settings change read earlier cannot undo what they wrote since.
                "UPDATE endpoints SET url = ?2, description = ?3, event_types = ?4, secret = ?5,
                     previous_secret = ?6, previous_secret_until = ?7, headers = ?8, timeout_ms = ?9,
                     max_retries = ?10, rate_limit = ?11, rate_burst = ?12, circuit_threshold = ?13,
                     updated_at = MAX(updated_at + 1, ?16)
                 WHERE id = ?1",
                rusqlite::params_from_iter(endpoint_values(&endpoint, [Value::from(endpoint.updated_at_ms)])),
            )?;
            Ok(updated == 1)
        })
        .await
    }

    async fn set_endpoint_state(
        &self,
        id: EndpointId,
        enabled: bool,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            // Enabling starts afresh: circuit closed, past failures forgotten.
            let updated = conn.execute(
                // updated_at always moves forward, so a worker notices the change.
                "UPDATE endpoints SET enabled = ?2, disabled_reason = ?3, updated_at = MAX(updated_at + 1, ?4),
                     circuit_state = CASE WHEN ?2 THEN 'closed' ELSE circuit_state END,
                     circuit_changed_at = CASE WHEN ?2 THEN NULL ELSE circuit_changed_at END,
                     consecutive_failures = CASE WHEN ?2 THEN 0 ELSE consecutive_failures END,
                     failing_since = CASE WHEN ?2 THEN NULL ELSE failing_since END
                 WHERE id = ?1",
                params![id.as_str(), enabled, reason, now_ms],
            )?;
            Ok(updated == 1)
        })
        .await
    }

    async fn delete_endpoint(&self, id: EndpointId) -> Result<bool, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM deliveries WHERE endpoint_id = ?1 AND status IN ('pending', 'dead')",
                [id.as_str()],
            )?;
            let deleted = conn.execute("DELETE FROM endpoints WHERE id = ?1", [id.as_str()])?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn sync_default_endpoint(
        &self,
        url: Option<EndpointUrl>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let id = EndpointId::default_endpoint();
            match DefaultEndpointSync::to_mirror(url) {
                DefaultEndpointSync::Mirror(url) => {
                    conn.execute(
                        "INSERT INTO endpoints (id, url, description, managed_by_config, created_at, updated_at)
                         VALUES (?1, ?2, ?5, 1, ?3, ?3)
                         ON CONFLICT (id) DO UPDATE SET url = excluded.url, managed_by_config = 1,
                             updated_at = CASE WHEN url = excluded.url THEN updated_at ELSE excluded.updated_at END,
                             enabled = CASE WHEN disabled_reason = ?4 THEN 1 ELSE enabled END,
                             disabled_reason = CASE WHEN disabled_reason = ?4 THEN NULL ELSE disabled_reason END",
                        params![id.as_str(), url.as_str(), now_ms, UNSET_REASON, DEFAULT_DESCRIPTION],
                    )?;
                }
                DefaultEndpointSync::Disable => {
                    conn.execute(
                        "UPDATE endpoints SET enabled = 0, disabled_reason = ?2, updated_at = ?3
                         WHERE id = ?1 AND enabled = 1",
                        params![id.as_str(), UNSET_REASON, now_ms],
                    )?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeliverySummary>, StoreError> {
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

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError> {
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

    async fn replay(&self, which: Selection, now_ms: i64) -> Result<u64, StoreError> {
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

    async fn purge(&self, which: Selection) -> Result<u64, StoreError> {
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

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn window_totals(&self, since_ms: Option<i64>) -> Result<WindowTotals, StoreError> {
        self.read(move |conn| {
            let since = since_ms.map_or(i64::MIN, |ms| ms.div_euclid(60_000));
            let totals = conn.prepare_cached(
                "SELECT COALESCE(SUM(ingested), 0), COALESCE(SUM(duplicates), 0), COALESCE(SUM(attempts), 0),
                     COALESCE(SUM(successes), 0), COALESCE(SUM(failures), 0), COALESCE(SUM(throttled), 0),
                     COALESCE(SUM(retries), 0), COALESCE(SUM(delivered), 0), COALESCE(SUM(dead_lettered), 0),
                     COALESCE(SUM(duration_sum_ms), 0), COALESCE(SUM(latency_sum_ms), 0),
                     COALESCE(SUM(d0), 0), COALESCE(SUM(d1), 0), COALESCE(SUM(d2), 0), COALESCE(SUM(d3), 0),
                     COALESCE(SUM(d4), 0), COALESCE(SUM(d5), 0), COALESCE(SUM(d6), 0), COALESCE(SUM(d7), 0),
                     COALESCE(SUM(d8), 0), COALESCE(SUM(d9), 0), COALESCE(SUM(d10), 0), COALESCE(SUM(d11), 0)
                 FROM rollups WHERE minute >= ?1",
            )?
            .query_row([since], |row| {
                let n = |i: usize| row.get::<_, i64>(i).map(i64::unsigned_abs);
                let mut buckets = [0u64; 12];
                for (k, slot) in buckets.iter_mut().enumerate() {
                    *slot = n(11 + k)?;
                }
                Ok(WindowTotals {
                    ingested: n(0)?,
                    duplicates: n(1)?,
                    attempts: n(2)?,
                    successes: n(3)?,
                    failures: n(4)?,
                    throttled: n(5)?,
                    retries: n(6)?,
                    delivered: n(7)?,
                    dead_lettered: n(8)?,
                    duration_sum_ms: n(9)?,
                    latency_sum_ms: n(10)?,
                    buckets,
                })
            })?;
            Ok(totals)
        })
        .await
    }

    async fn active_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        self.read(|conn| {
            let mut list = conn.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at, id"
            ))?;
            let rows = list
                .query_map([], alert_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        self.read(move |conn| {
            let mut list = conn.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY fired_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = list
                .query_map([limit as i64], alert_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn apply_alerts(
        &self,
        fire: Vec<Condition>,
        resolve: Vec<i64>,
        now_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        self.write(move |conn| {
            let mut resolved = Vec::new();
            for id in resolve {
                let alert = conn
                    .prepare_cached(&format!(
                        "UPDATE alerts SET resolved_at = ?2 WHERE id = ?1 AND resolved_at IS NULL RETURNING {ALERT_COLUMNS}"
                    ))?
                    .query_row(params![id, now_ms], alert_from_row)
                    .optional()?;
                resolved.extend(alert);
            }
            let mut fired = Vec::new();
            for condition in fire {
                // Another instance may have fired the same rule: the unique index keeps one.
                let alert = conn
                    .prepare_cached(&format!(
                        "INSERT INTO alerts (rule, level, message, value, threshold, fired_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT DO NOTHING RETURNING {ALERT_COLUMNS}"
                    ))?
                    .query_row(
                        params![
                            condition.rule,
                            condition.level.as_str(),
                            condition.message,
                            condition.value,
                            condition.threshold,
                            now_ms
                        ],
                        alert_from_row,
                    )
                    .optional()?;
                fired.extend(alert);
            }
            Ok((fired, resolved))
        })
        .await
    }

    async fn unsent_alerts(&self, since_ms: i64) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        self.read(move |conn| {
            let fired = conn
                .prepare_cached(&format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE notified_at IS NULL AND fired_at >= ?1 ORDER BY id"
                ))?
                .query_map([since_ms], alert_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let resolved = conn
                .prepare_cached(&format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts
                     WHERE resolved_at IS NOT NULL AND resolve_notified_at IS NULL AND resolved_at >= ?1 ORDER BY id"
                ))?
                .query_map([since_ms], alert_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((fired, resolved))
        })
        .await
    }

    async fn mark_alerts_sent(
        &self,
        fired: Vec<i64>,
        resolved: Vec<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut mark_fired =
                conn.prepare_cached("UPDATE alerts SET notified_at = ?2 WHERE id = ?1")?;
            for id in fired {
                mark_fired.execute(params![id, now_ms])?;
            }
            let mut mark_resolved =
                conn.prepare_cached("UPDATE alerts SET resolve_notified_at = ?2 WHERE id = ?1")?;
            for id in resolved {
                mark_resolved.execute(params![id, now_ms])?;
            }
            Ok(())
        })
        .await
    }

    async fn heartbeat(
        &self,
        instance: String,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO heartbeats (instance, started_at, beat_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at",
            )?
            .execute(params![instance, started_at_ms, now_ms])?;
            // Instances gone for a day are forgotten.
            conn.prepare_cached("DELETE FROM heartbeats WHERE beat_at < ?1")?
                .execute([now_ms - 86_400_000])?;
            Ok(())
        })
        .await
    }

    async fn try_lead(
        &self,
        task: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let held = conn
                .prepare_cached(LEAD_SQL)?
                .query_row(params![task, holder, now_ms + ttl_ms, now_ms], |_| Ok(()))
                .optional()?;
            Ok(held.is_some())
        })
        .await
    }

    async fn resign(&self, task: String, holder: String) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM leader_leases WHERE task = ?1 AND holder = ?2")?
                .execute(params![task, holder])?;
            Ok(())
        })
        .await
    }

    async fn latest_heartbeat(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            let latest: Option<i64> =
                conn.query_row("SELECT MAX(beat_at) FROM heartbeats", [], |row| row.get(0))?;
            Ok(latest)
        })
        .await
    }

    async fn session(&self, session_id: String) -> Result<Option<SessionStats>, StoreError> {
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

    async fn sessions(
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

    async fn analytics(&self, now_ms: i64, days: u32) -> Result<Analytics, StoreError> {
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
                (webhooks.0.unsigned_abs(), webhooks.1.unsigned_abs(), webhooks.2.unsigned_abs()),
            ))
        })
        .await
    }

    async fn cleanup(&self, cutoff_ms: i64, dry_run: bool) -> Result<CleanupReport, StoreError> {
        // Old events whose every delivery arrived (or that have none left).
        const FINISHED: &str = "SELECT id FROM events e WHERE created_at < ?1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')";
        if dry_run {
            return self
                .read(move |conn| {
                    let count = |sql: &str| -> Result<u64, StoreError> {
                        Ok(conn
                            .prepare(sql)?
                            .query_row([cutoff_ms], |r| r.get::<_, i64>(0))?
                            .unsigned_abs())
                    };
                    Ok(CleanupReport {
                        events: count(&format!("SELECT COUNT(*) FROM ({FINISHED})"))?,
                        deliveries: count(&format!(
                            "SELECT COUNT(*) FROM deliveries WHERE event_id IN ({FINISHED})"
                        ))?,
                        attempts: count(&format!(
                            "SELECT COUNT(*) FROM attempts WHERE delivery_id IN
                             (SELECT id FROM deliveries WHERE event_id IN ({FINISHED}))"
                        ))?,
                        sessions: count("SELECT COUNT(*) FROM sessions WHERE last_seen < ?1")?,
                        alerts: count("SELECT COUNT(*) FROM alerts WHERE resolved_at < ?1")?,
                        rollups: count("SELECT COUNT(*) FROM rollups WHERE minute < ?1 / 60000")?,
                        dry_run: true,
                    })
                })
                .await;
        }
        let mut report = CleanupReport::default();
        // Each batch starts where the last one stopped, so old events that must stay (pending,
        // dead-lettered) are walked past once per pass, not once per batch.
        let mut cursor = i64::MIN;
        loop {
            // Small transactions: each holds the write lock for a few milliseconds, so ingest
            // and delivery interleave with a long pass.
            let batch = self
                .write(move |conn| {
                    conn.execute_batch(
                        "CREATE TEMP TABLE IF NOT EXISTS retention_batch (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
                         DELETE FROM retention_batch;",
                    )?;
                    conn.prepare_cached(&format!(
                        "INSERT INTO retention_batch (id, created_at)
                         SELECT id, created_at FROM events e WHERE created_at < ?1 AND created_at >= ?2
                             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')
                         ORDER BY created_at LIMIT {RETENTION_BATCH}"
                    ))?
                    .execute([cutoff_ms, cursor])?;
                    let count = |sql: &str| -> Result<u64, StoreError> {
                        Ok(conn.prepare_cached(sql)?.query_row([], |r| r.get::<_, i64>(0))?.unsigned_abs())
                    };
                    let events = count("SELECT COUNT(*) FROM retention_batch")?;
                    let deliveries = count("SELECT COUNT(*) FROM deliveries WHERE event_id IN (SELECT id FROM retention_batch)")?;
                    let attempts = count(
                        "SELECT COUNT(*) FROM attempts WHERE delivery_id IN
                         (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM retention_batch))",
                    )?;
                    let last: Option<i64> =
                        conn.prepare_cached("SELECT MAX(created_at) FROM retention_batch")?.query_row([], |r| r.get(0))?;
                    // Deliveries and their attempts go with the event (ON DELETE CASCADE).
                    conn.prepare_cached("DELETE FROM events WHERE id IN (SELECT id FROM retention_batch)")?.execute([])?;
                    Ok((events, deliveries, attempts, last))
                })
                .await?;
            report.events += batch.0;
            report.deliveries += batch.1;
            report.attempts += batch.2;
            match batch.3 {
                Some(last) if batch.0 == RETENTION_BATCH => cursor = last,
                _ => break,
            }
        }
        loop {
            let removed = self
                .write(move |conn| {
                    let n = conn
                        .prepare_cached(&format!(
                            "DELETE FROM sessions WHERE session_id IN
                             (SELECT session_id FROM sessions WHERE last_seen < ?1 LIMIT {RETENTION_BATCH})"
                        ))?
                        .execute([cutoff_ms])?;
                    Ok(n as u64)
                })
                .await?;
            report.sessions += removed;
            if removed < RETENTION_BATCH {
                break;
            }
        }
        let (alerts, rollups) = self
            .write(move |conn| {
                let alerts = conn
                    .prepare_cached("DELETE FROM alerts WHERE resolved_at < ?1")?
                    .execute([cutoff_ms])?;
                let rollups = conn
                    .prepare_cached("DELETE FROM rollups WHERE minute < ?1")?
                    .execute([cutoff_ms.div_euclid(60_000)])?;
                Ok((alerts as u64, rollups as u64))
            })
            .await?;
        report.alerts = alerts;
        report.rollups = rollups;
        Ok(report)
    }

    async fn db_stats(&self) -> Result<DbStats, StoreError> {
        let path = self.readers.path.clone();
        self.read(move |conn| {
            let pragma = |name: &str| -> Result<u64, StoreError> {
                Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))?.unsigned_abs())
            };
            let mut sizes: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            // dbstat reports every b-tree; indexes are charged to their table.
            let mut dbstat = conn.prepare(
                "SELECT COALESCE(m.tbl_name, s.name), SUM(s.pgsize) FROM dbstat s
                 LEFT JOIN sqlite_schema m ON m.name = s.name GROUP BY 1",
            )?;
            for row in dbstat.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (name, bytes) = row?;
                sizes.insert(name, bytes.unsigned_abs());
            }
            let names: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut tables = Vec::new();
            for name in names {
                let rows: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{name}\""), [], |r| r.get(0))?;
                tables.push(TableStats {
                    bytes: sizes.get(&name).copied().unwrap_or(0),
                    rows: rows.unsigned_abs(),
                    name,
                });
            }
            tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
            let file_len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            Ok(DbStats {
                backend: "sqlite".into(),
                file_bytes: file_len(&path),
                wal_bytes: file_len(Path::new(&wal)),
                page_size: pragma("page_size")?,
                page_count: pragma("page_count")?,
                free_pages: pragma("freelist_count")?,
                schema_version: conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?,
                tables,
            })
        })
        .await
    }

    async fn maintain(&self, full: bool) -> Result<MaintenanceReport, StoreError> {
        let integrity = self
            .read(|conn| {
                let problems: Vec<String> = conn
                    .prepare("PRAGMA integrity_check")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(problems)
            })
            .await?;
        let free_pages_before = self.db_stats().await?.free_pages;
        // ANALYZE and the incremental vacuum go through the writer, the vacuum in steps of a
        // thousand pages per group commit, so ingest and delivery never wait long for them.
        self.write(|conn| {
            conn.execute_batch("ANALYZE; PRAGMA optimize;")?;
            Ok(())
        })
        .await?;
        if full {
            // A full VACUUM rewrites the file outside any transaction: it holds the write lock
            // for its whole run (documented; `--full` is for quiet hours).
            let path = self.readers.path.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let conn = open_connection(&path, SqliteSync::Full)?;
                conn.execute_batch("VACUUM")?;
                Ok(())
            })
            .await
            .map_err(|_| StoreError::Closed)??;
        } else {
            loop {
                let remaining = self
                    .write(|conn| {
                        // The pragma frees one page per step: step it to the end of its quota.
                        let mut vacuum = conn.prepare("PRAGMA incremental_vacuum(1000)")?;
                        let mut rows = vacuum.query([])?;
                        while rows.next()?.is_some() {}
                        drop(rows);
                        let free: i64 =
                            conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
                        Ok(free)
                    })
                    .await?;
                // Copy the moved pages back between steps, so the log does not grow by the
                // whole file's worth (seen: 2.6 GiB of WAL for a 650 MiB database).
                self.checkpoint(false).await?;
                if remaining == 0 {
                    break;
                }
            }
        }
        self.checkpoint(true).await?;
        let free_pages_after = self.db_stats().await?.free_pages;
        Ok(MaintenanceReport {
            integrity,
            free_pages_before,
            free_pages_after,
            vacuum: if full {
                "full".into()
            } else {
                "incremental".into()
            },
        })
    }

    async fn backup(&self, target: std::path::PathBuf) -> Result<(), StoreError> {
        self.read(move |conn| {
            if target.exists() {
                return Err(StoreError::database(format!(
                    "{} already exists; choose a new file",
                    target.display()
                )));
            }
            // VACUUM INTO reads one consistent snapshot while writers go on (WAL).
            conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
            Ok(())
        })
        .await
    }
}
