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

/// `hookrelay health --self`: this instance's own readiness, from its `GET /ready`: 0 when its
/// listener, database and worker answer, 2 when any does not (an orchestrator restarts it).
pub async fn health_of_this_instance(
    config: &crate::Config,
    server: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if server.is_none() && !config.server.role.serves_api() {
        let reason = "this instance runs the worker role and has no listener to ask: probe its process, or run it in role `all` on an internal port";
        if as_json {
            json(&json!({ "status": "unhealthy", "reasons": [reason] }));
        } else {
            println!("this instance  Unknown\n             - {reason}");
        }
        return Ok(ExitCode::from(2));
    }
    let base = server.unwrap_or_else(|| {
        let listen = config.server.listen;
        // A wildcard listener answers on loopback.
        let host = if listen.ip().is_unspecified() {
            match listen {
                std::net::SocketAddr::V4(_) => "127.0.0.1".to_owned(),
                std::net::SocketAddr::V6(_) => "[::1]".to_owned(),
            }
        } else {
            match listen {
                std::net::SocketAddr::V4(a) => a.ip().to_string(),
                std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        format!("http://{host}:{}", listen.port())
    });
    let url = format!("{}/ready", base.trim_end_matches('/'));
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await;
    let (healthy, report) = match answer {
        Err(e) => (
            false,
            json!({ "status": "unhealthy", "reasons": [format!("the listener at {base} does not answer: {}", without_url(e))] }),
        ),
        Ok(response) => {
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
            if status.is_success() {
                (true, json!({ "status": "healthy", "ready": body }))
            } else {
                let reason = body["detail"]
                    .as_str()
                    .map_or_else(|| format!("GET /ready answered {status}"), str::to_owned);
                (false, json!({ "status": "unhealthy", "reasons": [reason] }))
            }
        }
    };
    if as_json {
        json(&report);
    } else if healthy {
        let ready = &report["ready"];
        println!(
            "this instance  Healthy ({}, role {}: listener answers, database {:.1} ms, worker {})",
            ready["instance"].as_str().unwrap_or("?"),
            ready["role"].as_str().unwrap_or("?"),
            ready["database_ms"].as_f64().unwrap_or(0.0),
            if ready["worker"].as_bool() == Some(true) {
                "running"
            } else {
                "none in this role"
            }
        );
    } else {
        println!("this instance  Unhealthy");
        for reason in report["reasons"].as_array().into_iter().flatten() {
            println!("             - {}", reason.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::from(if healthy { 0 } else { 2 }))
}

/// A request error without the URL reqwest puts in it (it is already named).
fn without_url(error: reqwest::Error) -> String {
    let (connect, timeout) = (error.is_connect(), error.is_timeout());
    let text = error.without_url().to_string();
    if connect {
        format!("cannot connect ({text})")
    } else if timeout {
        "no answer within 5 s".to_owned()
    } else {
        text
    }
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
