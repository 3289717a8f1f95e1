//! Rows as both stores read them, before they are domain values. Each backend reads its
//! driver's columns into one of these structs (plain integers and text, no parsing); turning
//! that into an [`Endpoint`], [`Alert`], [`SessionStats`], [`DeliverySummary`] or
//! [`AttemptView`] — parsing JSON and URLs, clamping counts, hiding what does not apply — is
//! written here once.

use std::time::Duration;

use super::{
    AttemptError, AttemptView, DeliveryPage, DeliveryStatus, DeliverySummary, EndpointActivity,
    StoreError,
};
use crate::domain::{
    Alert, AlertLevel, CircuitState, DeliveryId, Endpoint, EndpointHealth, EndpointId, EndpointUrl,
    EventFilter, EventId, RateLimit, SessionStats, WebhookCounts, WindowTotals,
};

/// A stored value that does not parse: the row was damaged or written by something else.
#[derive(Debug, thiserror::Error)]
#[error("{table}.{column} holds a value that does not parse: {detail}")]
pub(super) struct CorruptRow {
    table: &'static str,
    column: &'static str,
    detail: String,
}

impl CorruptRow {
    fn new(table: &'static str, column: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            table,
            column,
            detail: detail.to_string(),
        }
    }
}

impl From<CorruptRow> for StoreError {
    fn from(error: CorruptRow) -> Self {
        StoreError::caused("a stored row cannot be read", error)
    }
}

/// A count as stored (a signed integer on both backends) as the `u32` the domain keeps;
/// out-of-range values are clamped rather than refused.
fn small(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// An HTTP status as stored; anything that is not one reads as none.
fn http_status(n: Option<i64>) -> Option<u16> {
    n.and_then(|s| u16::try_from(s).ok())
}

/// An endpoint's `event_types` column (a JSON list of patterns).
pub(super) fn event_filter(json: &str) -> Result<EventFilter, CorruptRow> {
    serde_json::from_str(json).map_err(|e| CorruptRow::new("endpoints", "event_types", e))
}

/// A stored payload as JSON; bytes that are not JSON show as a string.
pub(super) fn payload_json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// An `endpoints` row (`ENDPOINT_COLUMNS`, in that order).
pub(super) struct EndpointRow {
    pub(super) id: String,
    pub(super) url: String,
    pub(super) description: String,
    /// JSON list of patterns.
    pub(super) event_types: String,
    pub(super) secret: Option<String>,
    pub(super) previous_secret: Option<String>,
    pub(super) previous_secret_until: Option<i64>,
    /// JSON object of header names to values.
    pub(super) headers: String,
    pub(super) timeout_ms: Option<i64>,
    pub(super) max_retries: Option<i64>,
    pub(super) rate_limit: Option<f64>,
    pub(super) rate_burst: Option<i64>,
    pub(super) circuit_threshold: Option<i64>,
    pub(super) enabled: bool,
    pub(super) disabled_reason: Option<String>,
    pub(super) managed_by_config: bool,
    pub(super) circuit_state: String,
    pub(super) circuit_changed_at: Option<i64>,
    pub(super) consecutive_failures: i64,
    pub(super) failing_since: Option<i64>,
    pub(super) last_attempt_at: Option<i64>,
    pub(super) last_success_at: Option<i64>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = CorruptRow;

    fn try_from(row: EndpointRow) -> Result<Self, CorruptRow> {
        let corrupt = |column| move |detail: String| CorruptRow::new("endpoints", column, detail);
        let url = EndpointUrl::parse(&row.url).map_err(|e| corrupt("url")(e.to_string()))?;
        let headers =
            serde_json::from_str(&row.headers).map_err(|e| corrupt("headers")(e.to_string()))?;
        let circuit: CircuitState = row
            .circuit_state
            .parse()
            .map_err(corrupt("circuit_state"))?;
        // A limit that no longer validates (the rules tightened since) is dropped, not fatal.
        let rate_limit = row
            .rate_limit
            .and_then(|per_second| RateLimit::new(per_second, row.rate_burst.map(small)).ok());
        Ok(Endpoint {
            id: EndpointId::from_trusted(row.id),
            url,
            description: row.description,
            filter: event_filter(&row.event_types)?,
            secret: row.secret,
            previous_secret: row.previous_secret,
            previous_secret_until_ms: row.previous_secret_until,
            headers,
            timeout: row
                .timeout_ms
                .map(|ms| Duration::from_millis(ms.unsigned_abs())),
            max_retries: row.max_retries.map(small),
            rate_limit,
            circuit_threshold: row.circuit_threshold.map(small),
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            managed_by_config: row.managed_by_config,
            health: EndpointHealth {
                circuit,
                circuit_changed_at_ms: row.circuit_changed_at,
                consecutive_failures: small(row.consecutive_failures),
                failing_since_ms: row.failing_since,
                last_attempt_at_ms: row.last_attempt_at,
                last_success_at_ms: row.last_success_at,
            },
            created_at_ms: row.created_at,
            updated_at_ms: row.updated_at,
        })
    }
}

/// An `alerts` row (`ALERT_COLUMNS`, in that order).
pub(super) struct AlertRow {
    pub(super) id: i64,
    pub(super) rule: String,
    pub(super) level: String,
    pub(super) message: String,
    pub(super) value: Option<f64>,
    pub(super) threshold: Option<f64>,
    pub(super) fired_at: i64,
    pub(super) resolved_at: Option<i64>,
}

impl From<AlertRow> for Alert {
    fn from(row: AlertRow) -> Self {
        Alert {
            id: row.id,
            rule: row.rule,
            level: AlertLevel::parse(&row.level),
            message: row.message,
            value: row.value,
            threshold: row.threshold,
            fired_at_ms: row.fired_at,
            resolved_at_ms: row.resolved_at,
        }
    }
}

/// A `sessions` row (`SESSION_COLUMNS`, in that order), its counts as stored.
pub(super) struct SessionRow {
    pub(super) session_id: String,
    pub(super) first_seen: i64,
    pub(super) last_seen: i64,
    pub(super) queries: i64,
    pub(super) successes: i64,
    pub(super) failures: i64,
    pub(super) response_time_sum_ms: i64,
    pub(super) tokens: i64,
}

/// The session's aggregate without its models and webhook counts (each store adds those).
impl From<SessionRow> for SessionStats {
    fn from(row: SessionRow) -> Self {
        let queries = row.queries.unsigned_abs();
        let response_time_sum_ms = row.response_time_sum_ms.unsigned_abs();
        SessionStats {
            session_id: row.session_id,
            first_seen_ms: row.first_seen,
            last_seen_ms: row.last_seen,
            queries,
            successes: row.successes.unsigned_abs(),
            failures: row.failures.unsigned_abs(),
            total_response_time_ms: response_time_sum_ms,
            avg_response_time_ms: (queries > 0)
                .then(|| response_time_sum_ms as f64 / queries as f64),
            estimated_tokens: row.tokens.unsigned_abs(),
            models: Vec::new(),
            webhooks: WebhookCounts::default(),
        }
    }
}

/// The `rollups` columns summed over a window, in table order: `ingested`, `duplicates`,
/// `attempts`, `successes`, `failures`, `throttled`, `retries`, `delivered`, `dead_lettered`,
/// `duration_sum_ms`, `latency_sum_ms`, the duration buckets `d0` to `d11`, then the largest
/// `duration_max_ms`.
pub(super) struct RollupSums(pub(super) [i64; 24]);

impl From<RollupSums> for WindowTotals {
    fn from(RollupSums(sums): RollupSums) -> Self {
        let n = |i: usize| sums[i].unsigned_abs();
        WindowTotals {
            ingested: n(0),
            duplicates: n(1),
            attempts: n(2),
            successes: n(3),
            failures: n(4),
            throttled: n(5),
            retries: n(6),
            delivered: n(7),
            dead_lettered: n(8),
            duration_sum_ms: n(9),
            latency_sum_ms: n(10),
            buckets: std::array::from_fn(|k| n(11 + k)),
            duration_max_ms: n(23),
        }
    }
}

/// Sets a session's count of deliveries in `status` (as stored) to `n`.
pub(super) fn set_webhook_count(counts: &mut WebhookCounts, status: &str, n: u64) {
    match DeliveryStatus::from_db(status) {
        DeliveryStatus::Delivered => counts.delivered = n,
        DeliveryStatus::Dead => counts.dead = n,
        DeliveryStatus::Pending => counts.pending = n,
    }
}

/// A page from the rows a search read: up to `limit + 1` deliveries, newest first. The extra
/// row only says that an older page exists; it is dropped, and the page's last delivery becomes
/// the cursor for the next.
pub(super) fn page(mut rows: Vec<DeliverySummary>, limit: usize) -> DeliveryPage {
    let more = rows.len() > limit;
    rows.truncate(limit);
    DeliveryPage {
        next_before: more.then(|| rows.last().map(|d| d.id.clone())).flatten(),
        deliveries: rows,
    }
}

/// One endpoint's attempt counts over a period.
pub(super) struct ActivityRow {
    pub(super) endpoint_id: String,
    pub(super) attempts: i64,
    pub(super) successes: i64,
    pub(super) failures: i64,
}

/// A failed attempt with its delivery's endpoint.
pub(super) struct ErrorRow {
    pub(super) endpoint_id: String,
    pub(super) delivery_id: String,
    pub(super) started_at: i64,
    pub(super) status_code: Option<i64>,
    pub(super) error_kind: Option<String>,
    pub(super) error_detail: Option<String>,
}

/// Each endpoint's counts with its failed attempts (`errors` in the order read: newest first
/// within an endpoint).
pub(super) fn activity(counts: Vec<ActivityRow>, errors: Vec<ErrorRow>) -> Vec<EndpointActivity> {
    let mut by_endpoint: std::collections::HashMap<String, Vec<AttemptError>> =
        std::collections::HashMap::new();
    for error in errors {
        by_endpoint
            .entry(error.endpoint_id)
            .or_default()
            .push(AttemptError {
                delivery_id: DeliveryId::from_trusted(error.delivery_id),
                at_ms: error.started_at,
                status_code: http_status(error.status_code),
                error_kind: error.error_kind,
                error_detail: error.error_detail,
            });
    }
    counts
        .into_iter()
        .map(|row| EndpointActivity {
            last_errors: by_endpoint.remove(&row.endpoint_id).unwrap_or_default(),
            endpoint_id: EndpointId::from_trusted(row.endpoint_id),
            attempts: row.attempts.unsigned_abs(),
            successes: row.successes.unsigned_abs(),
            failures: row.failures.unsigned_abs(),
        })
        .collect()
}

/// A delivery joined with its event (`SUMMARY_COLUMNS`, in that order).
pub(super) struct SummaryRow {
    pub(super) id: String,
    pub(super) event_id: String,
    pub(super) endpoint_id: String,
    pub(super) event_type: String,
    pub(super) session_id: Option<String>,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) total_attempts: i64,
    pub(super) last_status: Option<i64>,
    pub(super) last_error: Option<String>,
    pub(super) created_at: i64,
    pub(super) next_attempt_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) throttled: i64,
}

impl From<SummaryRow> for DeliverySummary {
    fn from(row: SummaryRow) -> Self {
        let status = DeliveryStatus::from_db(&row.status);
        DeliverySummary {
            id: DeliveryId::from_trusted(row.id),
            event_id: EventId::from_trusted(row.event_id),
            endpoint_id: EndpointId::from_trusted(row.endpoint_id),
            event_type: row.event_type,
            session_id: row.session_id,
            status,
            attempts: small(row.attempts),
            total_attempts: small(row.total_attempts),
            throttled: small(row.throttled),
            last_status: http_status(row.last_status),
            last_error: row.last_error,
            created_at_ms: row.created_at,
            // A finished delivery's due time is when it finished: not a time anything is due.
            next_attempt_at_ms: (status == DeliveryStatus::Pending).then_some(row.next_attempt_at),
            finished_at_ms: row.finished_at,
        }
    }
}

/// An `attempts` row (`ATTEMPT_COLUMNS`, in that order).
pub(super) struct AttemptRow {
    pub(super) attempt_no: i64,
    pub(super) started_at: i64,
    pub(super) duration_ms: i64,
    pub(super) status_code: Option<i64>,
    pub(super) error_kind: Option<String>,
    pub(super) error_detail: Option<String>,
    pub(super) response_snippet: Option<String>,
    pub(super) outcome: String,
}

impl From<AttemptRow> for AttemptView {
    fn from(row: AttemptRow) -> Self {
        AttemptView {
            attempt_no: small(row.attempt_no),
            started_at_ms: row.started_at,
            duration_ms: row.duration_ms,
            status_code: http_status(row.status_code),
            error_kind: row.error_kind,
            error_detail: row.error_detail,
            response_snippet: row.response_snippet,
            outcome: row.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_row() -> EndpointRow {
        EndpointRow {
            id: "ep_a".into(),
            url: "https://example.com/hook".into(),
            description: String::new(),
            event_types: r#"["*"]"#.into(),
            secret: None,
            previous_secret: None,
            previous_secret_until: None,
            headers: "{}".into(),
            timeout_ms: Some(2_500),
            max_retries: Some(-1),
            rate_limit: Some(5.0),
            rate_burst: Some(i64::MAX),
            circuit_threshold: None,
            enabled: true,
            disabled_reason: None,
            managed_by_config: false,
            circuit_state: "closed".into(),
            circuit_changed_at: None,
            consecutive_failures: 3,
            failing_since: None,
            last_attempt_at: None,
            last_success_at: None,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn an_endpoint_row_becomes_an_endpoint_with_counts_clamped() {
        let endpoint = Endpoint::try_from(endpoint_row()).expect("valid row");
        assert_eq!(endpoint.url.as_str(), "https://example.com/hook");
        assert_eq!(endpoint.timeout, Some(Duration::from_millis(2_500)));
        assert_eq!(endpoint.max_retries, Some(0));
        assert_eq!(endpoint.health.consecutive_failures, 3);
        assert_eq!(endpoint.rate_limit.map(|r| r.burst), Some(u32::MAX));
    }

    #[test]
    fn an_endpoint_row_that_does_not_parse_names_its_column() {
        for (row, column) in [
            (
                EndpointRow {
                    url: "ftp://example.com".into(),
                    ..endpoint_row()
                },
                "endpoints.url",
            ),
            (
                EndpointRow {
                    headers: "[".into(),
                    ..endpoint_row()
                },
                "endpoints.headers",
            ),
            (
                EndpointRow {
                    circuit_state: "ajar".into(),
                    ..endpoint_row()
                },
                "endpoints.circuit_state",
            ),
            (
                EndpointRow {
                    event_types: "7".into(),
                    ..endpoint_row()
                },
                "endpoints.event_types",
            ),
        ] {
            let error = Endpoint::try_from(row).expect_err("corrupt row");
            assert!(error.to_string().starts_with(column), "{error}");
        }
    }

    #[test]
    fn only_a_pending_delivery_shows_when_it_is_due() {
        let row = |status: &str| SummaryRow {
            id: "dlv_a".into(),
            event_id: "evt_a".into(),
            endpoint_id: "ep_a".into(),
            event_type: "usage.tracked".into(),
            session_id: None,
            status: status.into(),
            attempts: 1,
            total_attempts: 1,
            last_status: Some(70_000),
            last_error: None,
            created_at: 1,
            next_attempt_at: 5,
            finished_at: None,
            throttled: 0,
        };
        let pending = DeliverySummary::from(row("pending"));
        assert_eq!(pending.next_attempt_at_ms, Some(5));
        assert_eq!(pending.last_status, None, "not an HTTP status");
        assert_eq!(DeliverySummary::from(row("dead")).next_attempt_at_ms, None);
    }
}
