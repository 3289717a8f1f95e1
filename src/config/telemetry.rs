//! Logs and error reporting.

use super::Reader;
use crate::domain::Redacted;

/// Where logs and errors go.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `SENTRY_DSN`: where errors are reported.
    pub sentry_dsn: Option<Redacted<String>>,
    /// `LOG_LEVEL` (default `INFO`): `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub log_level: String,
    /// `HOOKRELAY_LOG_FILE` (default false): also write JSON lines to `DATA_DIR/logs/hookrelay.log`,
    /// rotated daily.
    pub log_file: bool,
    /// `HOOKRELAY_ENVIRONMENT` (default `production`): reported to Sentry.
    pub environment: String,
}

impl TelemetrySettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
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
        let log_file = r.bool("HOOKRELAY_LOG_FILE", false);
        let environment = r
            .raw("HOOKRELAY_ENVIRONMENT")
            .map_or_else(|| "production".to_owned(), |v| v.trim().to_owned());
        Self {
            sentry_dsn,
            log_level,
            log_file,
            environment,
        }
    }
}
