//! The load generator: usage events posted flat out over one connection per client, or at a
//! steady rate.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::http::StatusCode;
use tokio::task::JoinSet;

use crate::{POISON_PREFIX, event, is_poison};

/// Usage event `n` as JSON; with `poison`, one in 20 carries a poison session id.
fn event_body(n: u64, poison: bool) -> anyhow::Result<Vec<u8>> {
    let mut event = event(n);
    if poison && is_poison(n) {
        event.session_id = format!("{POISON_PREFIX}{n}");
    }
    Ok(serde_json::to_vec(&event)?)
}

async fn post_event(http: &reqwest::Client, url: &str, n: u64, poison: bool) -> anyhow::Result<()> {
    let body = event_body(n, poison)?;
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

/// One client's own keep-alive HTTP/1.1 connection. Flat out, a client sends its next event
/// once the last is answered, so a shared pool would only add a lock, a URL parse and a
/// lookup to every request: the load generator shares the machine with the server, and every
/// microsecond it spends is one the server does not get.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<axum::body::Body>,
    authority: String,
    path: String,
}

impl Connection {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let uri: axum::http::Uri = url.parse()?;
        let authority = uri.authority().context("no host in the URL")?.to_string();
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority,
            path: uri.path().to_owned(),
        })
    }

    /// Posts usage event `n`; anything but a 202 is an error.
    async fn post_event(&mut self, n: u64, poison: bool) -> anyhow::Result<()> {
        use axum::http::{Request, header};
        let body = event_body(n, poison)?;
        self.sender.ready().await?;
        let request = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20).await?;
        if status != StatusCode::ACCEPTED {
            bail!("ingest answered {status}");
        }
        Ok(())
    }
}

/// Sends `total` events flat out with `concurrency` clients, or at `rate` per second, spread
/// over the instances' `urls`; with `poison`, one event in 20 carries a poison session id.
pub(crate) async fn drive(
    urls: &[String],
    total: u64,
    concurrency: u64,
    rate: Option<u64>,
    poison: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut clients = JoinSet::new();
    match rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            for client in 0..concurrency as usize {
                let url = urls[client % urls.len()].clone();
                let next = Arc::clone(&next);
                clients.spawn(async move {
                    let mut connection = Connection::open(&url).await?;
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= total {
                            return Ok::<_, anyhow::Error>(());
                        }
                        connection.post_event(n, poison).await?;
                    }
                });
            }
        }
        Some(rate) => {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency as usize)
                .build()?;
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..total {
                ticker.tick().await;
                let (http, url) = (http.clone(), urls[n as usize % urls.len()].clone());
                clients.spawn(async move { post_event(&http, &url, n, poison).await });
            }
        }
    }
    while let Some(result) = clients.join_next().await {
        result??;
    }
    Ok(started.elapsed())
}
