//! The outbound HTTP client: pooled keep-alive connections, no redirects, no proxies, a hard
//! per-request timeout, and only the first bytes of a response body read.

use std::{error::Error as _, sync::Arc, time::Duration};

use bytes::Bytes;
use reqwest::{
    StatusCode,
    header::{HeaderMap, RETRY_AFTER},
    redirect,
};

use super::ssrf::GuardedResolver;
use crate::domain::{AddressPolicy, BlockedAddress, EndpointUrl};

/// How much of a response body is kept in the attempt log.
pub const SNIPPET_BYTES: usize = 512;

/// What came back from a receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The `Location` header of a redirect (which is not followed); [`super::attempt::send`]
    /// replaces it with a description that hides its path.
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
    /// Could not connect (refused, unreachable, DNS).
    #[error("connection failed: {0}")]
    Connect(String),
    /// Connected, but the TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The connection failed mid-request.
    #[error("request failed: {0}")]
    Network(String),
    /// The destination address is not allowed.
    #[error(transparent)]
    Blocked(BlockedAddress),
    /// The endpoint URL is plain http while `REQUIRE_HTTPS=true`: refused before connecting.
    #[error("the endpoint URL is http:// while REQUIRE_HTTPS=true")]
    Insecure,
}

impl SendError {
    /// A short kind for the attempt log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Network(_) => "network",
            Self::Blocked(_) => "blocked",
            Self::Insecure => "insecure",
        }
    }
}

/// A shared HTTP client for deliveries.
#[derive(Debug, Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// The cause chain of a reqwest error (whose URL the caller removed: it may be a credential).
fn describe(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.dedup();
    parts.join(": ")
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

    /// POSTs `body` with `headers`. The answer (status and headers) must come within
    /// `timeout`; the first bytes of the body are read within what is left of it.
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
        // The status line and headers must arrive within the timeout; the body is read only
        // for the attempt log, for what is left of it. Once the status is in, it is the
        // receiver's answer: a body that drips, breaks or never ends shortens the log only.
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = self
            .client
            .post(url.as_str())
            .headers(headers)
            .body(body)
            .send();
        let mut response = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => response,
            // The URL may be a credential: out of the error before anything reads it.
            Ok(Err(error)) => return Err(classify(&error.without_url(), url)),
            Err(_) => return Err(SendError::Timeout(timeout)),
        };
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
        // Read only what the attempt log keeps; dropping the response then closes the
        // connection instead of draining a huge or endless body.
        while snippet.len() < SNIPPET_BYTES {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => snippet.extend_from_slice(&chunk),
                Ok(Ok(None) | Err(_)) | Err(_) => break,
            }
        }
        snippet.truncate(SNIPPET_BYTES);
        Ok(Response {
            status,
            retry_after,
            location,
            snippet: String::from_utf8_lossy(&snippet).into_owned(),
        })
    }
}

fn classify(error: &reqwest::Error, url: &EndpointUrl) -> SendError {
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
    } else if error.is_connect() && url.url().scheme() == "https" && tls_failed(error) {
        SendError::Tls(detail)
    } else if error.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Network(detail)
    }
}

/// Whether a connect error happened after TCP was up: a TLS error, or what making a TCP
/// connection never fails with (bad data, an early end of stream) while a handshake does.
fn tls_failed(error: &reqwest::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if is_tls(cause) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An I/O error's `source()` skips the error it wraps, so wrapped ones are opened here.
fn is_tls(cause: &(dyn std::error::Error + 'static)) -> bool {
    if cause.is::<rustls::Error>() {
        return true;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) => {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) || io.get_ref().is_some_and(|inner| is_tls(inner))
        }
        None => false,
    }
}
