//! Observability: windowed figures, Prometheus text, alerts firing and resolving on a
//! controlled clock, the alert webhook, health verdicts and the CLI's JSON shapes.

use std::{sync::Arc, time::Duration};

use hookrelay::{
    Relay,
    clock::ManualClock,
    monitor::{AlertLevel, HealthStatus},
};
use serde_json::Value;

use crate::helpers::{
    Reply, START_MS, TestApp, TestReceiver, clocked_relay, config, hookrelay, usage, usage_event,
};

#[tokio::test]
async fn windowed_figures_come_from_stored_rollups_and_survive_a_restart() {
    let receiver = TestReceiver::start().await;
    receiver.script([Reply::status(500), Reply::status(500)]);
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let vars = [
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_RETRY_DELAY_SECONDS", "1"),
    ];
    let clock = ManualClock::new(START_MS);
    let relay = Relay::open_with_clock(config(dir.path(), &vars), Arc::new(clock.clone()))
        .await
        .expect("open");
    for i in 0..4 {
        relay
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    relay.worker().run_once().await.expect("run");
    clock.advance(Duration::from_secs(2));
    relay.worker().run_once().await.expect("run");
    drop(relay);

    let reopened = Relay::open_with_clock(config(dir.path(), &vars), Arc::new(clock.clone()))
        .await
        .expect("open");
    let report = reopened.report(Some(true)).await;
    let hour = report.windows.last_hour;
    assert_eq!(hour.totals.ingested, 4);
    assert_eq!(hour.attempts, 6, "4 first attempts, 2 retries");
    assert_eq!(hour.totals.successes, 4);
    assert_eq!(hour.success_rate, Some(4.0 / 6.0));
    assert_eq!(hour.totals.delivered, 4);
    assert!(hour.p95_response_time_ms.is_some());
    assert_eq!(report.metrics.success_rate_1hour, Some(4.0 / 6.0));
    assert_eq!(report.metrics.total_sent, 6);

    // An hour later (windows are whole minutes) the last-hour window is empty; all time
    // still counts them.
    clock.advance(Duration::from_secs(3661));
    let later = reopened.report(Some(true)).await;
    assert_eq!(later.windows.last_hour.attempts, 0);
    assert_eq!(later.windows.all_time.attempts, 6);
}

fn valid_exposition(text: &str) -> Result<(), String> {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !["counter", "gauge", "histogram", "summary"].contains(&kind) {
                return Err(format!("bad type line: {line}"));
            }
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line}"))?;
        value
            .parse::<f64>()
            .map_err(|_| format!("bad value: {line}"))?;
        let name = series.split('{').next().unwrap_or("");
        if !name.starts_with("hookrelay_")
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("bad name: {line}"));
        }
        let labels = series.strip_prefix(name).unwrap_or_default();
        let well_formed = labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'));
        if !well_formed {
            return Err(format!("bad labels: {line}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| typed.contains(*base))
            .unwrap_or(name);
        if !typed.contains(family) {
            return Err(format!("sample without a TYPE line: {line}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    app.post_json("/api/webhook/usage", &usage_event("m")).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("request");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.expect("body");
        if text.contains("hookrelay_delivery_attempts_total") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt in the metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    valid_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for expected in [
        "# TYPE hookrelay_events_ingested_total counter",
        "# TYPE hookrelay_delivery_attempts_total counter",
        "# TYPE hookrelay_delivery_attempt_duration_seconds histogram",
        "hookrelay_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_default\",le=\"0.01\"}",
        "outcome=\"delivered\"",
        "status_class=\"2xx\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[tokio::test]
async fn metrics_can_require_the_admin_token() {
    let receiver = TestReceiver::start().await;
    let token = "metrics-admin-token-0123456789abcdef0";
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_METRICS_REQUIRE_TOKEN", "true"),
            ("HOOKRELAY_ADMIN_TOKEN", token),
        ],
    )
    .await;
    assert_eq!(
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("r")
            .status(),
        401
    );
    assert_eq!(
        app.http
            .get(app.url("/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    // Liveness stays open.
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
}

#[tokio::test]
async fn alerts_fire_once_notify_in_one_message_and_resolve() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(503));
    let alert_hook = TestReceiver::start().await;
    let (url, hook) = (receiver.url(), alert_hook.url());
    let (relay, clock, _dir) = clocked_relay(&[
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("HOOKRELAY_ALERT_WEBHOOK_URL", hook.as_str()),
        ("WEBHOOK_MAX_RETRIES", "0"),
        ("HOOKRELAY_ALERT_DLQ_WARNING", "5"),
        ("HOOKRELAY_ALERT_DLQ_CRITICAL", "50"),
        ("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "0"),
    ])
    .await;
    for i in 0..12 {
        relay
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    relay.worker().run_once().await.expect("run");
    let monitor = relay.monitor().expect("monitor");

    let changes = monitor.evaluate_alerts().await.expect("evaluate");
    let rules: Vec<(String, AlertLevel)> = changes
        .fired
        .iter()
        .map(|a| (a.rule.clone(), a.level))
        .collect();
    assert!(
        rules.contains(&("success_rate".into(), AlertLevel::Critical)),
        "{rules:?}"
    );
    assert!(
        rules.contains(&("error_rate".into(), AlertLevel::Critical)),
        "{rules:?}"
    );
    assert!(
        rules.contains(&("dlq_size".into(), AlertLevel::Warning)),
        "{rules:?}"
    );
    let messages = alert_hook.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "a burst of alerts is one message");
    assert_eq!(
        messages[0].json()["fired"].as_array().map(Vec::len),
        Some(changes.fired.len())
    );

    // The condition holds: no repeat.
    clock.advance(Duration::from_secs(30));
    assert!(
        monitor
            .evaluate_alerts()
            .await
            .expect("evaluate")
            .is_empty()
    );
    assert_eq!(alert_hook.received().len(), 1);
    let report = relay.report(Some(true)).await;
    assert_eq!(report.health.status, HealthStatus::Unhealthy);
    assert_eq!(report.alerts.alert_counts.total, 3);

    // The receiver recovers, the dead letters are replayed, and an hour passes.
    receiver.always(Reply::status(200));
    relay
        .replay(hookrelay::store::Selection::All)
        .await
        .expect("replay");
    relay.worker().run_once().await.expect("run");
    clock.advance(Duration::from_secs(3661));
    let resolved = monitor.evaluate_alerts().await.expect("evaluate");
    assert_eq!(resolved.resolved.len(), 3, "{resolved:?}");
    let messages = alert_hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        messages[1].json()["resolved"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        relay.report(Some(true)).await.health.status,
        HealthStatus::Healthy
    );
    let history = relay.recent_alerts(10).await.expect("alerts");
    assert!(history.iter().all(|a| a.resolved_at_ms.is_some()));
}

#[test]
fn slack_urls_get_slack_messages() {
    let slack = hookrelay::domain::EndpointUrl::parse("https://hooks.slack.com/services/T/B/X")
        .expect("url");
    let other =
        hookrelay::domain::EndpointUrl::parse("https://alerts.example.com/hook").expect("url");
    let alert = hookrelay::monitor::Alert {
        id: 1,
        rule: "dlq_size".into(),
        level: AlertLevel::Critical,
        message: "120 deliveries are in the dead-letter queue (above 100)".into(),
        value: Some(120.0),
        threshold: Some(100.0),
        fired_at_ms: START_MS,
        resolved_at_ms: None,
    };
    let changes = hookrelay::monitor::Changes {
        fired: vec![alert],
        resolved: vec![],
    };
    let slack_body = hookrelay::monitor::alert_payload(&slack, &changes);
    let text = slack_body["text"].as_str().expect("slack text");
    assert!(
        text.contains("CRITICAL") && text.contains("dead-letter queue"),
        "{text}"
    );
    let json_body = hookrelay::monitor::alert_payload(&other, &changes);
    assert_eq!(json_body["fired"][0]["rule"], "dlq_size");
}

fn cli(dir: &std::path::Path, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    hookrelay(dir, vars).args(args).output().expect("run")
}

#[tokio::test]
async fn health_exit_codes_and_json_shapes_work_from_the_database_alone() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(410));
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let vars = [("ZAPIER_WEBHOOK_URL", url.as_str())];
    let relay = Relay::open(config(dir.path(), &vars)).await.expect("open");
    // A fresh database: healthy.
    let path = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || cli(&path, &[], &["health"]))
        .await
        .expect("join");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    relay.track_usage(usage("h")).await.expect("track");
    relay.worker().run_once().await.expect("run");
    drop(relay);
    let run = |extra: Vec<(&'static str, &'static str)>, args: &'static [&'static str]| {
        let path = dir.path().to_path_buf();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec![("ZAPIER_WEBHOOK_URL", url.as_str())];
            all.extend(extra);
            cli(&path, &all, args)
        })
    };
    let degraded = run(
        vec![("HOOKRELAY_ALERT_DLQ_WARNING", "0")],
        &["health", "--json"],
    )
    .await
    .expect("join");
    assert_eq!(degraded.status.code(), Some(1));
    let body: Value = serde_json::from_slice(&degraded.stdout).expect("json");
    assert_eq!(body["health"]["status"], "degraded");
    let unhealthy = run(vec![("HOOKRELAY_ALERT_DLQ_CRITICAL", "0")], &["health"])
        .await
        .expect("join");
    assert_eq!(unhealthy.status.code(), Some(2));

    let status = run(vec![], &["status", "--json"]).await.expect("join");
    let status: Value = serde_json::from_slice(&status.stdout).expect("json");
    for pointer in [
        "/health/status",
        "/health/reasons",
        "/metrics/success_rate_1hour",
        "/alerts/alert_counts/total",
        "/alerts/active_alerts",
        "/queue/pending",
        "/queue/dead_letters",
        "/windows/last_hour/attempts",
        "/windows/last_day/success_rate",
        "/windows/all_time/totals/ingested",
        "/endpoints/0/id",
        "/worker_alive",
    ] {
        assert!(
            status.pointer(pointer).is_some(),
            "{pointer} missing from {status}"
        );
    }
    assert_eq!(status["queue"]["dead_letters"], 1);
    let metrics = run(vec![], &["metrics", "--json"]).await.expect("join");
    let metrics: Value = serde_json::from_slice(&metrics.stdout).expect("json");
    assert_eq!(metrics["windows"]["all_time"]["totals"]["dead_lettered"], 1);
    let alerts = run(
        vec![("HOOKRELAY_ALERT_DLQ_WARNING", "0")],
        &["alerts", "--json"],
    )
    .await
    .expect("join");
    let alerts: Value = serde_json::from_slice(&alerts.stdout).expect("json");
    assert_eq!(alerts["active"][0]["rule"], "dlq_size");
}

#[tokio::test]
async fn with_a_sentry_dsn_failures_are_reported_to_it() {
    let sentry = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let dsn = format!("http://public-key@{}/42", sentry.addr);
    let path = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        // A database that does not exist: the command fails.
        cli(
            &path,
            &[
                ("SENTRY_DSN", dsn.as_str()),
                ("DATABASE_URL", "/proc/hookrelay/nope.db"),
            ],
            &["dlq", "list"],
        )
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(1));
    let got = sentry.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].path.starts_with("/api/42/"), "{}", got[0].path);
    let body = String::from_utf8_lossy(&got[0].body);
    assert!(body.contains("there is no database"), "{body}");
    assert!(
        body.contains("hookrelay@"),
        "the release is reported: {body}"
    );
}

#[tokio::test]
async fn an_alert_notification_that_fails_is_sent_at_the_next_evaluation() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(410));
    let alert_hook = TestReceiver::start().await;
    alert_hook.script([Reply::status(503)]);
    let (url, hook) = (receiver.url(), alert_hook.url());
    let (relay, _clock, _dir) = clocked_relay(&[
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("HOOKRELAY_ALERT_WEBHOOK_URL", hook.as_str()),
        ("HOOKRELAY_ALERT_DLQ_WARNING", "0"),
    ])
    .await;
    relay.track_usage(usage("s")).await.expect("track");
    relay.worker().run_once().await.expect("run");
    let monitor = relay.monitor().expect("monitor");

    let first = monitor.evaluate_alerts().await.expect("evaluate");
    assert_eq!(first.fired.len(), 1);
    assert_eq!(alert_hook.received().len(), 1, "the webhook answered 503");
    // Nothing new fires, but the unsent firing goes out now.
    assert!(
        monitor
            .evaluate_alerts()
            .await
            .expect("evaluate")
            .is_empty()
    );
    let got = alert_hook.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].json()["fired"][0]["rule"], "dlq_size");
    // Sent once: no more messages.
    monitor.evaluate_alerts().await.expect("evaluate");
    assert_eq!(alert_hook.received().len(), 2);
}

#[test]
fn health_on_a_missing_database_is_unhealthy_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let output = cli(dir.path(), &[], &["health", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let body: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(body["health"]["status"], "unhealthy");
    assert!(
        !dir.path().join("hookrelay.db").exists(),
        "a probe must not create the database"
    );
    assert_eq!(cli(dir.path(), &[], &["status"]).status.code(), Some(1));
}

#[tokio::test]
async fn health_self_asks_this_instance_and_fails_when_its_listener_is_gone() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let ask = |server: String| {
        let dir = tempfile::tempdir().expect("dir");
        tokio::task::spawn_blocking(move || {
            hookrelay(dir.path(), &[])
                .args(["health", "--self", "--server", &server, "--json"])
                .output()
                .expect("run hookrelay")
        })
    };
    let alive = ask(app.url("")).await.expect("join");
    assert_eq!(
        alive.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&alive.stderr)
    );
    let body: Value = serde_json::from_slice(&alive.stdout).expect("json");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["ready"]["instance"], app.relay.instance());
    assert_eq!(body["ready"]["role"], "all");
    assert_eq!(body["ready"]["worker"], true);

    // The same server after it stopped: nothing listens there any more.
    let address = app.url("");
    drop(app.stop().await);
    let gone = ask(address).await.expect("join");
    assert_eq!(gone.status.code(), Some(2));
    let body: Value = serde_json::from_slice(&gone.stdout).expect("json");
    assert_eq!(body["status"], "unhealthy");
    assert!(
        body["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("does not answer")),
        "{body}"
    );
}
