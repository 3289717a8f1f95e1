//! Coordination on SQLite: alerts (fired, resolved, notified), worker heartbeats and the
//! leader leases of singleton tasks.

use rusqlite::{OptionalExtension, Row, params};

use super::SqliteStore;
use crate::{
    domain::{Alert, Condition},
    store::{LEAD_SQL, StoreError, rows::AlertRow, shared::ALERT_COLUMNS},
};

impl SqliteStore {
    /// Backs `Store::active_alerts`.
    pub(super) async fn unresolved_alerts(&self) -> Result<Vec<Alert>, StoreError> {
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

    /// Backs `Store::recent_alerts`.
    pub(super) async fn latest_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
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

    /// Backs `Store::apply_alerts`.
    pub(super) async fn fire_and_resolve(
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

    /// Backs `Store::unsent_alerts`.
    pub(super) async fn alerts_owed(
        &self,
        since_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
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

    /// Backs `Store::mark_alerts_sent`.
    pub(super) async fn mark_notified(
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

    /// Backs `Store::heartbeat`.
    pub(super) async fn beat(
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

    /// Backs `Store::sign_off`.
    pub(super) async fn forget_heartbeat(&self, instance: String) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM heartbeats WHERE instance = ?1")?
                .execute([instance])?;
            Ok(())
        })
        .await
    }

    /// Backs `Store::try_lead`.
    pub(super) async fn take_lease(
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

    /// Backs `Store::resign`.
    pub(super) async fn give_up_lease(
        &self,
        task: String,
        holder: String,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM leader_leases WHERE task = ?1 AND holder = ?2")?
                .execute(params![task, holder])?;
            Ok(())
        })
        .await
    }

    /// Backs `Store::latest_heartbeat`.
    pub(super) async fn last_beat(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            let latest: Option<i64> =
                conn.query_row("SELECT MAX(beat_at) FROM heartbeats", [], |row| row.get(0))?;
            Ok(latest)
        })
        .await
    }
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
