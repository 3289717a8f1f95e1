//! The dead-letter queue over HTTP: admin authentication, list, show, replay, purge.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Reply, SECRET, TestApp, TestReceiver, eventually, hookrelay, usage_event};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "test-admin-token-0123456789abcdef0123";

async fn dead_lettered_app(receiver: &TestReceiver, count: usize) -> TestApp {
    receiver.always(Reply::status(410));
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    for i in 0..count {
        app.post_json("/api/webhook/usage", &usage_event(&format!("s{i}")))
            .await;
    }
    eventually(WAIT, "dead letters", || async {
        app.relay.counts().await.expect("counts").dead == count as u64
    })
    .await;
    app
}

#[tokio::test]
async fn management_routes_require_the_admin_token() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Basic abc"),
        Some(TOKEN),
    ] {
        let mut request = app.http.get(app.url("/api/v1/dlq"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some(r#"Bearer realm="hookrelay management""#),
            "a 401 says how to authenticate"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["code"], json!("unauthorized"));
        assert!(!body.to_string().contains(TOKEN));
    }
    let response = app
        .http
        .get(app.url("/api/v1/dlq"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    // The scheme is case-insensitive (RFC 9110); the token is not.
    for auth in [format!("bearer {TOKEN}"), format!("BEARER  {TOKEN}")] {
        let status = app
            .http
            .get(app.url("/api/v1/dlq"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status, 200, "{auth}");
    }
    let upper = format!("Bearer {}", TOKEN.to_uppercase());
    let status = app
        .http
        .get(app.url("/api/v1/dlq"))
        .header("authorization", &upper)
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 401);
    // Health stays open.
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test]
async fn without_a_token_management_routes_answer_loopback_clients() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let response = app
        .http
        .get(app.url("/api/v1/dlq"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    let receiver = TestReceiver::start().await;
    let app = dead_lettered_app(&receiver, 3).await;
    let get = |path: &str| app.http.get(app.url(path)).bearer_auth(TOKEN).send();

    let list: Value = get("/api/v1/dlq")
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(list["count"], json!(3));
    let first = list["dead_letters"][0].clone();
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(first["last_status"], json!(410));
    assert_eq!(first["status"], json!("dead"));

    let detail: Value = get(&format!("/api/v1/dlq/{id}"))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["attempts_log"].as_array().map(Vec::len), Some(1));
    assert_eq!(detail["attempts_log"][0]["status_code"], json!(410));
    assert_eq!(detail["payload"]["event_type"], json!("usage.tracked"));
    let event_id = detail["event_id"].as_str().expect("event id").to_owned();

    assert_eq!(
        get("/api/v1/dlq/dlv_doesnotexist")
            .await
            .expect("request")
            .status(),
        404
    );
    assert_eq!(
        get("/api/v1/dlq/not-an-id")
            .await
            .expect("request")
            .status(),
        400
    );

    // Replay one: the receiver now accepts; same webhook-id, fresh budget.
    receiver.always(Reply::status(200));
    let replay = app
        .http
        .post(app.url(&format!("/api/v1/dlq/{id}/replay")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(replay.status(), 200);
    eventually(WAIT, "replayed delivery", || async {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == Some(event_id.as_str()))
            .count()
            == 2
    })
    .await;
    eventually(WAIT, "dlq shrinks", || async {
        app.relay.counts().await.expect("counts").dead == 2
    })
    .await;
    // The receiver has it; the result is recorded right after.
    let mut replayed = Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while replayed["status"] != json!("delivered") {
        assert!(
            std::time::Instant::now() < deadline,
            "replay never recorded: {replayed}"
        );
        replayed = get(&format!("/api/v1/dlq/{id}"))
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(replayed["status"], json!("delivered"));
    assert_eq!(replayed["total_attempts"], json!(2));

    // Purge all needs confirmation.
    let refused = app
        .http
        .delete(app.url("/api/v1/dlq"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 400);
    assert_eq!(app.relay.counts().await.expect("counts").dead, 2);
    let purged: Value = app
        .http
        .delete(app.url("/api/v1/dlq?confirm=true"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(purged["purged"], json!(2));
    assert_eq!(app.relay.counts().await.expect("counts").dead, 0);
    // The delivered one is untouched by a purge.
    assert_eq!(
        get(&format!("/api/v1/dlq/{id}"))
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test]
async fn replay_all_redelivers_every_dead_letter() {
    let receiver = TestReceiver::start().await;
    let app = dead_lettered_app(&receiver, 4).await;
    receiver.always(Reply::status(200));
    let replayed: Value = app
        .http
        .post(app.url("/api/v1/dlq/replay"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(replayed["replayed"], json!(4));
    eventually(WAIT, "all delivered", || async {
        let counts = app.relay.counts().await.expect("counts");
        counts.dead == 0 && counts.pending == 0
    })
    .await;
    assert_eq!(receiver.received().len(), 8);
}

#[tokio::test]
async fn work_queued_by_another_process_is_picked_up_by_polling() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(410));
    let url = receiver.url();
    let app = TestApp::spawn(&url, &[("HOOKRELAY_POLL_INTERVAL_SECONDS", "0.2")]).await;
    app.post_json("/api/webhook/usage", &usage_event("replayed"))
        .await;
    eventually(WAIT, "a dead letter", || async {
        app.relay.counts().await.expect("counts").dead == 1
    })
    .await;
    receiver.always(Reply::status(200));

    // Another process on the same database: the CLI, which cannot wake the server.
    let vars = [
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_SECRET", SECRET),
    ];
    for args in [
        &["send", "--session-id", "from-cli", "--query", "q"][..],
        &["dlq", "replay", "--all"][..],
    ] {
        let out = hookrelay(app.dir.path(), &vars)
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Well within 15 poll intervals (an idle worker looks again only every 0.2 s here).
    eventually(
        Duration::from_secs(3),
        "both sent by the polling server",
        || async {
            let seen = receiver.session_ids();
            seen.iter().any(|s| s == "from-cli")
                && seen.iter().filter(|s| *s == "replayed").count() == 2
        },
    )
    .await;
    assert_eq!(app.relay.counts().await.expect("counts").dead, 0);
}
