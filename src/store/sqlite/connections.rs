//! How the SQLite store reaches its file: the writer thread that runs every write in a group
//! commit, the pool of read connections beside it, and the thread that checkpoints the
//! write-ahead log.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use super::{SqliteStore, aggregates, ingest};
use crate::{config::SqliteSync, store::StoreError};

/// Most jobs committed in one transaction; bounds how long one commit holds the lock.
const MAX_GROUP: usize = 2048;

/// Write jobs that may wait for the writer; beyond this, callers wait (backpressure).
pub(super) const WRITE_QUEUE: usize = 16_384;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a write does once its group has committed (or failed): answer its caller.
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write: it runs on the writer's connection inside the group's transaction (or is handed the
/// error that stopped the group) and returns what to do once the group is settled, and the
/// error that spoils the whole group if it failed halfway without a savepoint to undo it.
pub(super) type Job =
    Box<dyn FnOnce(Result<&Connection, StoreError>) -> (Finish, Option<StoreError>) + Send>;

/// Whether a write runs in a savepoint of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isolation {
    /// Its failure undoes only its own writes; the rest of the group commits.
    Savepoint,
    /// Cheaper (a savepoint copies every page the write touches first, 15% of ingest's
    /// instructions): for writes that check what could refuse them before writing anything,
    /// so they fail halfway only on a database error. If one does, the whole group is rolled
    /// back and every write in it answered with the error; nothing half-written commits.
    Bare,
}

/// Idle read connections, opened on demand.
pub(super) struct ReaderPool {
    /// The database file.
    pub(super) path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

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

/// Opens a connection to `path` with the settings every connection of the store has.
pub(super) fn open_connection(path: &Path, sync: SqliteSync) -> Result<Connection, StoreError> {
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

/// The writer thread: takes every job waiting (up to `MAX_GROUP`), runs them in one
/// transaction, commits once and then answers each job's caller; until the store is dropped.
pub(super) fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Job>, wal: PathBuf) {
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
                Some(error) => finishes.push(job(Err(error.clone())).0),
                None => {
                    let (finish, spoiled) = job(Ok(&conn));
                    finishes.push(finish);
                    if conn.is_autocommit() {
                        lost = Some(StoreError::database(
                            "the database rolled the transaction back; nothing in it was stored",
                        ));
                    } else if spoiled.is_some() {
                        lost = spoiled;
                    }
                }
            }
        }
        if begun.is_ok()
            && lost.is_none()
            && let Err(e) = aggregates::flush(&conn)
        {
            lost = Some(e);
        }
        aggregates::discard();
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
            ingest::forget_destinations();
        }
        for finish in finishes {
            finish(committed.clone());
        }
        // Under continuous writes the side thread's passive checkpoints may never reach the
        // log's end, so the log only grows (seen: 2.6 GiB in a long retention pass). Past a
        // bound the writer finishes the checkpoint itself between two commits. Only then: the
        // commits waiting meanwhile stall for as long as it takes (copying what the side thread
        // has not, 10+ ms, was the whole p99 at a steady 1,000 events/s when it ran at 64 MiB).
        if wal_checked.elapsed() >= Duration::from_secs(1) {
            wal_checked = std::time::Instant::now();
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_WRITER_CHECKPOINT_BYTES)
                && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::debug!(error = %e, "log truncation skipped");
            }
        }
    }
}

/// Past this size the side thread checkpoints back to back instead of five times a second.
/// Small commits write whole pages, so at 1,000 events/s the log grows by tens of MiB a
/// second; checkpointing without pause, the side thread catches up with the writer in a gap
/// between commits, the next commit starts the log afresh and `journal_size_limit` trims the
/// file back to this size.
const WAL_RESTART_BYTES: u64 = 64 << 20;

/// Past this size the writer checkpoints the log itself between two commits (see the loop).
const WAL_WRITER_CHECKPOINT_BYTES: u64 = 4 * WAL_RESTART_BYTES;

/// Copies the write-ahead log into the database five times a second (PASSIVE: never waits
/// for, nor blocks, the writer or readers), until the store is dropped. The writer finishes
/// the job between commits once the log passes `WAL_RESTART_BYTES`.
pub(super) fn checkpoint_loop(path: &Path, alive: &mpsc::WeakSender<Job>, sync: SqliteSync) {
    let Ok(conn) = open_connection(path, sync) else {
        tracing::warn!(
            "cannot open the checkpoint connection; the log is checkpointed when the store closes"
        );
        return;
    };
    let wal = {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        PathBuf::from(wal)
    };
    while alive.upgrade().is_some() {
        let behind = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES);
        std::thread::sleep(Duration::from_millis(if behind { 5 } else { 200 }));
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
    /// Runs `work` on the writer connection, in the next group commit; returns once committed.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(work, |_| {}).await
    }

    /// [`SqliteStore::write`], running `committed` on the writer thread as soon as the group
    /// has committed, whether or not the caller is still waiting for the answer.
    pub(super) async fn write_then<T, F, C>(&self, work: F, committed: C) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        C: FnOnce(&mut T) + Send + 'static,
    {
        self.write_isolated(Isolation::Savepoint, work, committed)
            .await
    }

    /// [`SqliteStore::write_then`] with the given isolation from the rest of its group.
    pub(super) async fn write_isolated<T, F, C>(
        &self,
        isolation: Isolation,
        work: F,
        committed: C,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        C: FnOnce(&mut T) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let mut spoiled = None;
            let result = conn.and_then(|conn| match isolation {
                Isolation::Savepoint => in_savepoint(conn, work),
                Isolation::Bare => {
                    let before = conn.total_changes();
                    let result = work(conn);
                    if let Err(e) = &result
                        && conn.total_changes() != before
                    {
                        spoiled = Some(e.clone());
                    }
                    result
                }
            });
            let finish: Finish = Box::new(move |settled| {
                let mut result = settled.and(result);
                if let Ok(value) = &mut result {
                    committed(value);
                }
                let _ = reply.send(result);
            });
            (finish, spoiled)
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Checkpoints the write-ahead log from a side connection; `truncate` also shrinks the log
    /// file (waiting for the writer between two commits).
    pub(super) async fn checkpoint(&self, truncate: bool) -> Result<(), StoreError> {
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
    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
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
