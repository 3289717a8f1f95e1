//! Endpoints on PostgreSQL: listing, creating, changing and deleting them, and keeping
//! `ep_default` in step with `ZAPIER_WEBHOOK_URL`.

use sqlx::{Row, postgres::PgRow};

use super::PgStore;
use crate::{
    domain::{Endpoint, EndpointId, EndpointUrl},
    store::{
        StoreError,
        rows::EndpointRow,
        shared::{
            DEFAULT_DESCRIPTION, DefaultEndpointSync, ENDPOINT_COLUMNS, UNSET_REASON, json_text,
        },
    },
};

impl PgStore {
    /// Backs `Store::endpoints`.
    pub(super) async fn all_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY id = 'ep_default' DESC, created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    /// Backs `Store::endpoint`.
    pub(super) async fn find_endpoint(
        &self,
        id: EndpointId,
    ) -> Result<Option<Endpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    /// Backs `Store::create_endpoint`.
    pub(super) async fn insert_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
        let inserted = bind_endpoint(
            sqlx::query(
                "INSERT INTO endpoints (id, url, description, event_types, secret, previous_secret,
                     previous_secret_until, headers, timeout_ms, max_retries, rate_limit, rate_burst,
                     circuit_threshold, enabled, disabled_reason, managed_by_config, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)
                 ON CONFLICT (id) DO NOTHING",
            ),
            &endpoint,
        )
        .bind(endpoint.enabled)
        .bind(&endpoint.disabled_reason)
        .bind(endpoint.managed_by_config)
        .bind(endpoint.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Backs `Store::update_endpoint`.
    pub(super) async fn update_endpoint_settings(
        &self,
        endpoint: Endpoint,
    ) -> Result<bool, StoreError> {
        // Settings only: enabled state and health belong to `set_endpoint_state` and the
        // worker, so a settings change read earlier cannot undo what they wrote since.
        let updated = bind_endpoint(
            sqlx::query(
                "UPDATE endpoints SET url = $2, description = $3, event_types = $4, secret = $5,
                     previous_secret = $6, previous_secret_until = $7, headers = $8, timeout_ms = $9,
                     max_retries = $10, rate_limit = $11, rate_burst = $12, circuit_threshold = $13,
                     updated_at = GREATEST(updated_at + 1, $14)
                 WHERE id = $1",
            ),
            &endpoint,
        )
        .bind(endpoint.updated_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Backs `Store::set_endpoint_state`.
    pub(super) async fn update_endpoint_state(
        &self,
        id: EndpointId,
        enabled: bool,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // Enabling starts afresh: circuit closed, past failures forgotten. updated_at always
        // moves forward, so every worker notices the change.
        // The gate starts afresh too: another instance's open circuit or pause must not hold
        // an endpoint an operator has just enabled.
        let updated: i64 = sqlx::query_scalar(
            "WITH e AS (
                 UPDATE endpoints SET enabled = $2, disabled_reason = $3, updated_at = GREATEST(updated_at + 1, $4),
                     circuit_state = CASE WHEN $2 THEN 'closed' ELSE circuit_state END,
                     circuit_changed_at = CASE WHEN $2 THEN NULL ELSE circuit_changed_at END,
                     consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END,
                     failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END
                 WHERE id = $1 RETURNING id),
             g AS (
                 UPDATE endpoint_gates SET circuit = 'closed', open_until_ms = 0, probe_holder = NULL,
                     probe_until_ms = 0, paused_until_ms = 0, changed_at_ms = $4
                 WHERE $2 AND endpoint_id IN (SELECT id FROM e))
             SELECT COUNT(*) FROM e",
        )
        .bind(id.as_str())
        .bind(enabled)
        .bind(reason)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(updated == 1)
    }

    /// Backs `Store::delete_endpoint`.
    pub(super) async fn remove_endpoint(&self, id: EndpointId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM deliveries WHERE endpoint_id = $1 AND status IN ('pending', 'dead')",
        )
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Backs `Store::record_default_signing`.
    pub(super) async fn set_default_signing(
        &self,
        fingerprint: Option<String>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE endpoints SET secret = $2 WHERE id = $1 AND managed_by_config")
            .bind(EndpointId::default_endpoint().as_str())
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Backs `Store::sync_default_endpoint` (the rule: [`DefaultEndpointSync`]).
    pub(super) async fn mirror_default_endpoint(
        &self,
        url: Option<EndpointUrl>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let id = EndpointId::default_endpoint();
        match DefaultEndpointSync::to_mirror(url) {
            DefaultEndpointSync::Mirror(url) => {
                sqlx::query(
                    "INSERT INTO endpoints AS p (id, url, description, managed_by_config, created_at, updated_at)
                     VALUES ($1, $2, $5, TRUE, $3, $3)
                     ON CONFLICT (id) DO UPDATE SET url = excluded.url, managed_by_config = TRUE,
                         updated_at = CASE WHEN p.url = excluded.url THEN p.updated_at ELSE excluded.updated_at END,
                         enabled = CASE WHEN p.disabled_reason = $4 THEN TRUE ELSE p.enabled END,
                         disabled_reason = CASE WHEN p.disabled_reason = $4 THEN NULL ELSE p.disabled_reason END",
                )
                .bind(id.as_str())
                .bind(url.as_str())
                .bind(now_ms)
                .bind(UNSET_REASON)
                .bind(DEFAULT_DESCRIPTION)
                .execute(&self.pool)
                .await?;
            }
            DefaultEndpointSync::Disable => {
                sqlx::query(
                    "UPDATE endpoints SET enabled = FALSE, disabled_reason = $2, updated_at = $3
                     WHERE id = $1 AND enabled",
                )
                .bind(id.as_str())
                .bind(UNSET_REASON)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

fn endpoint_row(row: &PgRow) -> Result<EndpointRow, sqlx::Error> {
    Ok(EndpointRow {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: row.try_get("event_types")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        headers: row.try_get("headers")?,
        timeout_ms: row.try_get("timeout_ms")?,
        max_retries: row.try_get("max_retries")?,
        rate_limit: row.try_get("rate_limit")?,
        rate_burst: row.try_get("rate_burst")?,
        circuit_threshold: row.try_get("circuit_threshold")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        managed_by_config: row.try_get("managed_by_config")?,
        circuit_state: row.try_get("circuit_state")?,
        circuit_changed_at: row.try_get("circuit_changed_at")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        failing_since: row.try_get("failing_since")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        last_success_at: row.try_get("last_success_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// An `endpoints` row as an endpoint.
fn endpoint_from_row(row: &PgRow) -> Result<Endpoint, StoreError> {
    Ok(Endpoint::try_from(endpoint_row(row)?)?)
}

/// Binds `$1` the id and `$2`–`$13` the settings shared by the endpoint INSERT and UPDATE.
fn bind_endpoint<'a>(
    query: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
    endpoint: &'a Endpoint,
) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(endpoint.id.as_str())
        .bind(endpoint.url.as_str())
        .bind(&endpoint.description)
        .bind(json_text(&endpoint.filter))
        .bind(&endpoint.secret)
        .bind(&endpoint.previous_secret)
        .bind(endpoint.previous_secret_until_ms)
        .bind(json_text(&endpoint.headers))
        .bind(endpoint.timeout.map(|t| t.as_millis() as i64))
        .bind(endpoint.max_retries.map(i64::from))
        .bind(endpoint.rate_limit.map(|r| r.per_second))
        .bind(endpoint.rate_limit.map(|r| i64::from(r.burst)))
        .bind(endpoint.circuit_threshold.map(i64::from))
}
