//! Delivery: the worker that claims due deliveries, signs and sends them, and records what
//! happened; the outbound HTTP client; the retry policy.

mod client;
mod policy;
mod probe;
mod worker;

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub use self::{
    client::{HttpSender, Response, SNIPPET_BYTES, SendError},
    policy::{Failure, RetryPolicy, parse_retry_after},
    probe::{ProbeReport, ProbeStep, probe},
    worker::{Outcome, Worker, WorkerSettings},
};
use crate::{
    config::Config,
    domain::{EndpointId, EndpointUrl, EventId, SigningSecret},
    signing::{self, SignatureAlgorithm},
};

/// An endpoint as the worker needs it to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint.
    pub id: EndpointId,
    /// Where to POST.
    pub url: EndpointUrl,
    /// Signs deliveries when set.
    pub secret: Option<SigningSecret>,
    /// Header for the guide's hex signature.
    pub signature_header: String,
    /// Hash of that header.
    pub signature_algorithm: SignatureAlgorithm,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retry budget and backoff.
    pub policy: RetryPolicy,
}

impl Target {
    /// The default endpoint (`ZAPIER_WEBHOOK_URL`), if it is configured and enabled.
    pub fn default_from(config: &Config) -> Option<Self> {
        if !config.webhook_enabled {
            return None;
        }
        let url = config.webhook_url.clone()?;
        if config.require_https && !url.is_https() {
            return None;
        }
        Some(Self {
            id: EndpointId::default_endpoint(),
            url,
            secret: config.signing_secret.clone(),
            signature_header: config.signature_header.clone(),
            signature_algorithm: config.signature_algorithm,
            timeout: config.timeout,
            policy: RetryPolicy {
                max_retries: config.max_retries,
                base_delay: config.retry_delay,
                max_delay: config.retry_max_delay,
            },
        })
    }
}

/// The headers of one attempt: content type, the Standard Webhooks id and timestamp, and, when
/// the target has a secret, both signatures (`webhook-signature` and the guide's header).
/// `webhook-id` is the event id, the same on every attempt, so receivers can drop repeats.
pub fn signed_headers(
    target: &Target,
    event_id: &EventId,
    timestamp_s: i64,
    body: &[u8],
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(6);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(event_id.as_str()) {
        headers.insert(HeaderName::from_static("webhook-id"), value);
    }
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        HeaderValue::from(timestamp_s),
    );
    if let Some(secret) = &target.secret {
        let standard = signing::standard_signature(secret, event_id.as_str(), timestamp_s, body);
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
