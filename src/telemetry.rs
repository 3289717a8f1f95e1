//! Logging and error reporting, set up once in `main` before the runtime starts.
//!
//! - Human-readable lines on stderr, filtered by `RUST_LOG` when set, else by `LOG_LEVEL`.
//! - With `HOOKRELAY_LOG_FILE=true` (for `serve`), JSON lines also go to
//!   `$HOOKRELAY_DATA_DIR/logs/hookrelay.log`, rotated daily.
//! - With `SENTRY_DSN`, error events and panics go to Sentry with the release and
//!   `HOOKRELAY_ENVIRONMENT`; without it nothing is sent anywhere.

use std::{io::IsTerminal, path::PathBuf};

use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Keeps the background writers alive; dropping it flushes them.
#[must_use = "dropping the guard stops file logging and Sentry reporting"]
pub struct Telemetry {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
    _sentry: Option<sentry::ClientInitGuard>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn filter() -> EnvFilter {
    env("RUST_LOG")
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| {
            let level = env("LOG_LEVEL")
                .unwrap_or_else(|| "info".into())
                .to_ascii_lowercase();
            let level = if level == "warning" {
                "warn".to_owned()
            } else {
                level
            };
            EnvFilter::try_new(format!("hookrelay={level},warn"))
                .unwrap_or_else(|_| EnvFilter::new("hookrelay=info,warn"))
        })
}

fn sentry() -> Option<sentry::ClientInitGuard> {
    let dsn = env("SENTRY_DSN")?;
    // An invalid DSN is reported by `config check`; here it only means "no Sentry".
    let dsn: sentry::types::Dsn = dsn.trim().parse().ok()?;
    let options = sentry::ClientOptions::new()
        .release(concat!("hookrelay@", env!("CARGO_PKG_VERSION")))
        .environment(env("HOOKRELAY_ENVIRONMENT").unwrap_or_else(|| "production".into()))
        // Payloads and prompts stay out of reports.
        .send_default_pii(false);
    let guard = sentry::init((Some(dsn), options));
    guard.is_enabled().then_some(guard)
}

/// Installs logging (and Sentry, when configured). `serving` enables the log file.
pub fn init(serving: bool) -> Telemetry {
    let sentry = sentry();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter());
    let mut file_guard = None;
    let file = (serving
        && env("HOOKRELAY_LOG_FILE")
            .is_some_and(|v| matches!(v.trim(), "true" | "1" | "yes" | "on")))
    .then(|| {
        let dir = PathBuf::from(env("HOOKRELAY_DATA_DIR").unwrap_or_else(|| "./data".into()))
            .join("logs");
        let appender = tracing_appender::rolling::daily(dir, "hookrelay.log");
        let (writer, guard) = tracing_appender::non_blocking(appender);
        file_guard = Some(guard);
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter())
    });
    let sentry_layer = sentry
        .as_ref()
        .map(|_| sentry::integrations::tracing::layer());
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .with(sentry_layer)
        .try_init();
    Telemetry {
        _file: file_guard,
        _sentry: sentry,
    }
}

/// Reports a failed command to Sentry (a no-op without `SENTRY_DSN`).
pub fn report_failure(message: &str) {
    sentry::capture_message(message, sentry::Level::Error);
}
