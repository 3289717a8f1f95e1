//! The pieces of a multi-instance test: a PostgreSQL schema that is dropped afterwards,
//! `hookrelay serve` processes that are killed when dropped, and a receiver on loopback that
//! counts what arrives per event id.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::HeaderMap, http::StatusCode, routing::any};
use hookrelay::{config::PostgresSettings, domain::Redacted, store::PgStore};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::{net::TcpListener, task::JoinHandle};

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

/// A signing secret of 32 bytes (shorter ones work, with a warning at start-up).
const SECRET: &str = "whsec_1Q9ifXS+vgipIFulGK1XkOaloCOJqL6mpQJWPBQ4WlI=";

/// The server these tests run against: `HOOKRELAY_TEST_POSTGRES_URL`. Without it the tests
/// are skipped, unless `HOOKRELAY_REQUIRE_POSTGRES=1` says they must run.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("HOOKRELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("HOOKRELAY_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "HOOKRELAY_REQUIRE_POSTGRES=1 but HOOKRELAY_TEST_POSTGRES_URL is not set"
            );
            println!("skipping {test}: set HOOKRELAY_TEST_POSTGRES_URL to run it");
            None
        }
    }
}

/// A fresh schema for one test, with a pool whose `search_path` is that schema (the
/// instances create its tables). Dropped with everything in it when the guard goes, also
/// when the test fails: declare it before the instances, so they are killed first.
pub struct TestSchema {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestSchema {
    pub async fn create(url: &str, tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("scale_{tag}_{}_{nanos}", std::process::id());
        let options = PgConnectOptions::from_str(url)
            .expect("HOOKRELAY_TEST_POSTGRES_URL is a PostgreSQL URL")
            .options([("search_path", name.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("connect to HOOKRELAY_TEST_POSTGRES_URL");
        Self {
            name,
            url: url.to_owned(),
            pool,
        }
    }

    /// Rows of `deliveries` with this status.
    pub async fn count_status(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .expect("count deliveries")
    }

    /// Waits until `count` deliveries have `status`, failing after `within`: an answer reaches
    /// the receiver before its result is written, and results are written in batches.
    pub async fn wait_for_status(&self, status: &str, count: i64, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let seen = self.count_status(status).await;
            if seen == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{seen} deliveries {status}, expected {count}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The instance id holding the 'monitor' leader lease, and until when (unix ms).
    pub async fn monitor_leader(&self) -> Option<(String, i64)> {
        sqlx::query_as("SELECT holder, expires_at FROM leader_leases WHERE task = 'monitor'")
            .fetch_optional(&self.pool)
            .await
            .expect("read leader_leases")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let settings = PostgresSettings {
            url: Redacted::new(self.url.clone()),
            pool_size: 2,
            statement_timeout: Duration::from_secs(30),
            schema: self.name.clone(),
        };
        // Drop cannot await: a runtime of its own on a thread of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(PgStore::drop_schema(&settings))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| "panicked".to_owned()) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// Which parts of `serve` a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    All,
    Api,
    Worker,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Api => "api",
            Self::Worker => "worker",
        }
    }
}

/// One `hookrelay serve` process on the test schema, delivering to the receiver. Killed
/// (SIGKILL) and reaped when dropped.
pub struct Instance {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`, for the roles that listen.
    address: Option<String>,
    killed: bool,
    _dir: tempfile::TempDir,
}

impl Instance {
    /// Starts `hookrelay serve --role ROLE` and waits for its first line on stdout.
    pub async fn start(role: Role, schema: &TestSchema, receiver: &Receiver) -> Self {
        Self::start_via(role, schema, receiver, &schema.url).await
    }

    /// [`Instance::start`] with more settings.
    pub async fn start_with(
        role: Role,
        schema: &TestSchema,
        receiver: &Receiver,
        settings: &[(&str, &str)],
    ) -> Self {
        Self::start_configured(role, schema, receiver, &schema.url, settings).await
    }

    /// The same, reaching the database at `database_url` (a proxy in front of the server).
    pub async fn start_via(
        role: Role,
        schema: &TestSchema,
        receiver: &Receiver,
        database_url: &str,
    ) -> Self {
        Self::start_configured(role, schema, receiver, database_url, &[]).await
    }

    async fn start_configured(
        role: Role,
        schema: &TestSchema,
        receiver: &Receiver,
        database_url: &str,
        settings: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("data dir");
        let mut child = Command::new(BIN)
            .env_clear()
            // No `.env` of the repository is read from here.
            .current_dir(dir.path())
            .args(["serve", "--role", role.as_str()])
            .env("DATABASE_URL", database_url)
            .env("HOOKRELAY_DB_SCHEMA", &schema.name)
            .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
            .env("HOOKRELAY_DATA_DIR", dir.path())
            // An API-only instance has no business with the destination, and must not disable
            // it for the instances that deliver.
            .envs((role != Role::Api).then(|| ("ZAPIER_WEBHOOK_URL", receiver.url())))
            .env("WEBHOOK_SECRET", SECRET)
            .env("HOOKRELAY_ALLOWED_TARGET_CIDRS", "127.0.0.0/8")
            .env("WEBHOOK_RATE_LIMIT", "1000000")
            // A claim's lease is 2 × 1 s + 5 s = 7 s.
            .env("WEBHOOK_TIMEOUT_SECONDS", "1")
            .env("WEBHOOK_RETRY_DELAY_SECONDS", "0.05")
            // A monitor tick of 0.5 s: the leader lease lasts 3 s.
            .env("HOOKRELAY_ALERT_INTERVAL_SECONDS", "0.5")
            .env("LOG_LEVEL", "WARN")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hookrelay");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let first_line = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.next();
            // Keep draining so the process never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            line
        });
        // Killed on drop from here on, also if it never says it started.
        let mut instance = Self {
            child,
            pid,
            address: None,
            killed: false,
            _dir: dir,
        };
        let line = tokio::time::timeout(Duration::from_secs(60), first_line)
            .await
            .unwrap_or_else(|_| panic!("hookrelay {role:?} (pid {pid}) did not start in 60 s"))
            .expect("stdout reader")
            .unwrap_or_else(|| panic!("hookrelay {role:?} (pid {pid}) exited without a word"))
            .expect("stdout is text");
        instance.address = match role {
            Role::Worker => {
                assert_eq!(
                    line, "hookrelay delivering (worker role, no HTTP listener)",
                    "unexpected first line of the worker"
                );
                None
            }
            Role::All | Role::Api => Some(
                line.strip_prefix("hookrelay listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line: {line}"))
                    .to_owned(),
            ),
        };
        instance
    }

    /// The ingest URL of a listening instance.
    pub fn ingest_url(&self) -> String {
        format!("{}/api/webhook/usage", self.address())
    }

    /// `http://127.0.0.1:PORT` of an instance that listens.
    pub fn address(&self) -> &str {
        self.address
            .as_deref()
            .expect("this instance has no listener")
    }

    /// True when `instance_id` (a `claimed_by` or a lease holder) names this process.
    pub fn names(&self, instance_id: &str) -> bool {
        instance_id
            .split_once('-')
            .is_some_and(|(pid, _)| pid == self.pid.to_string())
    }

    /// The `LIKE` pattern of this process's instance ids.
    pub fn like_pattern(&self) -> String {
        format!("{}-%", self.pid)
    }

    /// The process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.killed = true;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Default)]
struct ReceiverState {
    delay: Duration,
    arrived: AtomicUsize,
    per_id: Mutex<HashMap<String, usize>>,
    /// Beyond this many requests in a wall-clock second, 429 with `Retry-After: 1`.
    limit_per_second: Option<usize>,
    /// Answers 503 to everything while set.
    down: std::sync::atomic::AtomicBool,
    /// Every request: (unix ms of arrival, status answered).
    log: Mutex<Vec<(u64, u16)>>,
}

/// A webhook receiver on loopback: counts every request by its `webhook-id` on arrival,
/// then answers 200 after a short delay, so that some deliveries are always in flight.
pub struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<ReceiverState>,
    server: JoinHandle<()>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let at = unix_ms();
    let status = {
        let mut log = state.log.lock().unwrap_or_else(|e| e.into_inner());
        let this_second = log
            .iter()
            .rev()
            .take_while(|(t, _)| t / 1000 == at / 1000)
            .count();
        let status = if state.down.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else if state
            .limit_per_second
            .is_some_and(|limit| this_second >= limit)
        {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::OK
        };
        log.push((at, status.as_u16()));
        status
    };
    if status == StatusCode::OK
        && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
    {
        *state
            .per_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        state.arrived.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(state.delay).await;
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (status, [("retry-after", "1")]).into_response();
    }
    status.into_response()
}

impl Receiver {
    pub async fn start(delay: Duration) -> Self {
        Self::start_with(ReceiverState {
            delay,
            ..ReceiverState::default()
        })
        .await
    }

    /// A receiver that takes `per_second` requests in each wall-clock second and answers the
    /// rest 429 with `Retry-After: 1`, as a rate-limited catch hook does.
    pub async fn start_limited(per_second: usize) -> Self {
        Self::start_with(ReceiverState {
            limit_per_second: Some(per_second),
            ..ReceiverState::default()
        })
        .await
    }

    /// Answers 503 to everything while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Every request so far: (unix ms of arrival, status answered).
    pub fn log(&self) -> Vec<(u64, u16)> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn start_with(state: ReceiverState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(state);
        let app = Router::new()
            .route("/{*path}", any(receive))
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests with a `webhook-id` so far, repeats included.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(Ordering::SeqCst)
    }

    /// How many times each event id arrived.
    pub fn per_id(&self) -> HashMap<String, usize> {
        self.state
            .per_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until every one of `ids` arrived. Panics, saying how many did not, when none
    /// more arrived for `stalled` or after `within` in all: on a loaded machine the total
    /// varies, a stall does not.
    pub async fn wait_for_all<'a>(
        &self,
        ids: impl Iterator<Item = &'a String> + Clone,
        stalled: Duration,
        within: Duration,
    ) {
        let started = Instant::now();
        let mut progress = (usize::MAX, started);
        loop {
            let missing = {
                let seen = self.state.per_id.lock().unwrap_or_else(|e| e.into_inner());
                ids.clone().filter(|id| !seen.contains_key(*id)).count()
            };
            if missing == 0 {
                return;
            }
            if missing < progress.0 {
                progress = (missing, Instant::now());
            }
            assert!(
                progress.1.elapsed() < stalled && started.elapsed() < within,
                "{missing} acknowledged event(s) did not arrive (none for {:.1?}, {:.1?} in all)",
                progress.1.elapsed(),
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Polls `probe` until it returns `Some`; panics with `what` after `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A usage event, as the gateway sends it.
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

/// What ingest answered to one event.
pub struct Acknowledged {
    pub id: String,
    /// The idempotency key had been seen: the event was stored by an earlier attempt.
    pub replayed: bool,
}

/// POSTs usage event number `n` under the idempotency key `scale-N`, so that sending it again
/// after a failure cannot store it twice. Anything but a 202 with an id is an error.
pub async fn post_usage(
    http: &reqwest::Client,
    ingest_url: &str,
    n: usize,
) -> Result<Acknowledged, String> {
    let body = serde_json::to_vec(&usage_event(&format!("scale-session-{}", n % 64)))
        .expect("serialize event");
    let response = http
        .post(ingest_url)
        .header("content-type", "application/json")
        .header("idempotency-key", format!("scale-{n}"))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{status} with an unreadable body: {e}"))?;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(format!("{status}: {body}"));
    }
    let id = body["id"]
        .as_str()
        .ok_or_else(|| format!("202 without an id: {body}"))?
        .to_owned();
    Ok(Acknowledged { id, replayed })
}

/// A TCP proxy in front of PostgreSQL that the test can cut: every open connection is
/// dropped and new ones are closed at once until it is restored, as when the server restarts.
pub struct DatabaseProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by each cut; a connection ends when it no longer matches.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// The local ports of the proxy's connections to the server, as `pg_stat_activity`
    /// shows them in `client_port`: which backends are this test's.
    ports: Arc<Mutex<Vec<u16>>>,
    accept: JoinHandle<()>,
}

impl DatabaseProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0_u64).0);
        let ports = Arc::new(Mutex::new(Vec::new()));
        let (flag, cuts, seen) = (Arc::clone(&up), Arc::clone(&generation), Arc::clone(&ports));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cuts.subscribe();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    if let Ok(local) = server.local_addr() {
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(local.port());
                    }
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
            ports,
            accept,
        }
    }

    /// The `client_port`s of every server connection the proxy opened.
    pub fn backend_ports(&self) -> Vec<i32> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| i32::from(*p))
            .collect()
    }

    /// Drops every connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for DatabaseProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
