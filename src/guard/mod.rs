//! Inbound protection for ingest, as pure decisions: IP allowlist (with forwarded headers
//! believed only from trusted proxies), signature verification, per-client rate limiting.
//! Each check answers `Ok` or a typed [`Rejection`]; the axum middleware that runs them in
//! order and turns a rejection into a response lives in `api::guard`. [`admin`] decides who may
//! manage hookrelay, for the management API and the dashboard alike.

pub mod admin;
mod client;
mod ratelimit;
mod signature;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::http::HeaderMap;
use ipnet::IpNet;

pub use self::{
    client::{Client, client_ip},
    ratelimit::{RateLimiter, RateState},
    signature::{SignatureError, Verified, Verifier},
};
use crate::{
    clock::Clock,
    config::{Config, ForwardedHeader},
};

/// Why a request was refused before any handler saw it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The client's address is outside `WEBHOOK_ALLOWED_IPS`.
    #[error("{0} is not allowed to send events (WEBHOOK_ALLOWED_IPS)")]
    AddressNotAllowed(IpAddr),
    /// An allowlist is set and the trusted proxy's entry for the client is not an address.
    #[error(
        "the client's address could not be read from the header proxy {via} wrote, so WEBHOOK_ALLOWED_IPS cannot admit it"
    )]
    Unidentified {
        /// The trusted proxy that forwarded the request.
        via: IpAddr,
    },
    /// The body is over `HOOKRELAY_MAX_BODY_BYTES` (this many bytes) or could not be read.
    #[error(
        "the body exceeds the limit of {0} bytes (HOOKRELAY_MAX_BODY_BYTES) or could not be read; send fewer events per request"
    )]
    BodyTooLarge(usize),
    /// The signature is missing, wrong, stale or replayed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The client is over its allowance.
    #[error(
        "over the allowance of {requests} requests per {} s (WEBHOOK_RATE_LIMIT per WEBHOOK_RATE_WINDOW), \
         which refills continuously, one request every {} s, with up to {} at once \
         (WEBHOOK_BURST_ALLOWANCE adds {burst}); retry in {} s",
        .window.as_secs(), .window.as_secs_f64() / f64::from((*.requests).max(1)), .state.limit,
        .state.retry_after_seconds
    )]
    RateLimited {
        /// Where the client stands.
        state: RateState,
        /// `WEBHOOK_RATE_LIMIT`: requests per window.
        requests: u32,
        /// `WEBHOOK_RATE_WINDOW`.
        window: Duration,
        /// `WEBHOOK_BURST_ALLOWANCE`.
        burst: u32,
    },
    /// More requests in progress than `HOOKRELAY_MAX_CONCURRENT_REQUESTS`.
    #[error("too many requests in progress; retry shortly")]
    Overloaded,
    /// The request took longer than `HOOKRELAY_REQUEST_TIMEOUT_SECONDS`.
    #[error(
        "the request took longer than {} s (HOOKRELAY_REQUEST_TIMEOUT_SECONDS)",
        .0.as_secs_f64()
    )]
    TimedOut(Duration),
}

impl Rejection {
    /// A stable code for the API body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AddressNotAllowed(_) | Self::Unidentified { .. } => "forbidden",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Signature(error) => error.code(),
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::TimedOut(_) => "request_timeout",
        }
    }
}

/// A request the guard let through.
#[derive(Debug)]
pub struct Admitted {
    /// The signature that matched, when ingest is signed.
    pub verified: Option<Verified>,
    /// The client's allowance after this request.
    pub rate: RateState,
}

/// Everything ingest requests pass through before a handler sees them.
pub struct Guard {
    allowed_ips: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
    verifier: Verifier,
    limiter: RateLimiter,
    max_body_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allowed_ips", &self.allowed_ips)
            .field("signed", &self.verifier.enabled())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// The guard the configuration describes.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        Self {
            allowed_ips: config.ingest.allowed_ips.clone(),
            trusted_proxies: config.ingest.trusted_proxies.clone(),
            forwarded_header: config.ingest.forwarded_header,
            verifier: Verifier::new(
                config.ingest.secrets.clone(),
                config.signing.header.clone(),
                config.signing.algorithm,
                crate::clock::millis(config.ingest.signature_tolerance),
                config.ingest.accept_body_signature,
            ),
            limiter: RateLimiter::new(
                config.ingest.rate_limit,
                config.ingest.rate_window,
                config.ingest.burst_allowance,
            ),
            max_body_bytes: config.server.max_body_bytes,
            clock,
        }
    }

    /// The rate limiter, for `ratelimit status`.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The current time on the guard's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Most bytes an ingest body may have.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The client behind `peer` (believing forwarding headers only from trusted proxies),
    /// refused when an allowlist is set and it is not on it, or cannot be identified.
    pub fn admit_address(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Client, Rejection> {
        let client = client_ip(peer, headers, &self.trusted_proxies, self.forwarded_header);
        if self.allowed_ips.is_empty() {
            return Ok(client);
        }
        match client {
            Client::Address(ip) if self.allowed_ips.iter().any(|net| net.contains(&ip)) => {
                Ok(client)
            }
            Client::Address(ip) => {
                tracing::warn!(client = %ip, "ingest refused: address not in WEBHOOK_ALLOWED_IPS");
                Err(Rejection::AddressNotAllowed(ip))
            }
            Client::Unidentified { via } => {
                tracing::warn!(proxy = %via, "ingest refused: the proxy's entry for the client is not an address");
                Err(Rejection::Unidentified { via })
            }
        }
    }

    /// Charges the client's address, then checks the signature, then charges the signer's
    /// key. The address comes first so that a client over its allowance costs no HMAC, and
    /// failed signatures count against it, so guessing is rate-limited too.
    pub fn admit(
        &self,
        client: Client,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Admitted, Rejection> {
        let now = self.clock.now_ms();
        let address = rate_bucket(client);
        let by_address = self.limiter.check(&address, now).map_err(|state| {
            tracing::warn!(client = address, "ingest refused: rate limit");
            self.rate_limited(state)
        })?;
        let verified = self.verifier.verify(headers, body, now).map_err(|error| {
            tracing::warn!(
                client = address,
                reason = error.code(),
                "ingest refused: bad signature"
            );
            Rejection::from(error)
        })?;
        let Some(verified) = verified else {
            return Ok(Admitted {
                verified: None,
                rate: by_address,
            });
        };
        // A fleet of gateways behind many addresses shares its key's allowance.
        let key = format!("key:{}", verified.key);
        match self.limiter.check(&key, now) {
            Ok(rate) => Ok(Admitted {
                verified: Some(verified),
                rate,
            }),
            Err(state) => {
                tracing::warn!(client = key, "ingest refused: rate limit");
                Err(self.rate_limited(state))
            }
        }
    }

    fn rate_limited(&self, state: RateState) -> Rejection {
        let (requests, burst) = self.limiter.allowance();
        Rejection::RateLimited {
            state,
            requests,
            window: self.limiter.window(),
            burst,
        }
    }
}

/// The rate limiter's key for a client's address. An IPv6 client usually holds a whole /64:
/// it is limited as one, or rotating addresses inside it would evade the limit and flood the
/// limiter's table. Clients a proxy could not identify share one allowance per proxy.
fn rate_bucket(client: Client) -> String {
    match client {
        Client::Address(IpAddr::V6(v6)) => ipnet::Ipv6Net::new(v6, 64)
            .map_or_else(|_| v6.to_string(), |net| net.trunc().to_string()),
        Client::Address(ip) => ip.to_string(),
        Client::Unidentified { via } => format!("unidentified via {via}"),
    }
}
