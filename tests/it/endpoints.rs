//! Endpoints: fan-out with filters, per-endpoint secrets, rotation, throttling, circuit
//! breaking, outbound address policy.

use std::time::Duration;

use hookrelay::{
    Relay,
    delivery::Outcome,
    domain::{EndpointId, SigningSecret},
    endpoints::{CircuitState, EndpointSpec},
    signing::verify_standard,
};
use serde_json::{Value, json};

use crate::helpers::{
    Received, Reply, TestApp, TestReceiver, clocked_relay, config, eventually, usage, usage_event,
};

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "endpoint-test-admin-token-0123456789";

fn verifies(received: &Received, secret: &str) -> bool {
    let secret = SigningSecret::parse(secret).expect("secret");
    let id = received.header("webhook-id").expect("id");
    let timestamp = received
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .expect("timestamp");
    let signature = received.header("webhook-signature").expect("signature");
    verify_standard(&secret, id, timestamp, &received.body, signature).is_ok()
}

async fn add(app: &TestApp, body: Value) -> (String, String) {
    let response = app
        .http
        .post(app.url("/api/v1/endpoints"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let created: Value = response.json().await.expect("json");
    (
        created["endpoint"]["id"].as_str().expect("id").to_owned(),
        created["secret"].as_str().expect("secret").to_owned(),
    )
}

#[tokio::test]
async fn events_fan_out_to_every_matching_endpoint_each_signed_with_its_own_secret() {
    let default = TestReceiver::start().await;
    let usage_only = TestReceiver::start().await;
    let alerts_only = TestReceiver::start().await;
    let app = TestApp::spawn(&default.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    let (_, usage_secret) = add(
        &app,
        json!({"url": usage_only.url(), "event_types": ["usage.tracked"]}),
    )
    .await;
    let (_, alert_secret) = add(
        &app,
        json!({"url": alerts_only.url(), "event_types": ["alert.*"], "headers": {"Authorization": "Bearer downstream"}}),
    )
    .await;
    assert!(usage_secret.starts_with("whsec_"));

    app.post_json("/api/webhook/usage", &usage_event("s")).await;
    app.post_json(
        "/api/v1/events",
        &json!({"type": "alert.fired", "data": {"rule": "dlq"}}),
    )
    .await;
    app.post_json(
        "/api/v1/events",
        &json!({"type": "report.daily", "data": {}}),
    )
    .await;

    let to_default = default.wait_for(3, WAIT).await;
    let to_usage = usage_only.wait_for(1, WAIT).await;
    let to_alerts = alerts_only.wait_for(1, WAIT).await;
    eventually(WAIT, "queue drained", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert_eq!(
        default.received().len(),
        3,
        "the default endpoint takes every type"
    );
    assert_eq!(usage_only.received().len(), 1);
    assert_eq!(alerts_only.received().len(), 1);
    assert_eq!(to_usage[0].json()["event_type"], "usage.tracked");
    assert_eq!(to_alerts[0].json()["event_type"], "alert.fired");
    assert_eq!(
        to_alerts[0].header("authorization"),
        Some("Bearer downstream")
    );

    assert!(verifies(&to_usage[0], &usage_secret));
    assert!(
        !verifies(&to_usage[0], &alert_secret),
        "secrets must be per endpoint"
    );
    assert!(verifies(&to_alerts[0], &alert_secret));
    assert!(
        to_default
            .iter()
            .all(|r| verifies(r, crate::helpers::SECRET))
    );
}

#[tokio::test]
async fn a_failing_endpoint_never_causes_resends_to_the_others() {
    let healthy = TestReceiver::start().await;
    let flaky = TestReceiver::start().await;
    flaky.script([Reply::status(500), Reply::status(502)]);
    let app = TestApp::spawn(&healthy.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    add(&app, json!({"url": flaky.url()})).await;
    app.post_json("/api/webhook/usage", &usage_event("s")).await;
    flaky.wait_for(3, WAIT).await;
    eventually(WAIT, "queue drained", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert_eq!(healthy.received().len(), 1);
    assert_eq!(flaky.received().len(), 3);
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_afterwards_only_the_new_one() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, _dir) = clocked_relay(&[]).await;
    let (endpoint, old_secret) = relay
        .create_endpoint(EndpointSpec {
            url: receiver.url(),
            ..EndpointSpec::default()
        })
        .await
        .expect("create");
    let (_, new_secret) = relay
        .rotate_secret(&endpoint.id, None, Some(Duration::from_secs(3600)))
        .await
        .expect("rotate");
    assert_ne!(old_secret, new_secret);

    relay.track_usage(usage("during")).await.expect("track");
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Delivered]
    );
    let during = &receiver.received()[0];
    assert_eq!(
        during
            .header("webhook-signature")
            .map(|s| s.split(' ').count()),
        Some(2)
    );
    assert!(
        verifies(during, &old_secret),
        "receivers still on the old secret keep verifying"
    );
    assert!(verifies(during, &new_secret));

    clock.advance(Duration::from_secs(3601));
    relay.track_usage(usage("after")).await.expect("track");
    assert_eq!(
        relay.worker().run_once().await.expect("run"),
        vec![Outcome::Delivered]
    );
    let after = &receiver.received()[1];
    assert_eq!(
        after
            .header("webhook-signature")
            .map(|s| s.split(' ').count()),
        Some(1)
    );
    assert!(verifies(after, &new_secret));
    assert!(!verifies(after, &old_secret));
}

#[tokio::test]
async fn a_burst_beyond_the_receivers_limit_is_delivered_without_spending_retries() {
    let receiver = TestReceiver::start().await;
    receiver.limit_per_second(50);
    // No retries at all: any 429 that spent budget would dead-letter its event.
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("WEBHOOK_MAX_RETRIES", "0"),
            ("HOOKRELAY_ADMIN_TOKEN", TOKEN),
        ],
    )
    .await;
    let events: Vec<Value> = (0..150)
        .map(|i| usage_event(&format!("burst-{i}")))
        .collect();
    let response = app
        .post_json("/api/webhook/usage", &Value::Array(events))
        .await;
    assert_eq!(response.status(), 202);
    eventually(Duration::from_secs(30), "burst delivered", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    let counts = app.relay.counts().await.expect("counts");
    assert_eq!(counts.dead, 0);
    let accepted = receiver.received().len();
    assert_eq!(accepted, 150, "every event accepted exactly once");
    assert!(
        receiver.arrived() > accepted,
        "the receiver pushed back at least once"
    );
}

#[tokio::test]
async fn our_own_rate_limit_spaces_requests_to_the_endpoint() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, _dir) = clocked_relay(&[]).await;
    relay
        .create_endpoint(EndpointSpec {
            url: receiver.url(),
            rate_limit: Some(10.0),
            rate_burst: Some(3),
            ..EndpointSpec::default()
        })
        .await
        .expect("create");
    for i in 0..10 {
        relay
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    // The burst goes at once; then one per 100 ms of (controlled) time.
    assert_eq!(relay.worker().run_once().await.expect("run").len(), 3);
    assert_eq!(relay.worker().run_once().await.expect("run").len(), 0);
    clock.advance(Duration::from_millis(100));
    assert_eq!(relay.worker().run_once().await.expect("run").len(), 1);
    clock.advance(Duration::from_millis(350));
    assert_eq!(relay.worker().run_once().await.expect("run").len(), 3);
    assert_eq!(receiver.received().len(), 7);
}

#[tokio::test]
async fn the_circuit_opens_on_a_dead_receiver_probes_with_a_growing_cooldown_and_closes() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(503));
    let (relay, clock, _dir) = clocked_relay(&[
        ("ZAPIER_WEBHOOK_URL", &receiver.url()),
        ("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "3"),
        ("HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS", "2"),
        ("HOOKRELAY_CIRCUIT_MAX_COOLDOWN_SECONDS", "4"),
        ("HOOKRELAY_CIRCUIT_PROBES", "2"),
        ("WEBHOOK_RETRY_DELAY_SECONDS", "1"),
        ("WEBHOOK_MAX_RETRIES", "2"),
    ])
    .await;
    for i in 0..5 {
        relay
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    let first = relay.worker().run_once().await.expect("run");
    assert_eq!(first.len(), 5);
    let default = EndpointId::default_endpoint();
    let circuit = || async {
        relay
            .endpoint(&EndpointId::default_endpoint())
            .await
            .expect("endpoint")
            .health
    };
    let health = circuit().await;
    assert_eq!(health.circuit, CircuitState::Open);
    assert_eq!(health.consecutive_failures, 5);

    // Retries fall due, but the circuit holds them: no request, no budget spent.
    clock.advance(Duration::from_millis(1_500));
    assert_eq!(relay.worker().run_once().await.expect("run"), vec![]);
    assert_eq!(receiver.received().len(), 5);

    // After the 2 s cool-down a round of two probes goes; both fail, without spending budget,
    // and the next cool-down is twice as long (4 s, the cap).
    for cooldown_ms in [500, 4_000, 4_000] {
        clock.advance(Duration::from_millis(cooldown_ms - 1));
        assert_eq!(
            relay.worker().run_once().await.expect("run"),
            vec![],
            "still cooling down"
        );
        clock.advance(Duration::from_millis(1));
        let probes = relay.worker().run_once().await.expect("run");
        assert!(
            matches!(
                probes[..],
                [Outcome::Throttled { .. }, Outcome::Throttled { .. }]
            ),
            "{probes:?}"
        );
        assert_eq!(circuit().await.circuit, CircuitState::Open);
    }
    assert_eq!(receiver.received().len(), 5 + 3 * 2, "a trickle of probes");

    // The receiver recovers: the next round closes the circuit and the rest flows.
    receiver.always(Reply::status(200));
    clock.advance(Duration::from_secs(4));
    let round = relay.worker().run_once().await.expect("run");
    assert_eq!(round, vec![Outcome::Delivered; 2]);
    let health = relay.endpoint(&default).await.expect("endpoint").health;
    assert_eq!(health.circuit, CircuitState::Closed);
    assert_eq!(health.consecutive_failures, 0);
    let rest = relay.worker().run_once().await.expect("run");
    assert_eq!(rest, vec![Outcome::Delivered; 3]);
    assert_eq!(
        relay.counts().await.expect("counts").dead,
        0,
        "nothing was dead-lettered while the circuit was open"
    );
}

#[tokio::test]
async fn events_failing_only_their_first_attempt_are_delivered_at_their_retry_time() {
    // The report behind the breaker's rule: 50 at once, every first attempt answered 500.
    let receiver = TestReceiver::start().await;
    receiver.fail_first_attempts(500);
    let (relay, clock, _dir) = clocked_relay(&[
        ("ZAPIER_WEBHOOK_URL", &receiver.url()),
        ("WEBHOOK_RETRY_DELAY_SECONDS", "1"),
        ("WEBHOOK_MAX_RETRIES", "3"),
    ])
    .await;
    for i in 0..50 {
        relay
            .track_usage(usage(&format!("s{i}")))
            .await
            .expect("track");
    }
    let mut delivered = 0;
    let mut elapsed_ms = 0;
    while delivered < 50 {
        assert!(
            elapsed_ms <= 5_000,
            "{delivered} of 50 delivered after {elapsed_ms} ms"
        );
        for outcome in relay.worker().run_once().await.expect("run") {
            delivered += usize::from(outcome == Outcome::Delivered);
        }
        clock.advance(Duration::from_millis(100));
        elapsed_ms += 100;
    }
    // The first 16 (the endpoint's concurrency) fail together with nothing to weigh against
    // them, which is what a dead receiver looks like: the circuit opens. The 2 s probe round
    // takes retried events, which go through and close it with a recovery on record, so the
    // other 34 failing their first attempt next do not re-open it: they go at their retry
    // time, 1 s ±25% later. Before the rule: none of the 50 after 40 s.
    assert!(elapsed_ms <= 4_000, "all 50 delivered by {elapsed_ms} ms");
    assert_eq!(
        receiver.received().len(),
        100,
        "one failure and one success each"
    );
    assert_eq!(relay.counts().await.expect("counts").dead, 0);
}

#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled_with_the_reason() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(500));
    let (relay, clock, _dir) = clocked_relay(&[
        ("ZAPIER_WEBHOOK_URL", &receiver.url()),
        ("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "0"),
        ("HOOKRELAY_ENDPOINT_DISABLE_AFTER_SECONDS", "60"),
        ("WEBHOOK_RETRY_DELAY_SECONDS", "40"),
        ("WEBHOOK_MAX_RETRIES", "5"),
    ])
    .await;
    relay.track_usage(usage("s")).await.expect("track");
    relay.worker().run_once().await.expect("run");
    clock.advance(Duration::from_secs(61));
    relay.worker().run_once().await.expect("run");
    let endpoint = relay
        .endpoint(&EndpointId::default_endpoint())
        .await
        .expect("endpoint");
    assert!(!endpoint.enabled);
    assert!(
        endpoint
            .disabled_reason
            .unwrap_or_default()
            .contains("failing continuously")
    );
    // A settings change read before the worker disabled it does not undo that.
    relay
        .update_endpoint(
            &EndpointId::default_endpoint(),
            hookrelay::endpoints::EndpointChanges {
                description: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let endpoint = relay
        .endpoint(&EndpointId::default_endpoint())
        .await
        .expect("endpoint");
    assert!(
        !endpoint.enabled,
        "a settings change must not re-enable the endpoint"
    );
    assert_eq!(endpoint.description, "renamed");
    let enabled = relay
        .set_endpoint_enabled(&EndpointId::default_endpoint(), true, None)
        .await
        .expect("enable");
    assert!(enabled.enabled);
    assert_eq!(
        (
            enabled.health.consecutive_failures,
            enabled.health.failing_since_ms
        ),
        (0, None)
    );
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let strict = Relay::open(config(
        dir.path(),
        &[("HOOKRELAY_ALLOWED_TARGET_CIDRS", "")],
    ))
    .await
    .expect("open");
    for url in [
        receiver.url(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::ffff:10.0.0.1]/".to_owned(),
        "http://2130706433/".to_owned(),
        "http://localhost/".to_owned(),
    ] {
        let refused = strict
            .create_endpoint(EndpointSpec {
                url: url.clone(),
                ..EndpointSpec::default()
            })
            .await;
        assert!(refused.is_err(), "{url} accepted");
    }
    assert!(
        strict
            .create_endpoint(EndpointSpec {
                url: "https://user:pw@example.com/".into(),
                ..EndpointSpec::default()
            })
            .await
            .is_err()
    );

    // An endpoint stored while allowed, delivered while not: refused at connect time.
    let allowed = Relay::open(config(dir.path(), &[])).await.expect("open");
    allowed
        .create_endpoint(EndpointSpec {
            url: receiver.url(),
            ..EndpointSpec::default()
        })
        .await
        .expect("create");
    drop(allowed);
    strict.worker().endpoints_changed();
    strict.track_usage(usage("s")).await.expect("track");
    assert_eq!(
        strict.worker().run_once().await.expect("run"),
        vec![Outcome::DeadLettered]
    );
    assert!(
        receiver.received().is_empty(),
        "a refused address must never be contacted"
    );
    let dead = strict.dead_letters(1).await.expect("dlq");
    assert!(
        dead[0]
            .last_error
            .clone()
            .unwrap_or_default()
            .contains("loopback")
    );
}

#[tokio::test]
async fn endpoints_are_managed_over_the_api_with_the_admin_token() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    let unauthorized = app
        .http
        .get(app.url("/api/v1/endpoints"))
        .send()
        .await
        .expect("request");
    assert_eq!(unauthorized.status(), 401);

    let (id, _) = add(
        &app,
        json!({"url": receiver.url(), "description": "ops", "rate_limit": 5}),
    )
    .await;
    let list: Value = app
        .http
        .get(app.url("/api/v1/endpoints"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("r")
        .json()
        .await
        .expect("j");
    assert_eq!(list["count"], 2, "ep_default and the new one");
    assert!(
        !list.to_string().contains("whsec_"),
        "secrets are never listed"
    );

    let patched: Value = app
        .http
        .patch(app.url(&format!("/api/v1/endpoints/{id}")))
        .bearer_auth(TOKEN)
        .json(&json!({"event_types": ["alert.*"], "rate_limit": null}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(patched["event_types"], json!(["alert.*"]));
    assert_eq!(patched["rate_limit"], Value::Null);

    let invalid = app
        .http
        .post(app.url("/api/v1/endpoints"))
        .bearer_auth(TOKEN)
        .json(&json!({"url": "ftp://nope"}))
        .send()
        .await
        .expect("request");
    assert_eq!(invalid.status(), 422);
    let invalid: Value = invalid.json().await.expect("json");
    assert_eq!(invalid["code"], "invalid_endpoint");

    let disabled: Value = app
        .http
        .post(app.url(&format!("/api/v1/endpoints/{id}/disable")))
        .bearer_auth(TOKEN)
        .json(&json!({"reason": "maintenance"}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["disabled_reason"], "maintenance");

    let removed = app
        .http
        .delete(app.url(&format!("/api/v1/endpoints/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("r");
    assert_eq!(removed.status(), 200);
    let gone = app
        .http
        .get(app.url(&format!("/api/v1/endpoints/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("r");
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_back_a_fast_one() {
    let fast = TestReceiver::start().await;
    let slow = TestReceiver::start().await;
    slow.always(Reply::status(200).delayed(Duration::from_secs(3)));
    let app = TestApp::spawn(
        &fast.url(),
        &[
            ("HOOKRELAY_ADMIN_TOKEN", TOKEN),
            ("HOOKRELAY_ENDPOINT_CONCURRENCY", "2"),
            ("WEBHOOK_TIMEOUT_SECONDS", "10"),
        ],
    )
    .await;
    add(&app, json!({"url": slow.url()})).await;
    for i in 0..10 {
        app.post_json("/api/webhook/usage", &usage_event(&format!("s{i}")))
            .await;
    }
    fast.wait_for(10, Duration::from_secs(2)).await;
    assert!(
        slow.received().is_empty(),
        "the slow receiver has not answered anything yet"
    );
    assert_eq!(
        slow.arrived(),
        2,
        "the slow endpoint holds exactly its concurrency cap"
    );
}

#[tokio::test]
async fn requests_to_all_endpoints_together_stay_within_the_delivery_concurrency() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(200).delayed(Duration::from_millis(100)));
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_ADMIN_TOKEN", TOKEN),
            ("HOOKRELAY_DELIVERY_CONCURRENCY", "3"),
            ("HOOKRELAY_ENDPOINT_CONCURRENCY", "16"),
        ],
    )
    .await;
    // A second endpoint on the same receiver, so one count sees every request.
    add(
        &app,
        json!({"url": format!("http://{}/second", receiver.addr)}),
    )
    .await;
    for i in 0..10 {
        app.post_json("/api/webhook/usage", &usage_event(&format!("cap{i}")))
            .await;
    }
    let received = receiver.wait_for(20, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 20, "each event to both endpoints");
    assert_eq!(
        receiver.most_open(),
        3,
        "the cap is used in full and never passed, whatever each endpoint allows"
    );
}

#[tokio::test]
async fn a_plain_http_endpoint_is_refused_at_delivery_once_https_is_required() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let lax = Relay::open(config(dir.path(), &[])).await.expect("open");
    lax.create_endpoint(EndpointSpec {
        url: receiver.url(),
        ..EndpointSpec::default()
    })
    .await
    .expect("create while http is allowed");
    drop(lax);
    let strict = Relay::open(config(dir.path(), &[("REQUIRE_HTTPS", "true")]))
        .await
        .expect("open");
    // Refused for new endpoints…
    let refused = strict
        .create_endpoint(EndpointSpec {
            url: format!("http://{}/other", receiver.addr),
            ..EndpointSpec::default()
        })
        .await;
    assert!(refused.is_err(), "an http endpoint was added");
    // …and for the one stored before, before any connection is made.
    strict.track_usage(usage("insecure")).await.expect("track");
    assert_eq!(
        strict.worker().run_once().await.expect("run"),
        vec![Outcome::DeadLettered]
    );
    assert_eq!(receiver.arrived(), 0, "the receiver was contacted");
    let dead = strict.dead_letters(1).await.expect("dlq");
    let error = dead[0].last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("https"), "{error}");
}
