//! The dashboard over HTTP: who gets in, what a session cookie is, and that every action needs
//! its CSRF token. (`tests/browser` drives the same pages in Chromium.)

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, redirect::Policy};

use crate::helpers::{Reply, START_MS, TestApp, TestReceiver, config, eventually, usage_event};

const TOKEN: &str = "dashboard-admin-token-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// The `name=value` of the session cookie a response sets.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("hookrelay_session=") && !v.contains("Max-Age=0"))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with its CSRF token")
        .to_owned()
}

async fn log_in(app: &TestApp, http: &reqwest::Client) -> String {
    let response = http
        .post(app.url("/dashboard/login"))
        .form(&[("token", TOKEN), ("next", "/dashboard/endpoints")])
        .send()
        .await
        .expect("log in");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/dashboard/endpoints");
    let cookie = session_cookie(&response).expect("a session cookie");
    let set = response.headers()["set-cookie"].to_str().expect("ascii");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    cookie
}

#[tokio::test]
async fn with_an_admin_token_pages_need_a_login_and_a_wrong_token_gets_none() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    let http = client();
    let anonymous = http
        .get(app.url("/dashboard/dlq?status=dead"))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.headers()["location"],
        "/dashboard/login?next=%2Fdashboard%2Fdlq%3Fstatus%3Ddead"
    );
    let wrong = http
        .post(app.url("/dashboard/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(session_cookie(&wrong), None);
    // The bearer token of the API is not a dashboard session.
    let bearer = http
        .get(app.url("/dashboard"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(bearer.status(), StatusCode::SEE_OTHER);
    // A forged cookie is no session either.
    let forged = http
        .get(app.url("/dashboard"))
        .header(
            "cookie",
            "hookrelay_session=v1.t.99999999999999.nonce.c2lnbmF0dXJl",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(forged.status(), StatusCode::SEE_OTHER);

    let cookie = log_in(&app, &http).await;
    let page = http
        .get(app.url("/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.expect("html");
    assert!(html.contains("Log out"));
    assert!(!html.contains(TOKEN), "the token is never echoed");
}

#[tokio::test]
async fn every_action_needs_the_sessions_csrf_token_and_the_same_origin() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    let http = client();
    let cookie = log_in(&app, &http).await;
    let page = http
        .get(app.url("/dashboard/endpoints"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("html");
    let token = csrf(&page);
    let disable = app.url("/dashboard/endpoints/ep_default/disable");
    let enabled = || async {
        app.relay
            .endpoint(&hookrelay::domain::EndpointId::parse("ep_default").expect("id"))
            .await
            .expect("endpoint")
            .enabled
    };

    let without = http
        .post(&disable)
        .header("cookie", &cookie)
        .form(&[("x", "1")])
        .send()
        .await
        .expect("post");
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let wrong = http
        .post(&disable)
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let other_site = http
        .post(&disable)
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(other_site.status(), StatusCode::FORBIDDEN);
    // Another session's token does not fit this one.
    let other_cookie = log_in(&app, &http).await;
    let with_other_session = http
        .post(&disable)
        .header("cookie", &other_cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(with_other_session.status(), StatusCode::FORBIDDEN);
    assert!(enabled().await, "nothing refused changed anything");

    let done = http
        .post(&disable)
        .header("cookie", &cookie)
        .header("origin", app.url(""))
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(!enabled().await, "the action with its token went through");

    // Logging out clears the cookie.
    let out = http
        .post(app.url("/dashboard/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let cleared = out.headers()["set-cookie"].to_str().expect("ascii");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test]
async fn without_a_token_only_this_host_gets_in_and_is_told_so() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let http = client();
    let page = http.get(app.url("/dashboard")).send().await.expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        session_cookie(&page).is_some(),
        "a local session carries the CSRF token"
    );
    let html = page.text().await.expect("html");
    assert!(html.contains("HOOKRELAY_ADMIN_TOKEN is not set"));
    // Through a proxy the client is not on this host, whatever the TCP peer.
    let proxied = http
        .get(app.url("/dashboard"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("get");
    assert_eq!(proxied.status(), StatusCode::FORBIDDEN);
    // The login form has nothing to do.
    let login = http
        .get(app.url("/dashboard/login"))
        .send()
        .await
        .expect("get");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_rotated_secret_is_shown_once_and_pages_never_show_secrets() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    let created = app
        .post_json(
            "/api/v1/endpoints",
            &serde_json::json!({"url": receiver.url(), "description": "second"}),
        )
        .await;
    let created: serde_json::Value = created.json().await.expect("json");
    let id = created["endpoint"]["id"].as_str().expect("id").to_owned();
    let first_secret = created["secret"].as_str().expect("secret").to_owned();
    let http = client();
    let page = http
        .get(app.url("/dashboard/endpoints"))
        .send()
        .await
        .expect("get");
    let cookie = session_cookie(&page).expect("cookie");
    let html = page.text().await.expect("html");
    assert!(html.contains(&id));
    assert!(!html.contains(&first_secret), "secrets are not listed");
    assert!(
        !html.contains(&receiver.url()),
        "nor the URL's path, which can be a credential"
    );
    let rotated = http
        .post(app.url(&format!("/dashboard/endpoints/{id}/rotate-secret")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(rotated.status(), StatusCode::OK);
    let shown = rotated.text().await.expect("html");
    let secret = shown
        .split(r#"id="new-secret"><code>"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the new secret")
        .to_owned();
    assert!(secret.starts_with("whsec_") && secret != first_secret);
    let again = http
        .get(app.url("/dashboard/endpoints"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert!(
        !again.text().await.expect("html").contains(&secret),
        "shown once"
    );
}

#[tokio::test]
async fn the_pages_show_what_the_store_holds() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    for session in ["alpha", "alpha", "beta"] {
        assert_eq!(
            app.post_json("/api/webhook/usage", &usage_event(session))
                .await
                .status(),
            202
        );
    }
    receiver
        .wait_for(3, std::time::Duration::from_secs(10))
        .await;
    let http = client();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = app.url(path);
        async move {
            let response = http.get(url).send().await.expect("get");
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.text().await.expect("html")
        }
    };
    let alpha = get("/dashboard/events?session=alpha").await;
    assert_eq!(
        alpha.matches("<a href=\"/dashboard/deliveries/").count(),
        2,
        "alpha's two deliveries"
    );
    let none = get("/dashboard/events?session=nobody").await;
    assert!(none.contains("Nothing matches."));
    let invalid = get("/dashboard/events?event=nope").await;
    assert!(invalid.contains("is not a valid event id"));
    let sessions = get("/dashboard/sessions").await;
    assert!(
        sessions.contains(r#"id="sessions-total">2<"#),
        "two sessions"
    );
    assert!(sessions.contains(r#"id="queries-total">3<"#), "three calls");
    let overview = get("/dashboard?range=7d").await;
    assert!(overview.contains(r#"aria-current="true">Last 7 days"#));
    assert!(overview.contains("<svg"), "charts are inline SVG");
    assert!(
        !overview.contains("<script src") && !overview.contains("<link"),
        "nothing loaded from elsewhere"
    );
}

#[tokio::test]
async fn a_session_ends_after_eight_hours() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let clock = hookrelay::clock::ManualClock::new(START_MS);
    let vars = [
        ("ZAPIER_WEBHOOK_URL", receiver.url()),
        ("HOOKRELAY_ADMIN_TOKEN", TOKEN.to_owned()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::spawn_with(config(dir.path(), &vars), dir, Arc::new(clock.clone())).await;
    let http = client();
    let cookie = log_in(&app, &http).await;
    let get = || {
        http.get(app.url("/dashboard/sessions"))
            .header("cookie", &cookie)
            .send()
    };
    clock.advance(Duration::from_secs(8 * 3600 - 1));
    assert_eq!(get().await.expect("get").status(), StatusCode::OK);
    clock.advance(Duration::from_secs(1));
    let expired = get().await.expect("get");
    assert_eq!(expired.status(), StatusCode::SEE_OTHER);
    assert!(
        expired.headers()["location"]
            .to_str()
            .is_ok_and(|l| l.starts_with("/dashboard/login"))
    );
}

#[tokio::test]
async fn the_cookie_is_secure_unless_served_over_plain_http_to_this_host() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", TOKEN)]).await;
    let http = client();
    let login = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = http
            .post(app.url("/dashboard/login"))
            .form(&[("token", TOKEN)]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.expect("post");
            response.headers()["set-cookie"]
                .to_str()
                .expect("ascii")
                .to_owned()
        }
    };
    assert!(
        !login(&[]).await.contains("Secure"),
        "http://127.0.0.1 keeps a plain cookie"
    );
    assert!(
        login(&[("x-forwarded-proto", "https")])
            .await
            .ends_with("; Secure")
    );
    assert!(
        login(&[("host", "localhost:8000")])
            .await
            .contains("HttpOnly")
    );
}

/// The checkboxes' delivery ids on the DLQ page.
fn listed(page: &str) -> Vec<String> {
    page.split(r#"name="ids" value=""#)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn dead_letters_are_replayed_and_purged_as_selected_after_a_confirmation_that_counts_them() {
    let receiver = TestReceiver::start().await;
    receiver.always(Reply::status(410));
    let app = TestApp::spawn(&receiver.url(), &[("WEBHOOK_MAX_RETRIES", "0")]).await;
    for session in ["a", "a", "b"] {
        assert_eq!(
            app.post_json("/api/webhook/usage", &usage_event(session))
                .await
                .status(),
            202
        );
    }
    eventually(Duration::from_secs(10), "three dead letters", || async {
        app.relay.counts().await.is_ok_and(|c| c.dead == 3)
    })
    .await;
    let http = client();
    let page = http
        .get(app.url("/dashboard/dlq?session=a"))
        .send()
        .await
        .expect("get");
    let cookie = session_cookie(&page).expect("cookie");
    let html = page.text().await.expect("html");
    let token = csrf(&html);
    let ids = listed(&html);
    assert_eq!(ids.len(), 2, "session a's two dead letters");
    assert!(html.contains("2 dead letter(s) match."));

    // Purging asks first, with the count, and changes nothing until confirmed.
    let ask = http
        .post(app.url("/dashboard/dlq/purge"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("scope", "matching"),
            ("session", "a"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(ask.status(), StatusCode::OK);
    let confirmation = ask.text().await.expect("html");
    assert!(confirmation.contains(r#"data-count="2""#), "{confirmation}");
    assert_eq!(
        app.relay.counts().await.expect("counts").dead,
        3,
        "nothing purged yet"
    );
    let snapshot = confirmation
        .split(r#"name="snapshot" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the confirmation's snapshot")
        .to_owned();
    let confirmed = http
        .post(app.url("/dashboard/dlq/purge"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("scope", "matching"),
            ("session", "a"),
            ("snapshot", snapshot.as_str()),
            ("confirm", "yes"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(confirmed.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        confirmed.headers()["location"],
        "/dashboard/dlq?done=purged&n=2"
    );
    assert_eq!(
        app.relay.counts().await.expect("counts").dead,
        1,
        "only session a's"
    );

    // A letter that died after the confirmation was counted is not acted on.
    let before_it = "0";
    let late = http
        .post(app.url("/dashboard/dlq/purge"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("scope", "matching"),
            ("snapshot", before_it),
            ("confirm", "yes"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(late.headers()["location"], "/dashboard/dlq?done=purged&n=0");

    // Replaying a selection (duplicates counted once) needs no confirmation for one letter.
    let remaining = listed(
        &http
            .get(app.url("/dashboard/dlq"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("html"),
    );
    assert_eq!(remaining.len(), 1);
    receiver.always(Reply::status(200));
    let replayed = http
        .post(app.url("/dashboard/dlq/replay"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("ids", remaining[0].as_str()),
            ("ids", remaining[0].as_str()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(
        replayed.headers()["location"],
        "/dashboard/dlq?done=replayed&n=1"
    );
    eventually(
        Duration::from_secs(10),
        "the replayed letter delivered",
        || async {
            app.relay
                .counts()
                .await
                .is_ok_and(|c| c.dead == 0 && c.pending == 0)
        },
    )
    .await;
}
