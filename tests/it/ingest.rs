//! Ingest over HTTP and through the library.

use std::{sync::Arc, time::Duration};

use hookrelay::{
    Relay,
    domain::{EventId, SignatureAlgorithm, SigningSecret},
    signing::{verify_legacy, verify_standard},
};
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, TestApp, TestReceiver, WriteHold, config, execute_sql, usage, usage_event,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn usage_event_arrives_signed_in_the_original_gateway_shape() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;

    let response = app
        .post_json("/api/webhook/usage", &usage_event("session_123"))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["duplicate"], json!(false));
    let id = body["id"].as_str().expect("id").to_owned();
    assert!(EventId::parse(&id).is_ok());

    let got = receiver.wait_for(1, WAIT).await;
    let delivery = &got[0];
    assert_eq!(delivery.path, "/hook");
    assert_eq!(delivery.header("webhook-id"), Some(id.as_str()));
    assert_eq!(delivery.header("content-type"), Some("application/json"));

    let secret = SigningSecret::parse(SECRET).expect("secret");
    let timestamp: i64 = delivery
        .header("webhook-timestamp")
        .expect("timestamp")
        .parse()
        .expect("number");
    let signature = delivery.header("webhook-signature").expect("signature");
    assert_eq!(
        verify_standard(&secret, &id, timestamp, &delivery.body, signature),
        Ok(())
    );
    let legacy = delivery
        .header("x-webhook-signature")
        .expect("legacy signature");
    assert!(legacy.starts_with("sha256="));
    assert_eq!(
        verify_legacy(&secret, SignatureAlgorithm::Sha256, &delivery.body, legacy),
        Ok(())
    );

    let payload = delivery.json();
    assert_eq!(payload["event_id"], json!(id));
    assert_eq!(payload["event_type"], json!("usage.tracked"));
    assert_eq!(payload["session_id"], json!("session_123"));
    assert_eq!(
        payload["query"]["summary"],
        json!("Why does my code throw an error when I deploy it?")
    );
    assert_eq!(payload["query"]["category"], json!("debugging"));
    assert_eq!(payload["query"]["estimated_complexity"], json!(1));
    assert_eq!(
        payload["response"],
        json!({"model_used": "gpt-4o-mini", "response_time_ms": 1000, "estimated_tokens": 100, "success": true})
    );
    assert!(
        payload["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
}

#[tokio::test]
async fn sha512_signature_is_sent_when_configured() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("WEBHOOK_SIGNATURE_ALGORITHM", "sha512"),
            ("WEBHOOK_SIGNATURE_HEADER", "X-Hub-Sig"),
        ],
    )
    .await;
    assert_eq!(
        app.post_json("/api/webhook/usage", &usage_event("s"))
            .await
            .status(),
        202
    );
    let got = receiver.wait_for(1, WAIT).await;
    let secret = SigningSecret::parse(SECRET).expect("secret");
    let header = got[0].header("x-hub-sig").expect("configured header");
    assert!(header.starts_with("sha512="));
    assert_eq!(
        verify_legacy(&secret, SignatureAlgorithm::Sha512, &got[0].body, header),
        Ok(())
    );
}

#[tokio::test]
async fn a_batch_is_stored_all_or_nothing() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("ENABLE_WEBHOOK", "false")]).await;

    let mut broken = usage_event("b");
    broken.as_object_mut().expect("object").remove("model_name");
    let response = app
        .post_json(
            "/api/webhook/usage",
            &json!([usage_event("a"), broken, usage_event("c")]),
        )
        .await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["code"], json!("invalid_field"));
    assert!(
        error["detail"].as_str().expect("detail").contains("[1]"),
        "{error}"
    );
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("model_name"),
        "{error}"
    );
    assert_eq!(app.relay.counts().await.expect("counts").pending, 0);

    let response = app
        .post_json(
            "/api/webhook/usage",
            &json!([usage_event("a"), usage_event("b"), usage_event("c")]),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(app.relay.counts().await.expect("counts").pending, 3);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_original_id_and_is_not_sent_again() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let send = || async {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("content-type", "application/json")
            .header("idempotency-key", "order-42")
            .body(serde_json::to_vec(&usage_event("s")).expect("json"))
            .send()
            .await
            .expect("request")
    };
    let first = send().await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    receiver.wait_for(1, WAIT).await;

    let second = send().await;
    assert_eq!(second.status(), 202);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["duplicate"], json!(true));

    // The same key on an event of another type is another event: keys are scoped by type.
    let generic = json!({"type": "alert.fired", "data": {"n": 1}, "idempotency_key": "order-42"});
    let a: Value = app
        .post_json("/api/v1/events", &generic)
        .await
        .json()
        .await
        .expect("json");
    let b: Value = app
        .post_json("/api/v1/events", &generic)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(a["duplicate"], json!(false), "{a}");
    assert_ne!(a["id"], first["id"]);
    assert_eq!(a["id"], b["id"]);
    assert_eq!(b["duplicate"], json!(true));

    receiver.wait_for(2, WAIT).await;
    // Give a wrongly repeated delivery the chance to show up: drain the queue and look again.
    crate::helpers::eventually(WAIT, "queue drained", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_nothing_is_stored() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_MAX_BODY_BYTES", "2048"),
            ("ENABLE_WEBHOOK", "false"),
        ],
    )
    .await;

    let mut wrong_type = usage_event("s");
    wrong_type["response_time_ms"] = json!("fast");
    let mut negative = usage_event("s");
    negative["estimated_tokens"] = json!(-5);
    let mut blank_session = usage_event("s");
    blank_session["session_id"] = json!("   ");
    let too_big = json!({"session_id": "s", "query": "x".repeat(4000), "model_name": "m",
        "response_time_ms": 1, "estimated_tokens": 1, "success": true});

    // (case, path, body, content type, status, code)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "/api/webhook/usage",
            b"{\"session_id\": ".to_vec(),
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "trailing garbage",
            "/api/webhook/usage",
            b"{} {}".to_vec(),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "empty body",
            "/api/webhook/usage",
            Vec::new(),
            "application/json",
            400,
            "empty_body",
        ),
        (
            "wrong field type",
            "/api/webhook/usage",
            serde_json::to_vec(&wrong_type).expect("json"),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "negative number",
            "/api/webhook/usage",
            serde_json::to_vec(&negative).expect("json"),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "blank session",
            "/api/webhook/usage",
            serde_json::to_vec(&blank_session).expect("json"),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "missing field",
            "/api/webhook/usage",
            br#"{"session_id":"s"}"#.to_vec(),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "empty array",
            "/api/webhook/usage",
            b"[]".to_vec(),
            "application/json",
            422,
            "invalid_batch",
        ),
        (
            "scalar",
            "/api/webhook/usage",
            b"42".to_vec(),
            "application/json",
            422,
            "invalid_body",
        ),
        (
            "oversized body",
            "/api/webhook/usage",
            serde_json::to_vec(&too_big).expect("json"),
            "application/json",
            413,
            "body_too_large",
        ),
        (
            "form content type",
            "/api/webhook/usage",
            serde_json::to_vec(&usage_event("s")).expect("json"),
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
        (
            "no type",
            "/api/v1/events",
            br#"{"data":{}}"#.to_vec(),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "bad type",
            "/api/v1/events",
            br#"{"type":"no spaces allowed","data":{}}"#.to_vec(),
            "application/json",
            422,
            "invalid_field",
        ),
        (
            "no data",
            "/api/v1/events",
            br#"{"type":"a.b"}"#.to_vec(),
            "application/json",
            422,
            "invalid_field",
        ),
    ];
    for (name, path, body, content_type, status, code) in cases {
        let response = app
            .http
            .post(app.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{name}");
        let error: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        assert_eq!(error["code"], json!(code), "{name}: {error}");
        assert!(
            error["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: {error}"
        );
    }
    let wrong: Value = app
        .post_raw(
            "/api/webhook/usage",
            serde_json::to_vec(&wrong_type).expect("json"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(
        wrong["detail"]
            .as_str()
            .expect("detail")
            .starts_with("response_time_ms"),
        "{wrong}"
    );

    let counts = app.relay.counts().await.expect("counts");
    assert_eq!(
        (counts.pending, counts.dead),
        (0, 0),
        "a refused request stored something"
    );
}

#[tokio::test]
async fn track_usage_returns_only_once_the_event_is_durable() {
    let dir = tempfile::tempdir().expect("dir");
    let config = config(
        dir.path(),
        &[
            ("ENABLE_WEBHOOK", "false"),
            (
                "ZAPIER_WEBHOOK_URL",
                "https://hooks.zapier.com/hooks/catch/1/a/",
            ),
        ],
    );
    let relay = Relay::open(config.clone()).await.expect("open");
    relay.track_usage(usage("lib")).await.expect("track");
    drop(relay);

    // A second, independent handle on the same file sees it.
    let reopened = Relay::open(config).await.expect("reopen");
    let counts = reopened.counts().await.expect("counts");
    assert_eq!(counts.pending, 1);
}

#[tokio::test]
async fn concurrent_ingests_are_all_stored() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("ENABLE_WEBHOOK", "false")]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let relay = app.relay.clone();
        tasks.spawn(async move { relay.track_usage(usage(&format!("s{i}"))).await });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(result) = tasks.join_next().await {
        ids.insert(result.expect("task").expect("track"));
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(app.relay.counts().await.expect("counts").pending, 200);
}

#[tokio::test]
async fn a_usage_event_sent_as_a_generic_event_is_validated_and_stored_as_one() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let empty = app
        .post_json(
            "/api/v1/events",
            &json!({"type": "usage.tracked", "data": {}}),
        )
        .await;
    assert_eq!(empty.status(), 422);
    let error: Value = empty.json().await.expect("json");
    assert_eq!(error["code"], "invalid_field");
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("data") && d.contains("session_id")),
        "{error}"
    );
    let wrong = app
        .post_json(
            "/api/v1/events",
            &json!({"type": "usage.tracked", "data": {"session_id": "s", "query": "q", "model_name": "m", "response_time_ms": -1, "estimated_tokens": 1, "success": true}}),
        )
        .await;
    assert_eq!(wrong.status(), 422);
    assert_eq!(app.relay.counts().await.expect("counts").pending, 0);

    let accepted = app
        .post_json(
            "/api/v1/events",
            &json!({"type": "usage.tracked", "data": usage_event("generic-usage")}),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    let delivered = receiver.wait_for(1, WAIT).await[0].json();
    assert_eq!(delivered["event_type"], "usage.tracked");
    assert_eq!(delivered["response"]["model_used"], "gpt-4o-mini");
    assert!(delivered["query"]["summary"].is_string(), "{delivered}");
    let session = app
        .relay
        .session_stats("generic-usage")
        .await
        .expect("session")
        .expect("counted in the session figures");
    assert_eq!(session.queries, 1);
}

#[tokio::test]
async fn refusals_say_what_is_wrong_in_plain_words() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_MAX_BODY_BYTES", "2048")]).await;
    let mut negative = usage_event("plain");
    negative["response_time_ms"] = json!(-1);
    let mut missing = usage_event("plain");
    missing
        .as_object_mut()
        .expect("object")
        .remove("model_name");
    for (body, expected) in [
        (negative, "response_time_ms: must be 0 or more (got -1)"),
        (missing, "model_name: is required"),
    ] {
        let response = app.post_json("/api/webhook/usage", &body).await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["detail"], expected, "{error}");
    }
    let big = app.post_raw("/api/webhook/usage", vec![b' '; 4096]).await;
    assert_eq!(big.status(), 413);
    let error: Value = big.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("2048 bytes")),
        "the 413 says the limit: {error}"
    );
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_refused_by_name() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let post = |body: Value| {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };
    let first = post(usage_event("keyed")).await.expect("post");
    assert_eq!(first.status(), 202);
    let same = post(usage_event("keyed")).await.expect("post");
    assert_eq!(same.status(), 202);
    assert_eq!(
        same.headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let mut changed = usage_event("keyed");
    changed["estimated_tokens"] = json!(999);
    let reused = post(changed).await.expect("post");
    assert_eq!(reused.status(), 422);
    let error: Value = reused.json().await.expect("json");
    assert_eq!(error["code"], "idempotency_key_reused");
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`order-42`")),
        "{error}"
    );
    let session = app
        .relay
        .session_stats("keyed")
        .await
        .expect("session")
        .expect("stored once");
    assert_eq!(session.queries, 1);
}

#[tokio::test]
async fn a_batch_resent_under_its_key_with_an_item_added_is_another_request() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let post = |body: Value| {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("idempotency-key", "batch-7")
            .json(&body)
            .send()
    };
    let two = json!([usage_event("b1"), usage_event("b2")]);
    assert_eq!(post(two.clone()).await.expect("post").status(), 202);
    assert_eq!(
        post(two).await.expect("post").status(),
        202,
        "the same batch again"
    );
    let three = json!([usage_event("b1"), usage_event("b2"), usage_event("b3")]);
    let response = post(three).await.expect("post");
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`batch-7`")),
        "the client's key, not an item's: {error}"
    );
    assert!(
        app.relay
            .session_stats("b3")
            .await
            .expect("stats")
            .is_none()
    );
}

#[tokio::test]
async fn an_ingest_waiting_on_the_database_past_the_request_timeout_gets_its_writes_answer() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[("HOOKRELAY_REQUEST_TIMEOUT_SECONDS", "2")],
    )
    .await;
    let hold = WriteHold::take(app.dir.path()).await;
    let mut post = tokio::spawn(
        app.http
            .post(app.url("/api/webhook/usage"))
            .json(&usage_event("held-1"))
            .send(),
    );
    // Past the timeout with the write queued: a 408 now would be a lie, since the event is
    // stored once the database lets go (within twice the timeout, the write answers).
    let early = tokio::time::timeout(Duration::from_millis(2500), &mut post).await;
    assert!(
        early.is_err(),
        "answered while its write could not have committed: {early:?}"
    );
    hold.release().await;
    let response = post.await.expect("task").expect("post");
    assert_eq!(response.status(), 202);
    let stats = app.relay.session_stats("held-1").await.expect("stats");
    assert_eq!(stats.map(|s| s.queries), Some(1));
    receiver.wait_for(1, WAIT).await;
}

#[tokio::test]
async fn a_write_stalled_past_twice_the_request_timeout_is_answered_503_outcome_unknown() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[("HOOKRELAY_REQUEST_TIMEOUT_SECONDS", "0.2")],
    )
    .await;
    let hold = WriteHold::take(app.dir.path()).await;
    let response = app
        .http
        .post(app.url("/api/webhook/usage"))
        .json(&usage_event("stalled-1"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["code"], "storage_unavailable", "{error}");
    let detail = error["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("may yet be stored") && detail.contains("Idempotency-Key"),
        "{detail}"
    );
    // The write was not called back: once the database lets go, the event is there.
    hold.release().await;
    crate::helpers::eventually(WAIT, "the stalled event stored", || async {
        app.relay
            .session_stats("stalled-1")
            .await
            .expect("stats")
            .is_some()
    })
    .await;
}

#[tokio::test]
async fn a_key_resent_with_a_request_of_another_shape_is_refused() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let post = |key: &'static str, body: Value| {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    // A batch, then its first event alone under the same key.
    let batch = json!([usage_event("shape-a"), usage_event("shape-b")]);
    assert_eq!(post("shape-1", batch).await.expect("post").status(), 202);
    let response = post("shape-1", usage_event("shape-a")).await.expect("post");
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["code"], "idempotency_key_reused", "{error}");
    // One event, then a batch starting with it under the same key.
    assert_eq!(
        post("shape-2", usage_event("shape-c"))
            .await
            .expect("post")
            .status(),
        202
    );
    let batch = json!([usage_event("shape-c"), usage_event("shape-d")]);
    let response = post("shape-2", batch).await.expect("post");
    assert_eq!(response.status(), 422);
    // Nothing of the refused requests was stored or sent.
    let stats = |session: &'static str| app.relay.session_stats(session);
    assert_eq!(
        stats("shape-a").await.expect("stats").map(|s| s.queries),
        Some(1)
    );
    assert_eq!(
        stats("shape-c").await.expect("stats").map(|s| s.queries),
        Some(1)
    );
    assert!(stats("shape-d").await.expect("stats").is_none());
    receiver.wait_for(3, WAIT).await;
    let sessions = receiver.session_ids();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
}

#[tokio::test]
async fn a_batch_stored_before_the_first_item_kept_the_plain_key_is_still_recognised() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let batch = json!([usage_event("legacy-a"), usage_event("legacy-b")]);
    let post = |app: &TestApp| {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("idempotency-key", "legacy-1")
            .json(&batch)
            .send()
    };
    let first: Value = post(&app).await.expect("post").json().await.expect("json");
    // A client's own key `#0` on one event: the migration must leave it alone.
    let hash_zero = |app: &TestApp| {
        app.http
            .post(app.url("/api/webhook/usage"))
            .header("idempotency-key", "#0")
            .json(&usage_event("legacy-hash"))
            .send()
    };
    let hashed: Value = hash_zero(&app)
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let dir = app.stop().await;
    // As an earlier hookrelay stored it: the first item under `key #0`, the migration not yet
    // applied.
    let legacy = "UPDATE events SET idempotency_key = 'usage.tracked legacy-1 #0' \
                  WHERE idempotency_key = 'usage.tracked legacy-1'; \
                  DELETE FROM schema_migrations WHERE name = 'first_item_key';";
    execute_sql(dir.path(), legacy, legacy).await;
    let config = config(
        dir.path(),
        &[("ZAPIER_WEBHOOK_URL", receiver.url().as_str())],
    );
    let app = TestApp::spawn_with(config, dir, Arc::new(hookrelay::clock::SystemClock)).await;
    let again = post(&app).await.expect("post");
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["ids"], first["ids"], "the original events: {again}");
    assert!(
        again["events"]
            .as_array()
            .is_some_and(|events| events.iter().all(|e| e["duplicate"] == true)),
        "{again}"
    );
    let hashed_again: Value = hash_zero(&app)
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(hashed_again["id"], hashed["id"], "{hashed_again}");
    assert_eq!(hashed_again["duplicate"], true);
    // And the plain key now finds it, in another shape too.
    let one = app
        .http
        .post(app.url("/api/webhook/usage"))
        .header("idempotency-key", "legacy-1")
        .json(&usage_event("legacy-a"))
        .send()
        .await
        .expect("post");
    assert_eq!(one.status(), 422);
    let stats = app.relay.session_stats("legacy-a").await.expect("stats");
    assert_eq!(stats.map(|s| s.queries), Some(1));
}

#[tokio::test]
async fn the_batch_limit_and_key_rules_are_enforced_with_nothing_stored() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("ENABLE_WEBHOOK", "false")]).await;
    let batch = |n: usize, prefix: &str| {
        Value::Array(
            (0..n)
                .map(|i| usage_event(&format!("{prefix}{i}")))
                .collect(),
        )
    };
    let refused = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    };
    let over = app
        .post_json("/api/webhook/usage", &batch(1001, "over"))
        .await;
    assert_eq!(refused(over).await, (422, "invalid_batch".to_owned()));
    let at = app
        .post_json("/api/webhook/usage", &batch(1000, "at"))
        .await;
    assert_eq!(at.status(), 202);

    // The header and the body field must agree.
    let conflicting = app
        .http
        .post(app.url("/api/v1/events"))
        .header("idempotency-key", "k-a")
        .json(&json!({"type": "alert.fired", "data": {}, "idempotency_key": "k-b"}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        refused(conflicting).await,
        (422, "conflicting_idempotency_key".to_owned())
    );
    // A key longer than 255 characters is refused by name.
    let long = app
        .http
        .post(app.url("/api/webhook/usage"))
        .header("idempotency-key", "k".repeat(256))
        .json(&usage_event("long-key"))
        .send()
        .await
        .expect("post");
    assert_eq!(refused(long).await, (422, "invalid_header".to_owned()));

    let counts = app.relay.counts().await.expect("counts");
    assert_eq!(counts.pending, 1000, "only the batch within the limit");
    assert!(
        app.relay
            .session_stats("over0")
            .await
            .expect("stats")
            .is_none()
    );
    assert!(
        app.relay
            .session_stats("long-key")
            .await
            .expect("stats")
            .is_none()
    );
}
