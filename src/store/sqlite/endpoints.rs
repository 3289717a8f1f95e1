//! Endpoints on SQLite: listing, creating, changing and deleting them, and keeping
//! `ep_default` in step with `ZAPIER_WEBHOOK_URL`.

use rusqlite::{OptionalExtension, Row, params, types::Value};

use super::SqliteStore;
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

impl SqliteStore {
    /// Backs `Store::endpoints`.
    pub(super) async fn all_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.read(|conn| {
            let mut list = conn.prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY id = 'ep_default' DESC, created_at, id"
            ))?;
            let rows = list.query_map([], endpoint_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows.into_iter().map(Endpoint::try_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Backs `Store::endpoint`.
    pub(super) async fn find_endpoint(
        &self,
        id: EndpointId,
    ) -> Result<Option<Endpoint>, StoreError> {
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

    /// Backs `Store::create_endpoint`.
    pub(super) async fn insert_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
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

    /// Backs `Store::update_endpoint`.
    pub(super) async fn update_endpoint_settings(
        &self,
        endpoint: Endpoint,
    ) -> Result<bool, StoreError> {
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

    /// Backs `Store::set_endpoint_state`.
    pub(super) async fn update_endpoint_state(
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

    /// Backs `Store::delete_endpoint`.
    pub(super) async fn remove_endpoint(&self, id: EndpointId) -> Result<bool, StoreError> {
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

    /// Backs `Store::record_default_signing`.
    pub(super) async fn set_default_signing(
        &self,
        fingerprint: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE endpoints SET secret = ?2 WHERE id = ?1 AND managed_by_config = 1",
                params![EndpointId::default_endpoint().as_str(), fingerprint],
            )?;
            Ok(())
        })
        .await
    }

    /// Backs `Store::sync_default_endpoint` (the rule: [`DefaultEndpointSync`]).
    pub(super) async fn mirror_default_endpoint(
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
