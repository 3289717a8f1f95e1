//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real server on port 0 and a real receiver on loopback. Screenshots of every page
//! are saved under the target directory (`tmp/dashboard-screenshots/`) for a person to look at.
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the test says `skipped`,
//! unless `HOOKRELAY_REQUIRE_BROWSER=1` (CI), which makes a missing browser a failure.

#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;

use std::{
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use helpers::{Reply, TestApp, TestReceiver, usage_event};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "dashboard-admin-token-0123456789abcdef";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_driver() -> Option<Driver> {
    let present =
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists();
    if !present {
        assert!(
            std::env::var_os("HOOKRELAY_REQUIRE_BROWSER").is_none(),
            "HOOKRELAY_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = format!("http://127.0.0.1:{port}/status");
    while reqwest::get(&status).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not answer on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("save screenshot");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Waits (a navigation after a click completes on its own time) until `css` is on the page.
async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            return element;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never appeared; page:\n{}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the browser is at `path`.
async fn wait_for_path(client: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = client.current_url().await.expect("url");
        if url.path() == path {
            return;
        }
        assert!(Instant::now() < deadline, "still at {url}, expected {path}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reloads `url` until `css` holds text satisfying `test`; panics after `within`.
async fn eventually_shows(
    client: &Client,
    url: &str,
    css: &str,
    within: Duration,
    test: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        client.goto(url).await.expect("goto");
        if let Ok(element) = client.find(Locator::Css(css)).await {
            let text = element.text().await.expect("text");
            if test(&text) {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url}: `{css}` never showed what was expected; page:\n{}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_event(app: &TestApp, session: &str) -> String {
    let response = app
        .post_json("/api/webhook/usage", &usage_event(session))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("event id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_sees_events_and_replays_a_dead_letter() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    // The first delivery is refused for good (410): it becomes a dead letter.
    receiver.script([Reply::status(410)]);
    let app = TestApp::spawn(
        &receiver.url(),
        &[
            ("HOOKRELAY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("WEBHOOK_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let dead_event = post_event(&app, "browser-dead").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    helpers::eventually(
        Duration::from_secs(10),
        "the refused event in the DLQ",
        || async { app.relay.counts().await.is_ok_and(|c| c.dead == 1) },
    )
    .await;

    let client = browser(&driver).await;
    let base = app.url("");

    // Not logged in: the dashboard sends the browser to the login form.
    client
        .goto(&format!("{base}/dashboard/dlq"))
        .await
        .expect("goto");
    wait_for_path(&client, "/dashboard/login").await;
    screenshot(&client, "login").await;
    // A wrong token is refused on the form.
    log_in(&client, "not-the-token").await;
    let refusal = wait_for(&client, ".error")
        .await
        .text()
        .await
        .expect("text");
    assert!(refusal.contains("not the admin token"), "{refusal}");
    log_in(&client, ADMIN_TOKEN).await;
    // Back where it was going.
    wait_for_path(&client, "/dashboard/dlq").await;

    // An event posted now appears on the overview and in the search.
    let live_event = post_event(&app, "browser-live").await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    eventually_shows(
        &client,
        &format!("{base}/dashboard"),
        "#throughput",
        Duration::from_secs(10),
        |t| t.starts_with("2 /"),
    )
    .await;
    assert_eq!(text_of(&client, "#dead-letters").await, "1");
    screenshot(&client, "overview").await;
    client
        .goto(&format!("{base}/dashboard/events?session=browser-live"))
        .await
        .expect("goto");
    let table = text_of(&client, "table").await;
    assert!(table.contains(&live_event), "{table}");
    assert!(
        !table.contains(&dead_event),
        "the search narrows to the session"
    );
    screenshot(&client, "events").await;

    // The dead letter: open it from the DLQ, see its refused attempt, replay it.
    client
        .goto(&format!("{base}/dashboard/dlq"))
        .await
        .expect("goto");
    screenshot(&client, "dlq").await;
    wait_for(
        &client,
        &format!("a[href^='/dashboard/deliveries/'][data-event='{dead_event}']"),
    )
    .await
    .click()
    .await
    .expect("open it");
    let attempts = wait_for(&client, "#attempts")
        .await
        .text()
        .await
        .expect("text");
    assert!(attempts.contains("410"), "{attempts}");
    screenshot(&client, "delivery").await;
    let delivery_page = client.current_url().await.expect("url");

    // Without its CSRF token, the same action is refused.
    let delivery_id = delivery_page
        .path()
        .rsplit('/')
        .next()
        .expect("the delivery id")
        .to_owned();
    client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/dashboard/dlq/replay';
             const i = document.createElement('input'); i.name = 'ids'; i.value = arguments[0]; f.appendChild(i);
             document.body.appendChild(f); f.submit();",
            vec![json!(delivery_id)],
        )
        .await
        .expect("submit a forged form");
    let refusal = wait_for(&client, ".error")
        .await
        .text()
        .await
        .expect("text");
    assert!(refusal.contains("security token"), "{refusal}");
    assert_eq!(
        app.relay.counts().await.expect("counts").dead,
        1,
        "nothing was replayed"
    );

    client.goto(delivery_page.as_str()).await.expect("goto");
    wait_for(&client, "form[action='/dashboard/dlq/replay'] button")
        .await
        .click()
        .await
        .expect("replay");
    let notice = wait_for(&client, ".notice")
        .await
        .text()
        .await
        .expect("text");
    assert!(notice.contains("Back in the queue"), "{notice}");
    let arrived = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        arrived[2].header("webhook-id"),
        Some(dead_event.as_str()),
        "the replayed event arrived"
    );
    helpers::eventually(Duration::from_secs(10), "the DLQ empty", || async {
        app.relay.counts().await.is_ok_and(|c| c.dead == 0)
    })
    .await;

    // The remaining pages draw; screenshots for a person to look at.
    client
        .goto(&format!("{base}/dashboard/endpoints"))
        .await
        .expect("goto");
    assert!(text_of(&client, "main").await.contains("ep_default"));
    screenshot(&client, "endpoints").await;
    client
        .goto(&format!("{base}/dashboard/sessions"))
        .await
        .expect("goto");
    assert_eq!(text_of(&client, "#sessions-total").await, "2");
    screenshot(&client, "sessions").await;
    // Phone width: the pages stay usable (no horizontal scroll of the page itself).
    client.set_window_size(390, 844).await.expect("resize");
    client
        .goto(&format!("{base}/dashboard"))
        .await
        .expect("goto");
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("measure");
    assert_eq!(
        overflow,
        json!(false),
        "the overview scrolls sideways at phone width"
    );
    screenshot(&client, "overview-phone").await;

    // Logging out ends the session.
    client.set_window_size(1200, 900).await.expect("resize");
    wait_for(&client, "form.logout button")
        .await
        .click()
        .await
        .expect("log out");
    wait_for_path(&client, "/dashboard/login").await;
    client
        .goto(&format!("{base}/dashboard"))
        .await
        .expect("goto");
    wait_for_path(&client, "/dashboard/login").await;
    client.close().await.expect("close the browser");
}

/// Types `token` into the login form and sends it.
async fn log_in(client: &Client, token: &str) {
    let field = wait_for(client, "#token").await;
    field.clear().await.expect("clear");
    field.send_keys(token).await.expect("type");
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
}
