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
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    AttemptRecord, AttemptView, ClaimedDelivery, DeliveryDetail, DeliveryStatus, DeliverySummary,
    Ingested, LeaseToken, NewEvent, NextState, QueueCounts, Selection, Store, StoreError,
};
use crate::{
    config::SqliteSync,
    domain::{DeliveryId, EndpointId, EventId, EventType},
};

/// Versioned schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "delivery_core",
    include_str!("../../migrations/sqlite/0001_delivery_core.sql"),
)];

/// Most jobs committed in one transaction; bounds how long one commit holds the lock.
const MAX_GROUP: usize = 2048;
/// Write jobs that may wait for the writer; beyond this, callers wait (backpressure).
const WRITE_QUEUE: usize = 16_384;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(error.to_string())
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
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
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

fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_GROUP);
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
            .and_then(|mut begin| begin.execute([]));
        let finishes: Vec<Finish> = match begun {
            Ok(_) => batch.drain(..).map(|job| job(Ok(&conn))).collect(),
            Err(e) => {
                let error = StoreError::from(e);
                batch.drain(..).map(|job| job(Err(error.clone()))).collect()
            }
        };
        let committed = if conn.is_autocommit() {
            // BEGIN failed: each job already carries the error.
            Ok(())
        } else {
            conn.prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(|_| ())
                .map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    StoreError::from(e)
                })
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = finishes.len(), "database commit failed");
        }
        for finish in finishes {
            finish(committed.clone());
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
                    StoreError::Database(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let mut conn = open_connection(&writer_path, sync)?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|_| StoreError::Closed)??;

        let (jobs, receiver) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("hookrelay-sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
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
}

const SUMMARY_COLUMNS: &str = "d.id, d.event_id, d.endpoint_id, e.event_type, e.session_id, d.status, \
     d.attempts, d.total_attempts, d.last_status, d.last_error, e.created_at, d.next_attempt_at, d.finished_at";

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<DeliverySummary> {
    let status = DeliveryStatus::from_db(&row.get::<_, String>(5)?);
    Ok(DeliverySummary {
        id: DeliveryId::from_trusted(row.get(0)?),
        event_id: EventId::from_trusted(row.get(1)?),
        endpoint_id: EndpointId::from_trusted(row.get(2)?),
        event_type: row.get(3)?,
        session_id: row.get(4)?,
        status,
        attempts: row.get(6)?,
        total_attempts: row.get(7)?,
        last_status: row.get(8)?,
        last_error: row.get(9)?,
        created_at_ms: row.get(10)?,
        next_attempt_at_ms: (status == DeliveryStatus::Pending)
            .then(|| row.get(11))
            .transpose()?,
        finished_at_ms: row.get(12)?,
    })
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
            let mut outcomes = Vec::with_capacity(events.len());
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
                    event.idempotency_key.as_ref().map(|k| k.as_str()),
                    &event.payload[..],
                    event.created_at_ms,
                ])?;
                for endpoint in &event.endpoints {
                    insert_delivery.execute(params![
                        DeliveryId::generate().as_str(),
                        event.id.as_str(),
                        endpoint.as_str(),
                        event.created_at_ms,
                    ])?;
                }
                outcomes.push(Ingested {
                    id: event.id,
                    duplicate: false,
                });
            }
            Ok(outcomes)
        })
        .await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        wanted: Vec<(EndpointId, usize)>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.write(move |conn| {
            let token = LeaseToken(rand::random::<i64>());
            let mut claim = conn.prepare_cached(
                "UPDATE deliveries SET lease_token = ?1, next_attempt_at = ?2, updated_at = ?3
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE status = 'pending' AND endpoint_id = ?4 AND next_attempt_at <= ?3
                     ORDER BY next_attempt_at LIMIT ?5)
                 RETURNING id, event_id, attempts, total_attempts",
            )?;
            let mut event = conn.prepare_cached(
                "SELECT event_type, payload, created_at FROM events WHERE id = ?1",
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
                            limit as i64
                        ],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, u32>(2)?,
                                row.get::<_, u32>(3)?,
                            ))
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                for (id, event_id, attempts, total_attempts) in rows {
                    let (event_type, payload, created_at) =
                        event.query_row([&event_id], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, Vec<u8>>(1)?,
                                row.get::<_, i64>(2)?,
                            ))
                        })?;
                    claimed.push(ClaimedDelivery {
                        id: DeliveryId::from_trusted(id),
                        event_id: EventId::from_trusted(event_id),
                        endpoint_id: endpoint.clone(),
                        event_type: EventType::from_trusted(event_type),
                        payload: Bytes::from(payload),
                        event_created_at_ms: created_at,
                        attempts,
                        total_attempts,
                        lease: token,
                    });
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn record_attempts(
        &self,
        records: Vec<AttemptRecord>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code,
                     error_kind, error_detail, response_snippet, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut update = conn.prepare_cached(
                "UPDATE deliveries SET status = ?1, attempts = attempts + 1,
                     total_attempts = total_attempts + 1, next_attempt_at = ?2, lease_token = NULL,
                     last_status = ?3, last_error = ?4, updated_at = ?5, finished_at = ?6
                 WHERE id = ?7 AND lease_token = ?8",
            )?;
            for record in records {
                let (status, next_at, outcome, finished) = match record.next {
                    NextState::Delivered => (DeliveryStatus::Delivered, now_ms, "delivered", Some(now_ms)),
                    NextState::RetryAt(at) => (DeliveryStatus::Pending, at, "retry", None),
                    NextState::DeadLetter => (DeliveryStatus::Dead, now_ms, "dead", Some(now_ms)),
                };
                insert.execute(params![
                    record.delivery_id.as_str(),
                    record.attempt_no,
                    record.started_at_ms,
                    record.duration_ms,
                    record.status_code,
                    record.error_kind,
                    record.error_detail,
                    record.response_snippet,
                    outcome,
                ])?;
                let last_error = match record.next {
                    NextState::Delivered => None,
                    _ => record.error_detail.clone(),
                };
                let updated = update.execute(params![
                    status.as_str(),
                    next_at,
                    record.status_code,
                    last_error,
                    now_ms,
                    finished,
                    record.delivery_id.as_str(),
                    record.lease.0,
                ])?;
                if updated == 0 {
                    tracing::warn!(delivery_id = %record.delivery_id, "lease lost before the attempt was recorded; its result is kept in the attempt log only");
                }
            }
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

    async fn next_due_ms(&self, endpoints: Vec<EndpointId>) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            let mut next = conn.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending' AND endpoint_id = ?1",
            )?;
            let mut earliest: Option<i64> = None;
            for endpoint in endpoints {
                let due: Option<i64> = next.query_row([endpoint.as_str()], |row| row.get(0))?;
                earliest = match (earliest, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(earliest)
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
                .query_map([limit as i64], summary_from_row)?
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
                    |row| Ok((summary_from_row(row)?, row.get::<_, Vec<u8>>(13)?)),
                )
                .optional()?;
            let Some((summary, payload)) = found else {
                return Ok(None);
            };
            let mut attempts = conn.prepare_cached(
                "SELECT attempt_no, started_at, duration_ms, status_code, error_kind, error_detail,
                     response_snippet, outcome
                 FROM attempts WHERE delivery_id = ?1 ORDER BY id",
            )?;
            let attempts_log = attempts
                .query_map([id.as_str()], |row| {
                    Ok(AttemptView {
                        attempt_no: row.get(0)?,
                        started_at_ms: row.get(1)?,
                        duration_ms: row.get(2)?,
                        status_code: row.get(3)?,
                        error_kind: row.get(4)?,
                        error_detail: row.get(5)?,
                        response_snippet: row.get(6)?,
                        outcome: row.get(7)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let payload = serde_json::from_slice(&payload)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&payload).into_owned()));
            Ok(Some(DeliveryDetail {
                summary,
                payload,
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
}
