//! One documented, validated configuration, read once from the environment (and `.env`).
//!
//! The seed guide's variables keep their names and meanings; hookrelay's own use the
//! `HOOKRELAY_` prefix. The configuration is in sections (delivery, signing, ingest, server,
//! database, monitor, telemetry), each read by its own function in its own file;
//! [`Config::from_lookup`] reads them all and reports every problem at once, which is what
//! `hookrelay config check` prints. Secret values never appear in a problem's text.
//!
//! This is a leaf of the crate: it uses only `domain`.

mod database;
mod delivery;
mod ingest;
mod monitor;
mod reader;
mod server;
mod signing;
mod telemetry;

use std::{borrow::Cow, collections::BTreeSet, fmt, path::PathBuf};

use serde::Serialize;

use self::reader::Reader;
pub use self::{
    database::{DatabaseLocation, DatabaseSettings, PostgresSettings, SqliteSync},
    delivery::{CircuitSettings, DeliverySettings},
    ingest::{ForwardedHeader, IngestSettings, QueryMode},
    monitor::{AlertThresholds, MonitorSettings},
    server::{Role, ServerSettings},
    signing::SigningSettings,
    telemetry::TelemetrySettings,
};
use crate::domain::EndpointUrl;

/// Everything hookrelay is configured with, by section. Build it with
/// [`Config::from_lookup`] (or [`Config::from_env`]); fields are public so an embedding program
/// or a test can adjust them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where events go and how: retries, timeouts, concurrency, the circuit breaker.
    pub delivery: DeliverySettings,
    /// How deliveries are signed.
    pub signing: SigningSettings,
    /// Who may send events and how often.
    pub ingest: IngestSettings,
    /// The HTTP server.
    pub server: ServerSettings,
    /// Where the data lives.
    pub database: DatabaseSettings,
    /// Alerts and health thresholds.
    pub monitor: MonitorSettings,
    /// Logs and error reporting.
    pub telemetry: TelemetrySettings,
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
    pub variable: Cow<'static, str>,
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

fn is_loopback_url(url: &EndpointUrl) -> bool {
    match url.url().host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Warnings for `names` that look like ours but are not read, with the closest known name.
pub fn unknown_variables(names: impl Iterator<Item = String>) -> Vec<Problem> {
    let known = Config::known_variables();
    let mut unknown: Vec<String> = names
        .filter(|name| name.starts_with("HOOKRELAY_") || name.starts_with("WEBHOOK_"))
        .filter(|name| !known.contains(name))
        // Set by the test harness and the bench, not by an operator.
        .filter(|name| {
            !name.starts_with("HOOKRELAY_TEST_")
                && !name.starts_with("HOOKRELAY_IT_")
                && !name.starts_with("HOOKRELAY_BENCH_")
                && name != "HOOKRELAY_REQUIRE_POSTGRES"
                && name != "HOOKRELAY_REQUIRE_FAULT_TESTS"
        })
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|name| {
            let closest = known
                .iter()
                .map(|k| (strsim::levenshtein(&name, k), k))
                .min()
                .filter(|(distance, _)| *distance <= 4)
                .map(|(_, k)| k.clone());
            Problem {
                severity: Severity::Warning,
                message: "is not a variable hookrelay reads: it has no effect".to_owned(),
                fix: match closest {
                    Some(k) => format!("did you mean {k}?"),
                    None => {
                        "remove it, or see `README.md` (Configuration) for the variables".to_owned()
                    }
                },
                variable: Cow::Owned(name),
            }
        })
        .collect()
}

impl Config {
    /// Reads the configuration from the process environment (load `.env` first). Variables
    /// named like ours (`HOOKRELAY_…`, `WEBHOOK_…`) that hookrelay does not know are warned
    /// about, with the closest known name: a typo must not silently fall back to a default.
    pub fn from_env() -> Result<(Self, Vec<Problem>), ConfigError> {
        let unknown =
            unknown_variables(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()));
        match Self::from_lookup(|name| std::env::var(name).ok()) {
            Ok((config, mut warnings)) => {
                warnings.extend(unknown);
                Ok((config, warnings))
            }
            Err(ConfigError(mut problems)) => {
                problems.extend(unknown);
                Err(ConfigError(problems))
            }
        }
    }

    /// Every variable hookrelay reads.
    pub fn known_variables() -> BTreeSet<String> {
        // A PostgreSQL URL, so the variables read only for PostgreSQL are read too.
        let lookup = |name: &str| (name == "DATABASE_URL").then(|| "postgres://h/db".to_owned());
        let mut r = Reader::new(&lookup);
        let config = Self::read_sections(&mut r);
        config.check_across_sections(&mut r);
        r.names_read()
    }

    /// Reads the configuration through `lookup` (a variable name to its value). On success,
    /// also returns the warnings; on failure, every problem found, errors and warnings.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<Problem>), ConfigError> {
        let mut r = Reader::new(&lookup);
        let config = Self::read_sections(&mut r);
        config.check_across_sections(&mut r);
        let problems = r.problems;
        if problems.iter().any(|p| p.severity == Severity::Error) {
            return Err(ConfigError(problems));
        }
        Ok((config, problems))
    }

    fn read_sections(r: &mut Reader<'_>) -> Self {
        Self {
            delivery: DeliverySettings::read(r),
            signing: SigningSettings::read(r),
            ingest: IngestSettings::read(r),
            telemetry: TelemetrySettings::read(r),
            server: ServerSettings::read(r),
            database: DatabaseSettings::read(r),
            monitor: MonitorSettings::read(r),
        }
    }

    /// What no one section can judge alone.
    fn check_across_sections(&self, r: &mut Reader<'_>) {
        if let Some(secret) = &self.signing.secret
            && self.ingest.secrets.iter().any(|s| s == secret)
        {
            r.warn(
                "HOOKRELAY_INGEST_SECRET",
                "contains WEBHOOK_SECRET: whoever verifies deliveries could then sign events into hookrelay",
                "use a different secret for ingest",
            );
        }
        let listen = self.server.listen;
        if self.server.admin_token.is_none()
            && !self.ingest.trusted_proxies.is_empty()
            && listen.ip().is_loopback()
        {
            r.warn(
                "HOOKRELAY_ADMIN_TOKEN",
                "is not set while HOOKRELAY_TRUSTED_PROXIES is: every request may come through a proxy, so management routes are closed",
                "set HOOKRELAY_ADMIN_TOKEN to manage hookrelay",
            );
        }
        if self.ingest.secrets.is_empty() && !listen.ip().is_loopback() {
            r.warn(
                "HOOKRELAY_INGEST_SECRET",
                format!("is not set while listening on the non-loopback address {listen}: anyone who reaches the port can put events in"),
                "set HOOKRELAY_INGEST_SECRET and sign ingest requests (or WEBHOOK_ALLOWED_IPS to restrict callers)",
            );
        }
    }

    /// Threads for the async runtime (the HTTP API and the delivery worker):
    /// `HOOKRELAY_WORKER_THREADS` when set, else one per core of `cores`, less one on SQLite. The
    /// SQLite writer is a thread of its own that does a third or more of the work under load;
    /// with as many runtime threads as cores it kept waiting for a core (on 2 cores, a quarter
    /// of its time runnable but not running), and one runtime thread fewer cost 5–20% less CPU
    /// per event at equal or better throughput (BENCHMARKS.md, issue 19).
    pub fn runtime_workers(&self, cores: usize) -> usize {
        self.server
            .worker_threads
            .unwrap_or(match self.database.location {
                DatabaseLocation::Sqlite(_) => cores.saturating_sub(1).max(1),
                DatabaseLocation::Postgres(_) => cores.max(1),
            })
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

    use std::time::Duration;

    use super::*;
    use crate::domain::SignatureAlgorithm;

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
        assert_eq!(config.delivery.max_retries, 3);
        assert_eq!(config.delivery.timeout, Duration::from_secs(10));
        assert_eq!(config.delivery.retry_delay, Duration::from_secs(60));
        assert_eq!(config.signing.header, "X-Webhook-Signature");
        assert_eq!(config.signing.algorithm, SignatureAlgorithm::Sha256);
        assert!(config.delivery.enabled);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(
            config.database.location,
            DatabaseLocation::Sqlite(PathBuf::from("./data/hookrelay.db"))
        );
        assert_eq!(config.server.max_body_bytes, 1 << 20);
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
            .map(|p| p.variable.as_ref())
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
    fn a_connection_string_missing_its_slashes_is_refused_without_its_password() {
        for raw in [
            "relay:hunter2@db:5432/hooks",
            "postgres:/relay:hunter2@db/hooks",
            "host=db user=relay password=hunter2 dbname=hooks",
        ] {
            let err = load(&[("DATABASE_URL", raw)])
                .err()
                .unwrap_or_else(|| panic!("{raw} was taken as a file path"));
            let said = format!("{err} {err:?}");
            assert!(said.contains("DATABASE_URL"), "{said}");
            assert!(!said.contains("hunter2"), "{said}");
        }
        // File paths are still file paths.
        for path in [
            "./data/my.db",
            "sqlite://./data/at@home.db",
            "/var/lib/hookrelay.db",
            "postgres_backup/hookrelay.db",
            "C:\\data\\hookrelay.db",
        ] {
            let (config, _) = load(&[("DATABASE_URL", path)]).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                config.database.location,
                DatabaseLocation::Sqlite(_)
            ));
        }
    }

    #[test]
    fn an_overlap_in_hours_is_read_and_refused_in_hours() {
        let (config, _) = load(&[("HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS", "1.5")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.signing.rotation_overlap, Duration::from_secs(5400));
        let err = load(&[("HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS", "9000")])
            .err()
            .unwrap_or_else(|| panic!("out of range"));
        let problem = err
            .0
            .iter()
            .find(|p| p.variable == "HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS")
            .unwrap_or_else(|| panic!("named: {err}"));
        let said = format!("{problem:?}");
        assert!(said.contains("9000 hours is out of range"), "{said}");
        assert!(said.contains("hours from 0 to 8760"), "{said}");
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
        let DatabaseLocation::Postgres(pg) = &config.database.location else {
            panic!("expected PostgreSQL, got {:?}", config.database.location);
        };
        assert_eq!(
            pg.url.expose(),
            "postgres://relay:pw@db.internal:5432/hooks?sslmode=require"
        );
        assert_eq!(pg.pool_size, 24);
        assert_eq!(pg.statement_timeout, Duration::from_millis(2500));
        assert_eq!(pg.schema, "relay_prod");
        assert_eq!(config.server.role, Role::Worker);
        assert!(!config.server.role.serves_api() && config.server.role.delivers());
        // The password is never shown, not even by Debug.
        assert!(!format!("{config:?}").contains("pw@"));

        let (defaults, _) =
            load(&[("DATABASE_URL", "postgresql://h/db")]).unwrap_or_else(|e| panic!("{e}"));
        let DatabaseLocation::Postgres(pg) = &defaults.database.location else {
            panic!("expected PostgreSQL");
        };
        assert_eq!((pg.pool_size, pg.schema.as_str()), (10, "public"));
        assert_eq!(defaults.server.role, Role::All);
        let (upper, _) =
            load(&[("DATABASE_URL", "POSTGRES://h/db")]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            upper.database.location,
            DatabaseLocation::Postgres(_)
        ));
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
    fn the_runtime_leaves_the_sqlite_writer_a_core_unless_told_otherwise() {
        let workers = |vars: &[(&str, &str)], cores| {
            let (config, _) = load(vars).unwrap_or_else(|e| panic!("{e}"));
            config.runtime_workers(cores)
        };
        assert_eq!(workers(&[], 2), 1);
        assert_eq!(workers(&[], 8), 7);
        assert_eq!(workers(&[], 1), 1);
        let postgres = [("DATABASE_URL", "postgres://u@db.example/hookrelay")];
        assert_eq!(workers(&postgres, 2), 2);
        assert_eq!(workers(&[("HOOKRELAY_WORKER_THREADS", "3")], 2), 3);
        let err = load(&[("HOOKRELAY_WORKER_THREADS", "0")])
            .err()
            .unwrap_or_else(|| panic!("0 threads must be refused"));
        assert!(
            err.0
                .iter()
                .any(|p| p.variable == "HOOKRELAY_WORKER_THREADS")
        );
    }

    #[test]
    fn fractional_seconds_and_database_urls_are_understood() {
        let (config, _) = load(&[
            ("WEBHOOK_RETRY_DELAY_SECONDS", "0.25"),
            ("DATABASE_URL", "sqlite:///tmp/x.db"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.delivery.retry_delay, Duration::from_millis(250));
        assert_eq!(
            config.database.location,
            DatabaseLocation::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert!(load(&[("DATABASE_URL", "sqlite::memory:")]).is_err());
    }

    #[test]
    fn accepting_the_body_only_scheme_for_signed_ingest_is_warned_about() {
        let (_, warnings) = load(&[(
            "HOOKRELAY_INGEST_SECRET",
            "an-ingest-secret-0123456789abcdef0123",
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            warnings
                .iter()
                .any(|p| p.variable == "HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE")
        );
        let (config, warnings) = load(&[
            (
                "HOOKRELAY_INGEST_SECRET",
                "an-ingest-secret-0123456789abcdef0123",
            ),
            ("HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE", "false"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.ingest.accept_body_signature);
        assert!(
            !warnings
                .iter()
                .any(|p| p.variable == "HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE")
        );
    }

    #[test]
    fn unknown_variables_like_ours_are_named_with_the_closest_known_one() {
        let problems = unknown_variables(
            [
                "WEBHOOK_RETRIES",
                "HOOKRELAY_LISTN",
                "HOOKRELAY_SOMETHING_ELSE_ENTIRELY",
                "WEBHOOK_MAX_RETRIES",
                "PATH",
                "HOOKRELAY_TEST_POSTGRES_URL",
            ]
            .into_iter()
            .map(String::from),
        );
        let named: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.variable.as_ref(), p.fix.as_str()))
            .collect();
        assert_eq!(named.len(), 3, "{named:?}");
        assert!(named.contains(&("WEBHOOK_RETRIES", "did you mean WEBHOOK_MAX_RETRIES?")));
        assert!(named.contains(&("HOOKRELAY_LISTN", "did you mean HOOKRELAY_LISTEN?")));
        assert!(problems.iter().all(|p| p.severity == Severity::Warning));
        // Variables read only for PostgreSQL are known too.
        assert!(Config::known_variables().contains("HOOKRELAY_DB_POOL_SIZE"));
    }

    #[test]
    fn errors_are_in_plain_words_and_an_https_url_gets_no_https_warning() {
        let err = load(&[
            ("WEBHOOK_MAX_RETRIES", "abc"),
            ("WEBHOOK_TIMEOUT_SECONDS", "soon"),
        ])
        .err()
        .unwrap_or_else(|| panic!("invalid"));
        let messages: Vec<&str> = err.0.iter().map(|p| p.message.as_str()).collect();
        assert!(
            messages.contains(&"`abc` is not a whole number from 0 to 100"),
            "{messages:?}"
        );
        assert!(
            messages.contains(&"`soon` is not a number of seconds from 0.01 to 300"),
            "{messages:?}"
        );
        assert!(!err.to_string().contains("invalid digit"));
        let (_, warnings) = load(&[(
            "ZAPIER_WEBHOOK_URL",
            "https://hooks.zapier.com/hooks/catch/1/abc/",
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !warnings
                .iter()
                .any(|p| p.variable == "REQUIRE_HTTPS" || p.message.contains("http://")),
            "{warnings:?}"
        );
    }
}
