//! Delivery: the worker that claims due deliveries, signs and sends them, and records what
//! happened; the outbound HTTP client with its address policy; the retry policy; per-endpoint
//! throttling and circuit breaking.

mod attempt;
mod circuit;
mod client;
mod policy;
mod probe;
mod ssrf;
mod worker;

use std::{collections::BTreeMap, time::Duration};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub use self::{
    attempt::{Decision, MAX_THROTTLED, Prepared, Sent, Spent, decide, prepare, send},
    circuit::{Admission, Answer, Breaker, CircuitPolicy, Signal, Transition, track_health},
    client::{HttpSender, Response, SNIPPET_BYTES, SendError},
    policy::{Failure, RetryPolicy, parse_retry_after},
    probe::{ProbeReport, ProbeStep, probe},
    ssrf::GuardedResolver,
    worker::{Outcome, Worker, WorkerSettings},
};
use crate::{
    clock::millis,
    config::Config,
    domain::{
        Endpoint, EndpointId, EndpointUrl, EventId, RateLimit, SignatureAlgorithm, SigningSecret,
    },
    signing,
};

/// An endpoint as the worker needs it to send: its settings with the configuration's defaults
/// filled in. Its `Debug` shows header names, not their values (often credentials).
#[derive(Clone)]
pub struct Target {
    /// The endpoint.
    pub id: EndpointId,
    /// Where to POST.
    pub url: EndpointUrl,
    /// Signs deliveries when set.
    pub secret: Option<SigningSecret>,
    /// The secret before the last rotation and until when it still signs (unix ms).
    pub previous_secret: Option<(SigningSecret, i64)>,
    /// Header for the guide's hex signature.
    pub signature_header: String,
    /// Hash of that header.
    pub signature_algorithm: SignatureAlgorithm,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retry budget and backoff.
    pub policy: RetryPolicy,
    /// Outbound rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Circuit breaker settings.
    pub circuit: CircuitPolicy,
    /// Refuse to send over plain http (`REQUIRE_HTTPS`).
    pub require_https: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The sending view of `endpoint`. `ep_default` signs with `WEBHOOK_SECRET`; other
    /// endpoints with their own secret (and the previous one during a rotation overlap).
    pub fn from_endpoint(endpoint: &Endpoint, config: &Config) -> Self {
        let (secret, previous_secret) = if endpoint.managed_by_config {
            (config.signing.secret.clone(), None)
        } else {
            let parse =
                |s: &Option<String>| s.as_deref().and_then(|s| SigningSecret::parse(s).ok());
            let previous = parse(&endpoint.previous_secret).zip(endpoint.previous_secret_until_ms);
            (parse(&endpoint.secret), previous)
        };
        let is_zapier = endpoint
            .url
            .url()
            .host_str()
            .is_some_and(|host| host.eq_ignore_ascii_case("hooks.zapier.com"));
        let rate_limit = endpoint.rate_limit.or_else(|| {
            if is_zapier {
                Some(RateLimit::zapier())
            } else if config.delivery.endpoint_rate_limit > 0.0 {
                RateLimit::new(config.delivery.endpoint_rate_limit, None).ok()
            } else {
                None
            }
        });
        let timeout = endpoint.timeout.unwrap_or(config.delivery.timeout);
        Self {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            secret,
            previous_secret,
            signature_header: config.signing.header.clone(),
            signature_algorithm: config.signing.algorithm,
            headers: endpoint.headers.clone(),
            timeout,
            policy: RetryPolicy {
                max_retries: endpoint.max_retries.unwrap_or(config.delivery.max_retries),
                base_delay: config.delivery.retry_delay,
                max_delay: config.delivery.retry_max_delay,
            },
            rate_limit,
            circuit: CircuitPolicy {
                min_failures: endpoint
                    .circuit_threshold
                    .unwrap_or(config.delivery.circuit.failure_threshold),
                failure_rate: config.delivery.circuit.failure_rate,
                window_ms: millis(config.delivery.circuit.window),
                cooldown_ms: millis(config.delivery.circuit.cooldown),
                max_cooldown_ms: millis(config.delivery.circuit.max_cooldown),
                probes: config.delivery.circuit.probes,
                // A probe's answer is recorded well within its lease.
                probe_timeout_ms: millis(timeout) * 2 + 5_000,
            },
            require_https: config.delivery.require_https,
        }
    }

    /// A target for `url` with the configuration's defaults, as `hookrelay test` probes it.
    pub fn for_url(url: EndpointUrl, config: &Config) -> Self {
        let endpoint = Endpoint {
            id: EndpointId::default_endpoint(),
            url,
            description: String::new(),
            filter: crate::domain::EventFilter::default(),
            secret: None,
            previous_secret: None,
            previous_secret_until_ms: None,
            headers: BTreeMap::new(),
            timeout: None,
            max_retries: None,
            rate_limit: None,
            circuit_threshold: None,
            enabled: true,
            disabled_reason: None,
            managed_by_config: true,
            health: crate::domain::EndpointHealth::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        Self::from_endpoint(&endpoint, config)
    }
}

/// The headers of one attempt: content type, the Standard Webhooks id and timestamp, the
/// endpoint's extra headers and, when it has a secret, both signatures. During a rotation
/// overlap `webhook-signature` carries one signature per secret, space-separated, as Standard
/// Webhooks specifies; the guide's header carries the current secret's. `webhook-id` is the
/// event id, the same on every attempt, so receivers can drop repeats.
pub fn signed_headers(
    target: &Target,
    event_id: &EventId,
    timestamp_s: i64,
    body: &[u8],
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(6 + target.headers.len());
    for (name, value) in &target.headers {
        // Validated when the endpoint was saved.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(event_id.as_str()) {
        headers.insert(HeaderName::from_static("webhook-id"), value);
    }
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(timestamp_s),
    );
    if let Some(secret) = &target.secret {
        let mut standard =
            signing::standard_signature(secret, event_id.as_str(), timestamp_s, body);
        if let Some((previous, until_ms)) = &target.previous_secret
            && timestamp_s * 1000 < *until_ms
        {
            standard.push(' ');
            standard.push_str(&signing::standard_signature(
                previous,
                event_id.as_str(),
                timestamp_s,
                body,
            ));
        }
        let legacy = signing::legacy_signature(secret, target.signature_algorithm, body);
        if let Ok(value) = HeaderValue::from_str(&standard) {
            headers.insert(HeaderName::from_static("webhook-signature"), value);
        }
        // The header name was validated with the configuration.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(target.signature_header.as_bytes()),
            HeaderValue::from_str(&legacy),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}
