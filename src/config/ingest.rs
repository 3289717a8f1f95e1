//! Ingest: who may send events (signatures, allowlist, trusted proxies), how often, and
//! what of a prompt is kept.

use std::{str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Serialize;

use super::Reader;
use crate::domain::SigningSecret;

/// How events are taken in.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `HOOKRELAY_INGEST_SECRET`: secrets ingest clients sign with (comma-separated, for
    /// rotation). Set: every ingest request must be signed. Separate from `WEBHOOK_SECRET`, so
    /// whoever verifies our deliveries cannot forge events into us.
    pub secrets: Vec<SigningSecret>,
    /// `HOOKRELAY_SIGNATURE_TOLERANCE_SECONDS` (default 300): how far a Standard Webhooks
    /// `webhook-timestamp` may be from now, and how long `webhook-id`s are remembered against replay.
    pub signature_tolerance: Duration,
    /// `HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE` (default true): accept the guide's scheme
    /// (`X-Webhook-Signature`, an HMAC of the body alone) beside Standard Webhooks. It has no
    /// timestamp or id, so a captured request can be replayed at any time; set false once every
    /// client signs with Standard Webhooks.
    pub accept_body_signature: bool,
    /// `WEBHOOK_RATE_LIMIT` (default 100): ingest requests per client per window.
    pub rate_limit: u32,
    /// `WEBHOOK_RATE_WINDOW` (default 3600 s): the window of `rate_limit`.
    pub rate_window: Duration,
    /// `WEBHOOK_BURST_ALLOWANCE` (default 10): extra requests allowed in a burst.
    pub burst_allowance: u32,
    /// `WEBHOOK_ALLOWED_IPS`: CIDRs allowed to call ingest (empty: everyone).
    pub allowed_ips: Vec<IpNet>,
    /// `HOOKRELAY_TRUSTED_PROXIES`: CIDRs of reverse proxies whose `X-Forwarded-For` /
    /// `Forwarded` headers are believed. Empty (default): those headers are ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// `HOOKRELAY_FORWARDED_HEADER` (default `x-forwarded-for`; or `forwarded`): the one
    /// header the trusted proxies append the client's address to.
    pub forwarded_header: ForwardedHeader,
    /// `HOOKRELAY_QUERY_MODE` (default `summary`): what `query.summary` carries.
    pub query_mode: QueryMode,
}

impl IngestSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let rate_limit = r.number("WEBHOOK_RATE_LIMIT", 100, 1, 10_000_000) as u32;
        let rate_window = r.seconds("WEBHOOK_RATE_WINDOW", 3600.0, 1.0, 86_400.0);
        let burst_allowance = r.number("WEBHOOK_BURST_ALLOWANCE", 10, 0, 10_000_000) as u32;
        let allowed_ips = r.cidrs("WEBHOOK_ALLOWED_IPS");
        let query_mode = r.parsed(
            "HOOKRELAY_QUERY_MODE",
            QueryMode::Summary,
            "summary, full, hash or omit",
        );
        let secrets = read_secrets(r);
        let signature_tolerance = r.seconds(
            "HOOKRELAY_SIGNATURE_TOLERANCE_SECONDS",
            300.0,
            1.0,
            86_400.0,
        );
        let accept_body_signature = r.bool("HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE", true);
        if accept_body_signature && !secrets.is_empty() {
            r.warn(
                "HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE",
                "is true: ingest accepts the guide's body-only signature, and a captured request signed that way can be replayed at any time",
                "sign ingest requests with Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature), then set it to false",
            );
        }
        let trusted_proxies = r.cidrs("HOOKRELAY_TRUSTED_PROXIES");
        let forwarded_header = r.parsed(
            "HOOKRELAY_FORWARDED_HEADER",
            ForwardedHeader::XForwardedFor,
            "x-forwarded-for or forwarded",
        );
        Self {
            secrets,
            signature_tolerance,
            accept_body_signature,
            rate_limit,
            rate_window,
            burst_allowance,
            allowed_ips,
            trusted_proxies,
            forwarded_header,
            query_mode,
        }
    }
}

fn read_secrets(r: &mut Reader<'_>) -> Vec<SigningSecret> {
    let Some(raw) = r.raw("HOOKRELAY_INGEST_SECRET") else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    for (n, part) in raw
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        match SigningSecret::parse(part) {
            Ok(secret) => {
                if secret.key().len() < 32 {
                    r.warn(
                        "HOOKRELAY_INGEST_SECRET",
                        format!(
                            "secret #{} is only {} bytes long",
                            n + 1,
                            secret.key().len()
                        ),
                        "use at least 32 random bytes, e.g. `openssl rand -hex 32`",
                    );
                }
                secrets.push(secret);
            }
            Err(e) => r.error(
                "HOOKRELAY_INGEST_SECRET",
                format!("secret #{}: {e}", n + 1),
                "use `openssl rand -hex 32`, several separated by commas",
            ),
        }
    }
    secrets
}

/// How much of a usage event's prompt leaves hookrelay in `query.summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// The first 50 characters, plus `...` when longer (default).
    #[default]
    Summary,
    /// The whole prompt.
    Full,
    /// `sha256:<hex>` of the prompt: lets a sheet group identical prompts without holding them.
    Hash,
    /// No `summary` field at all.
    Omit,
}

impl FromStr for QueryMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "summary" => Ok(Self::Summary),
            "full" => Ok(Self::Full),
            "hash" => Ok(Self::Hash),
            "omit" => Ok(Self::Omit),
            other => Err(format!("unknown mode `{other}`")),
        }
    }
}

/// Which header the trusted proxies write the client chain into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!("unknown header `{other}`")),
        }
    }
}
