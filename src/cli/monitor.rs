//! `hookrelay status | metrics | health | alerts`: read from the database, so they answer
//! while the server is down.

use std::process::ExitCode;

use serde_json::json;

use super::output::{json, table, time};
use crate::{
    monitor::{StatusReport, WindowStats},
    relay::Relay,
};

fn pct(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"))
}

fn print_health(report: &StatusReport) {
    println!("health       {:?}", report.health.status);
    for reason in &report.health.reasons {
        println!("             - {reason}");
    }
}

fn window_row(name: &str, w: &WindowStats) -> Vec<String> {
    vec![
        name.to_owned(),
        w.totals.ingested.to_string(),
        w.attempts.to_string(),
        pct(w.success_rate),
        ms(w.avg_response_time_ms),
        ms(w.p95_response_time_ms),
        ms(w.avg_delivery_latency_ms),
        w.totals.throttled.to_string(),
        w.totals.dead_lettered.to_string(),
        pct(w.duplicate_rate),
    ]
}

fn print_windows(report: &StatusReport) {
    let w = &report.windows;
    table(
        &[
            "WINDOW",
            "INGESTED",
            "ATTEMPTS",
            "SUCCESS",
            "AVG",
            "P95",
            "LATENCY",
            "THROTTLED",
            "DEAD",
            "DUPLICATES",
        ],
        &[
            window_row("last hour", &w.last_hour),
            window_row("last 24 h", &w.last_day),
            window_row("all time", &w.all_time),
        ],
    );
}

/// `hookrelay status`.
pub async fn status(relay: Relay, as_json: bool) -> anyhow::Result<ExitCode> {
    let report = relay.report(None).await;
    if as_json {
        json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    print_health(&report);
    println!(
        "worker       {}",
        if report.worker_alive {
            "running"
        } else {
            "not reporting"
        }
    );
    let q = &report.queue;
    println!(
        "backlog      {} pending{}{}",
        q.pending,
        q.oldest_pending_age_seconds
            .map(|s| format!(", oldest {s:.0} s old"))
            .unwrap_or_default(),
        q.overdue_seconds
            .map(|s| format!(", {s:.0} s overdue"))
            .unwrap_or_default()
    );
    println!("dead letters {}", q.dead_letters);
    println!(
        "last hour    {} attempts, success {}, avg {}, p95 {}",
        report.windows.last_hour.attempts,
        pct(report.metrics.success_rate_1hour),
        ms(report.metrics.avg_response_time_ms),
        ms(report.metrics.p95_response_time_ms)
    );
    println!("alerts       {} active", report.alerts.alert_counts.total);
    for alert in &report.alerts.active_alerts {
        println!("             - {}: {}", alert.level, alert.message);
    }
    println!();
    let rows: Vec<Vec<String>> = report
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                if e.enabled {
                    "enabled".into()
                } else {
                    "disabled".into()
                },
                e.health.circuit.to_string(),
                e.health.consecutive_failures.to_string(),
                time(e.health.last_success_at_ms),
            ]
        })
        .collect();
    table(
        &["ENDPOINT", "STATE", "CIRCUIT", "FAILURES", "LAST SUCCESS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `hookrelay metrics`.
pub async fn metrics(relay: Relay, as_json: bool) -> anyhow::Result<ExitCode> {
    let report = relay.report(None).await;
    if as_json {
        json(
            &json!({ "metrics": report.metrics, "windows": report.windows, "queue": report.queue }),
        );
    } else {
        print_windows(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hookrelay health`: exit 0 healthy, 1 degraded, 2 unhealthy.
pub async fn health(relay: Relay, as_json: bool) -> anyhow::Result<ExitCode> {
    let report = relay.report(None).await;
    if as_json {
        json(&json!({ "health": report.health, "worker_alive": report.worker_alive }));
    } else {
        print_health(&report);
    }
    Ok(ExitCode::from(report.health.status.exit_code()))
}

/// `hookrelay alerts`.
pub async fn alerts(relay: Relay, limit: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    let report = relay.report(None).await;
    let recent = relay.recent_alerts(limit).await?;
    if as_json {
        json(&json!({ "active": report.alerts.active_alerts, "recent": recent }));
        return Ok(ExitCode::SUCCESS);
    }
    if report.alerts.active_alerts.is_empty() {
        println!("No active alerts.");
    } else {
        println!("Active now:");
        for alert in &report.alerts.active_alerts {
            println!(
                "  {}: {}",
                alert.level.as_str().to_uppercase(),
                alert.message
            );
        }
    }
    if !recent.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = recent
            .iter()
            .map(|a| {
                vec![
                    time(Some(a.fired_at_ms)),
                    a.resolved_at_ms
                        .map_or_else(|| "active".into(), |t| time(Some(t))),
                    a.level.to_string(),
                    a.message.clone(),
                ]
            })
            .collect();
        table(&["FIRED", "RESOLVED", "LEVEL", "MESSAGE"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
