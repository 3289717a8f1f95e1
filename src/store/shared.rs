//! What both stores share that is not SQL dialect: column lists, the rule `ep_default` follows,
//! the meaning of an attempt's outcome for its delivery, and the assembly of reports from the
//! sums each store reads. Rows and their conversion to domain values are in `rows`.

use super::{DeliveryStatus, NewEvent, NextState, StoreError};
use crate::domain::{
    Analytics, DayUsage, EndpointUrl, ModelUsage, QueriesSummary, SessionsSummary, WebhooksSummary,
};

/// One schema migration: its version, name and SQL.
pub(super) type Migration = (i64, &'static str, &'static str);

/// The migrations, of `all` (in version order), that a database at version `current` lacks. A
/// database at a version none of them reaches was written by a newer hookrelay: refused.
pub(super) fn pending_migrations(
    all: &'static [Migration],
    current: i64,
) -> Result<impl Iterator<Item = &'static Migration>, StoreError> {
    let known = all.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    Ok(all.iter().filter(move |m| m.0 > current))
}

/// Why `ep_default` is disabled while `ZAPIER_WEBHOOK_URL` is unset.
pub(super) const UNSET_REASON: &str = "ZAPIER_WEBHOOK_URL is not set";

/// `ep_default`'s description: the variable it mirrors.
pub(super) const DEFAULT_DESCRIPTION: &str = "ZAPIER_WEBHOOK_URL";

/// What `sync_default_endpoint` does to `ep_default` so that it mirrors `ZAPIER_WEBHOOK_URL`.
/// Each store writes it in one statement of its own dialect.
pub(super) enum DefaultEndpointSync {
    /// The variable is set: create `ep_default` (described as [`DEFAULT_DESCRIPTION`]) or point
    /// it at this URL, marked as managed by the configuration. Its `updated_at` moves only when
    /// the URL changed. If it was disabled only because the variable was unset
    /// ([`UNSET_REASON`]), it is enabled again; disabled for any other reason (an operator, a
    /// receiver failing for too long), it stays disabled.
    Mirror(EndpointUrl),
    /// The variable is unset: an enabled `ep_default` is disabled with [`UNSET_REASON`]. It is
    /// not deleted: its pending deliveries wait for the variable to come back.
    Disable,
}

impl DefaultEndpointSync {
    pub(super) fn to_mirror(url: Option<EndpointUrl>) -> Self {
        url.map_or(Self::Disable, Self::Mirror)
    }
}

/// Whether `event` reuses an idempotency key stored with `stored` (the first request's
/// fingerprint) for a different request. Events stored before fingerprints were kept (`None`)
/// are taken as the same request.
pub(super) fn reuses_key(stored: Option<&str>, event: &NewEvent) -> bool {
    matches!((stored, event.request_fingerprint.as_deref()), (Some(a), Some(b)) if a != b)
}

/// The key as the client wrote it: stored keys are scoped by event type (`type key`), and an
/// item of a batch sent under one key is `key #i`.
pub(super) fn client_key(stored: &str) -> String {
    let key = stored.split_once(' ').map_or(stored, |(_, key)| key);
    key.rsplit_once(" #")
        .filter(|(_, index)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
        .map_or(key, |(key, _)| key)
        .to_owned()
}

/// Rows removed per retention transaction.
pub(super) const RETENTION_BATCH: u64 = 1000;

pub(super) const SUMMARY_COLUMNS: &str = "d.id, d.event_id, d.endpoint_id, e.event_type, e.session_id, d.status, \
     d.attempts, d.total_attempts, d.last_status, d.last_error, e.created_at, d.next_attempt_at, d.finished_at, \
     d.throttled";

/// Attempts started since `$1`, per endpoint (the same statement on both backends, as are
/// [`ERRORS_SQL`] and `LEAD_SQL`). `attempts_started_at` bounds what is read; each
/// attempt finds its delivery's endpoint by the delivery's primary key.
pub(super) const ACTIVITY_SQL: &str = "SELECT d.endpoint_id,
         SUM(CASE WHEN a.outcome <> 'throttled' THEN 1 ELSE 0 END),
         SUM(CASE WHEN a.outcome = 'delivered' THEN 1 ELSE 0 END),
         SUM(CASE WHEN a.outcome IN ('retry', 'dead') THEN 1 ELSE 0 END)
     FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
     WHERE a.started_at >= $1
     GROUP BY d.endpoint_id ORDER BY d.endpoint_id";

/// The `$2` latest failed attempts of each endpoint since `$1`, newest first.
pub(super) const ERRORS_SQL: &str = "SELECT endpoint_id, delivery_id, started_at, status_code, error_kind, error_detail
     FROM (SELECT d.endpoint_id, a.delivery_id, a.started_at, a.status_code, a.error_kind, a.error_detail,
                  ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY a.started_at DESC, a.id DESC) AS n
           FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
           WHERE a.started_at >= $1 AND a.outcome IN ('retry', 'dead')) AS failed
     WHERE n <= $2 ORDER BY endpoint_id, n";

pub(super) const ALERT_COLUMNS: &str =
    "id, rule, level, message, value, threshold, fired_at, resolved_at";

pub(super) const ATTEMPT_COLUMNS: &str = "attempt_no, started_at, duration_ms, status_code, error_kind, error_detail, \
     response_snippet, outcome";

pub(super) const SESSION_COLUMNS: &str =
    "session_id, first_seen, last_seen, queries, successes, failures, response_time_sum_ms, tokens";

pub(super) const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, secret, previous_secret, previous_secret_until, \
     headers, timeout_ms, max_retries, rate_limit, rate_burst, circuit_threshold, enabled, disabled_reason, \
     managed_by_config, circuit_state, circuit_changed_at, consecutive_failures, failing_since, last_attempt_at, \
     last_success_at, created_at, updated_at";

/// An endpoint's filter or headers as stored (JSON text).
pub(super) fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// What recording an attempt does to its delivery.
pub(super) struct Transition {
    pub(super) status: DeliveryStatus,
    /// The new due time (for a finished delivery, the time it finished).
    pub(super) next_attempt_at: i64,
    /// The attempt log's `outcome`.
    pub(super) outcome: &'static str,
    pub(super) finished_at: Option<i64>,
    /// Added to `attempts` (the retry budget spent).
    pub(super) spent: i64,
    /// Added to `throttled`.
    pub(super) throttled: i64,
}

impl NextState {
    pub(super) fn transition(self, now_ms: i64) -> Transition {
        let (status, next_attempt_at, outcome, finished_at, spent, throttled) = match self {
            NextState::Delivered => (
                DeliveryStatus::Delivered,
                now_ms,
                "delivered",
                Some(now_ms),
                1,
                0,
            ),
            NextState::RetryAt(at) => (DeliveryStatus::Pending, at, "retry", None, 1, 0),
            NextState::DeadLetter => (DeliveryStatus::Dead, now_ms, "dead", Some(now_ms), 1, 0),
            NextState::Throttled(at) => (DeliveryStatus::Pending, at, "throttled", None, 0, 1),
        };
        Transition {
            status,
            next_attempt_at,
            outcome,
            finished_at,
            spent,
            throttled,
        }
    }
}

/// One model's sums over the analytics period, most tokens first.
pub(super) struct ModelSums {
    pub(super) model: String,
    pub(super) queries: u64,
    pub(super) successes: u64,
    pub(super) tokens: u64,
    pub(super) response_time_sum_ms: u64,
}

/// One UTC day's sums (`day`: unix day), read in the same statement as [`ModelSums`].
pub(super) struct DaySums {
    pub(super) day: i64,
    pub(super) queries: u64,
    pub(super) successes: u64,
    pub(super) tokens: u64,
}

/// The analytics summary from what a store summed for the period.
pub(super) fn analytics(
    since_ms: i64,
    days: u32,
    sessions: u64,
    models: Vec<ModelSums>,
    daily: Vec<DaySums>,
    (delivered, dead, attempts): (u64, u64, u64),
) -> Analytics {
    let first_day = since_ms.div_euclid(86_400_000);
    let daily = (0..i64::from(days))
        .map(|offset| {
            let day = first_day + offset;
            let found = daily.iter().find(|d| d.day == day);
            DayUsage {
                day_start_ms: day * 86_400_000,
                queries: found.map_or(0, |d| d.queries),
                successes: found.map_or(0, |d| d.successes),
                tokens: found.map_or(0, |d| d.tokens),
            }
        })
        .collect();
    let queries: u64 = models.iter().map(|m| m.queries).sum();
    let successes: u64 = models.iter().map(|m| m.successes).sum();
    let tokens: u64 = models.iter().map(|m| m.tokens).sum();
    let response_sum: u64 = models.iter().map(|m| m.response_time_sum_ms).sum();
    let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    Analytics {
        since_ms,
        days,
        sessions: SessionsSummary {
            total: sessions,
            total_queries: queries,
        },
        queries: QueriesSummary {
            total: queries,
            successes,
            success_rate: ratio(successes, queries),
            avg_response_time_ms: ratio(response_sum, queries),
            tokens,
        },
        models: models
            .into_iter()
            .map(|m| ModelUsage {
                model: m.model,
                queries: m.queries,
                tokens: m.tokens,
            })
            .collect(),
        daily,
        webhooks: WebhooksSummary {
            delivered,
            dead_lettered: dead,
            attempts,
            success_rate: ratio(delivered, delivered + dead),
        },
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_clients_key_is_read_back_from_its_stored_form() {
        assert_eq!(client_key("usage.tracked order-42"), "order-42");
        assert_eq!(client_key("usage.tracked order-42 #3"), "order-42");
        assert_eq!(client_key("alert.fired a #b"), "a #b");
        assert_eq!(client_key("alert.fired k #"), "k #");
    }

    use super::*;

    const ALL: &[Migration] = &[(1, "a", ""), (2, "b", ""), (3, "c", "")];

    #[test]
    fn only_the_migrations_past_the_current_version_are_pending() {
        let names = |current| -> Vec<&str> {
            pending_migrations(ALL, current)
                .expect("known version")
                .map(|m| m.1)
                .collect()
        };
        assert_eq!(names(0), ["a", "b", "c"]);
        assert_eq!(names(2), ["c"]);
        assert!(names(3).is_empty());
    }

    #[test]
    fn a_database_newer_than_every_migration_is_refused() {
        assert!(matches!(
            pending_migrations(ALL, 4).err(),
            Some(StoreError::SchemaTooNew { found: 4, known: 3 })
        ));
    }
}
