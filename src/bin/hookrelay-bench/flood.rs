//! The signature-flood scenario: what a request stuffed with signature candidates costs the
//! server, beside a validly signed one (issue 14).

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::{Args, Database, Scenario, process_usage, server_binary, start_server};

/// The ingest secrets of the signature-flood scenario (two, as during a rotation: every
/// candidate used to cost one HMAC per secret).
pub(crate) const SECRETS: [&str; 2] = [
    "flood-secret-one-0123456789abcdef0123456789",
    "flood-secret-two-0123456789abcdef0123456789",
];

/// Requests of each kind the signature-flood scenario sends.
const REQUESTS: u32 = 20;

pub(crate) async fn signature_flood(args: &Args, database: &Database) -> anyhow::Result<()> {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};

    let dir = tempfile::tempdir()?;
    let server = start_server(
        args,
        &server_binary(args)?,
        dir.path(),
        "http://127.0.0.1:9/",
        database,
        Scenario::SignatureFlood,
    )?;
    let pid = server.child.id();
    let url = format!("{}/api/webhook/usage", server.address);
    let http = reqwest::Client::new();
    let body = Bytes::from(vec![b' '; 1 << 20]);
    let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let send = |signature: String| {
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", "msg_flood")
            .header("webhook-timestamp", &timestamp)
            .header("webhook-signature", signature)
            .body(body.clone());
        async move { Ok::<u16, anyhow::Error>(request.send().await?.status().as_u16()) }
    };
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRETS[1].as_bytes()).context("hmac key")?;
    mac.update(format!("msg_flood.{timestamp}.").as_bytes());
    mac.update(&body);
    let valid = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let stuffed = "v1, ".repeat(3_900);

    for (name, signature) in [
        ("validly signed", valid),
        ("stuffed signature", stuffed.clone()),
    ] {
        let status = send(signature.clone()).await?; // warm-up
        let before = process_usage(pid).map_or(f64::NAN, |(cpu, _)| cpu);
        let started = Instant::now();
        for _ in 0..REQUESTS {
            send(signature.clone()).await?;
        }
        let cpu = process_usage(pid).map_or(f64::NAN, |(cpu, _)| cpu) - before;
        println!(
            "{name:<18} 1 MB body: answered {status}, server CPU {:.1} ms per request, {:.1} ms wall",
            cpu * 1000.0 / f64::from(REQUESTS),
            started.elapsed().as_secs_f64() * 1000.0 / f64::from(REQUESTS)
        );
    }
    let mut attacks = JoinSet::new();
    for _ in 0..4 {
        attacks.spawn(send(stuffed.clone()));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    http.get(format!("{}/health", server.address))
        .send()
        .await?;
    println!(
        "GET /health while 4 stuffed requests run: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    while let Some(done) = attacks.join_next().await {
        done??;
    }
    Ok(())
}
