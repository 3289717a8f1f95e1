//! Inbound protection: signatures, rate limits, allowlists, hostile clients.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo, http::Request};
use hookrelay::{
    clock::{Clock, ManualClock},
    domain::{SignatureAlgorithm, SigningSecret},
    signing,
};
use proptest::prelude::*;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower::ServiceExt;

use crate::helpers::{TestApp, TestReceiver, config, usage_event};

const INGEST_SECRET: &str = "ingest-secret-0123456789abcdef0123456789";
const OLD_INGEST_SECRET: &str = "ingest-secret-previous-0123456789abcdef";

fn body() -> Vec<u8> {
    serde_json::to_vec(&usage_event("signed")).expect("json")
}

async fn signed_app(receiver: &TestReceiver, extra: &[(&str, &str)]) -> TestApp {
    let secrets = format!("{INGEST_SECRET},{OLD_INGEST_SECRET}");
    let mut vars = vec![("HOOKRELAY_INGEST_SECRET", secrets.as_str())];
    vars.extend_from_slice(extra);
    TestApp::spawn(&receiver.url(), &vars).await
}

async fn post(
    app: &TestApp,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app
        .http
        .post(app.url("/api/webhook/usage"))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json, headers)
}

fn standard_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let secret = SigningSecret::parse(secret).expect("secret");
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            signing::standard_signature(&secret, id, timestamp, body),
        ),
    ]
}

fn now_s() -> i64 {
    hookrelay::clock::SystemClock.now_ms() / 1000
}

#[tokio::test]
async fn with_an_ingest_secret_only_signed_requests_get_in() {
    let receiver = TestReceiver::start().await;
    let app = signed_app(&receiver, &[]).await;
    let body = body();

    let (status, error, headers) = post(&app, body.clone(), &[]).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("missing_signature"))
    );
    assert!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("standard-webhooks")),
        "a 401 names the signature schemes: {headers:?}"
    );

    let secret = SigningSecret::parse(INGEST_SECRET).expect("secret");
    let legacy = signing::legacy_signature(&secret, SignatureAlgorithm::Sha256, &body);
    let (status, _, _) = post(
        &app,
        body.clone(),
        &[("x-webhook-signature", legacy.clone())],
    )
    .await;
    assert_eq!(status, 202, "the guide's scheme with the sha256= prefix");
    let bare = legacy.trim_start_matches("sha256=").to_owned();
    assert_eq!(
        post(&app, body.clone(), &[("x-webhook-signature", bare)])
            .await
            .0,
        202,
        "and without it"
    );

    let (status, error, _) = post(
        &app,
        b"{\"tampered\":1}".to_vec(),
        &[("x-webhook-signature", legacy)],
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("invalid_signature"))
    );

    // Standard Webhooks, with either secret of a rotation.
    for (n, secret) in [INGEST_SECRET, OLD_INGEST_SECRET].iter().enumerate() {
        let headers = standard_headers(secret, &format!("msg_{n}"), now_s(), &body);
        assert_eq!(
            post(&app, body.clone(), &headers).await.0,
            202,
            "secret #{n}"
        );
    }
    let wrong = standard_headers(
        "not-an-ingest-secret-at-all-000000000",
        "msg_x",
        now_s(),
        &body,
    );
    assert_eq!(
        post(&app, body.clone(), &wrong).await.1["code"],
        "invalid_signature"
    );

    // Whoever holds the delivery secret cannot sign events in.
    let delivery_secret = standard_headers(crate::helpers::SECRET, "msg_y", now_s(), &body);
    assert_eq!(post(&app, body.clone(), &delivery_secret).await.0, 401);

    receiver.wait_for(4, Duration::from_secs(10)).await;
    crate::helpers::eventually(Duration::from_secs(10), "queue drained", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert_eq!(
        receiver.received().len(),
        4,
        "only the four signed events were stored"
    );
}

#[tokio::test]
async fn stale_and_replayed_standard_webhooks_requests_are_refused() {
    let receiver = TestReceiver::start().await;
    let app = signed_app(&receiver, &[]).await;
    let body = body();
    let stale = standard_headers(INGEST_SECRET, "msg_old", now_s() - 301, &body);
    let (status, error, _) = post(&app, body.clone(), &stale).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("signature_expired"))
    );
    let future = standard_headers(INGEST_SECRET, "msg_future", now_s() + 301, &body);
    assert_eq!(
        post(&app, body.clone(), &future).await.1["code"],
        "signature_expired"
    );

    let fresh = standard_headers(INGEST_SECRET, "msg_once", now_s(), &body);
    assert_eq!(post(&app, body.clone(), &fresh).await.0, 202);
    let (status, error, _) = post(&app, body.clone(), &fresh).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("replayed_request"))
    );
}

#[tokio::test]
async fn the_rate_limit_refills_continuously_on_the_controlled_clock() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let config = config(
        dir.path(),
        &[
            ("ZAPIER_WEBHOOK_URL", &url),
            ("WEBHOOK_RATE_LIMIT", "3"),
            ("WEBHOOK_RATE_WINDOW", "60"),
            ("WEBHOOK_BURST_ALLOWANCE", "1"),
        ],
    );
    let clock = ManualClock::new(1_800_000_000_000);
    let app = TestApp::spawn_with(config, dir, Arc::new(clock.clone())).await;

    for remaining in ["3", "2", "1", "0"] {
        let (status, _, headers) = post(&app, body(), &[]).await;
        assert_eq!(status, 202);
        assert_eq!(
            headers.get("ratelimit-limit").map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
        assert_eq!(
            headers
                .get("ratelimit-remaining")
                .map(|v| v.to_str().unwrap_or("")),
            Some(remaining)
        );
    }
    let (status, error, headers) = post(&app, body(), &[]).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"20"[..]),
        "60 s / 3 requests"
    );
    assert_eq!(
        headers.get("ratelimit-remaining").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert!(headers.contains_key("ratelimit-reset"));

    clock.advance(Duration::from_secs(19));
    assert_eq!(post(&app, body(), &[]).await.0, 429);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        post(&app, body(), &[]).await.0,
        202,
        "one request back after one interval, not a window"
    );
    assert_eq!(post(&app, body(), &[]).await.0, 429);

    let status: Value = app
        .http
        .get(app.url("/api/v1/ratelimit"))
        .send()
        .await
        .expect("r")
        .json()
        .await
        .expect("j");
    assert_eq!(status["clients"][0]["client"], "127.0.0.1");
    assert_eq!(status["clients"][0]["remaining"], 0);
}

#[tokio::test]
async fn addresses_outside_the_allowlist_are_refused_and_forwarded_headers_need_a_trusted_proxy() {
    let receiver = TestReceiver::start().await;
    let closed = TestApp::spawn(
        &receiver.url(),
        &[("WEBHOOK_ALLOWED_IPS", "10.0.0.0/8,2001:db8::/32")],
    )
    .await;
    let (status, error, _) = post(&closed, body(), &[]).await;
    assert_eq!((status, error["code"].as_str()), (403, Some("forbidden")));
    // A client cannot claim an allowed address itself.
    let forged = [
        ("x-forwarded-for", "10.1.2.3".to_owned()),
        ("forwarded", "for=10.1.2.3".to_owned()),
    ];
    assert_eq!(post(&closed, body(), &forged).await.0, 403);

    let proxied = TestApp::spawn(
        &receiver.url(),
        &[
            ("WEBHOOK_ALLOWED_IPS", "10.0.0.0/8"),
            ("HOOKRELAY_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    assert_eq!(
        post(
            &proxied,
            body(),
            &[("x-forwarded-for", "10.1.2.3".to_owned())]
        )
        .await
        .0,
        202
    );
    assert_eq!(
        post(
            &proxied,
            body(),
            &[("x-forwarded-for", "192.0.2.1".to_owned())]
        )
        .await
        .0,
        403
    );
    assert_eq!(closed.relay.counts().await.expect("counts").pending, 0);
}

async fn read_response(stream: &mut TcpStream, within: Duration) -> String {
    let mut buffer = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                buffer.extend_from_slice(&chunk[..n]);
                if buffer.windows(4).any(|w| w == b"\r\n\r\n")
                    && String::from_utf8_lossy(&buffer).contains('}')
                {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

/// `GET /health` on a connection of its own, kept open; returns it and the answer.
async fn get_health(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_response(&mut stream, Duration::from_secs(5)).await;
    (stream, answer)
}

/// Two connections held open after a `GET /health` each, then a third: returns the two and
/// the third's answer.
async fn hold_two_then_connect(addr: SocketAddr) -> (Vec<TcpStream>, String) {
    let mut held = Vec::new();
    for _ in 0..2 {
        let (stream, answer) = get_health(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let answer = read_response(&mut third, Duration::from_secs(5)).await;
    (held, answer)
}

#[tokio::test]
async fn hostile_clients_get_limits_not_resources() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_HEADER_TIMEOUT_SECONDS", "0.3"),
            ("HOOKRELAY_REQUEST_TIMEOUT_SECONDS", "0.5"),
            ("HOOKRELAY_MAX_HEADER_BYTES", "8192"),
            ("HOOKRELAY_MAX_CONNECTIONS", "2"),
        ],
    )
    .await;

    // Oversized head: refused before any handler runs.
    let huge = "x".repeat(20_000);
    let response = app
        .http
        .get(app.url("/health"))
        .header("x-filler", huge)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 431);

    // Slowloris: a head that never completes is cut off.
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    slow.write_all(b"POST /api/webhook/usage HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let answer = read_response(&mut slow, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow client was not cut off"
    );
    assert!(answer.is_empty() || answer.contains("408"), "{answer}");

    // A body that never arrives: 408 once the request timeout passes.
    let mut dribble = TcpStream::connect(app.addr).await.expect("connect");
    dribble
        .write_all(b"POST /api/webhook/usage HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\"")
        .await
        .expect("write");
    let answer = read_response(&mut dribble, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Connection cap: two held open, the third is refused with 503.
    let (held, answer) = hold_two_then_connect(app.addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("retry-after: 1") && answer.contains("overloaded"),
        "{answer}"
    );
    drop(held);
    assert_eq!(
        app.relay.counts().await.expect("counts").pending,
        0,
        "nothing half-written"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever bytes arrive as the body or the signature, the answer is never a 5xx.
    #[test]
    fn arbitrary_bodies_and_signatures_never_cause_a_server_error(
        body in prop::collection::vec(any::<u8>(), 0..600),
        signature in "[ -~]{0,120}",
        timestamp in any::<i64>(),
        standard in any::<bool>(),
        path in prop::sample::select(vec!["/api/webhook/usage", "/api/v1/events"]),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("dir");
            let config = config(dir.path(), &[("HOOKRELAY_INGEST_SECRET", INGEST_SECRET)]);
            let relay = hookrelay::Relay::open(config).await.expect("open");
            let app = hookrelay::api::router(relay);
            let mut request = Request::post(path).header("content-type", "application/json");
            request = if standard {
                request
                    .header("webhook-id", "msg_1")
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature.clone())
            } else {
                request.header("x-webhook-signature", signature.clone())
            };
            let mut request = request.body(Body::from(body)).expect("request");
            request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4242))));
            let response = app.oneshot(request).await.expect("infallible");
            prop_assert!(!response.status().is_server_error(), "{}", response.status());
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_refused_request_can_be_retried_with_its_webhook_id_and_guessing_is_rate_limited() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let config = config(
        dir.path(),
        &[
            ("ZAPIER_WEBHOOK_URL", &url),
            ("HOOKRELAY_INGEST_SECRET", INGEST_SECRET),
            ("WEBHOOK_RATE_LIMIT", "1"),
            ("WEBHOOK_RATE_WINDOW", "60"),
            ("WEBHOOK_BURST_ALLOWANCE", "0"),
        ],
    );
    let clock = ManualClock::new(now_s() * 1000);
    let app = TestApp::spawn_with(config, dir, Arc::new(clock.clone())).await;
    let body = body();
    let ts = clock.now_ms() / 1000;
    assert_eq!(
        post(
            &app,
            body.clone(),
            &standard_headers(INGEST_SECRET, "msg_a", ts, &body)
        )
        .await
        .0,
        202
    );
    let second = standard_headers(INGEST_SECRET, "msg_b", ts, &body);
    assert_eq!(post(&app, body.clone(), &second).await.0, 429);
    clock.advance(Duration::from_secs(60));
    let (status, _, _) = post(&app, body.clone(), &second).await;
    assert_eq!(status, 202, "the retry after Retry-After is not a replay");

    // Bad signatures count against the address: guessing turns into 429s. (Every request
    // is charged to its address before any signature is checked, so wait for a fresh one.)
    clock.advance(Duration::from_secs(60));
    let mut statuses = Vec::new();
    for n in 0..3 {
        let forged = standard_headers(
            "guessed-secret-000000000000000000000",
            &format!("msg_x{n}"),
            ts,
            &body,
        );
        statuses.push(post(&app, body.clone(), &forged).await.0);
    }
    assert_eq!(statuses, [401, 429, 429]);
}

#[tokio::test]
async fn without_an_admin_token_a_proxied_request_is_not_trusted_as_loopback() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let direct = app
        .http
        .get(app.url("/api/v1/dlq"))
        .send()
        .await
        .expect("request");
    assert_eq!(direct.status(), 200);
    let proxied = app
        .http
        .get(app.url("/api/v1/dlq"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .expect("request");
    assert_eq!(proxied.status(), 403);
}

#[tokio::test]
async fn a_signature_header_stuffed_with_candidates_costs_no_hmac_and_is_named() {
    let receiver = TestReceiver::start().await;
    let app = signed_app(&receiver, &[("HOOKRELAY_MAX_BODY_BYTES", "2097152")]).await;
    let body = vec![b' '; 1 << 20];
    let mut headers = standard_headers(INGEST_SECRET, "msg_stuffed", now_s(), &body);
    for (name, value) in &mut headers {
        if *name == "webhook-signature" {
            *value = "v1, ".repeat(3_900);
        }
    }
    let (status, error, _) = post(&app, body.clone(), &headers).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("malformed_signature"))
    );
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more than 8 signatures")),
        "{error}"
    );
    // A malformed guide-scheme header names that header, not Standard Webhooks.
    let (status, error, _) = post(
        &app,
        body.clone(),
        &[("x-webhook-signature", "not-hex".to_owned())],
    )
    .await;
    assert_eq!(status, 401);
    let detail = error["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("X-Webhook-Signature") && !detail.contains("Standard Webhooks"),
        "{detail}"
    );
}

#[tokio::test]
async fn the_rate_limit_is_charged_before_any_signature_is_checked() {
    let receiver = TestReceiver::start().await;
    let app = signed_app(
        &receiver,
        &[
            ("WEBHOOK_RATE_LIMIT", "1"),
            ("WEBHOOK_RATE_WINDOW", "3600"),
            ("WEBHOOK_BURST_ALLOWANCE", "0"),
        ],
    )
    .await;
    let body = body();
    let forged = standard_headers(
        "guessed-secret-000000000000000000000",
        "msg_guess",
        now_s(),
        &body,
    );
    assert_eq!(post(&app, body.clone(), &forged).await.0, 401);
    // The address's allowance is spent: a valid signature is not even computed.
    let genuine = standard_headers(INGEST_SECRET, "msg_genuine", now_s(), &body);
    let (status, error, headers) = post(&app, body.clone(), &genuine).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(headers.contains_key("retry-after"));
    // The answer states the rule as configured.
    let detail = error["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("1 requests per 3600 s") && detail.contains("refills continuously"),
        "{detail}"
    );
    assert_eq!(
        headers
            .get("ratelimit-policy")
            .and_then(|v| v.to_str().ok()),
        Some("1;w=3600")
    );
    assert_eq!(app.relay.counts().await.expect("counts").pending, 0);
}

#[tokio::test]
async fn an_unreadable_proxy_entry_never_lets_the_clients_own_entry_through() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("WEBHOOK_ALLOWED_IPS", "198.51.100.0/24"),
            ("HOOKRELAY_TRUSTED_PROXIES", "127.0.0.1/32"),
            (
                "HOOKRELAY_ADMIN_TOKEN",
                "admin-token-0123456789abcdef0123456789",
            ),
        ],
    )
    .await;
    // The client wrote the allowed address; the proxy's own entry for it does not parse.
    for chain in [
        "198.51.100.1, 203.0.113.9:4711x",
        "198.51.100.1, unknown",
        "198.51.100.1, _obfuscated",
    ] {
        let (status, error, _) = post(&app, body(), &[("x-forwarded-for", chain.to_owned())]).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (403, Some("forbidden")),
            "X-Forwarded-For: {chain}"
        );
    }
    // Ports and brackets are read, not skipped.
    for (chain, expected) in [
        ("203.0.113.9, 198.51.100.1:4711", 202),
        ("198.51.100.1, 203.0.113.9:4711", 403),
        ("198.51.100.1, [2001:db8::1]:4711", 403),
    ] {
        let status = post(&app, body(), &[("x-forwarded-for", chain.to_owned())])
            .await
            .0;
        assert_eq!(status, expected, "X-Forwarded-For: {chain}");
    }
    let stored = app.relay.session_stats("signed").await.expect("session");
    assert_eq!(
        stored.map(|s| s.queries),
        Some(1),
        "only the admitted event"
    );
}

#[tokio::test]
async fn an_ipv4_translated_address_is_refused_as_a_destination() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let port = app.addr.port();
    for url in [
        format!("http://[::ffff:0:127.0.0.1]:{port}/"),
        format!("http://[::ffff:0:7f00:1]:{port}/"),
        format!("http://[64:ff9b:1::7f00:1]:{port}/"),
    ] {
        let response = app
            .http
            .post(app.url("/api/v1/endpoints"))
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 422, "{url}: {error}");
        assert!(
            error["detail"]
                .as_str()
                .is_some_and(|d| d.contains("IPv4-translated") || d.contains("NAT64")),
            "{url}: {error}"
        );
    }
}

#[tokio::test]
async fn without_an_admin_token_a_request_for_another_host_name_is_refused() {
    // DNS rebinding: a page elsewhere points its own name at 127.0.0.1; the browser then
    // connects from loopback, with no proxy header, but asks for that name.
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    for (host, expected) in [
        ("evil.example:8000", 403),
        ("localhost.evil.example", 403),
        ("localhost:8000", 200),
        ("127.0.0.1", 200),
        ("[::1]:8000", 200),
    ] {
        let status = app
            .http
            .get(app.url("/api/v1/dlq"))
            .header("host", host)
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status, expected, "Host: {host}");
    }
    let dashboard = app
        .http
        .get(app.url("/dashboard"))
        .header("host", "evil.example:8000")
        .send()
        .await
        .expect("request");
    assert_eq!(dashboard.status(), 403);
    // With an admin token the host does not matter: the token is the proof.
    let tokened = TestApp::spawn(
        &receiver.url(),
        &[(
            "HOOKRELAY_ADMIN_TOKEN",
            "admin-token-0123456789abcdef0123456789",
        )],
    )
    .await;
    let status = tokened
        .http
        .get(tokened.url("/api/v1/dlq"))
        .header("host", "hooks.example.com")
        .bearer_auth("admin-token-0123456789abcdef0123456789")
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_an_admin_token_management_is_closed_behind_proxies_and_to_proxy_headers() {
    let receiver = TestReceiver::start().await;
    // A same-host proxy that sets only X-Real-IP.
    let open = TestApp::spawn(&receiver.url(), &[]).await;
    for header in ["x-real-ip", "via", "true-client-ip"] {
        let status = open
            .http
            .get(open.url("/api/v1/dlq"))
            .header(header, "203.0.113.7")
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status, 403, "{header}");
    }
    // With trusted proxies, even a bare loopback request is refused.
    let proxied = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("HOOKRELAY_ALLOW_NO_ADMIN_TOKEN", "true"),
        ],
    )
    .await;
    let response = proxied
        .http
        .get(proxied.url("/api/v1/dlq"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("HOOKRELAY_TRUSTED_PROXIES")),
        "{error}"
    );
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_MAX_CONNECTIONS", "10"),
            ("HOOKRELAY_MAX_CONNECTIONS_PER_ADDRESS", "2"),
        ],
    )
    .await;
    let (held, answer) = hold_two_then_connect(app.addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("HOOKRELAY_MAX_CONNECTIONS_PER_ADDRESS"),
        "{answer}"
    );
    // A closed connection gives its slot back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get_health(app.addr).await.1.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slots were never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replay_is_refused_after_a_restart_and_by_another_instance() {
    let receiver = TestReceiver::start().await;
    let secrets = format!("{INGEST_SECRET},{OLD_INGEST_SECRET}");
    let vars = [
        ("ZAPIER_WEBHOOK_URL", receiver.url()),
        ("HOOKRELAY_INGEST_SECRET", secrets),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().expect("dir");
    let first = TestApp::spawn_with(
        config(dir.path(), &vars),
        dir,
        Arc::new(hookrelay::clock::SystemClock),
    )
    .await;
    let body = body();
    let signed = standard_headers(INGEST_SECRET, "msg_durable", now_s(), &body);
    assert_eq!(post(&first, body.clone(), &signed).await.0, 202);

    // A second instance on the same database refuses it.
    let second = TestApp::spawn_with(
        config(first.dir.path(), &vars),
        tempfile::tempdir().expect("dir"),
        Arc::new(hookrelay::clock::SystemClock),
    )
    .await;
    let (status, error, _) = post(&second, body.clone(), &signed).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("replayed_request"))
    );
    drop(second);

    // So does the first after a restart.
    let dir = first.stop().await;
    let restarted = TestApp::spawn_with(
        config(dir.path(), &vars),
        dir,
        Arc::new(hookrelay::clock::SystemClock),
    )
    .await;
    let (status, error, _) = post(&restarted, body.clone(), &signed).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("replayed_request"))
    );
    // Signed with the other secret (as after dropping one of a rotation's two signatures):
    // still the same message, still a replay.
    let other = standard_headers(OLD_INGEST_SECRET, "msg_durable", now_s(), &body);
    assert_eq!(post(&restarted, body.clone(), &other).await.0, 401);
    let fresh = standard_headers(OLD_INGEST_SECRET, "msg_fresh", now_s(), &body);
    assert_eq!(post(&restarted, body.clone(), &fresh).await.0, 202);
    let session = restarted
        .relay
        .session_stats("signed")
        .await
        .expect("session")
        .expect("the session exists");
    assert_eq!(session.queries, 2, "the replays stored nothing");
}

#[tokio::test]
async fn with_the_body_signature_refused_only_standard_webhooks_get_in() {
    let receiver = TestReceiver::start().await;
    let app = signed_app(
        &receiver,
        &[("HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE", "false")],
    )
    .await;
    let body = body();
    let secret = SigningSecret::parse(INGEST_SECRET).expect("secret");
    let legacy = signing::legacy_signature(&secret, SignatureAlgorithm::Sha256, &body);
    let (status, error, _) = post(&app, body.clone(), &[("x-webhook-signature", legacy)]).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("unsupported_signature_scheme")),
        "{error}"
    );
    let headers = standard_headers(INGEST_SECRET, "msg_std", now_s(), &body);
    assert_eq!(post(&app, body, &headers).await.0, 202);
    receiver.wait_for(1, Duration::from_secs(10)).await;
}
