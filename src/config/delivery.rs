//! Delivery: where events go, how patiently, how fast, and the circuit breaker.

use std::time::Duration;

use super::{Reader, is_loopback_url};
use crate::domain::{AddressPolicy, EndpointUrl};

/// How events are delivered.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `ZAPIER_WEBHOOK_URL`: the default endpoint every event is delivered to. Unset: events are
    /// stored and wait until a URL is configured.
    pub webhook_url: Option<EndpointUrl>,
    /// `ENABLE_WEBHOOK` (default true): false stores events without sending them; they are sent
    /// once it is true again.
    pub enabled: bool,
    /// `WEBHOOK_MAX_RETRIES` (default 3): retries after the first attempt before dead-lettering.
    pub max_retries: u32,
    /// `WEBHOOK_TIMEOUT_SECONDS` (default 10): per-request timeout of a delivery attempt.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_DELAY_SECONDS` (default 60): delay before the first retry; later retries
    /// double it, with jitter, up to `retry_max_delay`.
    pub retry_delay: Duration,
    /// `HOOKRELAY_RETRY_MAX_DELAY_SECONDS` (default 3600): cap on one retry delay, also the
    /// longest `Retry-After` honoured.
    pub retry_max_delay: Duration,
    /// `REQUIRE_HTTPS` (default false): refuse `http://` destinations.
    pub require_https: bool,
    /// Which destination addresses are allowed: `HOOKRELAY_ALLOW_PRIVATE_TARGETS` (default
    /// false) allows loopback, private, link-local and other special addresses;
    /// `HOOKRELAY_ALLOWED_TARGET_CIDRS` lists special ranges deliveries may reach anyway.
    pub targets: AddressPolicy,
    /// `HOOKRELAY_ENDPOINT_RATE_LIMIT` (default 0 = unlimited): requests per second per
    /// endpoint, for endpoints without their own limit (Zapier URLs default to Zapier's).
    pub endpoint_rate_limit: f64,
    /// `HOOKRELAY_DELIVERY_CONCURRENCY` (default 64): requests in flight at once, in total.
    pub concurrency: usize,
    /// `HOOKRELAY_ENDPOINT_CONCURRENCY` (default 16): requests in flight at once per endpoint.
    pub endpoint_concurrency: usize,
    /// `HOOKRELAY_POLL_INTERVAL_SECONDS` (default 1): how often an idle worker looks for work
    /// that another process queued (ingest in this process wakes it at once).
    pub poll_interval: Duration,
    /// `HOOKRELAY_ENDPOINT_DISABLE_AFTER_SECONDS` (default 0 = never): an endpoint failing
    /// continuously this long is disabled, with the reason recorded.
    pub endpoint_disable_after: Option<Duration>,
    /// The circuit breaker's defaults.
    pub circuit: CircuitSettings,
}

/// When an endpoint's circuit opens and how it recovers (README: "Circuit breaker").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// `HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD` (default 10; 0 = off): different events whose
    /// latest attempt within the window failed, before an endpoint's failure rate is judged.
    pub failure_threshold: u32,
    /// `HOOKRELAY_CIRCUIT_FAILURE_RATE` (default 0.8): share of the events attempted within the
    /// window that must be failing to open the circuit.
    pub failure_rate: f64,
    /// `HOOKRELAY_CIRCUIT_WINDOW_SECONDS` (default 30): how far back attempts are judged.
    pub window: Duration,
    /// `HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS` (default 2): how long an open circuit first waits
    /// before a round of probes; doubled with each failed round.
    pub cooldown: Duration,
    /// `HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS` (default 30): the longest wait between probe
    /// rounds.
    pub max_cooldown: Duration,
    /// `HOOKRELAY_CIRCUIT_PROBES` (default 3): deliveries, of different events, sent in one
    /// probe round.
    pub probes: u32,
}

impl DeliverySettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let webhook_url = r.raw("ZAPIER_WEBHOOK_URL").and_then(|raw| match EndpointUrl::parse(&raw) {
            Ok(url) => Some(url),
            Err(e) => {
                r.error(
                    "ZAPIER_WEBHOOK_URL",
                    e.to_string(),
                    "set it to your catch hook's URL, e.g. https://hooks.zapier.com/hooks/catch/123/abc/",
                );
                None
            }
        });
        let enabled = r.bool("ENABLE_WEBHOOK", true);
        let max_retries = r.number("WEBHOOK_MAX_RETRIES", 3, 0, 100) as u32;
        let timeout = r.seconds("WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.01, 300.0);
        let retry_delay = r.seconds("WEBHOOK_RETRY_DELAY_SECONDS", 60.0, 0.0, 86_400.0);
        let retry_max_delay = r.seconds(
            "HOOKRELAY_RETRY_MAX_DELAY_SECONDS",
            3600.0,
            0.0,
            7.0 * 86_400.0,
        );
        if retry_max_delay < retry_delay {
            r.warn(
                "HOOKRELAY_RETRY_MAX_DELAY_SECONDS",
                "is smaller than WEBHOOK_RETRY_DELAY_SECONDS, so every retry waits the maximum",
                "raise it above WEBHOOK_RETRY_DELAY_SECONDS",
            );
        }
        let require_https = r.bool("REQUIRE_HTTPS", false);
        let targets = AddressPolicy {
            allow_private: r.bool("HOOKRELAY_ALLOW_PRIVATE_TARGETS", false),
            allowed: r.cidrs("HOOKRELAY_ALLOWED_TARGET_CIDRS"),
        };
        if let Some(url) = &webhook_url {
            check_default_url(r, url, require_https, &targets);
        }
        let endpoint_rate_limit: f64 = r.parsed(
            "HOOKRELAY_ENDPOINT_RATE_LIMIT",
            0.0,
            "a number of requests per second (0 = unlimited)",
        );
        if !endpoint_rate_limit.is_finite() || endpoint_rate_limit < 0.0 {
            r.error(
                "HOOKRELAY_ENDPOINT_RATE_LIMIT",
                "must not be negative",
                "set it to 0 (unlimited) or a positive rate",
            );
        }
        let concurrency = r.number("HOOKRELAY_DELIVERY_CONCURRENCY", 64, 1, 10_000) as usize;
        let endpoint_concurrency =
            r.number("HOOKRELAY_ENDPOINT_CONCURRENCY", 16, 1, 10_000) as usize;
        let poll_interval = r.seconds("HOOKRELAY_POLL_INTERVAL_SECONDS", 1.0, 0.01, 3600.0);
        let disable_after = r.seconds(
            "HOOKRELAY_ENDPOINT_DISABLE_AFTER_SECONDS",
            0.0,
            0.0,
            365.0 * 86_400.0,
        );
        let circuit = CircuitSettings::read(r);

        if webhook_url.is_none()
            && !r
                .problems
                .iter()
                .any(|p| p.variable == "ZAPIER_WEBHOOK_URL")
        {
            r.warn(
                "ZAPIER_WEBHOOK_URL",
                "is not set: events go only to endpoints added with `hookrelay endpoints add` (with none, they are stored and not delivered)",
                "set it to your catch hook URL (or to `hookrelay sink`'s URL to try things locally)",
            );
        }
        if !enabled {
            r.warn(
                "ENABLE_WEBHOOK",
                "is false: events are stored but not delivered until it is true again",
                "set ENABLE_WEBHOOK=true to deliver",
            );
        }
        Self {
            webhook_url,
            enabled,
            max_retries,
            timeout,
            retry_delay,
            retry_max_delay,
            require_https,
            targets,
            endpoint_rate_limit,
            concurrency,
            endpoint_concurrency,
            poll_interval,
            endpoint_disable_after: (!disable_after.is_zero()).then_some(disable_after),
            circuit,
        }
    }
}

/// `ZAPIER_WEBHOOK_URL` against `REQUIRE_HTTPS` and the address policy.
fn check_default_url(
    r: &mut Reader<'_>,
    url: &EndpointUrl,
    require_https: bool,
    targets: &AddressPolicy,
) {
    if require_https && !url.is_https() {
        r.error(
            "ZAPIER_WEBHOOK_URL",
            "uses http:// while REQUIRE_HTTPS is true",
            "use the https:// URL, or set REQUIRE_HTTPS=false for a local receiver",
        );
    } else if !url.is_https() && !is_loopback_url(url) {
        r.warn(
            "ZAPIER_WEBHOOK_URL",
            "sends events over plain http:// to a non-loopback host",
            "use https://, and set REQUIRE_HTTPS=true",
        );
    }
    if let Err(blocked) = targets.check_url(url.url()) {
        r.error(
            "ZAPIER_WEBHOOK_URL",
            format!("points at {}: {}", blocked.address, blocked.range),
            "set HOOKRELAY_ALLOW_PRIVATE_TARGETS=true (or HOOKRELAY_ALLOWED_TARGET_CIDRS) to deliver to a local receiver",
        );
    }
}

impl CircuitSettings {
    fn read(r: &mut Reader<'_>) -> Self {
        let failure_threshold =
            r.number("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", 10, 0, 1_000_000) as u32;
        let failure_rate = r.fraction("HOOKRELAY_CIRCUIT_FAILURE_RATE", 0.8);
        let window = r.seconds("HOOKRELAY_CIRCUIT_WINDOW_SECONDS", 30.0, 1.0, 86_400.0);
        let cooldown = r.seconds("HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS", 2.0, 0.0, 86_400.0);
        let max_cooldown = r.seconds(
            "HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS",
            30.0,
            0.0,
            86_400.0,
        );
        if max_cooldown < cooldown {
            r.error(
                "HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS",
                "is shorter than HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS",
                "make it at least the first cool-down",
            );
        }
        let probes = r.number("HOOKRELAY_CIRCUIT_PROBES", 3, 1, 1_000) as u32;
        Self {
            failure_threshold,
            failure_rate,
            window,
            cooldown,
            max_cooldown,
            probes,
        }
    }
}
