//! Faults survived: receivers that misbehave at the TCP level, a full disk under SQLite,
//! PostgreSQL connections cut under load. Each ends with nothing acknowledged lost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hookrelay::{Relay, store::AttemptView};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::helpers::{config, usage};

/// How a raw TCP receiver treats each connection, after reading the request.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Reads the request and never answers.
    Silent,
    /// Sends a 503 status line and headers, then one body byte every 100 ms.
    Drip,
    /// Resets the connection before answering anything.
    ResetBeforeAnswer,
    /// Sends a 503 with the start of its body, then resets the connection.
    ResetMidBody,
    /// Answers 503 with a 100 MB body, written as fast as the peer takes it.
    HugeBody,
    /// Answers a TLS ClientHello with plain HTTP (not a TLS server).
    NotTls,
    /// Closes the connection after reading the ClientHello.
    CloseDuringHandshake,
}

const HUGE: u64 = 100 * 1024 * 1024;

/// A receiver that misbehaves; `written` counts the body bytes the peer accepted.
async fn misbehaving(kind: Misbehaviour) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, kind, Arc::clone(&counter)));
        }
    });
    let scheme = match kind {
        Misbehaviour::NotTls | Misbehaviour::CloseDuringHandshake => "https",
        _ => "http",
    };
    (format!("{scheme}://{addr}/hook"), written)
}

async fn serve(mut stream: TcpStream, kind: Misbehaviour, written: Arc<AtomicU64>) {
    let mut request = vec![0_u8; 64 * 1024];
    if stream.read(&mut request).await.unwrap_or(0) == 0 {
        return;
    }
    let reset = |stream: TcpStream| {
        // Linger 0: close sends RST instead of FIN.
        let _ = stream.set_zero_linger();
        drop(stream);
    };
    match kind {
        Misbehaviour::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Misbehaviour::Drip => {
            let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100000\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
        Misbehaviour::ResetBeforeAnswer => reset(stream),
        Misbehaviour::ResetMidBody => {
            let head =
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\n\r\npartial body";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(stream);
        }
        Misbehaviour::HugeBody => {
            let head =
                format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {HUGE}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'z'; 64 * 1024];
            while written.load(Ordering::SeqCst) < HUGE {
                match stream.write(&chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => written.fetch_add(n as u64, Ordering::SeqCst),
                };
            }
        }
        Misbehaviour::NotTls => {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        Misbehaviour::CloseDuringHandshake => drop(stream),
    }
}

/// One event to `url`, one attempt (no retries), driven by the worker's single step on the
/// real clock; returns that attempt and how long the step took.
async fn one_attempt(url: &str) -> (AttemptView, Duration) {
    let dir = tempfile::tempdir().expect("dir");
    let relay = Relay::open(config(
        dir.path(),
        &[
            ("ZAPIER_WEBHOOK_URL", url),
            ("WEBHOOK_TIMEOUT_SECONDS", "1"),
            ("WEBHOOK_MAX_RETRIES", "0"),
        ],
    ))
    .await
    .expect("open");
    relay.track_usage(usage("s")).await.expect("track");
    let started = Instant::now();
    relay.worker().run_once().await.expect("run");
    let took = started.elapsed();
    let dead = relay.dead_letters(1).await.expect("dlq");
    assert_eq!(dead.len(), 1, "the only attempt failed: dead-lettered");
    let detail = relay
        .delivery(dead[0].id.clone())
        .await
        .expect("detail")
        .expect("exists");
    assert_eq!(detail.attempts_log.len(), 1);
    (detail.attempts_log[0].clone(), took)
}

#[tokio::test]
async fn misbehaving_receivers_end_within_the_timeout_with_a_clear_error_kind() {
    struct Row {
        kind: Misbehaviour,
        error_kind: &'static str,
        status: Option<u16>,
        snippet: fn(&str) -> bool,
    }
    let table = [
        Row {
            kind: Misbehaviour::Silent,
            error_kind: "timeout",
            status: None,
            snippet: str::is_empty,
        },
        Row {
            // The status is the answer; the body only fills the log for the time left.
            kind: Misbehaviour::Drip,
            error_kind: "status",
            status: Some(503),
            snippet: |s| s.len() <= 12 && s.bytes().all(|b| b == b'x'),
        },
        Row {
            kind: Misbehaviour::ResetBeforeAnswer,
            error_kind: "network",
            status: None,
            snippet: str::is_empty,
        },
        Row {
            kind: Misbehaviour::ResetMidBody,
            error_kind: "status",
            status: Some(503),
            snippet: |s| s == "partial body",
        },
        Row {
            kind: Misbehaviour::HugeBody,
            error_kind: "status",
            status: Some(503),
            snippet: |s| s.len() == 512 && s.bytes().all(|b| b == b'z'),
        },
        Row {
            kind: Misbehaviour::NotTls,
            error_kind: "tls",
            status: None,
            snippet: str::is_empty,
        },
        Row {
            kind: Misbehaviour::CloseDuringHandshake,
            error_kind: "tls",
            status: None,
            snippet: str::is_empty,
        },
    ];
    for row in table {
        let (url, written) = misbehaving(row.kind).await;
        let (attempt, took) = one_attempt(&url).await;
        let kind = row.kind;
        assert_eq!(
            attempt.error_kind.as_deref(),
            Some(row.error_kind),
            "{kind:?}: {attempt:?}"
        );
        assert_eq!(attempt.status_code, row.status, "{kind:?}");
        let snippet = attempt.response_snippet.clone().unwrap_or_default();
        assert!((row.snippet)(&snippet), "{kind:?}: snippet {snippet:?}");
        // WEBHOOK_TIMEOUT_SECONDS=1; the step also writes the outcome to the database.
        assert!(
            attempt.duration_ms <= 1_200 && took < Duration::from_secs(3),
            "{kind:?}: attempt took {} ms, the step {took:?}",
            attempt.duration_ms
        );
        if let Misbehaviour::HugeBody = kind {
            // Reading stopped at the snippet: what the receiver could push is what fits in
            // the sockets' buffers, not the 100 MB it offered.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last = u64::MAX;
            while written.load(Ordering::SeqCst) != last {
                assert!(Instant::now() < deadline, "the receiver kept writing");
                last = written.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                last < HUGE / 4,
                "the receiver wrote {last} bytes of its {HUGE}"
            );
        }
    }
}

/// A size-limited tmpfs of the test's own, unmounted when dropped (after what uses it).
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// Mounts `size` bytes of tmpfs, or says why it cannot (mounting needs root). Set
    /// `HOOKRELAY_REQUIRE_FAULT_TESTS=1` (CI does) to fail instead of skipping.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir: Some(dir) }),
            other => {
                let why = format!("cannot mount a tmpfs for the disk-full test: {other:?}");
                assert!(
                    std::env::var("HOOKRELAY_REQUIRE_FAULT_TESTS").is_err(),
                    "{why}"
                );
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.as_ref().expect("mounted").path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status();
        }
    }
}

/// Fills the file system at `dir` to the last byte; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0_u8; 4096];
    while file.write_all(&block).is_ok() {}
    while file.write_all(&[0]).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_what_was_acknowledged_and_recovers_without_restart() {
    if crate::helpers::sqlite_only("it fills the disk under the SQLite file") {
        return;
    }
    let Some(disk) = SmallDisk::mount("6m") else {
        return;
    };
    let receiver = crate::helpers::TestReceiver::start().await;
    // Deliveries wait until the disk is freed, so what was acknowledged is still pending.
    receiver.always(crate::helpers::Reply::status(503));
    let data = tempfile::TempDir::new_in(disk.path()).expect("data dir");
    let app = crate::helpers::TestApp::spawn_with(
        config(
            data.path(),
            &[
                ("ZAPIER_WEBHOOK_URL", &receiver.url()),
                ("WEBHOOK_RETRY_DELAY_SECONDS", "0.05"),
                ("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "0"),
            ],
        ),
        tempfile::tempdir().expect("unused dir"),
        Arc::new(hookrelay::clock::SystemClock),
    )
    .await;

    let mut acknowledged = Vec::new();
    let post = |n: usize| {
        let app = &app;
        async move {
            app.post_json(
                "/api/webhook/usage",
                &crate::helpers::usage_event(&format!("disk-{n}")),
            )
            .await
        }
    };
    let filler = fill(disk.path());
    let mut refused = None;
    for n in 0..20_000 {
        let response = post(n).await;
        match response.status().as_u16() {
            202 => {
                let body: serde_json::Value = response.json().await.expect("json");
                acknowledged.push(body["id"].as_str().expect("id").to_owned());
            }
            status => {
                let retry_after = response.headers().get("retry-after").cloned();
                let body: serde_json::Value = response.json().await.expect("a JSON error");
                refused = Some((status, body, retry_after));
                break;
            }
        }
    }
    let (status, body, retry_after) = refused.expect("the full disk refused an event");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["code"], "storage_full", "{body}");
    assert!(retry_after.is_some(), "a refusal says when to retry");
    // Refused again and again, the same way, while the disk stays full.
    for n in 0..20 {
        assert_eq!(post(100_000 + n).await.status(), 507);
    }
    // The database is sound and holds every acknowledged event.
    {
        let db = rusqlite::Connection::open_with_flags(
            data.path().join("hookrelay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open");
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    }
    let counts = app.relay.counts().await.expect("counts");
    assert!(
        counts.pending as usize >= acknowledged.len(),
        "{} acknowledged, {} pending",
        acknowledged.len(),
        counts.pending
    );

    // Space comes back: ingest and delivery resume without a restart.
    std::fs::remove_file(filler).expect("free space");
    receiver.always(crate::helpers::Reply::status(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = post(200_000).await;
        if response.status() == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::helpers::eventually(Duration::from_secs(30), "the queue drained", || {
        let app = &app;
        async move {
            app.relay
                .counts()
                .await
                .is_ok_and(|c| c.pending == 0 && c.dead == 0)
        }
    })
    .await;
    let arrived: std::collections::HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|r| r.json()["event_id"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !arrived.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    drop(app);
    drop(data);
    drop(disk);
}
