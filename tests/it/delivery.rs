//! The delivery worker against a real receiver: retries, backoff, dead letters, leases.

use std::{sync::Arc, time::Duration};

use hookrelay::{
    Relay,
    clock::{Clock, ManualClock},
    delivery::Outcome,
    domain::EndpointId,
};

use crate::helpers::{
    Reply, TestApp, TestReceiver, config, eventually, open_store, usage, usage_event,
};

const WAIT: Duration = Duration::from_secs(10);
const START_MS: i64 = 1_800_000_000_000;

/// A relay on a fresh database whose clock only moves when the test says; the test drives the
/// worker with `run_once` instead of a background loop.
async fn manual_relay(
    receiver: &TestReceiver,
    vars: &[(&str, &str)],
) -> (Relay, ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let mut all = vec![
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_TIMEOUT_SECONDS", "1"),
    ];
    all.extend_from_slice(vars);
    let clock = ManualClock::new(START_MS);
    let relay = Relay::open_with_clock(config(dir.path(), &all), Arc::new(clock.clone()))
        .await
        .expect("open");
    (relay, clock, dir)
}

#[tokio::test]
async fn a_failed_first_attempt_is_retried_and_delivered() {
    let receiver = TestReceiver::start().await;
    receiver.script([Reply::status(500)]);
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    app.post_json("/api/webhook/usage", &usage_event("s")).await;

    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[0].header("webhook-id"),
        got[1].header("webhook-id"),
        "webhook-id must not change between attempts"
    );
    assert_eq!(got[0].body, got[1].body);
    eventually(WAIT, "delivery recorded", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert_eq!(app.relay.counts().await.expect("counts").dead, 0);
}

#[tokio::test]
async fn backoff_doubles_from_the_base_delay_then_dead_letters() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(503));
    let (relay, clock, _dir) = manual_relay(
        &receiver,
        &[
            ("WEBHOOK_RETRY_DELAY_SECONDS", "60"),
            ("WEBHOOK_MAX_RETRIES", "3"),
        ],
    )
    .await;
    relay.track_usage(usage("s")).await.expect("track");

    let mut expected_base = 60_000.0;
    for attempt in 1..=3 {
        let outcomes = relay.worker().run_once().await.expect("run");
        let [Outcome::Retrying { at_ms }] = outcomes[..] else {
            panic!("attempt {attempt}: expected a retry, got {outcomes:?}");
        };
        let delay = (at_ms - clock.now_ms()) as f64;
        assert!(
            (expected_base * 0.75..=expected_base * 1.25).contains(&delay),
            "attempt {attempt}: delay {delay} ms outside ±25% of {expected_base}"
        );
        // Not due yet: nothing happens.
        clock.advance(Duration::from_millis((delay as u64).saturating_sub(10)));
        assert_eq!(relay.worker().run_once().await.expect("run"), vec![]);
        clock.advance(Duration::from_millis(10));
        expected_base *= 2.0;
    }
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::DeadLettered]
    );
    assert_eq!(receiver.received().len(), 4, "1 attempt + 3 retries");

    let dead = relay.dead_letters(10).await.expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].total_attempts, 4);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("retries exhausted"),
        "{:?}",
        dead[0].last_error
    );
    let detail = relay
        .delivery(dead[0].id.clone())
        .await
        .expect("detail")
        .expect("exists");
    assert_eq!(detail.attempts_log.len(), 4);
    assert!(
        detail
            .attempts_log
            .iter()
            .all(|a| a.status_code == Some(503))
    );
    assert_eq!(
        detail.attempts_log.last().map(|a| a.outcome.as_str()),
        Some("dead")
    );
}

#[tokio::test]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, _dir) =
        manual_relay(&receiver, &[("WEBHOOK_RETRY_DELAY_SECONDS", "60")]).await;
    let date = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_millis(START_MS as u64 + 7_000 + 120_000),
    );
    receiver.script([
        Reply::status(429).header("retry-after", "7"),
        Reply::status(503).header("retry-after", date),
        Reply::status(200),
    ]);
    relay.track_usage(usage("s")).await.expect("track");

    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Throttled {
            at_ms: START_MS + 7_000
        }]
    );
    clock.advance(Duration::from_secs(7));
    let second = relay.worker().run_once().await.expect("run");
    assert_eq!(
        second,
        vec![Outcome::Retrying {
            at_ms: START_MS + 7_000 + 120_000
        }]
    );
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Delivered]
    );
}

#[tokio::test]
async fn permanent_failures_are_dead_lettered_at_once() {
    for status in [400, 401, 404, 410, 422] {
        let receiver = TestReceiver::start().await;
        receiver.always(Reply::status(status));
        let (relay, _clock, _dir) = manual_relay(&receiver, &[]).await;
        relay.track_usage(usage("s")).await.expect("track");
        assert_eq!(
            relay.worker().run_once().await.expect("run"),
            vec![Outcome::DeadLettered],
            "HTTP {status}"
        );
        assert_eq!(receiver.received().len(), 1, "HTTP {status} was retried");
        let dead = relay.dead_letters(10).await.expect("dlq");
        assert_eq!(dead[0].last_status, Some(status));
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = TestReceiver::start().await;
    receiver.always(
        Reply::status(302).header("location", format!("http://{}/elsewhere", receiver.addr)),
    );
    let (relay, _clock, _dir) = manual_relay(&receiver, &[]).await;
    relay.track_usage(usage("s")).await.expect("track");
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::DeadLettered]
    );
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].path, "/hook",
        "the redirect target must never be contacted"
    );
    let dead = relay.dead_letters(1).await.expect("dlq");
    let error = dead[0].last_error.clone().unwrap_or_default();
    // Where it pointed, without the path: a redirect's target is often the catch-hook URL.
    assert!(
        error.contains("redirects are not followed")
            && error.contains("another path on the same host")
            && !error.contains("/elsewhere"),
        "{error}"
    );
}

#[tokio::test]
async fn a_redirect_to_the_endpoints_own_url_is_told_without_its_path() {
    let receiver = TestReceiver::start().await;
    // The usual redirect: http to https, pointing at the catch-hook URL itself.
    let own = receiver.url().replacen("http://", "https://", 1);
    receiver.always(
        Reply::status(301)
            .header("location", own.clone())
            .body(format!("Moved Permanently. Redirecting to {own}")),
    );
    let (relay, _clock, _dir) = manual_relay(&receiver, &[]).await;
    relay.track_usage(usage("s")).await.expect("track");
    relay.worker().run_once().await.expect("run");
    let dead = relay.dead_letters(1).await.expect("dlq");
    let error = dead[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("the same URL over https"), "{error}");
    assert!(!error.contains("/hook"), "the path leaked: {error}");
    let detail = relay
        .delivery(dead[0].id.clone())
        .await
        .expect("detail")
        .expect("found");
    let snippets: Vec<_> = detail
        .attempts_log
        .iter()
        .filter_map(|a| a.response_snippet.clone())
        .collect();
    assert!(
        snippets.iter().all(|s| !s.contains("/hook")),
        "the redirect's body kept the path: {snippets:?}"
    );
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retried() {
    // Timeout: the receiver answers after the 1 s timeout.
    let receiver = TestReceiver::start().await;
    receiver.script([Reply::status(200).delayed(Duration::from_millis(1500))]);
    let (relay, clock, _dir) =
        manual_relay(&receiver, &[("WEBHOOK_RETRY_DELAY_SECONDS", "10")]).await;
    relay.track_usage(usage("s")).await.expect("track");
    let outcome = relay.worker().run_once().await.expect("run");
    assert!(
        matches!(outcome[..], [Outcome::Retrying { .. }]),
        "{outcome:?}"
    );
    clock.advance(Duration::from_secs(13));
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Delivered]
    );
    let delivery = relay.dead_letters(1).await.expect("dlq");
    assert!(delivery.is_empty());

    // Connection refused: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://127.0.0.1:{port}/hook");
    let clock = ManualClock::new(START_MS);
    let relay = Relay::open_with_clock(
        config(
            dir.path(),
            &[
                ("ZAPIER_WEBHOOK_URL", &url),
                ("WEBHOOK_MAX_RETRIES", "1"),
                ("WEBHOOK_RETRY_DELAY_SECONDS", "1"),
            ],
        ),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open");
    relay.track_usage(usage("s")).await.expect("track");
    assert!(matches!(
        relay.worker().run_once().await.expect("run")[..],
        [Outcome::Retrying { .. }]
    ));
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::DeadLettered]
    );
    let dead = relay.dead_letters(1).await.expect("dlq");
    let detail = relay
        .delivery(dead[0].id.clone())
        .await
        .expect("detail")
        .expect("exists");
    assert!(
        detail
            .attempts_log
            .iter()
            .all(|a| a.error_kind.as_deref() == Some("connect")),
        "{:?}",
        detail.attempts_log
    );
}

#[tokio::test]
async fn an_abandoned_claim_is_delivered_after_its_lease_expires() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, dir) = manual_relay(&receiver, &[]).await;
    relay.track_usage(usage("s")).await.expect("track");

    // Another worker claims the delivery and dies without recording anything.
    let other = open_store(dir.path()).await;
    let claimed = other
        .claim_due(
            clock.now_ms(),
            7_000,
            "test".into(),
            vec![(EndpointId::default_endpoint(), 10)],
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    drop(other);

    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![],
        "claimed work must not be taken while leased"
    );
    clock.advance(Duration::from_secs(7));
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Delivered]
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_result_from_an_expired_lease_does_not_overwrite_the_new_claim() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, dir) = manual_relay(&receiver, &[]).await;
    relay.track_usage(usage("s")).await.expect("track");
    let store = open_store(dir.path()).await;
    let first = store
        .claim_due(
            clock.now_ms(),
            1_000,
            "test".into(),
            vec![(EndpointId::default_endpoint(), 1)],
        )
        .await
        .expect("claim");
    clock.advance(Duration::from_secs(2));
    let second = store
        .claim_due(
            clock.now_ms(),
            1_000,
            "test".into(),
            vec![(EndpointId::default_endpoint(), 1)],
        )
        .await
        .expect("claim");
    assert_eq!(first[0].id, second[0].id);
    // The stale claimant reports a dead letter; it must not apply.
    store
        .record_attempts(
            vec![hookrelay::store::AttemptRecord {
                delivery_id: first[0].id.clone(),
                lease: first[0].lease,
                attempt_no: 1,
                started_at_ms: clock.now_ms(),
                duration_ms: 1,
                status_code: Some(400),
                error_kind: Some("status".into()),
                error_detail: Some("stale".into()),
                response_snippet: None,
                next: hookrelay::store::NextState::DeadLetter,
                latency_ms: 0,
            }],
            vec![],
            clock.now_ms(),
        )
        .await
        .expect("record");
    assert_eq!(store.counts().await.expect("counts").dead, 0);
    assert_eq!(store.counts().await.expect("counts").pending, 1);
}

#[tokio::test]
async fn disabled_delivery_stores_events_and_sends_them_once_enabled() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let disabled = Relay::open(config(
        dir.path(),
        &[("ZAPIER_WEBHOOK_URL", &url), ("ENABLE_WEBHOOK", "false")],
    ))
    .await
    .expect("open");
    for i in 0..3 {
        disabled
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    assert_eq!(disabled.worker().run_once().await.expect("run"), vec![]);
    assert!(receiver.received().is_empty());
    drop(disabled);

    let enabled = Relay::open(config(dir.path(), &[("ZAPIER_WEBHOOK_URL", &url)]))
        .await
        .expect("open");
    let outcomes = enabled.worker().run_once().await.expect("run");
    assert_eq!(outcomes, vec![Outcome::Delivered; 3]);
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn ingest_wakes_an_idle_worker_without_waiting_for_a_poll() {
    let receiver = TestReceiver::start().await;
    // A one-hour poll interval: only the wake-up can explain a prompt delivery.
    let app = TestApp::spawn(
        &receiver.url(),
        &[("HOOKRELAY_POLL_INTERVAL_SECONDS", "3600")],
    )
    .await;
    // Let the worker go idle first.
    eventually(WAIT, "worker alive", || async {
        app.relay.ready().await.is_ok()
    })
    .await;
    for i in 0..3 {
        let started = std::time::Instant::now();
        app.post_json("/api/webhook/usage", &usage_event(&format!("s{i}")))
            .await;
        receiver.wait_for(i + 1, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_deliveries() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(200).delayed(Duration::from_millis(300)));
    let app = TestApp::spawn(
        &receiver.url(),
        &[("HOOKRELAY_SHUTDOWN_GRACE_SECONDS", "5")],
    )
    .await;
    for i in 0..5 {
        app.post_json("/api/webhook/usage", &usage_event(&format!("s{i}")))
            .await;
    }
    eventually(WAIT, "all five in flight", || async {
        receiver.arrived() == 5
    })
    .await;
    let data = app.stop().await;
    assert_eq!(receiver.received().len(), 5);
    let store = open_store(data.path()).await;
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts.pending, counts.dead),
        (0, 0),
        "every in-flight delivery was finished and recorded"
    );
    let totals = store.window_totals(None).await.expect("totals");
    assert_eq!(
        (totals.successes, totals.failures),
        (5, 0),
        "each recorded as delivered"
    );
}

#[tokio::test]
async fn shutdown_past_the_grace_period_returns_deliveries_to_the_queue_unspent() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(200).delayed(Duration::from_secs(3)));
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_SHUTDOWN_GRACE_SECONDS", "0.1"),
            ("WEBHOOK_TIMEOUT_SECONDS", "5"),
        ],
    )
    .await;
    for i in 0..3 {
        app.post_json("/api/webhook/usage", &usage_event(&format!("s{i}")))
            .await;
    }
    eventually(WAIT, "all three in flight", || async {
        receiver.arrived() == 3
    })
    .await;
    let data = app.stop().await;
    let store = open_store(data.path()).await;
    assert_eq!(store.counts().await.expect("counts").pending, 3);
    // Released, not leased: due at once, with no attempt spent.
    let now = hookrelay::clock::SystemClock.now_ms();
    let claimed = store
        .claim_due(
            now,
            1_000,
            "test".into(),
            vec![(EndpointId::default_endpoint(), 10)],
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed
            .iter()
            .all(|c| c.attempts == 0 && c.total_attempts == 0)
    );
}

#[tokio::test]
async fn failures_are_recorded_without_the_endpoints_path_or_query() {
    let receiver = TestReceiver::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    // A catch-hook URL is a credential: its path and query stay out of every recorded error.
    let urls = [
        // Connection refused: nothing listens there.
        format!("http://127.0.0.1:{port}/hooks/catch/123/s3cret?token=t0ken"),
        // TLS to a plain-HTTP receiver: the handshake fails.
        format!(
            "https://{}/hooks/catch/456/s3cret?token=t0ken",
            receiver.addr
        ),
    ];
    for url in urls {
        let vars = [
            ("ZAPIER_WEBHOOK_URL", url.as_str()),
            ("WEBHOOK_MAX_RETRIES", "0"),
        ];
        let (relay, _clock, _dir) = manual_relay(&receiver, &vars).await;
        relay.track_usage(usage("s")).await.expect("track");
        relay.worker().run_once().await.expect("run");
        let dead = relay.dead_letters(1).await.expect("dlq");
        let error = dead
            .first()
            .and_then(|d| d.last_error.clone())
            .unwrap_or_default();
        assert!(!error.is_empty(), "{url}: no error recorded");
        assert!(
            !error.contains("s3cret") && !error.contains("t0ken"),
            "the URL leaked: {error}"
        );
    }
}
