//! `hookrelay-bench`: measures hookrelay end to end on this machine.
//!
//! It starts `hookrelay serve` (the binary next to this one) on a fresh database, a fast
//! receiver in this process, drives usage events over keep-alive HTTP, and prints ingest
//! rate, delivery rate, ingest-to-delivery latency, CPU per 1,000 events and the server's peak
//! memory. `--library` measures `Relay::track_usage` in-process instead.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use clap::Parser;
use hookrelay::{Config, Relay, domain::UsageEvent};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{net::TcpListener, task::JoinSet};

#[derive(Debug, Parser)]
#[command(
    name = "hookrelay-bench",
    about = "Measure hookrelay's ingest and delivery on this machine"
)]
struct Args {
    /// Events to send (flat-out mode).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Concurrent HTTP clients (or tasks, with --library).
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Send at this many events per second instead of flat out (steady mode).
    #[arg(long)]
    rate: Option<u64>,
    /// How long a steady run lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Measure `Relay::track_usage` in this process instead of HTTP.
    #[arg(long)]
    library: bool,
    /// The receiver accepts this many requests per second and answers 429 with
    /// `Retry-After: 1` beyond (like Zapier or Slack at their limits).
    #[arg(long)]
    receiver_limit: Option<u64>,
    /// The hookrelay binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
}

/// The receiver: counts arrivals and their latency from the payload's acceptance timestamp.
#[derive(Default)]
struct Receiver {
    /// (allowed per second, current second, requests in it)
    limit: Mutex<Option<(u64, u64, u64)>>,
    throttled: AtomicU64,
    arrived: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    seen: Mutex<HashMap<String, u32>>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
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
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(accepted) = payload["timestamp"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        {
            let latency = (now - accepted).whole_microseconds().max(0);
            receiver
                .latencies_us
                .lock()
                .map(|mut l| l.push(latency as u64))
                .ok();
        }
        if let Some(id) = payload["event_id"].as_str() {
            receiver
                .seen
                .lock()
                .map(|mut s| *s.entry(id.to_owned()).or_default() += 1)
                .ok();
        }
    }
    receiver.arrived.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, [("x-bench", "ok")])
}

async fn start_receiver(limit: Option<u64>) -> anyhow::Result<(Arc<Receiver>, String)> {
    let receiver = Arc::new(Receiver {
        limit: Mutex::new(limit.map(|allowed| (allowed, 0, 0))),
        ..Receiver::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(receive))
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

struct Server {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(binary: &PathBuf, receiver_url: &str) -> anyhow::Result<Server> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .current_dir(dir.path())
        .env("HOOKRELAY_DATA_DIR", dir.path())
        .env("ZAPIER_WEBHOOK_URL", receiver_url)
        .env("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("HOOKRELAY_MAX_BODY_BYTES", "4194304")
        .env("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true")
        // The load comes from one address; the guide's default allows 100 requests per hour.
        .env("WEBHOOK_RATE_LIMIT", "10000000")
        .env("WEBHOOK_RATE_WINDOW", "1")
        .env("HOOKRELAY_MAX_CONCURRENT_REQUESTS", "4096")
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
        _dir: dir,
    })
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

fn report_latency(receiver: &Receiver) {
    let mut latencies = receiver
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    println!(
        "ingest-to-delivery latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len()
    );
    let repeats: u32 = receiver
        .seen
        .lock()
        .map(|s| s.values().map(|n| n - 1).sum())
        .unwrap_or(0);
    println!("repeated deliveries: {repeats}");
}

async fn post_event(http: &reqwest::Client, url: &str, n: u64) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&event(n))?;
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if response.status() != 202 {
        bail!("ingest answered {}", response.status());
    }
    Ok(())
}

async fn http_bench(args: &Args) -> anyhow::Result<()> {
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("hookrelay"),
    };
    let (receiver, receiver_url) = start_receiver(args.receiver_limit).await?;
    let server = start_server(&binary, &receiver_url)?;
    let pid = server.child.id();
    let url = format!("{}/api/webhook/usage", server.address);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let cpu_before = process_usage(pid).map_or(0.0, |u| u.0);

    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    let total = match args.rate {
        Some(rate) => rate * args.duration,
        None => args.events,
    };
    match args.rate {
        None => {
            for _ in 0..args.concurrency {
                let (http, url, sent) = (http.clone(), url.clone(), Arc::clone(&sent));
                clients.spawn(async move {
                    loop {
                        let n = sent.fetch_add(1, Ordering::SeqCst);
                        if n >= total {
                            return Ok::<_, anyhow::Error>(());
                        }
                        post_event(&http, &url, n).await?;
                    }
                });
            }
        }
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..total {
                ticker.tick().await;
                let (http, url) = (http.clone(), url.clone());
                clients.spawn(async move { post_event(&http, &url, n).await });
            }
        }
    }
    while let Some(result) = clients.join_next().await {
        result??;
    }
    let ingest_elapsed = started.elapsed();
    let delivered_at = wait_delivered(&receiver, total, Duration::from_secs(600)).await?;
    let delivery_elapsed = delivered_at - started;
    let (cpu_after, peak_mib) = process_usage(pid).unwrap_or((f64::NAN, f64::NAN));

    let mode = match args.rate {
        Some(rate) => format!("steady {rate} events/s for {} s", args.duration),
        None => format!("flat out, {} clients", args.concurrency),
    };
    println!("scenario: HTTP ingest, {mode}, {total} events");
    println!(
        "ingest: {:.0} events/s ({:.2} s)",
        total as f64 / ingest_elapsed.as_secs_f64(),
        ingest_elapsed.as_secs_f64()
    );
    println!(
        "delivered: {:.0} events/s (all {total} delivered {:.2} s after the first send)",
        total as f64 / delivery_elapsed.as_secs_f64(),
        delivery_elapsed.as_secs_f64()
    );
    report_latency(&receiver);
    if args.receiver_limit.is_some() {
        println!(
            "answered 429 by the receiver: {}",
            receiver.throttled.load(Ordering::SeqCst)
        );
        let dead = Command::new(&binary)
            .args(["dlq", "list", "--json"])
            .env_clear()
            .env("HOOKRELAY_DATA_DIR", server._dir.path())
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["count"].as_u64());
        println!(
            "dead letters: {}",
            dead.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        );
    }
    println!(
        "server CPU: {:.3} s per 1,000 events",
        (cpu_after - cpu_before) / total as f64 * 1000.0
    );
    println!("server peak RSS: {peak_mib:.1} MiB");
    Ok(())
}

async fn library_bench(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::with_data_dir(dir.path());
    config.webhook_enabled = false;
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
        "scenario: Relay::track_usage, {} tasks, {} events (durable commits)",
        args.concurrency, args.events
    );
    println!(
        "track_usage: {:.0} events/s ({:.2} s)",
        args.events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if args.library {
            library_bench(&args).await
        } else {
            http_bench(&args).await
        }
    })
}
