//! `hookrelay-bench`: measures hookrelay end to end on this machine.
//!
//! Each scenario starts `hookrelay serve` (the binary next to this one) on a fresh database,
//! with a fast receiver in this process, drives usage events over keep-alive HTTP and prints
//! the same figures: ingest rate, delivery rate, ingest-to-delivery latency (p50/p99/max),
//! server CPU per 1,000 events and the server's peak memory. `library` measures
//! `Relay::track_usage` in-process. `all` runs every scenario in turn.

mod faults;
mod flood;
mod load;
mod pgcost;
mod targets;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use clap::{Parser, ValueEnum};
use hookrelay::{Config, Relay, domain::UsageEvent};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{net::TcpListener, task::JoinSet};

use crate::targets::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// A steady rate (`--rate`, `--duration`): latency at moderate load.
    Steady,
    /// As fast as `--concurrency` clients can send `--events`: maximum throughput.
    Flat,
    /// Flat out against a receiver that fails the first attempt of every event.
    Retry,
    /// A steady rate to a fast endpoint beside one that answers in 5 s.
    Slow,
    /// `--backlog` pending deliveries queued before the server starts, then flat out on top.
    Backlog,
    /// A steady rate against a receiver that fails every event's first attempt, circuit on.
    FlakyFirst,
    /// A steady rate where 5% of events are always answered 500 (a "poison" payload).
    Poison,
    /// A steady rate against a receiver that answers 503 for its first `--outage` seconds.
    Outage,
    /// `Relay::track_usage` from many tasks in one process.
    Library,
    /// Signed ingest attacked with 1 MB bodies whose `webhook-signature` holds 3,900 empty
    /// candidates: server CPU per request beside a validly signed one, and `/health` latency
    /// while four such requests run at once.
    SignatureFlood,
    /// Every scenario in turn.
    All,
    /// The runs the performance targets are stated for (flat out, steady 1,000/s, library,
    /// a million pending), each judged, with a summary of every target at the end.
    Targets,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "hookrelay-bench",
    about = "Measure hookrelay's ingest and delivery on this machine"
)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "flat")]
    scenario: Scenario,
    /// Seconds the receiver answers 503 from the first send (outage).
    #[arg(long, default_value_t = 20)]
    outage: u64,
    /// Events to send (flat, retry, backlog, library).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Concurrent HTTP clients (or tasks, for library).
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Events per second (steady, slow, flaky-first, poison, outage).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds a steady run lasts.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Pending deliveries queued before the server starts (backlog).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// `HOOKRELAY_ENDPOINT_CONCURRENCY` for the server (default: hookrelay's own default).
    #[arg(long)]
    endpoint_concurrency: Option<usize>,
    /// The receiver accepts this many requests per second and answers 429 beyond.
    #[arg(long)]
    receiver_limit: Option<u64>,
    /// The hookrelay binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// A PostgreSQL server (`postgres://…`) to run on instead of SQLite; each run uses a fresh
    /// schema and drops it afterwards.
    #[arg(long, env = "HOOKRELAY_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// hookrelay processes sharing the database; load is spread over their APIs.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Endpoints every event goes to: the default one and this many less one more, all at the
    /// bench's receiver (flat, steady, backlog). Rates and CPU are then per delivery.
    #[arg(long, default_value_t = 1)]
    fanout: u64,
    /// Acceptance alone (flat): the server runs `--role api`, so nothing is delivered and the
    /// run measures what ingest takes when it has the machine to itself.
    #[arg(long)]
    ingest_only: bool,
}

/// Where a run keeps its data: the SQLite file in the run's directory, or a fresh schema.
enum Database {
    Sqlite,
    Postgres(hookrelay::config::PostgresSettings),
}

impl Database {
    fn for_run(args: &Args) -> Self {
        match &args.database_url {
            None => Database::Sqlite,
            Some(url) => Database::Postgres(hookrelay::config::PostgresSettings {
                url: hookrelay::domain::Redacted::new(url.clone()),
                pool_size: 10,
                statement_timeout: Duration::from_secs(60),
                schema: format!("bench_{}", uuid::Uuid::now_v7().simple()),
            }),
        }
    }

    fn apply(&self, command: &mut Command) {
        if let Database::Postgres(settings) = self {
            command
                .env("DATABASE_URL", settings.url.expose())
                .env("HOOKRELAY_DB_SCHEMA", &settings.schema);
        }
    }

    fn configure(&self, config: &mut Config) {
        if let Database::Postgres(settings) = self {
            config.database.location =
                hookrelay::config::DatabaseLocation::Postgres(settings.clone());
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Database::Sqlite => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
        }
    }

    async fn drop(self) {
        if let Database::Postgres(settings) = self
            && let Err(e) = hookrelay::store::PgStore::drop_schema(&settings).await
        {
            eprintln!("could not drop schema {}: {e}", settings.schema);
        }
    }
}

/// How a receiver misbehaves.
#[derive(Default)]
enum Fault {
    #[default]
    None,
    /// Every event's first attempt is answered 503.
    FirstAttempt,
    /// Events whose session id starts with `poison-` are always answered 500.
    Poison,
    /// Every request is answered 503 until this moment (set when the load starts).
    OutageUntil(Mutex<Option<Instant>>),
}

/// A receiver: counts arrivals and their latency from the payload's acceptance timestamp.
#[derive(Default)]
struct Receiver {
    /// (allowed per second, current second, requests in it)
    limit: Mutex<Option<(u64, u64, u64)>>,
    fault: Fault,
    delay: Duration,
    /// Every request received, whatever it was answered.
    requests: AtomicU64,
    /// Requests answered 503 because of an outage.
    outage_requests: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
    arrived: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    seen: Mutex<HashMap<String, u32>>,
}

/// What the receiver reads of a delivered payload, borrowed from the body: the receiver shares
/// the machine with the server, so it parses no more than it needs. Ids, times and the bench's
/// session ids hold nothing JSON would escape.
#[derive(serde::Deserialize)]
struct Arrived<'a> {
    event_id: Option<&'a str>,
    timestamp: Option<&'a str>,
    session_id: Option<&'a str>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
    receiver.requests.fetch_add(1, Ordering::SeqCst);
    if !receiver.delay.is_zero() {
        tokio::time::sleep(receiver.delay).await;
    }
    if let Fault::OutageUntil(until) = &receiver.fault
        && until
            .lock()
            .map(|until| until.is_none_or(|until| Instant::now() < until))
            .unwrap_or(false)
    {
        receiver.outage_requests.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, [("x-bench", "outage")]);
    }
    let now = OffsetDateTime::now_utc();
    if let Ok(mut limit) = receiver.limit.lock()
        && let Some((allowed, second, count)) = limit.as_mut()
    {
        let this_second = now.unix_timestamp() as u64;
        if this_second != *second {
            (*second, *count) = (this_second, 0);
        }
        *count += 1;
        if *count > *allowed {
            receiver.throttled.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]);
        }
    }
    let Ok(payload) = serde_json::from_slice::<Arrived<'_>>(&body) else {
        return (StatusCode::BAD_REQUEST, [("x-bench", "bad")]);
    };
    if matches!(receiver.fault, Fault::Poison)
        && payload
            .session_id
            .is_some_and(|s| s.starts_with(POISON_PREFIX))
    {
        receiver.failed.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, [("x-bench", "poison")]);
    }
    // One delivery per endpoint (path) and event.
    let id = format!("{} {}", uri.path(), payload.event_id.unwrap_or_default());
    let seen_before = receiver
        .seen
        .lock()
        .map(|mut seen| {
            let count = seen.entry(id).or_default();
            *count += 1;
            *count - 1
        })
        .unwrap_or(0);
    if matches!(receiver.fault, Fault::FirstAttempt) && seen_before == 0 {
        receiver.failed.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("x-bench", "first attempt")],
        );
    }
    if let Some(accepted) = payload
        .timestamp
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    {
        let latency = (now - accepted).whole_microseconds().max(0);
        receiver
            .latencies_us
            .lock()
            .map(|mut l| l.push(latency as u64))
            .ok();
    }
    receiver.arrived.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, [("x-bench", "ok")])
}

async fn start_receiver(receiver: Receiver) -> anyhow::Result<(Arc<Receiver>, String)> {
    let receiver = Arc::new(receiver);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(receive))
        .route("/hook/{endpoint}", post(receive))
        .with_state(Arc::clone(&receiver));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((receiver, url))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1000.0
}

/// The session id that marks a poison event (in the poison scenario, one event in 20).
const POISON_PREFIX: &str = "poison-";

fn is_poison(n: u64) -> bool {
    n.is_multiple_of(20)
}

fn event(n: u64) -> UsageEvent {
    UsageEvent {
        session_id: format!("bench-session-{}", n % 1000),
        query: "How should I design a retry policy for webhook deliveries at scale?".into(),
        model_name: "gpt-4o-mini".into(),
        response_time_ms: 850 + n % 400,
        estimated_tokens: 120 + n % 50,
        success: !n.is_multiple_of(20),
        user_agent: Some("hookrelay-bench".into()),
    }
}

/// (user + system CPU seconds, peak RSS in MiB) of a process, from /proc.
fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let clock_ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some((ticks / clock_ticks, hwm_kib / 1024.0))
}

/// The hookrelay binary: `--server`, or the one next to this bench.
fn server_binary(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.server {
        Some(path) => Ok(path.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("hookrelay")),
    }
}

/// CPU seconds summed over the instances, and the largest instance's peak RSS (MiB).
fn instances_usage(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|pid| process_usage(*pid).unwrap_or((f64::NAN, f64::NAN)))
        .fold((0.0, 0.0_f64), |(cpu, peak), (c, p)| (cpu + c, peak.max(p)))
}

struct Server {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment every hookrelay process of a run shares. The fault scenarios run with
/// the circuit breaker at its defaults and the retry policy (1 s, 3 retries); the
/// others switch the breaker off and retry after 50 ms, to measure the pipeline alone.
fn server_env(
    command: &mut Command,
    dir: &Path,
    receiver_url: &str,
    database: &Database,
    scenario: Scenario,
) {
    let faulty = matches!(
        scenario,
        Scenario::FlakyFirst | Scenario::Poison | Scenario::Outage
    );
    command
        .env_clear()
        .current_dir(dir)
        .env("HOOKRELAY_DATA_DIR", dir)
        .env("ZAPIER_WEBHOOK_URL", receiver_url)
        .env("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
        // The load comes from one address; the guide's default allows 100 requests per hour.
        .env("WEBHOOK_RATE_LIMIT", "10000000")
        .env("WEBHOOK_RATE_WINDOW", "1")
        .env("HOOKRELAY_MAX_CONCURRENT_REQUESTS", "4096")
        .env("LOG_LEVEL", "warn");
    if scenario == Scenario::SignatureFlood {
        command
            .env("HOOKRELAY_INGEST_SECRET", flood::SECRETS.join(","))
            .env("HOOKRELAY_MAX_BODY_BYTES", (2 << 20).to_string());
    }
    if faulty {
        command
            .env("WEBHOOK_RETRY_DELAY_SECONDS", "1")
            .env("WEBHOOK_MAX_RETRIES", "3");
    } else {
        command
            .env("WEBHOOK_RETRY_DELAY_SECONDS", "0.05")
            .env("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "0");
    }
    database.apply(command);
}

fn start_server(
    args: &Args,
    binary: &Path,
    dir: &Path,
    receiver_url: &str,
    database: &Database,
    scenario: Scenario,
) -> anyhow::Result<Server> {
    use std::io::{BufRead, BufReader};
    let mut command = Command::new(binary);
    server_env(&mut command, dir, receiver_url, database, scenario);
    if let Some(n) = args.endpoint_concurrency {
        command.env("HOOKRELAY_ENDPOINT_CONCURRENCY", n.to_string());
    }
    if args.ingest_only {
        command.args(["serve", "--role", "api"]);
    } else {
        command.arg("serve");
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().context("server printed nothing")??;
    std::thread::spawn(move || for _ in lines {});
    let address = line
        .strip_prefix("hookrelay listening on ")
        .with_context(|| format!("unexpected server output: {line}"))?
        .to_owned();
    Ok(Server {
        child,
        address,
        dir: dir.to_path_buf(),
    })
}

/// `--instances` servers (at least one) on one database.
fn start_servers(
    args: &Args,
    binary: &Path,
    dir: &Path,
    receiver_url: &str,
    database: &Database,
    scenario: Scenario,
) -> anyhow::Result<Vec<Server>> {
    (0..args.instances.max(1))
        .map(|_| start_server(args, binary, dir, receiver_url, database, scenario))
        .collect()
}

async fn wait_delivered(
    receiver: &Receiver,
    expected: u64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    while receiver.arrived.load(Ordering::SeqCst) < expected {
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} events delivered within {limit:?}",
                receiver.arrived.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Instant::now())
}

/// Prints a scenario's figures; `delivered` counts every delivery awaited (backlog included).
#[allow(clippy::too_many_arguments)]
fn report(
    title: &str,
    total: u64,
    delivered: u64,
    ingest: Duration,
    delivered_after: Duration,
    receiver: &Receiver,
    cpu_s: f64,
    peak_mib: f64,
) -> targets::Measured {
    let mut latencies = receiver
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let repeats: u32 = receiver
        .seen
        .lock()
        .map(|s| s.values().map(|n| n.saturating_sub(1)).sum())
        .unwrap_or(0);
    let measured = targets::Measured {
        ingest_per_s: total as f64 / ingest.as_secs_f64(),
        delivered_per_s: delivered as f64 / delivered_after.as_secs_f64(),
        p99_ms: percentile(&latencies, 0.99),
        cpu_ms_per_delivery: cpu_s / delivered as f64 * 1000.0,
        peak_mib,
        repeats,
    };
    println!("== {title}");
    println!(
        "ingest:    {:>9.0} events/s ({total} events in {:.2} s)",
        measured.ingest_per_s,
        ingest.as_secs_f64()
    );
    println!(
        "delivered: {:>9.0} events/s ({delivered} delivered {:.2} s after the first send)",
        measured.delivered_per_s,
        delivered_after.as_secs_f64()
    );
    println!(
        "latency:   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (acceptance to arrival, {} samples)",
        percentile(&latencies, 0.50),
        measured.p99_ms,
        percentile(&latencies, 1.0),
        latencies.len()
    );
    println!(
        "server:    {:.3} CPU-s per 1,000 events, peak RSS {peak_mib:.1} MiB; receiver saw {repeats} repeated or retried requests, {} 429s",
        measured.cpu_ms_per_delivery,
        receiver.throttled.load(Ordering::SeqCst)
    );
    measured
}

fn dead_letters(
    binary: &Path,
    server: &Server,
    receiver_url: &str,
    database: &Database,
) -> Option<u64> {
    let mut command = Command::new(binary);
    server_env(
        &mut command,
        &server.dir,
        receiver_url,
        database,
        Scenario::Flat,
    );
    command
        .args(["dlq", "list", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["total"].as_u64())
}

async fn http_scenario(args: &Args, scenario: Scenario) -> anyhow::Result<Vec<Verdict>> {
    let database = Database::for_run(args);
    let result = match scenario {
        Scenario::FlakyFirst | Scenario::Poison | Scenario::Outage => {
            faults::fault_run(args, scenario, &database)
                .await
                .map(|()| Vec::new())
        }
        Scenario::SignatureFlood => flood::signature_flood(args, &database)
            .await
            .map(|()| Vec::new()),
        _ => http_run(args, scenario, &database).await,
    };
    database.drop().await;
    result
}

async fn http_run(
    args: &Args,
    scenario: Scenario,
    database: &Database,
) -> anyhow::Result<Vec<Verdict>> {
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    let binary = server_binary(args)?;
    let dir = tempfile::tempdir()?;
    let (receiver, receiver_url) = start_receiver(Receiver {
        limit: Mutex::new(args.receiver_limit.map(|allowed| (allowed, 0, 0))),
        fault: if scenario == Scenario::Retry {
            Fault::FirstAttempt
        } else {
            Fault::None
        },
        ..Receiver::default()
    })
    .await?;

    let mut backlog = 0;
    if scenario == Scenario::Backlog {
        backlog = args.backlog;
        let started = Instant::now();
        prefill(
            dir.path(),
            &receiver_url,
            backlog,
            args.concurrency,
            database,
        )
        .await?;
        println!(
            "(queued {backlog} pending deliveries in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let servers = start_servers(args, &binary, dir.path(), &receiver_url, database, scenario)?;
    let server = &servers[0];
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let mut slow = None;
    if scenario == Scenario::Slow {
        let (slow_receiver, slow_url) = start_receiver(Receiver {
            delay: Duration::from_secs(5),
            ..Receiver::default()
        })
        .await?;
        let mut command = Command::new(&binary);
        server_env(&mut command, dir.path(), &receiver_url, database, scenario);
        let added = command
            .args([
                "endpoints",
                "add",
                "--url",
                &slow_url,
                "--timeout-seconds",
                "10",
            ])
            .output()?;
        if !added.status.success() {
            bail!(
                "adding the slow endpoint failed: {}",
                String::from_utf8_lossy(&added.stderr)
            );
        }
        // The server re-reads endpoints every poll interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        slow = Some(slow_receiver);
    }
    if args.fanout > 1 {
        for n in 1..args.fanout {
            let mut command = Command::new(&binary);
            server_env(&mut command, dir.path(), &receiver_url, database, scenario);
            let url = format!("{receiver_url}/{n}");
            let added = command.args(["endpoints", "add", "--url", &url]).output()?;
            if !added.status.success() {
                bail!(
                    "adding endpoint {n} failed: {}",
                    String::from_utf8_lossy(&added.stderr)
                );
            }
        }
        // The server re-reads endpoints every poll interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/api/webhook/usage", s.address))
        .collect();
    let usage = || instances_usage(&pids);
    let pg_before = match database {
        Database::Postgres(settings) => Some(pgcost::counters(settings.url.expose()).await?),
        Database::Sqlite => None,
    };
    let cpu_before = usage().0;
    let (total, rate) = match scenario {
        Scenario::Steady | Scenario::Slow => (args.rate * args.duration, Some(args.rate)),
        _ => (args.events, None),
    };
    let started = Instant::now();
    let ingest = load::drive(&urls, total, args.concurrency, rate, false).await?;
    if args.ingest_only {
        let (cpu_after, peak_mib) = usage();
        let accepted = targets::Accepted {
            per_s: total as f64 / ingest.as_secs_f64(),
            cpu_ms_per_event: (cpu_after - cpu_before) / total as f64 * 1000.0,
        };
        println!(
            "== accepted alone, nothing delivered (--role api): {} clients [{}]",
            args.concurrency,
            database.label()
        );
        println!(
            "ingest:    {:>9.0} events/s ({total} events in {:.2} s)",
            accepted.per_s,
            ingest.as_secs_f64()
        );
        println!(
            "server:    {:.3} CPU-s per 1,000 events, peak RSS {peak_mib:.1} MiB",
            accepted.cpu_ms_per_event
        );
        return Ok(targets::judge_ingest_only(args, database, &accepted));
    }
    let deliveries = total * args.fanout.max(1) + backlog;
    let delivered_at = wait_delivered(&receiver, deliveries, Duration::from_secs(3600)).await?;
    let (cpu_after, peak_mib) = usage();
    let title = match scenario {
        Scenario::Steady => format!("steady: {} events/s for {} s", args.rate, args.duration),
        Scenario::Flat => format!("flat out: {} clients", args.concurrency),
        Scenario::Retry => format!(
            "flat out, every first attempt fails: {} clients",
            args.concurrency
        ),
        Scenario::Slow => format!(
            "steady {} events/s to a fast endpoint beside a 5 s one",
            args.rate
        ),
        Scenario::Backlog => {
            format!("flat out on top of {backlog} pending deliveries (delivered counts both)")
        }
        Scenario::FlakyFirst
        | Scenario::Poison
        | Scenario::Outage
        | Scenario::Library
        | Scenario::SignatureFlood
        | Scenario::All
        | Scenario::Targets => unreachable!(),
    };
    let title = match args.fanout {
        0 | 1 => title,
        n => format!("{title}; {n} endpoints per event (rates and CPU per delivery)"),
    };
    let title = match args.receiver_limit {
        Some(limit) => format!("{title}; receiver allows {limit}/s"),
        None => title,
    };
    let title = match (database, args.instances) {
        (Database::Sqlite, 1) => title,
        (database, n) => format!("{title} [{}, {n} instance(s)]", database.label()),
    };
    let measured = report(
        &title,
        total,
        deliveries,
        ingest,
        delivered_at - started,
        &receiver,
        cpu_after - cpu_before,
        peak_mib,
    );
    if let Some(slow) = slow {
        println!(
            "slow endpoint: {} of {total} delivered so far (each takes 5 s)",
            slow.arrived.load(Ordering::SeqCst)
        );
    }
    if args.receiver_limit.is_some() || scenario == Scenario::Retry {
        let dead = dead_letters(&binary, server, &receiver_url, database);
        println!(
            "dead letters: {}",
            dead.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        );
    }
    if let (Database::Postgres(settings), Some(before)) = (database, pg_before) {
        // The servers' backends flush their statistics as they exit.
        drop(servers);
        pgcost::wait_for_backends_to_exit(settings.url.expose(), Duration::from_secs(10)).await?;
        let after = pgcost::counters(settings.url.expose()).await?;
        pgcost::report(&before, &after, total + backlog);
    }
    Ok(targets::judge_http(args, scenario, database, &measured))
}

/// Queues `count` events for the default endpoint while delivery is switched off.
async fn prefill(
    dir: &Path,
    receiver_url: &str,
    count: u64,
    concurrency: u64,
    database: &Database,
) -> anyhow::Result<()> {
    let mut config = Config::with_data_dir(dir);
    database.configure(&mut config);
    config.delivery.webhook_url = Some(hookrelay::domain::EndpointUrl::parse(receiver_url)?);
    config.delivery.enabled = false;
    config.database.sqlite_sync = hookrelay::config::SqliteSync::Normal;
    let relay = Relay::open(config).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (relay, next) = (relay.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(100, Ordering::SeqCst);
                if start >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                let batch: Vec<UsageEvent> = (start..(start + 100).min(count)).map(event).collect();
                relay.track_usage_batch(batch, None).await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

async fn library(args: &Args) -> anyhow::Result<Vec<Verdict>> {
    let database = Database::for_run(args);
    let result = library_run(args, &database).await;
    database.drop().await;
    result
}

async fn library_run(args: &Args, database: &Database) -> anyhow::Result<Vec<Verdict>> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::with_data_dir(dir.path());
    database.configure(&mut config);
    config.delivery.enabled = false;
    config.delivery.webhook_url = Some(hookrelay::domain::EndpointUrl::parse(
        "https://hooks.zapier.com/hooks/catch/1/a/",
    )?);
    let relay = Relay::open(config).await?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let (relay, next) = (relay.clone(), Arc::clone(&next));
        let total = args.events;
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                relay.track_usage(event(n)).await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let elapsed = started.elapsed();
    println!(
        "== library: Relay::track_usage from {} tasks, durable commits [{}]",
        args.concurrency,
        database.label()
    );
    let rate = args.events as f64 / elapsed.as_secs_f64();
    println!(
        "ingest:    {rate:>9.0} events/s ({} events in {:.2} s)",
        args.events,
        elapsed.as_secs_f64()
    );
    Ok(targets::judge_library(args, database, rate))
}

async fn run(args: &Args, scenario: Scenario) -> anyhow::Result<Vec<Verdict>> {
    match scenario {
        Scenario::Library => library(args).await,
        Scenario::Targets => {
            let mut verdicts = Vec::new();
            for run_args in targets::target_runs(args) {
                verdicts.extend(Box::pin(run(&run_args, run_args.scenario)).await?);
                println!();
            }
            targets::summary(&verdicts);
            Ok(verdicts)
        }
        Scenario::All => {
            for scenario in [
                Scenario::Steady,
                Scenario::Flat,
                Scenario::Retry,
                Scenario::Slow,
                Scenario::Backlog,
                Scenario::FlakyFirst,
                Scenario::Poison,
                Scenario::Outage,
                Scenario::Library,
                Scenario::SignatureFlood,
            ] {
                Box::pin(run(args, scenario)).await?;
                println!();
            }
            Ok(Vec::new())
        }
        http => http_scenario(args, http).await,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, args.scenario)).map(drop)
}
