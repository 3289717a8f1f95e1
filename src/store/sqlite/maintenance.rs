//! Upkeep on SQLite: retention, statistics, integrity check and vacuum, backup and restore.

use std::path::{Path, PathBuf};

use rusqlite::{
    Connection, OpenFlags,
    backup::{Backup, StepResult},
};

use super::{SqliteStore, connections::open_connection};
use crate::{
    config::SqliteSync,
    domain::CleanupReport,
    store::{
        DbStats, MaintenanceReport, OnProgress, Progress, StoreError, TableStats,
        shared::RETENTION_BATCH,
    },
};

/// Pages a backup (or restore) copies per step between two progress reports: 1 MiB of 4 KiB
/// pages, a millisecond or two of work.
const PAGES_PER_STEP: i32 = 256;

impl SqliteStore {
    /// Backs `Store::ping`.
    pub(super) async fn ping_database(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Backs `Store::cleanup`.
    pub(super) async fn remove_expired(
        &self,
        cutoff_ms: i64,
        dry_run: bool,
        progress: OnProgress,
    ) -> Result<CleanupReport, StoreError> {
        // Old events whose every delivery arrived (or that have none left).
        const FINISHED: &str = "SELECT id FROM events e WHERE created_at < ?1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')";
        const EVENTS: &str = "removing delivered events";
        const SESSIONS: &str = "removing idle sessions";
        if dry_run {
            progress.report(Progress::phase("counting what would go"));
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
        // Totals for the progress bar, counted only when somebody watches it: more events may
        // finish meanwhile, so the bar's end moves out if the batches pass it.
        let count_first = |sql: &'static str| {
            let watched = progress.is_watched();
            async move {
                if !watched {
                    return Ok(None);
                }
                self.read(move |conn| {
                    let n: i64 = conn.prepare(sql)?.query_row([cutoff_ms], |r| r.get(0))?;
                    Ok(Some(n.unsigned_abs()))
                })
                .await
            }
        };
        let mut report = CleanupReport::default();
        let events_total = count_first(
            "SELECT COUNT(*) FROM events e WHERE created_at < ?1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')",
        )
        .await?;
        let report_step = |phase, done: u64, total: Option<u64>| {
            progress.report(Progress {
                phase,
                done,
                total: total.map(|t| t.max(done)),
            });
        };
        report_step(EVENTS, 0, events_total);
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
            report_step(EVENTS, report.events, events_total);
            match batch.3 {
                Some(last) if batch.0 == RETENTION_BATCH => cursor = last,
                _ => break,
            }
        }
        let sessions_total =
            count_first("SELECT COUNT(*) FROM sessions WHERE last_seen < ?1").await?;
        report_step(SESSIONS, 0, sessions_total);
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
            report_step(SESSIONS, report.sessions, sessions_total);
            if removed < RETENTION_BATCH {
                break;
            }
        }
        progress.report(Progress::phase("removing resolved alerts and roll-ups"));
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

    /// Backs `Store::db_stats`.
    pub(super) async fn stats(&self) -> Result<DbStats, StoreError> {
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

    /// Backs `Store::maintain`.
    pub(super) async fn maintain_database(
        &self,
        full: bool,
        progress: OnProgress,
    ) -> Result<MaintenanceReport, StoreError> {
        // The integrity check, ANALYZE, VACUUM and checkpoints are single statements that
        // cannot say how far they are: reported as phases. The incremental vacuum has steps.
        progress.report(Progress::phase("integrity check"));
        let integrity = self
            .read(|conn| {
                let problems: Vec<String> = conn
                    .prepare("PRAGMA integrity_check")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(problems)
            })
            .await?;
        let free_pages_before = self.stats().await?.free_pages;
        progress.report(Progress::phase("ANALYZE"));
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
            progress.report(Progress::phase("VACUUM (rewriting the whole file)"));
            let path = self.readers.path.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let conn = open_connection(&path, SqliteSync::Full)?;
                conn.execute_batch("VACUUM")?;
                Ok(())
            })
            .await
            .map_err(|_| StoreError::Closed)??;
        } else {
            const PHASE: &str = "returning free pages";
            progress.report(Progress::step(PHASE, 0, free_pages_before));
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
                // Pages freed meanwhile by other writers move the end out.
                let remaining = remaining.unsigned_abs();
                let total = free_pages_before.max(remaining);
                progress.report(Progress::step(PHASE, total - remaining, total));
                if remaining == 0 {
                    break;
                }
            }
        }
        progress.report(Progress::phase("checkpoint"));
        self.checkpoint(true).await?;
        let free_pages_after = self.stats().await?.free_pages;
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

    /// Backs `Store::backup`.
    pub(super) async fn copy_database(
        &self,
        target: std::path::PathBuf,
        progress: OnProgress,
    ) -> Result<(), StoreError> {
        self.read(move |conn| {
            create_new(&target)?;
            let copied = (|| {
                // One read transaction around every step: they all copy the same snapshot, so
                // writers go on meanwhile (WAL) and their commits never send the copy back to
                // its first page, as they would between steps that each read afresh.
                let snapshot = conn.unchecked_transaction()?;
                snapshot.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;
                copy_pages(&snapshot, &target, &progress)?;
                snapshot.rollback()?;
                Ok(())
            })();
            if copied.is_err() {
                let _ = std::fs::remove_file(&target);
            }
            copied
        })
        .await
    }
}

/// Creates `path`, which must not exist (a backup never overwrites a file), readable by the
/// owner only whatever the umask: a copy holds what the database holds.
fn create_new(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::database(format!(
                "{} already exists; choose a new file",
                path.display()
            )),
            _ => StoreError::caused(format!("cannot create {}", path.display()), e),
        })
}

/// Copies the database `source` reads into the empty file `target` with SQLite's online backup,
/// [`PAGES_PER_STEP`] pages at a time, reporting the pages copied to `progress`; then makes the
/// copy one self-contained file (rollback journal, no write-ahead log beside it) on disk.
fn copy_pages(source: &Connection, target: &Path, progress: &OnProgress) -> Result<(), StoreError> {
    const PHASE: &str = "copying pages";
    let mut copy = Connection::open(target)?;
    {
        let backup = Backup::new(source, &mut copy)?;
        let mut waited = std::time::Duration::ZERO;
        loop {
            let step = backup.step(PAGES_PER_STEP)?;
            let pages = backup.progress();
            let total = u64::from(pages.pagecount.unsigned_abs());
            let remaining = u64::from(pages.remaining.unsigned_abs());
            progress.report(Progress::step(
                PHASE,
                total.saturating_sub(remaining),
                total,
            ));
            match step {
                StepResult::Done => break,
                StepResult::More => waited = std::time::Duration::ZERO,
                // Locks held elsewhere (not expected: the source is read from a snapshot and
                // the target is new): wait a little, a bounded number of times.
                _ => {
                    if waited >= std::time::Duration::from_secs(10) {
                        return Err(StoreError::database(
                            "the backup waited 10 s for a lock; try again",
                        ));
                    }
                    let pause = std::time::Duration::from_millis(20);
                    std::thread::sleep(pause);
                    waited += pause;
                }
            }
        }
    }
    // The copied header says WAL if the source is; a backup is one file, complete by itself.
    copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    drop(copy);
    std::fs::File::open(target)
        .and_then(|file| file.sync_all())
        .map_err(|e| StoreError::caused(format!("cannot flush {}", target.display()), e))
}

/// Replaces the database at `target` with the backup at `backup`, after checking the backup.
/// The replaced database, with its write-ahead log, is kept beside it as
/// `<target>.replaced-<unix ms>` (returned), never deleted. The caller makes sure no process
/// has the database open.
pub fn restore(backup: &Path, target: &Path) -> Result<Option<PathBuf>, StoreError> {
    restore_with_progress(backup, target, &OnProgress::none())
}

/// [`restore`], reporting its phases and the pages copied to `progress`.
pub fn restore_with_progress(
    backup: &Path,
    target: &Path,
    progress: &OnProgress,
) -> Result<Option<PathBuf>, StoreError> {
    progress.report(Progress::phase("checking the backup's integrity"));
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
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::caused(format!("cannot create {}", parent.display()), e))?;
    }
    let mut staging = target.as_os_str().to_owned();
    staging.push(".restoring");
    let staging = std::path::PathBuf::from(staging);
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = staging.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    create_new(&staging)?;
    // Through SQLite, not a file copy: a backup with a write-ahead log of its own (a kept
    // `.replaced-…` database, say) comes across whole, log included. The copy is on disk
    // before it replaces anything.
    copy_pages(&check, &staging, progress)
        .map_err(|e| StoreError::caused("cannot copy the backup", e))?;
    drop(check);
    progress.report(Progress::phase("putting the backup in place"));
    if target.exists() {
        // Everything the replaced database holds into its main file first, so setting that
        // file aside keeps it whole, whatever happens between the renames below.
        let busy: i64 = Connection::open(target)
            .and_then(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            })
            .map_err(|e| StoreError::caused("cannot checkpoint the database being replaced", e))?;
        if busy != 0 {
            return Err(StoreError::database(
                "the database being replaced is in use; stop the server first",
            ));
        }
    }
    let kept = target.exists().then(|| {
        let mut kept = target.as_os_str().to_owned();
        kept.push(format!(
            ".replaced-{}",
            crate::clock::Clock::now_ms(&crate::clock::SystemClock)
        ));
        PathBuf::from(kept)
    });
    // The (now empty) write-ahead log goes with its database, as SQLite pairs them by name.
    for suffix in ["", "-wal", "-shm"] {
        let with = |path: &Path| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let side = with(target);
        match &kept {
            Some(kept) if side.exists() => std::fs::rename(&side, with(kept)).map_err(|e| {
                StoreError::caused(format!("cannot set {} aside", side.display()), e)
            })?,
            _ => {
                let _ = std::fs::remove_file(side);
            }
        }
    }
    std::fs::rename(&staging, target)
        .map_err(|e| StoreError::caused("cannot replace the database", e))?;
    Ok(kept)
}
