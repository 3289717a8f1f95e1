//! The outbound HTTP client: pooled keep-alive connections, no redirects, no proxies, a hard
//! per-request timeout, and only the first bytes of a response body read.

use std::{error::Error as _, sync::Arc, time::Duration};

use bytes::Bytes;
use reqwest::{
    StatusCode,
    header::{HeaderMap, RETRY_AFTER},
    redirect,
};

use super::ssrf::{AddressPolicy, BlockedAddress, GuardedResolver};
use crate::domain::EndpointUrl;

/// How much of a response body is kept in the attempt log.
pub const SNIPPET_BYTES: usize = 512;

/// What came back from a receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The `Location` header of a redirect (which is not followed).
    pub location: Option<String>,
    /// The first bytes of the body, lossily decoded.
    pub snippet: String,
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No complete response within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect (refused, unreachable, DNS, TLS).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection failed mid-request.
    #[error("request failed: {0}")]
    Network(String),
    /// The destination address is not allowed.
    #[error(transparent)]
    Blocked(BlockedAddress),
}

/// A shared HTTP client for deliveries.
#[derive(Debug, Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// The cause chain of a reqwest error without the URL, which may be a credential.
fn describe(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        // reqwest's own message includes the URL, which must not be logged.
        parts.push(error_without_url(error));
    }
    parts.dedup();
    parts.join(": ")
}

fn error_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(url.as_str(), "[url]"),
        None => text,
    }
}

impl HttpSender {
    /// Builds the client. `pool_per_host` keeps that many idle connections per receiver;
    /// `policy` says which addresses may be contacted.
    pub fn new(pool_per_host: usize, policy: AddressPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&policy))))
            .redirect(redirect::Policy::none())
            // A proxy variable in the environment must not divert (or unmask) deliveries.
            .no_proxy()
            .pool_max_idle_per_host(pool_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, policy })
    }

    /// POSTs `body` with `headers`; the whole exchange, body included, is bounded by `timeout`.
    pub async fn post(
        &self,
        url: &EndpointUrl,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        // IP-literal hosts never reach the resolver: check them here.
        self.policy
            .check_url(url.url())
            .map_err(SendError::Blocked)?;
        let exchange = async {
            let mut response = self
                .client
                .post(url.as_str())
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            let status = response.status();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header(RETRY_AFTER);
            let location = header(reqwest::header::LOCATION);
            let mut snippet = Vec::new();
            // Read only what the attempt log keeps; a huge or endless body is not our problem.
            while snippet.len() < SNIPPET_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                    Ok(None) => break,
                    // The status already tells the outcome; a broken body only shortens the log.
                    Err(_) => break,
                }
            }
            snippet.truncate(SNIPPET_BYTES);
            Ok(Response {
                status,
                retry_after,
                location,
                snippet: String::from_utf8_lossy(&snippet).into_owned(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }
}

fn classify(error: &reqwest::Error) -> SendError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(blocked) = cause.downcast_ref::<BlockedAddress>() {
            return SendError::Blocked(blocked.clone());
        }
        source = cause.source();
    }
    let detail = describe(error);
    if error.is_timeout() {
        SendError::Timeout(Duration::ZERO)
    } else if error.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Network(detail)
    }
}
