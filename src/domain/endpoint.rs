//! The endpoint model: where events go, which types each receives, how fast it may be sent
//! to, and how it has been doing. Validation of the parts lives with each type.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{EndpointId, EndpointUrl, SigningSecret};

/// An endpoint's settings or a change to them was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct InvalidEndpoint {
    /// The setting at fault.
    pub field: &'static str,
    /// What is wrong.
    pub detail: String,
}

pub(crate) fn invalid(field: &'static str, detail: impl Into<String>) -> InvalidEndpoint {
    InvalidEndpoint {
        field,
        detail: detail.into(),
    }
}

/// Which event types an endpoint receives: exact types (`usage.tracked`), prefixes
/// (`alert.*`), or everything (`*`, or an empty list).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    /// Parses and checks the patterns.
    pub fn parse(patterns: Vec<String>) -> Result<Self, InvalidEndpoint> {
        for pattern in &patterns {
            let body = pattern.strip_suffix(".*").unwrap_or(pattern);
            let valid = pattern == "*"
                || (!body.is_empty()
                    && body.len() <= 128
                    && body.split('.').all(|part| {
                        !part.is_empty()
                            && part
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    }));
            if !valid {
                return Err(invalid(
                    "event_types",
                    format!("`{pattern}` is not an event type, a prefix like `alert.*`, or `*`"),
                ));
            }
        }
        Ok(Self(patterns))
    }

    /// Whether an event of this type goes to the endpoint.
    pub fn matches(&self, event_type: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|pattern| {
                pattern == "*"
                    || pattern == event_type
                    || pattern
                        .strip_suffix('*')
                        .is_some_and(|prefix| event_type.starts_with(prefix))
            })
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for EventFilter {
    type Error = InvalidEndpoint;
    fn try_from(patterns: Vec<String>) -> Result<Self, InvalidEndpoint> {
        Self::parse(patterns)
    }
}

impl From<EventFilter> for Vec<String> {
    fn from(filter: EventFilter) -> Vec<String> {
        filter.0
    }
}

/// An outbound rate limit: `per_second` sustained, up to `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed back to back.
    pub burst: u32,
}

impl RateLimit {
    /// A limit with a burst of at least one.
    pub fn new(per_second: f64, burst: Option<u32>) -> Result<Self, InvalidEndpoint> {
        if !per_second.is_finite() || per_second <= 0.0 || per_second > 1_000_000.0 {
            return Err(invalid(
                "rate_limit",
                "must be a number of requests per second above 0",
            ));
        }
        let burst = burst.unwrap_or_else(|| (per_second.ceil() as u32).max(1));
        if burst == 0 {
            return Err(invalid("rate_burst", "must be at least 1"));
        }
        Ok(Self { per_second, burst })
    }

    /// What Zapier's documented limits allow a catch hook: about 30 requests per second per
    /// hook (and 20,000 per 5 minutes per account, 66 per second), so 25 per second with a
    /// small burst stays under both with headroom.
    pub fn zapier() -> Self {
        Self {
            per_second: 25.0,
            burst: 5,
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Deliveries flow.
    #[default]
    Closed,
    /// Too many consecutive failures: deliveries wait until a probe after the cool-down.
    Open,
    /// One probe delivery is in flight; its result closes or re-opens the circuit.
    HalfOpen,
}

impl CircuitState {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl FromStr for CircuitState {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "closed" => Ok(Self::Closed),
            "open" => Ok(Self::Open),
            "half_open" => Ok(Self::HalfOpen),
            other => Err(format!("unknown circuit state `{other}`")),
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an endpoint has been doing; written by the worker with every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct EndpointHealth {
    /// The circuit breaker.
    pub circuit: CircuitState,
    /// When the circuit last changed state, unix ms.
    pub circuit_changed_at_ms: Option<i64>,
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// Start of the current run of failures, unix ms.
    pub failing_since_ms: Option<i64>,
    /// Last attempt, unix ms.
    pub last_attempt_at_ms: Option<i64>,
    /// Last success, unix ms.
    pub last_success_at_ms: Option<i64>,
}

/// A destination.
#[derive(Clone)]
pub struct Endpoint {
    /// Its id.
    pub id: EndpointId,
    /// Where deliveries are POSTed.
    pub url: EndpointUrl,
    /// Free text.
    pub description: String,
    /// Which event types it receives.
    pub filter: EventFilter,
    /// Signs its deliveries. For `ep_default`, whose secret is `WEBHOOK_SECRET` in the serving
    /// process's configuration, this holds that secret's fingerprint (or `None`: unsigned), so
    /// reports from any shell tell how it is signed.
    pub secret: Option<String>,
    /// The secret before the last rotation, still signing until `previous_secret_until_ms`.
    pub previous_secret: Option<String>,
    /// End of the rotation overlap, unix ms.
    pub previous_secret_until_ms: Option<i64>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout (default: `WEBHOOK_TIMEOUT_SECONDS`).
    pub timeout: Option<Duration>,
    /// Retry budget (default: `WEBHOOK_MAX_RETRIES`).
    pub max_retries: Option<u32>,
    /// Outbound rate limit (default: Zapier's for `hooks.zapier.com`, else
    /// `HOOKRELAY_ENDPOINT_RATE_LIMIT`).
    pub rate_limit: Option<RateLimit>,
    /// Consecutive failures that open the circuit (default:
    /// `HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD`; 0 turns it off).
    pub circuit_threshold: Option<u32>,
    /// Disabled endpoints get no new deliveries and send nothing.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// `ep_default`, whose URL and secret come from the configuration.
    pub managed_by_config: bool,
    /// How it has been doing.
    pub health: EndpointHealth,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Last changed, unix ms.
    pub updated_at_ms: i64,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// An endpoint as shown to people and scripts: everything but its secrets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// Its id.
    pub id: EndpointId,
    /// The full URL (management output is admin-only).
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event-type patterns; empty means every type.
    pub event_types: Vec<String>,
    /// Whether it signs (always, except an unsigned `ep_default`).
    pub signed: bool,
    /// While a rotation overlap runs: until when the previous secret still signs, unix ms.
    pub previous_secret_until_ms: Option<i64>,
    /// Names of extra headers (values may be credentials and are not shown).
    pub header_names: Vec<String>,
    /// Per-request timeout in seconds, when set.
    pub timeout_seconds: Option<f64>,
    /// Retry budget, when set.
    pub max_retries: Option<u32>,
    /// Rate limit, when set.
    pub rate_limit: Option<RateLimit>,
    /// Circuit threshold, when set.
    pub circuit_threshold: Option<u32>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Whether it mirrors `ZAPIER_WEBHOOK_URL`.
    pub managed_by_config: bool,
    /// Health.
    pub health: EndpointHealth,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Last changed, unix ms.
    pub updated_at_ms: i64,
}

impl Endpoint {
    /// The view without secrets.
    pub fn view(&self) -> EndpointView {
        EndpointView {
            id: self.id.clone(),
            url: self.url.as_str().to_owned(),
            description: self.description.clone(),
            event_types: self.filter.patterns().to_vec(),
            signed: self.secret.is_some(),
            previous_secret_until_ms: self
                .previous_secret
                .as_ref()
                .and(self.previous_secret_until_ms),
            header_names: self.headers.keys().cloned().collect(),
            timeout_seconds: self.timeout.map(|t| t.as_secs_f64()),
            max_retries: self.max_retries,
            rate_limit: self.rate_limit,
            circuit_threshold: self.circuit_threshold,
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            managed_by_config: self.managed_by_config,
            health: self.health,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// The secrets that sign a delivery made at `now_ms`: the current one, and the previous
    /// one while its overlap lasts.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<SigningSecret> {
        let mut secrets: Vec<SigningSecret> = self
            .secret
            .as_deref()
            .and_then(|s| SigningSecret::parse(s).ok())
            .into_iter()
            .collect();
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_until_ms)
            && now_ms < until
            && let Ok(previous) = SigningSecret::parse(previous)
        {
            secrets.push(previous);
        }
        secrets
    }
}
