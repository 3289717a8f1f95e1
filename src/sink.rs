//! `hookrelay sink`: a local receiver that stands in for a Zapier catch hook. It prints what
//! arrives, verifies both signatures when it knows the secret (answering 401 to a bad one, as
//! a real verifier would), and can be told to fail, so the whole flow, retries and dead
//! letters included, can be watched without a Zapier account.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::any,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    domain::{SignatureAlgorithm, SigningSecret, rfc3339},
    signing::{self, VerifyError},
};

/// How the sink behaves.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Verify signatures with this secret.
    pub secret: Option<SigningSecret>,
    /// The guide's signature header to verify.
    pub signature_header: String,
    /// Its algorithm.
    pub signature_algorithm: SignatureAlgorithm,
    /// Status answered to requests that are not failed on purpose.
    pub status: StatusCode,
    /// Answer 500 to the first N requests.
    pub fail_first: u64,
    /// Print only one line per request.
    pub quiet: bool,
}

struct SinkState {
    options: SinkOptions,
    received: AtomicU64,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn verdict(result: Result<(), VerifyError>) -> &'static str {
    match result {
        Ok(()) => "valid",
        Err(VerifyError::Missing) => "MISSING",
        Err(VerifyError::Mismatch) => "INVALID",
        Err(VerifyError::TooMany) => "TOO MANY SIGNATURES",
    }
}

async fn receive(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = state.received.fetch_add(1, Ordering::SeqCst) + 1;
    let options = &state.options;
    let id = header(&headers, "webhook-id").unwrap_or("-");
    let mut signature_ok = true;
    let mut checks = Vec::new();
    if let Some(secret) = &options.secret {
        let timestamp = header(&headers, "webhook-timestamp").and_then(|t| t.parse::<i64>().ok());
        let standard = match (timestamp, header(&headers, "webhook-signature")) {
            (Some(ts), Some(sig)) => signing::verify_standard(secret, id, ts, &body, sig),
            _ => Err(VerifyError::Missing),
        };
        let legacy = match header(&headers, &options.signature_header) {
            Some(sig) => signing::verify_legacy(secret, options.signature_algorithm, &body, sig),
            None => Err(VerifyError::Missing),
        };
        signature_ok = standard.is_ok() && legacy.is_ok();
        checks.push(format!("webhook-signature {}", verdict(standard)));
        checks.push(format!("{} {}", options.signature_header, verdict(legacy)));
    }
    let status = if n <= options.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if !signature_ok {
        StatusCode::UNAUTHORIZED
    } else {
        options.status
    };
    let now = rfc3339(SystemClock.now_ms());
    let signature = if checks.is_empty() {
        "signature not checked (no secret)".to_owned()
    } else {
        checks.join(", ")
    };
    println!(
        "#{n} {now} webhook-id={id} → {} | {signature}",
        status.as_u16()
    );
    if !options.quiet {
        let pretty = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        println!("{pretty}\n");
    }
    status
}

/// Serves the sink on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    options: SinkOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(SinkState {
        options,
        received: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/", any(receive))
        .route("/{*path}", any(receive))
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
