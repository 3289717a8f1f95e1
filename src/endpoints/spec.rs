//! Creating and changing endpoints: what a user (CLI flags or API JSON) may say, checked
//! against the configuration before anything is stored.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Deserializer};

use super::{
    Endpoint, EndpointHealth, EventFilter, InvalidEndpoint, RateLimit, generate_secret, invalid,
    validate_headers, validate_secret,
};
use crate::{
    config::Config,
    domain::{EndpointId, EndpointUrl, number::optional_whole},
};

/// A new endpoint, as `endpoints add` and `POST /api/v1/endpoints` take it.
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Where to deliver.
    #[schema(
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://",
        example = "https://hooks.zapier.com/hooks/catch/123/abc/"
    )]
    pub url: String,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: String,
    /// Event-type patterns; empty: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Signing secret; generated (`whsec_…`) when absent.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub secret: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout in seconds.
    #[serde(default)]
    #[schema(minimum = 0.01, maximum = 300)]
    pub timeout_seconds: Option<f64>,
    /// Retry budget.
    #[serde(default, deserialize_with = "optional_whole")]
    #[schema(maximum = 100)]
    pub max_retries: Option<u32>,
    /// Requests per second.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1000000)]
    pub rate_limit: Option<f64>,
    /// Burst for the rate limit.
    #[serde(default, deserialize_with = "optional_whole")]
    #[schema(minimum = 1)]
    pub rate_burst: Option<u32>,
    /// Consecutive failures that open the circuit (0: never).
    #[serde(default, deserialize_with = "optional_whole")]
    pub circuit_threshold: Option<u32>,
}

// `Debug` of these two shows no secret, header value or URL path: all are credentials.
impl fmt::Debug for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("url", &shown_url(&self.url))
            .field("description", &self.description)
            .field("event_types", &self.event_types)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("headers", &header_names(&self.headers))
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_retries", &self.max_retries)
            .field("rate_limit", &self.rate_limit)
            .field("rate_burst", &self.rate_burst)
            .field("circuit_threshold", &self.circuit_threshold)
            .finish()
    }
}

impl fmt::Debug for EndpointChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointChanges")
            .field("url", &self.url.as_deref().map(shown_url))
            .field("description", &self.description)
            .field("event_types", &self.event_types)
            .field("headers", &self.headers.as_ref().map(header_names))
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_retries", &self.max_retries)
            .field("rate_limit", &self.rate_limit)
            .field("rate_burst", &self.rate_burst)
            .field("circuit_threshold", &self.circuit_threshold)
            .finish()
    }
}

/// Header names as given, each cut to its valid start (a bad name may hold a credential).
fn header_names(headers: &BTreeMap<String, String>) -> Vec<String> {
    headers.keys().map(|name| super::first_word(name)).collect()
}

/// A URL as given, shown like [`EndpointUrl`]: scheme, host and port.
fn shown_url(raw: &str) -> String {
    EndpointUrl::parse(raw).map_or_else(|_| "[not a URL]".to_owned(), |url| url.redacted())
}

/// Accepts `null` as "clear this setting" while a missing field means "leave it".
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// [`present`] for a count: `1000.0` is accepted as `1000` (see [`optional_whole`]).
fn present_whole<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u32>>, D::Error> {
    optional_whole(deserializer).map(Some)
}

/// A change to an endpoint, as `endpoints update` and `PATCH /api/v1/endpoints/{id}` take it:
/// absent fields stay as they are; `null` clears an optional setting back to the default.
#[derive(Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChanges {
    /// New URL.
    #[serde(default)]
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: Option<String>,
    /// New description.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// New event-type patterns.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// New extra headers (replacing all of them).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// New timeout in seconds, or `null` for the default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0.01, maximum = 300)]
    pub timeout_seconds: Option<Option<f64>>,
    /// New retry budget, or `null` for the default.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<u32>, maximum = 100)]
    pub max_retries: Option<Option<u32>>,
    /// New rate limit, or `null` for the default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 1000000)]
    pub rate_limit: Option<Option<f64>>,
    /// New burst.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub rate_burst: Option<Option<u32>>,
    /// New circuit threshold, or `null` for the default.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<u32>)]
    pub circuit_threshold: Option<Option<u32>>,
}

/// Checks a destination URL: form, credentials, `REQUIRE_HTTPS`, and (for IP literals and
/// `localhost`) the address policy; host names are checked again when resolved at delivery.
pub fn check_url(raw: &str, config: &Config) -> Result<EndpointUrl, InvalidEndpoint> {
    let url = EndpointUrl::parse(raw).map_err(|e| invalid("url", e.to_string()))?;
    if config.delivery.require_https && !url.is_https() {
        return Err(invalid("url", "must use https:// while REQUIRE_HTTPS=true"));
    }
    config
        .delivery
        .targets
        .check_url(url.url())
        .map_err(|e| invalid("url", e.to_string()))?;
    Ok(url)
}

fn timeout(seconds: Option<f64>) -> Result<Option<Duration>, InvalidEndpoint> {
    seconds
        .map(|s| {
            if s.is_finite() && (0.01..=300.0).contains(&s) {
                Ok(Duration::from_millis((s * 1000.0).round() as u64))
            } else {
                Err(invalid(
                    "timeout_seconds",
                    "must be between 0.01 and 300 seconds",
                ))
            }
        })
        .transpose()
}

fn retries(max: Option<u32>) -> Result<Option<u32>, InvalidEndpoint> {
    match max {
        Some(n) if n > 100 => Err(invalid("max_retries", "must be at most 100")),
        other => Ok(other),
    }
}

fn rate(per_second: Option<f64>, burst: Option<u32>) -> Result<Option<RateLimit>, InvalidEndpoint> {
    match (per_second, burst) {
        (Some(per_second), burst) => RateLimit::new(per_second, burst).map(Some),
        (None, Some(_)) => Err(invalid("rate_burst", "needs rate_limit")),
        (None, None) => Ok(None),
    }
}

impl EndpointSpec {
    /// Builds the endpoint with a fresh id; returns it with its secret (shown once).
    pub fn build(
        self,
        config: &Config,
        now_ms: i64,
    ) -> Result<(Endpoint, String), InvalidEndpoint> {
        let url = check_url(&self.url, config)?;
        let filter = EventFilter::parse(self.event_types)?;
        let secret = match self.secret {
            Some(secret) => {
                validate_secret(&secret)?;
                secret
            }
            None => generate_secret(),
        };
        validate_headers(&self.headers, &config.signing.header)?;
        if self.description.chars().count() > 1000 {
            return Err(invalid("description", "must be at most 1000 characters"));
        }
        let endpoint = Endpoint {
            id: EndpointId::generate(),
            url,
            description: self.description,
            filter,
            secret: Some(secret.clone()),
            previous_secret: None,
            previous_secret_until_ms: None,
            headers: self.headers,
            timeout: timeout(self.timeout_seconds)?,
            max_retries: retries(self.max_retries)?,
            rate_limit: rate(self.rate_limit, self.rate_burst)?,
            circuit_threshold: self.circuit_threshold,
            enabled: true,
            disabled_reason: None,
            managed_by_config: false,
            health: EndpointHealth::default(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        Ok((endpoint, secret))
    }
}

impl EndpointChanges {
    /// Applies the changes to `endpoint`.
    pub fn apply(
        self,
        mut endpoint: Endpoint,
        config: &Config,
        now_ms: i64,
    ) -> Result<Endpoint, InvalidEndpoint> {
        if let Some(url) = self.url {
            endpoint.url = check_url(&url, config)?;
        }
        if let Some(description) = self.description {
            endpoint.description = description;
        }
        if let Some(patterns) = self.event_types {
            endpoint.filter = EventFilter::parse(patterns)?;
        }
        if let Some(headers) = self.headers {
            validate_headers(&headers, &config.signing.header)?;
            endpoint.headers = headers;
        }
        if let Some(seconds) = self.timeout_seconds {
            endpoint.timeout = timeout(seconds)?;
        }
        if let Some(max) = self.max_retries {
            endpoint.max_retries = retries(max)?;
        }
        if self.rate_limit.is_some() || self.rate_burst.is_some() {
            let per_second = self
                .rate_limit
                .unwrap_or_else(|| endpoint.rate_limit.map(|r| r.per_second));
            let burst = self.rate_burst.unwrap_or(None);
            endpoint.rate_limit = rate(per_second, burst)?;
        }
        if let Some(threshold) = self.circuit_threshold {
            endpoint.circuit_threshold = threshold;
        }
        endpoint.updated_at_ms = now_ms;
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret_header_value_or_url_path() {
        let spec = EndpointSpec {
            url: "https://hooks.zapier.com/hooks/catch/123/abc/".into(),
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            headers: BTreeMap::from([("Authorization".into(), "Bearer sk_live_1".into())]),
            ..EndpointSpec::default()
        };
        let changes = EndpointChanges {
            url: Some(spec.url.clone()),
            headers: Some(spec.headers.clone()),
            ..EndpointChanges::default()
        };
        for shown in [format!("{spec:?}"), format!("{changes:?}")] {
            assert!(shown.contains("hooks.zapier.com") && shown.contains("Authorization"));
            for secret in ["catch/123", "whsec_", "sk_live"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
    }
}
