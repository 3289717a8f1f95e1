//! Monitoring: alert thresholds, where alerts go, and the disk-space verdict.

use std::time::Duration;

use serde::Serialize;

use super::Reader;
use crate::domain::EndpointUrl;

/// What the monitor watches for.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// `HOOKRELAY_ALERT_*`: alert rule thresholds.
    pub thresholds: AlertThresholds,
    /// `HOOKRELAY_ALERT_WEBHOOK_URL`: where alerts are sent (Slack's incoming-webhook format
    /// for a Slack URL, JSON otherwise). The URL is treated as a secret.
    pub alert_webhook_url: Option<EndpointUrl>,
    /// `HOOKRELAY_ALERT_INTERVAL_SECONDS` (default 30): how often alert rules are evaluated.
    pub alert_interval: Duration,
    /// `HOOKRELAY_DISK_WARNING_PERCENT` (default 10): free disk below this turns health degraded.
    pub disk_warning_percent: f64,
    /// `HOOKRELAY_DISK_CRITICAL_PERCENT` (default 2): free disk below this turns health unhealthy.
    pub disk_critical_percent: f64,
}

impl MonitorSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let thresholds = AlertThresholds {
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
        let disk_warning_percent = percent(r, "HOOKRELAY_DISK_WARNING_PERCENT", 10.0);
        let disk_critical_percent = percent(r, "HOOKRELAY_DISK_CRITICAL_PERCENT", 2.0);
        Self {
            thresholds,
            alert_webhook_url,
            alert_interval,
            disk_warning_percent,
            disk_critical_percent,
        }
    }
}

fn percent(r: &mut Reader<'_>, name: &'static str, default: f64) -> f64 {
    let value: f64 = r.parsed(name, default, "a percentage from 0 to 100");
    if !(0.0..=100.0).contains(&value) {
        r.error(
            name,
            format!("{value} is not a percentage"),
            "use a number from 0 to 100",
        );
    }
    value
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
