//! Test harness: the real server on port 0 with a fresh database (a SQLite file, or with
//! `HOOKRELAY_IT_BACKEND=postgres` a PostgreSQL schema of its own), and a real receiver on
//! loopback that records what arrives and answers as scripted.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use hookrelay::{Config, Relay, clock::Clock};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON: {e}"))
    }
}

#[derive(Default)]
struct ReceiverState {
    arrived: std::sync::atomic::AtomicUsize,
    /// Requests being answered now, and the most there ever were at once.
    open: std::sync::atomic::AtomicUsize,
    most_open: std::sync::atomic::AtomicUsize,
    /// (requests allowed per second, current second, requests in it)
    per_second: Mutex<Option<(usize, u64, usize)>>,
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Option<Reply>>,
    /// Answers each event's first request (by `webhook-id`) with this status.
    fail_first: Mutex<Option<(u16, std::collections::HashSet<String>)>>,
    received: Mutex<Vec<Received>>,
}

/// One request being answered, counted in [`ReceiverState::open`] while it lives.
struct Open<'a>(&'a ReceiverState);

impl<'a> Open<'a> {
    fn count(state: &'a ReceiverState) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = state.open.fetch_add(1, SeqCst) + 1;
        state.most_open.fetch_max(now, SeqCst);
        Self(state)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A webhook receiver on loopback.
pub struct TestReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    shutdown: CancellationToken,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _open = Open::count(&state);
    if let Some((limit, second, count)) = state
        .per_second
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != *second {
            (*second, *count) = (now, 0);
        }
        *count += 1;
        if *count > *limit {
            // Like Zapier or Slack beyond their limit.
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
    }
    let first_failure = state
        .fail_first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|(status, seen)| {
            let id = headers.get("webhook-id")?.to_str().ok()?.to_owned();
            seen.insert(id).then(|| Reply::status(*status))
        });
    let reply = first_failure
        .or_else(|| {
            state
                .script
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
        })
        .or_else(|| {
            state
                .default_reply
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
        .unwrap_or_else(|| Reply::status(200));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    state
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
        });
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

impl TestReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState::default());
        let app = Router::new()
            .route("/", any(receive))
            .route("/{*path}", any(receive))
            .with_state(Arc::clone(&state));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            addr,
            state,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with these replies, in order, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(replies);
    }

    /// Answers every unscripted request with this reply.
    pub fn always(&self, reply: Reply) {
        *self
            .state
            .default_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reply);
    }

    /// Answers each event's first attempt (told by its `webhook-id`) with `status`, like a
    /// receiver that fails cold and succeeds on the retry.
    pub fn fail_first_attempts(&self, status: u16) {
        *self
            .state
            .fail_first
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((status, Default::default()));
    }

    /// Answers 429 with `Retry-After: 1` beyond `limit` requests in a wall-clock second.
    pub fn limit_per_second(&self, limit: usize) {
        *self
            .state
            .per_second
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((limit, 0, 0));
    }

    /// Requests that reached the receiver, including those it has not answered yet.
    /// The `session_id` of each usage event received, in arrival order.
    pub fn session_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| {
                r.json()["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// The most requests this receiver was answering at once.
    pub fn most_open(&self) -> usize {
        self.state
            .most_open
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn arrived(&self) -> usize {
        self.state.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` requests arrived; panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} request(s), expected {n} within {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `condition` until it holds; panics after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The PostgreSQL server these tests run on, when `HOOKRELAY_IT_BACKEND=postgres` (CI runs the
/// suite once on SQLite files and once on PostgreSQL); `None` for SQLite.
pub fn postgres_url() -> Option<String> {
    match std::env::var("HOOKRELAY_IT_BACKEND").as_deref() {
        Ok("postgres") => Some(std::env::var("HOOKRELAY_TEST_POSTGRES_URL").expect(
            "HOOKRELAY_IT_BACKEND=postgres needs HOOKRELAY_TEST_POSTGRES_URL (postgres://…)",
        )),
        Ok("sqlite") | Ok("") | Err(_) => None,
        Ok(other) => panic!("HOOKRELAY_IT_BACKEND must be sqlite or postgres, not {other}"),
    }
}

/// True, with the reason printed, when a test inspects the SQLite file itself and so has
/// nothing to check on PostgreSQL (the conformance suite covers the store there).
pub fn sqlite_only(reason: &str) -> bool {
    let skip = postgres_url().is_some();
    if skip {
        eprintln!("skipped on PostgreSQL: {reason}");
    }
    skip
}

/// The variables that put the data of `dir` in the backend under test: nothing for SQLite
/// (the file lives in `dir`); for PostgreSQL the server and a schema of this directory's own,
/// remembered in the directory so a server reopened on it finds the same data. CI drops the
/// `it_` schemas before and after the run.
pub fn database_vars(dir: &std::path::Path) -> Vec<(String, String)> {
    let Some(url) = postgres_url() else {
        return Vec::new();
    };
    let marker = dir.join(".it-postgres-schema");
    let schema = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
        let schema = format!("it_{}", uuid::Uuid::now_v7().simple());
        std::fs::write(&marker, &schema).expect("remember the schema");
        schema
    });
    vec![
        ("DATABASE_URL".into(), url),
        ("HOOKRELAY_DB_SCHEMA".into(), schema),
        // Two tests at a time on two cores, each with its own pool: stay far below the
        // server's connection limit.
        ("HOOKRELAY_DB_POOL_SIZE".into(), "4".into()),
    ]
}

/// Runs SQL on the database of `dir` behind the relay's back, as an operator with `sqlite3`
/// or `psql` would: `sqlite` on the file, or `postgres` in the directory's schema.
pub async fn execute_sql(dir: &std::path::Path, sqlite: &str, postgres: &str) {
    let vars: HashMap<String, String> = database_vars(dir).into_iter().collect();
    match (vars.get("DATABASE_URL"), vars.get("HOOKRELAY_DB_SCHEMA")) {
        (Some(url), Some(schema)) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::raw_sql(&format!("SET search_path TO {schema}; {postgres}"))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{postgres}: {e}"));
        }
        _ => rusqlite::Connection::open(dir.join("hookrelay.db"))
            .expect("open")
            .execute_batch(sqlite)
            .unwrap_or_else(|e| panic!("{sqlite}: {e}")),
    }
}

/// Another connection's lock on the database of `dir` that keeps every write of the relay
/// waiting, as a long transaction or a stalled disk would, until [`WriteHold::release`].
pub enum WriteHold {
    /// A thread holding SQLite's write lock on the file.
    Sqlite {
        release: tokio::sync::oneshot::Sender<()>,
        held: JoinHandle<()>,
    },
    /// A transaction holding PostgreSQL's `EXCLUSIVE` lock on `events`.
    Postgres(sqlx::PgConnection),
}

impl WriteHold {
    /// Takes the lock (in the directory's schema on PostgreSQL); returns once it is held.
    pub async fn take(dir: &std::path::Path) -> Self {
        let vars: HashMap<String, String> = database_vars(dir).into_iter().collect();
        if let (Some(url), Some(schema)) =
            (vars.get("DATABASE_URL"), vars.get("HOOKRELAY_DB_SCHEMA"))
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let lock =
                format!("SET search_path TO {schema}; BEGIN; LOCK TABLE events IN EXCLUSIVE MODE");
            sqlx::raw_sql(&lock).execute(&mut conn).await.expect("lock");
            return Self::Postgres(conn);
        }
        let path = dir.join("hookrelay.db");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (taken, is_taken) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(path).expect("open");
            conn.busy_timeout(Duration::from_secs(10))
                .expect("busy timeout");
            conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
            let _ = taken.send(());
            let _ = released.blocking_recv();
            conn.execute_batch("COMMIT").expect("commit");
        });
        is_taken.await.expect("the lock was taken");
        Self::Sqlite { release, held }
    }

    /// Lets the waiting writes go on.
    pub async fn release(self) {
        match self {
            Self::Sqlite { release, held } => {
                let _ = release.send(());
                held.await.expect("released");
            }
            Self::Postgres(mut conn) => {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut conn)
                    .await
                    .expect("commit");
            }
        }
    }
}

/// A configuration from variables, with the data in `dir` (or its schema, see
/// [`database_vars`]); a test that names its own `DATABASE_URL` keeps it.
pub fn config(dir: &std::path::Path, vars: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if !map.contains_key("DATABASE_URL") {
        for (name, value) in database_vars(dir) {
            map.entry(name).or_insert(value);
        }
    }
    // The receivers of these tests listen on loopback, which deliveries may not reach by
    // default: loopback, and only loopback, is allowed.
    map.entry("HOOKRELAY_ALLOWED_TARGET_CIDRS".into())
        .or_insert_with(|| "127.0.0.0/8".into());
    // Tests send far more than the guide's 100 requests per hour from one address.
    map.entry("WEBHOOK_RATE_LIMIT".into())
        .or_insert_with(|| "1000000".into());
    map.entry("HOOKRELAY_DATA_DIR".into())
        .or_insert_with(|| dir.to_string_lossy().into_owned());
    let (config, _) =
        Config::from_lookup(|name| map.get(name).cloned()).unwrap_or_else(|e| panic!("{e}"));
    config
}

/// A second handle on the database of `dir`, as another process would open it.
pub async fn open_store(dir: &std::path::Path) -> Arc<dyn hookrelay::store::Store> {
    let config = config(dir, &[]);
    hookrelay::store::open(&config.database.location, config.database.sqlite_sync)
        .await
        .expect("open the store")
}

/// A `hookrelay` command with a clean environment (no `.env`, no inherited settings).
pub fn hookrelay(dir: &std::path::Path, vars: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command
        .env_clear()
        .current_dir(dir)
        .env("HOOKRELAY_DATA_DIR", dir)
        .env("RUST_LOG", "hookrelay=warn")
        .env("HOOKRELAY_ALLOWED_TARGET_CIDRS", "127.0.0.0/8")
        .env("WEBHOOK_RATE_LIMIT", "1000000");
    if !vars.iter().any(|(name, _)| *name == "DATABASE_URL") {
        command.envs(database_vars(dir));
    }
    command.envs(vars.iter().copied());
    command
}

/// Where the manual clocks of these tests start.
pub const START_MS: i64 = 1_800_000_000_000;

/// A relay on a fresh database file whose clock only moves when the test says; tests drive
/// its worker with `run_once` instead of a background loop. Keep the directory alive.
pub async fn clocked_relay(
    vars: &[(&str, &str)],
) -> (Relay, hookrelay::clock::ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let clock = hookrelay::clock::ManualClock::new(START_MS);
    let relay = Relay::open_with_clock(config(dir.path(), vars), Arc::new(clock.clone()))
        .await
        .expect("open");
    (relay, clock, dir)
}

/// A running hookrelay server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub relay: Relay,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

impl TestApp {
    /// Starts the server delivering to `receiver_url` with fast retries, plus `vars`.
    pub async fn spawn(receiver_url: &str, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut all: Vec<(&str, &str)> = vec![
            ("ZAPIER_WEBHOOK_URL", receiver_url),
            ("WEBHOOK_SECRET", SECRET),
            ("WEBHOOK_RETRY_DELAY_SECONDS", "0.02"),
            ("WEBHOOK_TIMEOUT_SECONDS", "2"),
        ];
        all.extend_from_slice(vars);
        let config = config(dir.path(), &all);
        Self::spawn_with(config, dir, Arc::new(hookrelay::clock::SystemClock)).await
    }

    pub async fn spawn_with(config: Config, dir: tempfile::TempDir, clock: Arc<dyn Clock>) -> Self {
        let relay = Relay::open_with_clock(config, clock)
            .await
            .expect("open relay");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
        let addr = listener.local_addr().expect("server address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(hookrelay::app::serve(
            relay.clone(),
            Some(listener),
            shutdown.clone(),
        ));
        Self {
            addr,
            relay,
            http: reqwest::Client::new(),
            dir,
            shutdown,
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs raw bytes as JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.post_raw(path, serde_json::to_vec(body).expect("json"))
            .await
    }

    /// Stops the server as SIGTERM would, waits for it, and hands back the data directory
    /// (which would otherwise be deleted with the app).
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn usage_event(session: &str) -> serde_json::Value {
    serde_json::json!({
        "session_id": session,
        "query": "Why does my code throw an error when I deploy it?",
        "model_name": "gpt-4o-mini",
        "response_time_ms": 1000,
        "estimated_tokens": 100,
        "success": true
    })
}

pub fn usage(session: &str) -> hookrelay::domain::UsageEvent {
    serde_json::from_value(usage_event(session)).expect("usage event")
}
