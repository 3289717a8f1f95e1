//! Upkeep on SQLite: retention, statistics, integrity check and vacuum, backup and restore.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{SqliteStore, connections::open_connection};
use crate::{
    config::SqliteSync,
    domain::CleanupReport,
    store::{DbStats, MaintenanceReport, StoreError, TableStats, shared::RETENTION_BATCH},
};

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
    ) -> Result<CleanupReport, StoreError> {
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
    ) -> Result<MaintenanceReport, StoreError> {
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
    pub(super) async fn copy_database(&self, target: std::path::PathBuf) -> Result<(), StoreError> {
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

/// Replaces the database at `target` with the backup at `backup`, after checking the backup.
/// The replaced database, with its write-ahead log, is kept beside it as
/// `<target>.replaced-<unix ms>` (returned), never deleted. The caller makes sure no process
/// has the database open.
pub fn restore(backup: &Path, target: &Path) -> Result<Option<PathBuf>, StoreError> {
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
    let _ = std::fs::remove_file(&staging);
    // Through SQLite, not a file copy: a backup with a write-ahead log of its own (a kept
    // `.replaced-…` database, say) comes across whole, log included.
    check
        .execute("VACUUM INTO ?1", [staging.to_string_lossy()])
        .map_err(|e| StoreError::caused("cannot copy the backup", e))?;
    drop(check);
    // On disk before it replaces anything.
    std::fs::File::open(&staging)
        .and_then(|file| file.sync_all())
        .map_err(|e| StoreError::caused("cannot flush the copy", e))?;
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
