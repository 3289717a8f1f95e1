//! One documented, validated configuration, read once from the environment (and `.env`).
//!
//! The seed guide's variables keep their names and meanings; hookrelay's own use the
//! `HOOKRELAY_` prefix. [`Config::from_lookup`] reads every variable and reports every problem
//! at once, which is what `hookrelay config check` prints. Secret values never appear in a
//! problem's text.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Serialize;

use crate::domain::{AddressPolicy, EndpointUrl, Redacted, SignatureAlgorithm, SigningSecret};

/// How much of a usage event's prompt leaves hookrelay in `query.summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// The first 50 characters, plus `...` when longer (default).
    #[default]
    Summary,
    /// The whole prompt.
    Full,
    /// `sha256:<hex>` of the prompt: lets a sheet group identical prompts without holding them.
    Hash,
    /// No `summary` field at all.
    Omit,
}

impl FromStr for QueryMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "summary" => Ok(Self::Summary),
            "full" => Ok(Self::Full),
            "hash" => Ok(Self::Hash),
            "omit" => Ok(Self::Omit),
            other => Err(format!("unknown mode `{other}`")),
        }
    }
}

/// Which header the trusted proxies write the client chain into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!("unknown header `{other}`")),
        }
    }
}

/// How hard SQLite works to make a commit survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// fsync on every commit: an acknowledged event survives power loss (default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// Alert thresholds (the guide's rules are the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AlertThresholds {
    /// Success rate of attempts over the last hour below which a warning fires (0.90).
    pub success_rate_warning: f64,
    /// … and below which a critical alert fires (0.80).
    pub success_rate_critical: f64,
    /// Average attempt duration over the last hour above which a warning fires (5 s).
    pub response_time_warning_ms: f64,
    /// … and above which a critical alert fires (10 s).
    pub response_time_critical_ms: f64,
    /// Share of deliveries finished in the last hour that were dead-lettered, above which a
    /// critical alert fires (0.10).
    pub error_rate_critical: f64,
    /// Dead letters above which a warning fires (50).
    pub dlq_warning: u64,
    /// … and above which a critical alert fires (100).
    pub dlq_critical: u64,
    /// Attempts in the hour needed before rate rules judge (10), so one failure at night is
    /// not a 0% success rate.
    pub min_attempts: u64,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, which several instances can share.
    Postgres(PostgresSettings),
}

/// How to reach PostgreSQL (`DATABASE_URL=postgres://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection URL, libpq style: TLS with `?sslmode=require` (or `verify-ca`,
    /// `verify-full`, with `sslrootcert=PATH`). It may hold a password, so it is never printed.
    pub url: Redacted<String>,
    /// `HOOKRELAY_DB_POOL_SIZE` (default 10): connections per instance.
    pub pool_size: u32,
    /// `HOOKRELAY_DB_STATEMENT_TIMEOUT_SECONDS` (default 30): the server cancels longer statements.
    pub statement_timeout: Duration,
    /// `HOOKRELAY_DB_SCHEMA` (default `public`): the schema holding hookrelay's tables; created
    /// if missing, so several deployments (or tests) can share one database.
    pub schema: String,
}

/// What a serving process runs (`HOOKRELAY_ROLE` or `serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// The HTTP API and the delivery worker (the default).
    #[default]
    All,
    /// The HTTP API only: events are accepted and stored; other instances deliver them.
    Api,
    /// The delivery worker only: no HTTP listener.
    Worker,
}

impl Role {
    /// Whether this role serves the HTTP API.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Whether this role runs the delivery worker.
    pub fn delivers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            other => Err(format!("`{other}` is not a role (all, api or worker)")),
        }
    }
}

/// Everything hookrelay is configured with. Build it with [`Config::from_lookup`] (or
/// [`Config::from_env`]); fields are public so an embedding program or a test can adjust them.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ZAPIER_WEBHOOK_URL`: the default endpoint every event is delivered to. Unset: events are
    /// stored and wait until a URL is configured.
    pub webhook_url: Option<EndpointUrl>,
    /// `ENABLE_WEBHOOK` (default true): false stores events without sending them; they are sent
    /// once it is true again.
    pub webhook_enabled: bool,
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
    /// `WEBHOOK_SECRET`: signs deliveries. Unset: deliveries are sent unsigned.
    pub signing_secret: Option<SigningSecret>,
    /// `WEBHOOK_SIGNATURE_HEADER` (default `X-Webhook-Signature`): header carrying the guide's
    /// hex signature.
    pub signature_header: String,
    /// `WEBHOOK_SIGNATURE_ALGORITHM` (default `sha256`; or `sha512`): hash of that header.
    pub signature_algorithm: SignatureAlgorithm,
    /// `WEBHOOK_RATE_LIMIT` (default 100): ingest requests per client per window.
    pub rate_limit: u32,
    /// `WEBHOOK_RATE_WINDOW` (default 3600 s): the window of `rate_limit`.
    pub rate_window: Duration,
    /// `WEBHOOK_BURST_ALLOWANCE` (default 10): extra requests allowed in a burst.
    pub burst_allowance: u32,
    /// `WEBHOOK_ALLOWED_IPS`: CIDRs allowed to call ingest (empty: everyone).
    pub allowed_ips: Vec<IpNet>,
    /// `REQUIRE_HTTPS` (default false): refuse `http://` destinations.
    pub require_https: bool,
    /// `SENTRY_DSN`: where errors are reported.
    pub sentry_dsn: Option<Redacted<String>>,
    /// `LOG_LEVEL` (default `INFO`): `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub log_level: String,
    /// `HOOKRELAY_LISTEN` (default `127.0.0.1:8000`): address the HTTP API listens on.
    pub listen: SocketAddr,
    /// `HOOKRELAY_DATA_DIR` (default `./data`): where the SQLite file and logs live.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: overrides the database location (`sqlite://PATH` or a file path).
    pub database: DatabaseLocation,
    /// `HOOKRELAY_ADMIN_TOKEN`: bearer token for `/api/v1/…` management routes. Unset: those
    /// routes answer only to loopback clients.
    pub admin_token: Option<Redacted<String>>,
    /// `HOOKRELAY_MAX_BODY_BYTES` (default 1 MiB): largest request body accepted.
    pub max_body_bytes: usize,
    /// `HOOKRELAY_ROLE` (default `all`): what `serve` runs: `all`, `api` or `worker`.
    pub role: Role,
    /// `HOOKRELAY_QUERY_MODE` (default `summary`): what `query.summary` carries.
    pub query_mode: QueryMode,
    /// `HOOKRELAY_DELIVERY_CONCURRENCY` (default 64): requests in flight at once, in total.
    pub delivery_concurrency: usize,
    /// `HOOKRELAY_ENDPOINT_CONCURRENCY` (default 16): requests in flight at once per endpoint.
    pub endpoint_concurrency: usize,
    /// `HOOKRELAY_POLL_INTERVAL_SECONDS` (default 1): how often an idle worker looks for work
    /// that another process queued (ingest in this process wakes it at once).
    pub poll_interval: Duration,
    /// `HOOKRELAY_SHUTDOWN_GRACE_SECONDS` (default 10): how long shutdown waits for in-flight
    /// deliveries before releasing them back to the queue.
    pub shutdown_grace: Duration,
    /// `HOOKRELAY_RETENTION_DAYS` (default 30): how long delivered events (and so their
    /// idempotency keys) are kept.
    pub retention_days: u32,
    /// `HOOKRELAY_SQLITE_SYNCHRONOUS` (default `full`): `full` or `normal`.
    pub sqlite_sync: SqliteSync,
    /// `HOOKRELAY_ALLOW_PRIVATE_TARGETS` (default false): allow deliveries to loopback, private,
    /// link-local and other special addresses.
    pub allow_private_targets: bool,
    /// `HOOKRELAY_ALLOWED_TARGET_CIDRS`: special address ranges deliveries may reach anyway.
    pub allowed_target_cidrs: Vec<IpNet>,
    /// `HOOKRELAY_ENDPOINT_RATE_LIMIT` (default 0 = unlimited): requests per second per
    /// endpoint, for endpoints without their own limit (Zapier URLs default to Zapier's).
    pub endpoint_rate_limit: f64,
    /// `HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD` (default 10; 0 = off): different events whose
    /// latest attempt within the window failed, before an endpoint's failure rate is judged.
    pub circuit_failure_threshold: u32,
    /// `HOOKRELAY_CIRCUIT_FAILURE_RATE` (default 0.8): share of the events attempted within the
    /// window that must be failing to open the circuit.
    pub circuit_failure_rate: f64,
    /// `HOOKRELAY_CIRCUIT_WINDOW_SECONDS` (default 30): how far back attempts are judged.
    pub circuit_window: Duration,
    /// `HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS` (default 2): how long an open circuit first waits
    /// before a round of probes; doubled with each failed round.
    pub circuit_cooldown: Duration,
    /// `HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS` (default 30): the longest wait between probe
    /// rounds.
    pub circuit_max_cooldown: Duration,
    /// `HOOKRELAY_CIRCUIT_PROBES` (default 3): deliveries, of different events, sent in one
    /// probe round.
    pub circuit_probes: u32,
    /// `HOOKRELAY_ENDPOINT_DISABLE_AFTER_SECONDS` (default 0 = never): an endpoint failing
    /// continuously this long is disabled, with the reason recorded.
    pub endpoint_disable_after: Option<Duration>,
    /// `HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS` (default 24): how long a rotated-out secret
    /// keeps signing beside the new one.
    pub secret_rotation_overlap: Duration,
    /// `HOOKRELAY_INGEST_SECRET`: secrets ingest clients sign with (comma-separated, for
    /// rotation). Set: every ingest request must be signed. Separate from `WEBHOOK_SECRET`, so
    /// whoever verifies our deliveries cannot forge events into us.
    pub ingest_secrets: Vec<SigningSecret>,
    /// `HOOKRELAY_SIGNATURE_TOLERANCE_SECONDS` (default 300): how far a Standard Webhooks
    /// `webhook-timestamp` may be from now, and how long `webhook-id`s are remembered against replay.
    pub signature_tolerance: Duration,
    /// `HOOKRELAY_TRUSTED_PROXIES`: CIDRs of reverse proxies whose `X-Forwarded-For` /
    /// `Forwarded` headers are believed. Empty (default): those headers are ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// `HOOKRELAY_FORWARDED_HEADER` (default `x-forwarded-for`; or `forwarded`): the one
    /// header the trusted proxies append the client's address to.
    pub forwarded_header: ForwardedHeader,
    /// `HOOKRELAY_ALLOW_NO_ADMIN_TOKEN` (default false): let `serve` start on a non-loopback
    /// address without `HOOKRELAY_ADMIN_TOKEN` (management routes then answer loopback only).
    pub allow_no_admin_token: bool,
    /// `HOOKRELAY_MAX_HEADER_BYTES` (default 16384): largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// `HOOKRELAY_HEADER_TIMEOUT_SECONDS` (default 10): time a client has to send its request
    /// head; slower clients (slowloris) are disconnected.
    pub header_timeout: Duration,
    /// `HOOKRELAY_REQUEST_TIMEOUT_SECONDS` (default 30): time to read a request and answer it (408 beyond).
    pub request_timeout: Duration,
    /// `HOOKRELAY_MAX_CONNECTIONS` (default 1024): open client connections at once; beyond, new
    /// connections get 503 and are closed.
    pub max_connections: usize,
    /// `HOOKRELAY_MAX_CONCURRENT_REQUESTS` (default 512): requests handled at once; beyond,
    /// 503 with `Retry-After` instead of queueing.
    pub max_concurrent_requests: usize,
    /// `HOOKRELAY_ALERT_*`: alert rule thresholds.
    pub alerts: AlertThresholds,
    /// `HOOKRELAY_ALERT_WEBHOOK_URL`: where alerts are sent (Slack's incoming-webhook format
    /// for a Slack URL, JSON otherwise). The URL is treated as a secret.
    pub alert_webhook_url: Option<EndpointUrl>,
    /// `HOOKRELAY_ALERT_INTERVAL_SECONDS` (default 30): how often alert rules are evaluated.
    pub alert_interval: Duration,
    /// `HOOKRELAY_METRICS_REQUIRE_TOKEN` (default false): `/metrics` needs the admin token.
    pub metrics_require_token: bool,
    /// `HOOKRELAY_LOG_FILE` (default false): also write JSON lines to `DATA_DIR/logs/hookrelay.log`,
    /// rotated daily.
    pub log_file: bool,
    /// `HOOKRELAY_ENVIRONMENT` (default `production`): reported to Sentry.
    pub environment: String,
    /// `HOOKRELAY_DISK_WARNING_PERCENT` (default 10): free disk below this turns health degraded.
    pub disk_warning_percent: f64,
    /// `HOOKRELAY_DISK_CRITICAL_PERCENT` (default 2): free disk below this turns health unhealthy.
    pub disk_critical_percent: f64,
}

/// How serious a configuration problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// hookrelay cannot start with this.
    Error,
    /// hookrelay starts, but probably not as intended.
    Warning,
}

/// One problem found in the configuration, with what would fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong (never contains a secret's value).
    pub message: String,
    /// What would fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{level}: {}: {} (fix: {})",
            self.variable, self.message, self.fix
        )
    }
}

/// The configuration has errors; each is listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

/// Reads variables, remembering every problem instead of stopping at the first.
struct Reader<F> {
    lookup: F,
    problems: Vec<Problem>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn error(
        &mut self,
        variable: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity: Severity::Error,
            variable,
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn warn(&mut self, variable: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            variable,
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn parsed<T: FromStr>(&mut self, name: &'static str, default: T, expected: &str) -> T
    where
        T::Err: fmt::Display,
    {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().parse() {
            Ok(value) => value,
            Err(e) => {
                self.error(
                    name,
                    format!("`{}` is not valid: {e}", raw.trim()),
                    format!("set it to {expected}"),
                );
                default
            }
        }
    }

    fn bool(&mut self, name: &'static str, default: bool) -> bool {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.error(
                    name,
                    format!("`{}` is not a boolean", raw.trim()),
                    "set it to true or false",
                );
                default
            }
        }
    }

    fn number(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let value: u64 = self.parsed(
            name,
            default,
            &format!("a whole number from {min} to {max}"),
        );
        if !(min..=max).contains(&value) {
            self.error(
                name,
                format!("{value} is out of range"),
                format!("set it to a whole number from {min} to {max}"),
            );
            return default;
        }
        value
    }

    /// Seconds, fractions allowed (`0.25`), at millisecond precision.
    fn seconds(&mut self, name: &'static str, default: f64, min: f64, max: f64) -> Duration {
        let value: f64 = self.parsed(
            name,
            default,
            &format!("a number of seconds from {min} to {max}"),
        );
        if !value.is_finite() || value < min || value > max {
            self.error(
                name,
                format!("{value} seconds is out of range"),
                format!("set it to a number of seconds from {min} to {max}"),
            );
            return Duration::from_secs_f64(default);
        }
        Duration::from_millis((value * 1000.0).round() as u64)
    }

    /// A fraction from 0 to 1; `90%` and `0.9` both mean 0.9.
    fn fraction(&mut self, name: &'static str, default: f64) -> f64 {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        let raw = raw.trim();
        let parsed = match raw.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
            None => raw.parse::<f64>(),
        };
        match parsed {
            Ok(value) if (0.0..=1.0).contains(&value) => value,
            _ => {
                self.error(
                    name,
                    format!("`{raw}` is not a fraction"),
                    "use a number from 0 to 1, or a percentage like 90%",
                );
                default
            }
        }
    }

    fn cidrs(&mut self, name: &'static str) -> Vec<IpNet> {
        let Some(raw) = self.raw(name) else {
            return Vec::new();
        };
        let mut nets = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .parse::<IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => self.error(
                    name,
                    format!("`{part}` is not an IP address or CIDR"),
                    "list CIDRs separated by commas, e.g. 192.168.1.0/24,10.0.0.0/8,2001:db8::/32",
                ),
            }
        }
        nets
    }

    fn secret(&mut self, name: &'static str) -> Option<Redacted<String>> {
        let value = self.raw(name)?;
        Some(Redacted::new(value.trim().to_owned()))
    }
}

fn is_loopback_url(url: &EndpointUrl) -> bool {
    match url.url().host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Config {
    /// Reads the configuration from the process environment (load `.env` first).
    pub fn from_env() -> Result<(Self, Vec<Problem>), ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value). On success,
    /// also returns the warnings; on failure, every problem found, errors and warnings.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<Problem>), ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };

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
        let webhook_enabled = r.bool("ENABLE_WEBHOOK", true);
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

        let signing_secret =
            r.raw("WEBHOOK_SECRET")
                .and_then(|raw| match SigningSecret::parse(raw.trim()) {
                    Ok(secret) => {
                        if secret.key().len() < 32 {
                            r.warn(
                                "WEBHOOK_SECRET",
                                format!("is only {} bytes long", secret.key().len()),
                                "use at least 32 random bytes, e.g. `openssl rand -hex 32`",
                            );
                        }
                        Some(secret)
                    }
                    Err(e) => {
                        r.error(
                            "WEBHOOK_SECRET",
                            e.to_string(),
                            "use `openssl rand -hex 32` or a whsec_<base64> secret",
                        );
                        None
                    }
                });
        let signature_header = r.raw("WEBHOOK_SIGNATURE_HEADER").map_or_else(
            || "X-Webhook-Signature".to_owned(),
            |raw| raw.trim().to_owned(),
        );
        if reqwest::header::HeaderName::from_bytes(signature_header.as_bytes()).is_err() {
            r.error(
                "WEBHOOK_SIGNATURE_HEADER",
                format!("`{signature_header}` is not a valid HTTP header name"),
                "use letters, digits and `-`, e.g. X-Webhook-Signature",
            );
        }
        let signature_algorithm = r.parsed(
            "WEBHOOK_SIGNATURE_ALGORITHM",
            SignatureAlgorithm::Sha256,
            "sha256 or sha512",
        );

        let rate_limit = r.number("WEBHOOK_RATE_LIMIT", 100, 1, 10_000_000) as u32;
        let rate_window = r.seconds("WEBHOOK_RATE_WINDOW", 3600.0, 1.0, 86_400.0);
        let burst_allowance = r.number("WEBHOOK_BURST_ALLOWANCE", 10, 0, 10_000_000) as u32;
        let allowed_ips = r.cidrs("WEBHOOK_ALLOWED_IPS");
        let require_https = r.bool("REQUIRE_HTTPS", false);
        if let Some(url) = &webhook_url {
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
        }
        let sentry_dsn = r.secret("SENTRY_DSN");
        if let Some(dsn) = &sentry_dsn
            && dsn.expose().parse::<sentry::types::Dsn>().is_err()
        {
            r.error(
                "SENTRY_DSN",
                "is not a valid Sentry DSN",
                "copy the DSN from your Sentry project settings (https://PUBLIC_KEY@HOST/PROJECT_ID)",
            );
        }
        let log_level = r
            .raw("LOG_LEVEL")
            .map_or_else(|| "INFO".to_owned(), |v| v.trim().to_owned());
        if !["error", "warn", "warning", "info", "debug", "trace"]
            .contains(&log_level.to_ascii_lowercase().as_str())
        {
            r.error(
                "LOG_LEVEL",
                format!("`{log_level}` is not a log level"),
                "use ERROR, WARN, INFO, DEBUG or TRACE",
            );
        }

        let listen = r.parsed(
            "HOOKRELAY_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8000)),
            "an address:port such as 127.0.0.1:8000 or [::]:8000",
        );
        let data_dir = r
            .raw("HOOKRELAY_DATA_DIR")
            .map_or_else(|| PathBuf::from("./data"), |v| PathBuf::from(v.trim()));
        let database = match r.raw("DATABASE_URL") {
            None => DatabaseLocation::Sqlite(data_dir.join("hookrelay.db")),
            Some(raw) => {
                let raw = raw.trim();
                let scheme = raw
                    .split_once("://")
                    .map(|(scheme, _)| scheme.to_ascii_lowercase());
                if matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
                    // The URL may carry a password: problems name the variable, never the value.
                    if url::Url::parse(raw).map_or(true, |u| u.host_str().is_none()) {
                        r.error(
                            "DATABASE_URL",
                            "is not a valid PostgreSQL URL",
                            "use postgres://USER:PASSWORD@HOST:5432/DATABASE (add ?sslmode=require for TLS)",
                        );
                    }
                    // Four at least: the work listener keeps one, and the two group committers
                    // and the worker's claims need their own.
                    let pool_size = r.number("HOOKRELAY_DB_POOL_SIZE", 10, 4, 1000) as u32;
                    let statement_timeout =
                        r.seconds("HOOKRELAY_DB_STATEMENT_TIMEOUT_SECONDS", 30.0, 0.1, 3600.0);
                    let schema = r
                        .raw("HOOKRELAY_DB_SCHEMA")
                        .map_or_else(|| "public".to_owned(), |s| s.trim().to_owned());
                    let valid_schema = schema.len() <= 63
                        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                        && schema
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !valid_schema {
                        r.error(
                            "HOOKRELAY_DB_SCHEMA",
                            format!("`{schema}` is not a plain schema name"),
                            "use lowercase letters, digits and underscores, starting with a letter",
                        );
                    }
                    DatabaseLocation::Postgres(PostgresSettings {
                        url: Redacted::new(raw.to_owned()),
                        pool_size,
                        statement_timeout,
                        schema,
                    })
                } else if scheme.as_deref().is_some_and(|s| s != "sqlite") {
                    // Never echo it: it may hold a password.
                    r.error(
                        "DATABASE_URL",
                        "has a scheme hookrelay does not know",
                        "use postgres://… for PostgreSQL or sqlite://PATH (or a file path) for SQLite",
                    );
                    DatabaseLocation::Sqlite(data_dir.join("hookrelay.db"))
                } else {
                    let path = raw
                        .strip_prefix("sqlite://")
                        .or_else(|| raw.strip_prefix("sqlite:"))
                        .unwrap_or(raw);
                    if path.is_empty() || path.contains(":memory:") {
                        r.error(
                            "DATABASE_URL",
                            "must name a database file (an in-memory database would lose acknowledged events)",
                            "use sqlite://PATH/TO/hookrelay.db, or unset it",
                        );
                    }
                    DatabaseLocation::Sqlite(PathBuf::from(path))
                }
            }
        };
        let admin_token = r.secret("HOOKRELAY_ADMIN_TOKEN");
        if let Some(token) = &admin_token
            && token.expose().len() < 32
        {
            r.warn(
                "HOOKRELAY_ADMIN_TOKEN",
                format!("is only {} characters long", token.expose().len()),
                "use at least 32 random characters, e.g. `openssl rand -hex 32`",
            );
        }
        if admin_token.is_none() && !listen.ip().is_loopback() {
            r.warn(
                "HOOKRELAY_ADMIN_TOKEN",
                format!("is not set while listening on the non-loopback address {listen}: management routes answer only loopback clients"),
                "set HOOKRELAY_ADMIN_TOKEN to manage hookrelay remotely",
            );
        }
        let max_body_bytes = r.number("HOOKRELAY_MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20) as usize;
        let query_mode = r.parsed(
            "HOOKRELAY_QUERY_MODE",
            QueryMode::Summary,
            "summary, full, hash or omit",
        );
        let delivery_concurrency =
            r.number("HOOKRELAY_DELIVERY_CONCURRENCY", 64, 1, 10_000) as usize;
        let endpoint_concurrency =
            r.number("HOOKRELAY_ENDPOINT_CONCURRENCY", 16, 1, 10_000) as usize;
        let poll_interval = r.seconds("HOOKRELAY_POLL_INTERVAL_SECONDS", 1.0, 0.01, 3600.0);
        let shutdown_grace = r.seconds("HOOKRELAY_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 3600.0);
        let role = r.parsed("HOOKRELAY_ROLE", Role::All, "all, api or worker");
        let retention_days = r.number("HOOKRELAY_RETENTION_DAYS", 30, 1, 36_500) as u32;
        let sqlite_sync = match r
            .raw("HOOKRELAY_SQLITE_SYNCHRONOUS")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => SqliteSync::Full,
            Some(v) if v == "full" => SqliteSync::Full,
            Some(v) if v == "normal" => SqliteSync::Normal,
            Some(v) => {
                r.error(
                    "HOOKRELAY_SQLITE_SYNCHRONOUS",
                    format!("`{v}` is not a mode"),
                    "use full or normal",
                );
                SqliteSync::Full
            }
        };

        let allow_private_targets = r.bool("HOOKRELAY_ALLOW_PRIVATE_TARGETS", false);
        let allowed_target_cidrs = r.cidrs("HOOKRELAY_ALLOWED_TARGET_CIDRS");
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
        let circuit_failure_threshold =
            r.number("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", 10, 0, 1_000_000) as u32;
        let circuit_failure_rate = r.fraction("HOOKRELAY_CIRCUIT_FAILURE_RATE", 0.8);
        let circuit_window = r.seconds("HOOKRELAY_CIRCUIT_WINDOW_SECONDS", 30.0, 1.0, 86_400.0);
        let circuit_cooldown = r.seconds("HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS", 2.0, 0.0, 86_400.0);
        let circuit_max_cooldown = r.seconds(
            "HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS",
            30.0,
            0.0,
            86_400.0,
        );
        if circuit_max_cooldown < circuit_cooldown {
            r.error(
                "HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS",
                "is shorter than HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS",
                "make it at least the first cool-down",
            );
        }
        let circuit_probes = r.number("HOOKRELAY_CIRCUIT_PROBES", 3, 1, 1_000) as u32;
        let disable_after = r.seconds(
            "HOOKRELAY_ENDPOINT_DISABLE_AFTER_SECONDS",
            0.0,
            0.0,
            365.0 * 86_400.0,
        );
        let endpoint_disable_after = (!disable_after.is_zero()).then_some(disable_after);
        let overlap_hours = r.seconds(
            "HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS",
            24.0,
            0.0,
            24.0 * 365.0,
        );
        let secret_rotation_overlap = overlap_hours * 3600;
        let ingest_secrets = r
            .raw("HOOKRELAY_INGEST_SECRET")
            .map_or_else(Vec::new, |raw| {
                let mut secrets = Vec::new();
                for (n, part) in raw
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .enumerate()
                {
                    match SigningSecret::parse(part) {
                        Ok(secret) => {
                            if secret.key().len() < 32 {
                                r.warn(
                                    "HOOKRELAY_INGEST_SECRET",
                                    format!(
                                        "secret #{} is only {} bytes long",
                                        n + 1,
                                        secret.key().len()
                                    ),
                                    "use at least 32 random bytes, e.g. `openssl rand -hex 32`",
                                );
                            }
                            secrets.push(secret);
                        }
                        Err(e) => r.error(
                            "HOOKRELAY_INGEST_SECRET",
                            format!("secret #{}: {e}", n + 1),
                            "use `openssl rand -hex 32`, several separated by commas",
                        ),
                    }
                }
                secrets
            });
        if let Some(secret) = &signing_secret
            && ingest_secrets.iter().any(|s| s == secret)
        {
            r.warn(
                "HOOKRELAY_INGEST_SECRET",
                "contains WEBHOOK_SECRET: whoever verifies deliveries could then sign events into hookrelay",
                "use a different secret for ingest",
            );
        }
        let signature_tolerance = r.seconds(
            "HOOKRELAY_SIGNATURE_TOLERANCE_SECONDS",
            300.0,
            1.0,
            86_400.0,
        );
        let trusted_proxies = r.cidrs("HOOKRELAY_TRUSTED_PROXIES");
        let forwarded_header = r.parsed(
            "HOOKRELAY_FORWARDED_HEADER",
            ForwardedHeader::XForwardedFor,
            "x-forwarded-for or forwarded",
        );
        let allow_no_admin_token = r.bool("HOOKRELAY_ALLOW_NO_ADMIN_TOKEN", false);
        let max_header_bytes =
            r.number("HOOKRELAY_MAX_HEADER_BYTES", 16_384, 1024, 1 << 20) as usize;
        let header_timeout = r.seconds("HOOKRELAY_HEADER_TIMEOUT_SECONDS", 10.0, 0.1, 600.0);
        let request_timeout = r.seconds("HOOKRELAY_REQUEST_TIMEOUT_SECONDS", 30.0, 0.1, 3600.0);
        let max_connections = r.number("HOOKRELAY_MAX_CONNECTIONS", 1024, 1, 1_000_000) as usize;
        let max_concurrent_requests =
            r.number("HOOKRELAY_MAX_CONCURRENT_REQUESTS", 512, 1, 1_000_000) as usize;
        let alerts = AlertThresholds {
            success_rate_warning: r.fraction("HOOKRELAY_ALERT_SUCCESS_RATE_WARNING", 0.90),
            success_rate_critical: r.fraction("HOOKRELAY_ALERT_SUCCESS_RATE_CRITICAL", 0.80),
            response_time_warning_ms: r
                .seconds(
                    "HOOKRELAY_ALERT_RESPONSE_TIME_WARNING_SECONDS",
                    5.0,
                    0.001,
                    3600.0,
                )
                .as_secs_f64()
                * 1000.0,
            response_time_critical_ms: r
                .seconds(
                    "HOOKRELAY_ALERT_RESPONSE_TIME_CRITICAL_SECONDS",
                    10.0,
                    0.001,
                    3600.0,
                )
                .as_secs_f64()
                * 1000.0,
            error_rate_critical: r.fraction("HOOKRELAY_ALERT_ERROR_RATE_CRITICAL", 0.10),
            dlq_warning: r.number("HOOKRELAY_ALERT_DLQ_WARNING", 50, 0, u64::MAX / 2),
            dlq_critical: r.number("HOOKRELAY_ALERT_DLQ_CRITICAL", 100, 0, u64::MAX / 2),
            min_attempts: r.number("HOOKRELAY_ALERT_MIN_ATTEMPTS", 10, 1, 1_000_000_000),
        };
        let alert_webhook_url =
            r.raw("HOOKRELAY_ALERT_WEBHOOK_URL")
                .and_then(|raw| match EndpointUrl::parse(&raw) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        r.error(
                            "HOOKRELAY_ALERT_WEBHOOK_URL",
                            e.to_string(),
                            "set it to a Slack incoming-webhook URL or any https URL",
                        );
                        None
                    }
                });
        let alert_interval = r.seconds("HOOKRELAY_ALERT_INTERVAL_SECONDS", 30.0, 0.1, 86_400.0);
        let metrics_require_token = r.bool("HOOKRELAY_METRICS_REQUIRE_TOKEN", false);
        if metrics_require_token && admin_token.is_none() {
            r.warn(
                "HOOKRELAY_METRICS_REQUIRE_TOKEN",
                "is true but HOOKRELAY_ADMIN_TOKEN is unset: /metrics answers loopback clients only",
                "set HOOKRELAY_ADMIN_TOKEN for Prometheus to scrape with",
            );
        }
        let log_file = r.bool("HOOKRELAY_LOG_FILE", false);
        let environment = r
            .raw("HOOKRELAY_ENVIRONMENT")
            .map_or_else(|| "production".to_owned(), |v| v.trim().to_owned());
        let disk_warning_percent: f64 = r.parsed(
            "HOOKRELAY_DISK_WARNING_PERCENT",
            10.0,
            "a percentage from 0 to 100",
        );
        let disk_critical_percent: f64 = r.parsed(
            "HOOKRELAY_DISK_CRITICAL_PERCENT",
            2.0,
            "a percentage from 0 to 100",
        );
        for (name, value) in [
            ("HOOKRELAY_DISK_WARNING_PERCENT", disk_warning_percent),
            ("HOOKRELAY_DISK_CRITICAL_PERCENT", disk_critical_percent),
        ] {
            if !(0.0..=100.0).contains(&value) {
                r.error(
                    name,
                    format!("{value} is not a percentage"),
                    "use a number from 0 to 100",
                );
            }
        }
        if ingest_secrets.is_empty() && !listen.ip().is_loopback() {
            r.warn(
                "HOOKRELAY_INGEST_SECRET",
                format!("is not set while listening on the non-loopback address {listen}: anyone who reaches the port can put events in"),
                "set HOOKRELAY_INGEST_SECRET and sign ingest requests (or WEBHOOK_ALLOWED_IPS to restrict callers)",
            );
        }
        if let Some(url) = &webhook_url
            && !require_https
            && !is_loopback_url(url)
        {
            r.warn(
                "REQUIRE_HTTPS",
                "is false while ZAPIER_WEBHOOK_URL is not on loopback",
                "set REQUIRE_HTTPS=true so no endpoint can receive events over plain http",
            );
        }

        if let Some(url) = &webhook_url {
            let policy = AddressPolicy {
                allow_private: allow_private_targets,
                allowed: allowed_target_cidrs.clone(),
            };
            if let Err(blocked) = policy.check_url(url.url()) {
                r.error(
                    "ZAPIER_WEBHOOK_URL",
                    format!("points at {}: {}", blocked.address, blocked.range),
                    "set HOOKRELAY_ALLOW_PRIVATE_TARGETS=true (or HOOKRELAY_ALLOWED_TARGET_CIDRS) to deliver to a local receiver",
                );
            }
        }
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
        if !webhook_enabled {
            r.warn(
                "ENABLE_WEBHOOK",
                "is false: events are stored but not delivered until it is true again",
                "set ENABLE_WEBHOOK=true to deliver",
            );
        }
        if signing_secret.is_none() && !r.problems.iter().any(|p| p.variable == "WEBHOOK_SECRET") {
            r.warn(
                "WEBHOOK_SECRET",
                "is not set: deliveries are sent unsigned, so receivers cannot tell them from forgeries",
                "set it, e.g. WEBHOOK_SECRET=$(openssl rand -hex 32)",
            );
        }

        let problems = r.problems;
        if problems.iter().any(|p| p.severity == Severity::Error) {
            return Err(ConfigError(problems));
        }
        let config = Self {
            webhook_url,
            webhook_enabled,
            max_retries,
            timeout,
            retry_delay,
            retry_max_delay,
            signing_secret,
            signature_header,
            signature_algorithm,
            rate_limit,
            rate_window,
            burst_allowance,
            allowed_ips,
            require_https,
            sentry_dsn,
            log_level,
            listen,
            data_dir,
            database,
            admin_token,
            max_body_bytes,
            role,
            query_mode,
            delivery_concurrency,
            endpoint_concurrency,
            poll_interval,
            shutdown_grace,
            retention_days,
            sqlite_sync,
            allow_private_targets,
            allowed_target_cidrs,
            endpoint_rate_limit,
            circuit_failure_threshold,
            circuit_failure_rate,
            circuit_window,
            circuit_cooldown,
            circuit_max_cooldown,
            circuit_probes,
            endpoint_disable_after,
            secret_rotation_overlap,
            ingest_secrets,
            signature_tolerance,
            trusted_proxies,
            forwarded_header,
            allow_no_admin_token,
            max_header_bytes,
            header_timeout,
            request_timeout,
            max_connections,
            max_concurrent_requests,
            alerts,
            alert_webhook_url,
            alert_interval,
            metrics_require_token,
            log_file,
            environment,
            disk_warning_percent,
            disk_critical_percent,
        };
        Ok((config, problems))
    }

    /// The configuration with every default and its data under `data_dir`: a starting point
    /// for programs that embed hookrelay and for tests.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let dir = data_dir.to_string_lossy().into_owned();
        let (config, _) =
            Self::from_lookup(|name| (name == "HOOKRELAY_DATA_DIR").then(|| dir.clone()))
                .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"));
        config
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<(Config, Vec<Problem>), ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_guide() {
        let (config, _) = load(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.retry_delay, Duration::from_secs(60));
        assert_eq!(config.signature_header, "X-Webhook-Signature");
        assert_eq!(config.signature_algorithm, SignatureAlgorithm::Sha256);
        assert!(config.webhook_enabled);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(
            config.database,
            DatabaseLocation::Sqlite(PathBuf::from("./data/hookrelay.db"))
        );
        assert_eq!(config.max_body_bytes, 1 << 20);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_variable() {
        let err = load(&[
            ("WEBHOOK_MAX_RETRIES", "many"),
            ("WEBHOOK_TIMEOUT_SECONDS", "-1"),
            ("ENABLE_WEBHOOK", "maybe"),
            ("ZAPIER_WEBHOOK_URL", "ftp://example.com"),
            ("WEBHOOK_SIGNATURE_ALGORITHM", "md5"),
            ("WEBHOOK_ALLOWED_IPS", "10.0.0.0/8,not-an-ip"),
        ])
        .err()
        .unwrap_or_else(|| panic!("config should be invalid"));
        let variables: Vec<_> = err
            .0
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.variable)
            .collect();
        for expected in [
            "WEBHOOK_MAX_RETRIES",
            "WEBHOOK_TIMEOUT_SECONDS",
            "ENABLE_WEBHOOK",
            "ZAPIER_WEBHOOK_URL",
            "WEBHOOK_SIGNATURE_ALGORITHM",
            "WEBHOOK_ALLOWED_IPS",
        ] {
            assert!(
                variables.contains(&expected),
                "{expected} missing from {variables:?}"
            );
        }
    }

    #[test]
    fn a_postgres_url_selects_postgresql_with_its_settings() {
        let (config, _) = load(&[
            (
                "DATABASE_URL",
                "postgres://relay:pw@db.internal:5432/hooks?sslmode=require",
            ),
            ("HOOKRELAY_DB_POOL_SIZE", "24"),
            ("HOOKRELAY_DB_STATEMENT_TIMEOUT_SECONDS", "2.5"),
            ("HOOKRELAY_DB_SCHEMA", "relay_prod"),
            ("HOOKRELAY_ROLE", "worker"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let DatabaseLocation::Postgres(pg) = &config.database else {
            panic!("expected PostgreSQL, got {:?}", config.database);
        };
        assert_eq!(
            pg.url.expose(),
            "postgres://relay:pw@db.internal:5432/hooks?sslmode=require"
        );
        assert_eq!(pg.pool_size, 24);
        assert_eq!(pg.statement_timeout, Duration::from_millis(2500));
        assert_eq!(pg.schema, "relay_prod");
        assert_eq!(config.role, Role::Worker);
        assert!(!config.role.serves_api() && config.role.delivers());
        // The password is never shown, not even by Debug.
        assert!(!format!("{config:?}").contains("pw@"));

        let (defaults, _) =
            load(&[("DATABASE_URL", "postgresql://h/db")]).unwrap_or_else(|e| panic!("{e}"));
        let DatabaseLocation::Postgres(pg) = &defaults.database else {
            panic!("expected PostgreSQL");
        };
        assert_eq!((pg.pool_size, pg.schema.as_str()), (10, "public"));
        assert_eq!(defaults.role, Role::All);
        let (upper, _) =
            load(&[("DATABASE_URL", "POSTGRES://h/db")]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(upper.database, DatabaseLocation::Postgres(_)));
        let err = load(&[("DATABASE_URL", "mysql://u:hunter2@h/db")])
            .err()
            .unwrap_or_else(|| panic!("an unknown scheme was accepted"));
        assert!(err.to_string().contains("DATABASE_URL") && !err.to_string().contains("hunter2"));
    }

    #[test]
    fn bad_postgres_settings_are_named_without_echoing_the_url() {
        let err = load(&[
            ("DATABASE_URL", "postgres://user:hunter2@/"),
            ("HOOKRELAY_DB_SCHEMA", "Drop Table;"),
            ("HOOKRELAY_DB_POOL_SIZE", "3"),
            ("HOOKRELAY_ROLE", "leader"),
        ])
        .err()
        .unwrap_or_else(|| panic!("invalid settings were accepted"));
        let text = err.to_string();
        for variable in [
            "DATABASE_URL",
            "HOOKRELAY_DB_SCHEMA",
            "HOOKRELAY_DB_POOL_SIZE",
            "HOOKRELAY_ROLE",
        ] {
            assert!(text.contains(variable), "{variable} not named in: {text}");
        }
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
    }

    #[test]
    fn secrets_never_appear_in_problems() {
        let secret = "short-secret-value";
        let (_, warnings) = load(&[
            ("WEBHOOK_SECRET", secret),
            ("HOOKRELAY_ADMIN_TOKEN", secret),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.iter().any(|p| p.variable == "WEBHOOK_SECRET"));
        assert!(
            warnings
                .iter()
                .any(|p| p.variable == "HOOKRELAY_ADMIN_TOKEN")
        );
        let printed: String = warnings.iter().map(ToString::to_string).collect();
        assert!(!printed.contains(secret));

        let err = load(&[("WEBHOOK_SECRET", "whsec_!!notbase64!!")])
            .err()
            .unwrap_or_else(|| panic!("invalid"));
        assert!(!err.to_string().contains("notbase64"));
    }

    #[test]
    fn require_https_refuses_a_plain_http_destination() {
        let err = load(&[
            ("ZAPIER_WEBHOOK_URL", "http://example.com/hook"),
            ("REQUIRE_HTTPS", "true"),
        ])
        .err()
        .unwrap_or_else(|| panic!("invalid"));
        assert!(
            err.0
                .iter()
                .any(|p| p.variable == "ZAPIER_WEBHOOK_URL" && p.severity == Severity::Error)
        );
        let local = [
            ("ZAPIER_WEBHOOK_URL", "http://127.0.0.1:9000/"),
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true"),
        ];
        assert!(load(&local).is_ok());
    }

    #[test]
    fn a_private_default_endpoint_needs_an_explicit_allowance() {
        let err = load(&[("ZAPIER_WEBHOOK_URL", "http://127.0.0.1:9000/")])
            .err()
            .unwrap_or_else(|| panic!("invalid"));
        assert!(err.0.iter().any(|p| p.variable == "ZAPIER_WEBHOOK_URL"
            && p.fix.contains("HOOKRELAY_ALLOW_PRIVATE_TARGETS")));
        let cidr = [
            ("ZAPIER_WEBHOOK_URL", "http://127.0.0.1:9000/"),
            ("HOOKRELAY_ALLOWED_TARGET_CIDRS", "127.0.0.0/8"),
        ];
        assert!(load(&cidr).is_ok());
    }

    #[test]
    fn fractional_seconds_and_database_urls_are_understood() {
        let (config, _) = load(&[
            ("WEBHOOK_RETRY_DELAY_SECONDS", "0.25"),
            ("DATABASE_URL", "sqlite:///tmp/x.db"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.retry_delay, Duration::from_millis(250));
        assert_eq!(
            config.database,
            DatabaseLocation::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert!(load(&[("DATABASE_URL", "sqlite::memory:")]).is_err());
    }
}
