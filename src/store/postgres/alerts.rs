//! Coordination on PostgreSQL: alerts (fired, resolved, notified), worker heartbeats and the
//! leader leases of singleton tasks.

use sqlx::{Row, postgres::PgRow};

use super::{PgStore, commit::retrying};
use crate::{
    domain::{Alert, Condition},
    store::{LEAD_SQL, StoreError, rows::AlertRow, shared::ALERT_COLUMNS},
};

impl PgStore {
    /// Backs `Store::active_alerts`.
    pub(super) async fn unresolved_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(alert_from_row).collect::<Result<_, _>>()?)
    }

    /// Backs `Store::recent_alerts`.
    pub(super) async fn latest_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY fired_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(alert_from_row).collect::<Result<_, _>>()?)
    }

    /// Backs `Store::apply_alerts`.
    pub(super) async fn fire_and_resolve(
        &self,
        fire: Vec<Condition>,
        resolve: Vec<i64>,
        now_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let resolved = sqlx::query(&format!(
            "UPDATE alerts SET resolved_at = $2 WHERE id = ANY($1) AND resolved_at IS NULL
             RETURNING {ALERT_COLUMNS}"
        ))
        .bind(&resolve)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut fired = Vec::new();
        for condition in fire {
            // Another instance may have fired the same rule: the unique index keeps one.
            let alert = sqlx::query(&format!(
                "INSERT INTO alerts (rule, level, message, value, threshold, fired_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT DO NOTHING RETURNING {ALERT_COLUMNS}"
            ))
            .bind(&condition.rule)
            .bind(condition.level.as_str())
            .bind(&condition.message)
            .bind(condition.value)
            .bind(condition.threshold)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = alert {
                fired.push(alert_from_row(&row)?);
            }
        }
        tx.commit().await?;
        let mut resolved = resolved
            .iter()
            .map(alert_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        resolved.sort_by_key(|a| a.id);
        Ok((fired, resolved))
    }

    /// Backs `Store::unsent_alerts`.
    pub(super) async fn alerts_owed(
        &self,
        since_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        let fired = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE notified_at IS NULL AND fired_at >= $1 ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let resolved = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts
             WHERE resolved_at IS NOT NULL AND resolve_notified_at IS NULL AND resolved_at >= $1 ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            fired.iter().map(alert_from_row).collect::<Result<_, _>>()?,
            resolved
                .iter()
                .map(alert_from_row)
                .collect::<Result<_, _>>()?,
        ))
    }

    /// Backs `Store::mark_alerts_sent`.
    pub(super) async fn mark_notified(
        &self,
        fired: Vec<i64>,
        resolved: Vec<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE alerts SET notified_at = $2 WHERE id = ANY($1)")
            .bind(&fired)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE alerts SET resolve_notified_at = $2 WHERE id = ANY($1)")
            .bind(&resolved)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Backs `Store::sign_off`.
    pub(super) async fn forget_heartbeat(&self, instance: String) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM heartbeats WHERE instance = $1")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Backs `Store::heartbeat`.
    pub(super) async fn beat(
        &self,
        instance: String,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO heartbeats (instance, started_at, beat_at) VALUES ($1, $2, $3)
             ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at",
        )
        .bind(&instance)
        .bind(started_at_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        // Instances gone for a day are forgotten.
        sqlx::query("DELETE FROM heartbeats WHERE beat_at < $1")
            .bind(now_ms - 86_400_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Backs `Store::try_lead`.
    pub(super) async fn take_lease(
        &self,
        task: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let held = retrying(|| {
            sqlx::query(LEAD_SQL)
                .bind(&task)
                .bind(&holder)
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .fetch_optional(&self.pool)
        })
        .await?;
        Ok(held.is_some())
    }

    /// Backs `Store::resign`.
    pub(super) async fn give_up_lease(
        &self,
        task: String,
        holder: String,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leader_leases WHERE task = $1 AND holder = $2")
            .bind(&task)
            .bind(&holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Backs `Store::latest_heartbeat`.
    pub(super) async fn last_beat(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT MAX(beat_at) FROM heartbeats")
            .fetch_one(&self.pool)
            .await?)
    }
}

fn alert_from_row(row: &PgRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert::from(AlertRow {
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        level: row.try_get("level")?,
        message: row.try_get("message")?,
        value: row.try_get("value")?,
        threshold: row.try_get("threshold")?,
        fired_at: row.try_get("fired_at")?,
        resolved_at: row.try_get("resolved_at")?,
    }))
}
