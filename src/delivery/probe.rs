//! `hookrelay test`: checks an endpoint step by step (URL, DNS, connect, a signed test event)
//! so an operator sees exactly where a broken setup fails.

use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpStream;

use super::{HttpSender, Target, signed_headers};
use crate::{
    domain::{AddressPolicy, EventId, EventType},
    ingest::generic_payload,
};

/// One checked step.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStep {
    /// `url`, `dns`, `connect` or `deliver`.
    pub step: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How long it took.
    pub duration_ms: u64,
}

/// The result of probing an endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The endpoint, without its path (which may be a credential).
    pub endpoint: String,
    /// Every step run, in order; the probe stops at the first failure.
    pub steps: Vec<ProbeStep>,
    /// The status the test event got.
    pub status: Option<u16>,
    /// The test event's round trip.
    pub latency_ms: Option<u64>,
    /// True when every step passed.
    pub ok: bool,
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Probes `target`; with `require_https`, a plain `http://` URL fails the first step, and an
/// address the policy refuses fails the `dns` step.
pub async fn probe(
    target: &Target,
    require_https: bool,
    policy: &AddressPolicy,
    sender: &HttpSender,
    now_ms: i64,
) -> ProbeReport {
    let mut report = ProbeReport {
        endpoint: target.url.redacted(),
        steps: Vec::new(),
        status: None,
        latency_ms: None,
        ok: false,
    };
    let url = target.url.url();

    let https_ok = target.url.is_https() || !require_https;
    report.steps.push(ProbeStep {
        step: "url",
        ok: https_ok,
        detail: if https_ok {
            format!(
                "{} URL to {}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )
        } else {
            "http:// URL while REQUIRE_HTTPS=true".to_owned()
        },
        duration_ms: 0,
    });
    if !https_ok {
        return report;
    }

    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let started = Instant::now();
    let resolved = tokio::time::timeout(
        target.timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addresses: Vec<_> = match resolved {
        Ok(Ok(addresses)) => addresses.collect(),
        Ok(Err(e)) => {
            report.steps.push(ProbeStep {
                step: "dns",
                ok: false,
                detail: format!("cannot resolve {host}: {e}"),
                duration_ms: elapsed_ms(started),
            });
            return report;
        }
        Err(_) => {
            report.steps.push(ProbeStep {
                step: "dns",
                ok: false,
                detail: format!("resolving {host} timed out"),
                duration_ms: elapsed_ms(started),
            });
            return report;
        }
    };
    let listed: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
    let blocked = addresses.iter().find_map(|a| policy.check(a.ip()).err());
    report.steps.push(ProbeStep {
        step: "dns",
        ok: !addresses.is_empty() && blocked.is_none(),
        detail: match &blocked {
            Some(blocked) => blocked.to_string(),
            None => format!("{host} → {}", listed.join(", ")),
        },
        duration_ms: elapsed_ms(started),
    });
    if blocked.is_some() {
        return report;
    }
    let Some(first) = addresses.first().copied() else {
        return report;
    };

    let started = Instant::now();
    let connected = tokio::time::timeout(target.timeout, TcpStream::connect(first)).await;
    let (ok, detail) = match connected {
        Ok(Ok(_)) => (true, format!("TCP connection to {first} opened")),
        Ok(Err(e)) => (false, format!("cannot connect to {first}: {e}")),
        Err(_) => (
            false,
            format!("connecting to {first} timed out after {:?}", target.timeout),
        ),
    };
    report.steps.push(ProbeStep {
        step: "connect",
        ok,
        detail,
        duration_ms: elapsed_ms(started),
    });
    if !ok {
        return report;
    }

    let id = EventId::generate();
    let event_type =
        EventType::parse("hookrelay.test").unwrap_or_else(|_| EventType::usage_tracked());
    let body = generic_payload(
        &id,
        now_ms,
        &event_type,
        &json!({ "message": "hookrelay endpoint test", "test": true }),
    );
    let headers = signed_headers(target, &id, now_ms.div_euclid(1000), &body);
    let started = Instant::now();
    let sent = sender
        .post(&target.url, headers, Bytes::from(body), target.timeout)
        .await;
    let latency = elapsed_ms(started);
    let (ok, detail) = match sent {
        Ok(response) => {
            report.status = Some(response.status.as_u16());
            report.latency_ms = Some(latency);
            let signed = if target.secret.is_some() {
                "signed"
            } else {
                "unsigned (WEBHOOK_SECRET not set)"
            };
            (
                response.status.is_success(),
                format!(
                    "{signed} test event {id} answered HTTP {} in {latency} ms",
                    response.status
                ),
            )
        }
        Err(e) => (false, format!("test event failed: {e}")),
    };
    report.steps.push(ProbeStep {
        step: "deliver",
        ok,
        detail,
        duration_ms: latency,
    });
    report.ok = report.steps.iter().all(|s| s.ok);
    report
}
