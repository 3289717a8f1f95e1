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
