//! One attempt as typed stages:
//!
//! 1. **prepared**: the endpoint's [`Target`] and the signed headers ([`prepare`]);
//! 2. **sent**: what the network said, a response or a [`SendError`] ([`send`]);
//! 3. **decided**: a pure function of the answer, the delivery's spent budget, the retry
//!    policy and the clock: the delivery's next state, what the answer says about the
//!    endpoint (a circuit [`Signal`]) and what goes in the attempt log ([`decide`]);
//! 4. **recorded**: the worker applies the decision to the endpoint's state and writes both.
//!
//! Only `send` does I/O; `decide` is table-tested below.

use std::time::{Duration, Instant, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use super::{
    Failure, HttpSender, Response, RetryPolicy, SendError, Signal, Target, parse_retry_after,
    signed_headers,
};
use crate::{
    clock::millis,
    store::{ClaimedDelivery, NextState},
};

/// A delivery answered 429 this many times starts spending its retry budget on further 429s,
/// so a receiver that never accepts anything cannot hold an event forever.
pub const MAX_THROTTLED: u32 = 100;

/// An attempt ready to go: where, and the headers that sign it. Its `Debug` shows header
/// names only (the values hold signatures and the endpoint's own credentials).
pub struct Prepared {
    /// The endpoint as the worker sends to it.
    pub target: Target,
    /// Whether this attempt is one of a half-open circuit's probes.
    pub probing: bool,
    /// Content type, `webhook-*` and the signatures.
    pub headers: HeaderMap,
    /// When the attempt started, unix ms (also the signature's timestamp).
    pub started_at_ms: i64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("target", &self.target)
            .field("probing", &self.probing)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("started_at_ms", &self.started_at_ms)
            .finish()
    }
}

/// Signs `delivery` for `target` at `now_ms`.
pub fn prepare(target: Target, probing: bool, delivery: &ClaimedDelivery, now_ms: i64) -> Prepared {
    let headers = signed_headers(
        &target,
        &delivery.event_id,
        now_ms.div_euclid(1000),
        &delivery.payload,
    );
    Prepared {
        target,
        probing,
        headers,
        started_at_ms: now_ms,
    }
}

/// What the network said about one attempt.
#[derive(Debug)]
pub struct Sent {
    /// The receiver's answer, or why there was none.
    pub result: Result<Response, SendError>,
    /// How long the request took, ms.
    pub duration_ms: i64,
}

/// Sends a prepared attempt (its headers go with the request). Plain http under
/// `REQUIRE_HTTPS` is refused here, before any connection is made.
pub async fn send(
    sender: &HttpSender,
    prepared: &mut Prepared,
    delivery: &ClaimedDelivery,
) -> Sent {
    let headers = std::mem::take(&mut prepared.headers);
    let target = &prepared.target;
    let started = Instant::now();
    let mut result = if target.require_https && !target.url.is_https() {
        Err(SendError::Insecure)
    } else {
        sender
            .post(
                &target.url,
                headers,
                delivery.payload.clone(),
                target.timeout,
            )
            .await
    };
    // Recorded, logged and shown on the dashboard: never the path, often the catch-hook URL.
    // A redirect's body usually repeats its target ("Redirecting to https://…"): not kept.
    if let Ok(response) = &mut result {
        response.location = response
            .location
            .take()
            .map(|location| target.url.describe_redirect(&location));
        if response.status.is_redirection() {
            response.snippet.clear();
        }
    }
    Sent {
        result,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    }
}

/// How far a delivery has come, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spent {
    /// Attempts already spent from the retry budget.
    pub attempts: u32,
    /// Attempts answered 429 (or sent back by a probe) so far.
    pub throttled: u32,
}

impl From<&ClaimedDelivery> for Spent {
    fn from(delivery: &ClaimedDelivery) -> Self {
        Self {
            attempts: delivery.attempts,
            throttled: delivery.throttled,
        }
    }
}

/// What an answer means, for the delivery and for its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The delivery's next state.
    pub next: NextState,
    /// What the answer says about the endpoint, for its circuit breaker and health.
    pub signal: Signal,
    /// The HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// `status`, `redirect`, `timeout`, `connect`, `tls`, `network`, `blocked`, `insecure`.
    pub error_kind: Option<&'static str>,
    /// What went wrong, for people.
    pub error_detail: Option<String>,
    /// The first bytes of the response body.
    pub snippet: Option<String>,
}

/// Decides what follows an attempt: a pure function of the answer, the delivery's spent
/// budget, the retry policy, whether the attempt was a circuit probe, the clock (`now_ms`)
/// and a jitter in `[0, 1)`.
///
/// - 2xx: delivered.
/// - A refused destination (blocked address, plain http under `REQUIRE_HTTPS`): dead-lettered
///   at once, saying nothing against the endpoint.
/// - 429: the receiver is busy, not broken: wait (its `Retry-After`, bounded) without spending
///   the budget, up to [`MAX_THROTTLED`] times.
/// - A retryable failure of a probe: the endpoint still looks down; the delivery keeps its
///   place and its budget, so a long outage does not dead-letter the probed events.
/// - Otherwise the retry policy: try again later, or dead-letter once the budget is spent (or
///   at once for a failure that retrying cannot fix).
pub fn decide(
    sent: Sent,
    spent: Spent,
    policy: &RetryPolicy,
    probing: bool,
    now_ms: i64,
    jitter: f64,
) -> Decision {
    let wall_now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
    let mut decision = Decision {
        next: NextState::Delivered,
        signal: Signal::Success,
        status_code: None,
        error_kind: None,
        error_detail: None,
        snippet: None,
    };
    let (failure, detail) = match sent.result {
        Ok(response) => {
            decision.status_code = Some(response.status.as_u16());
            decision.snippet = Some(response.snippet);
            if response.status.is_success() {
                return decision;
            }
            let mut detail = format!("HTTP {}", response.status);
            if response.status.is_redirection() {
                detail.push_str(": redirects are not followed");
                if let Some(location) = &response.location {
                    detail.push_str(" (Location: ");
                    detail.extend(location.chars().take(200));
                    detail.push(')');
                }
            }
            let retry_after = response
                .retry_after
                .as_deref()
                .and_then(|value| parse_retry_after(value, wall_now));
            let code = response.status.as_u16();
            (Failure::Status { code, retry_after }, detail)
        }
        Err(refused @ (SendError::Insecure | SendError::Blocked(_))) => {
            decision.next = NextState::DeadLetter;
            decision.signal = Signal::Neutral;
            decision.error_kind = Some(refused.kind());
            decision.error_detail = Some(refused.to_string());
            return decision;
        }
        Err(error) => {
            let failure = match &error {
                SendError::Timeout(_) => Failure::Timeout,
                SendError::Connect(_) => Failure::Connect,
                SendError::Tls(_) => Failure::Tls,
                SendError::Network(_) | SendError::Blocked(_) | SendError::Insecure => {
                    Failure::Network
                }
            };
            (failure, error.to_string())
        }
    };
    decision.error_kind = Some(failure.kind());
    decision.signal = Signal::Failure;

    if let Failure::Status {
        code: 429,
        retry_after,
    } = failure
        && spent.throttled < MAX_THROTTLED
    {
        let wait = retry_after
            .map(|wait| policy.bound_retry_after(wait))
            .or_else(|| policy.next_delay(1, &Failure::Timeout, jitter))
            .unwrap_or(policy.base_delay);
        decision.next = NextState::Throttled(now_ms + millis(wait));
        decision.signal = Signal::Neutral;
        decision.error_detail = Some(detail);
        return decision;
    }
    if probing && failure.is_retryable() {
        let delay = policy
            .next_delay(1, &failure, jitter)
            .unwrap_or(policy.base_delay);
        decision.next = NextState::Throttled(now_ms + millis(delay));
        decision.error_detail = Some(format!("{detail} (circuit probe)"));
        return decision;
    }
    let attempts_made = spent.attempts + 1;
    decision.next = match policy.next_delay(attempts_made, &failure, jitter) {
        Some(delay) => NextState::RetryAt(now_ms + millis(delay)),
        None => NextState::DeadLetter,
    };
    decision.error_detail = Some(
        if decision.next == NextState::DeadLetter && failure.is_retryable() {
            format!("retries exhausted after {attempts_made} attempts; last: {detail}")
        } else {
            detail
        },
    );
    decision
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;
    use crate::domain::BlockedAddress;

    const NOW: i64 = 1_700_000_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
        }
    }

    fn answered(status: u16, retry_after: Option<&str>) -> Sent {
        Sent {
            result: Ok(Response {
                status: StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}")),
                retry_after: retry_after.map(str::to_owned),
                location: (status == 302).then(|| "https://elsewhere.example/".to_owned()),
                snippet: format!("body of {status}"),
            }),
            duration_ms: 5,
        }
    }

    fn failed(error: SendError) -> Sent {
        Sent {
            result: Err(error),
            duration_ms: 5,
        }
    }

    fn spent(attempts: u32, throttled: u32) -> Spent {
        Spent {
            attempts,
            throttled,
        }
    }

    /// name, answer, spent, probing → next state, signal, error kind.
    type Case = (
        &'static str,
        Sent,
        Spent,
        bool,
        NextState,
        Signal,
        Option<&'static str>,
    );

    /// jitter 0.5 is the middle of ±25%: the exponential delay exactly.
    fn decided(sent: Sent, spent: Spent, probing: bool) -> Decision {
        decide(sent, spent, &policy(), probing, NOW, 0.5)
    }

    #[test]
    fn each_answer_leads_to_its_next_state() {
        let secs = |s: i64| NOW + s * 1000;
        let cases: Vec<Case> = vec![
            (
                "2xx",
                answered(204, None),
                spent(0, 0),
                false,
                NextState::Delivered,
                Signal::Success,
                None,
            ),
            (
                "first 500",
                answered(500, None),
                spent(0, 0),
                false,
                NextState::RetryAt(secs(10)),
                Signal::Failure,
                Some("status"),
            ),
            (
                "second 503",
                answered(503, None),
                spent(1, 0),
                false,
                NextState::RetryAt(secs(20)),
                Signal::Failure,
                Some("status"),
            ),
            (
                "500 with the budget spent",
                answered(500, None),
                spent(3, 0),
                false,
                NextState::DeadLetter,
                Signal::Failure,
                Some("status"),
            ),
            (
                "404 is not retried",
                answered(404, None),
                spent(0, 0),
                false,
                NextState::DeadLetter,
                Signal::Failure,
                Some("status"),
            ),
            (
                "redirects are not followed",
                answered(302, None),
                spent(0, 0),
                false,
                NextState::DeadLetter,
                Signal::Failure,
                Some("redirect"),
            ),
            (
                "429 waits its Retry-After",
                answered(429, Some("30")),
                spent(2, 0),
                false,
                NextState::Throttled(secs(30)),
                Signal::Neutral,
                Some("status"),
            ),
            (
                "429 without Retry-After",
                answered(429, None),
                spent(0, 0),
                false,
                NextState::Throttled(secs(10)),
                Signal::Neutral,
                Some("status"),
            ),
            (
                "429 past the cap spends the budget",
                answered(429, None),
                spent(0, MAX_THROTTLED),
                false,
                NextState::RetryAt(secs(10)),
                Signal::Failure,
                Some("status"),
            ),
            (
                "timeout",
                failed(SendError::Timeout(Duration::from_secs(10))),
                spent(0, 0),
                false,
                NextState::RetryAt(secs(10)),
                Signal::Failure,
                Some("timeout"),
            ),
            (
                "refused connection",
                failed(SendError::Connect("refused".into())),
                spent(1, 0),
                false,
                NextState::RetryAt(secs(20)),
                Signal::Failure,
                Some("connect"),
            ),
            (
                "TLS handshake",
                failed(SendError::Tls("bad certificate".into())),
                spent(0, 0),
                false,
                NextState::RetryAt(secs(10)),
                Signal::Failure,
                Some("tls"),
            ),
            (
                "reset mid-response",
                failed(SendError::Network("reset".into())),
                spent(3, 0),
                false,
                NextState::DeadLetter,
                Signal::Failure,
                Some("network"),
            ),
            (
                "failed probe keeps budget and place",
                answered(503, None),
                spent(3, 0),
                true,
                NextState::Throttled(secs(10)),
                Signal::Failure,
                Some("status"),
            ),
            (
                "probe refused for good",
                answered(410, None),
                spent(0, 0),
                true,
                NextState::DeadLetter,
                Signal::Failure,
                Some("status"),
            ),
            (
                "successful probe",
                answered(200, None),
                spent(2, 0),
                true,
                NextState::Delivered,
                Signal::Success,
                None,
            ),
            (
                "plain http under REQUIRE_HTTPS",
                failed(SendError::Insecure),
                spent(0, 0),
                false,
                NextState::DeadLetter,
                Signal::Neutral,
                Some("insecure"),
            ),
            (
                "blocked address",
                failed(SendError::Blocked(BlockedAddress {
                    address: "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
                    range: "loopback",
                })),
                spent(0, 0),
                true,
                NextState::DeadLetter,
                Signal::Neutral,
                Some("blocked"),
            ),
        ];
        for (name, sent, spent, probing, next, signal, kind) in cases {
            let decision = decided(sent, spent, probing);
            assert_eq!(decision.next, next, "{name}");
            assert_eq!(decision.signal, signal, "{name}");
            assert_eq!(decision.error_kind, kind, "{name}");
            assert_eq!(decision.error_detail.is_some(), kind.is_some(), "{name}");
        }
    }

    #[test]
    fn the_log_says_why_in_words() {
        let exhausted = decided(answered(503, None), spent(3, 0), false);
        assert_eq!(
            exhausted.error_detail.as_deref(),
            Some("retries exhausted after 4 attempts; last: HTTP 503 Service Unavailable")
        );
        assert_eq!(exhausted.snippet.as_deref(), Some("body of 503"));
        assert_eq!(exhausted.status_code, Some(503));
        let redirect = decided(answered(302, None), spent(0, 0), false);
        assert_eq!(
            redirect.error_detail.as_deref(),
            Some(
                "HTTP 302 Found: redirects are not followed (Location: https://elsewhere.example/)"
            )
        );
        let probe = decided(answered(500, None), spent(0, 0), true);
        assert!(
            probe
                .error_detail
                .is_some_and(|d| d.ends_with("(circuit probe)"))
        );
        let insecure = decided(failed(SendError::Insecure), spent(0, 0), false);
        assert!(
            insecure
                .error_detail
                .is_some_and(|d| d.contains("REQUIRE_HTTPS"))
        );
    }

    #[test]
    fn retry_after_is_bounded_by_the_policy() {
        let far = decided(answered(429, Some("999999")), spent(0, 0), false);
        assert_eq!(far.next, NextState::Throttled(NOW + 3_600_000));
        let zero = decided(answered(503, Some("0")), spent(0, 0), false);
        assert_eq!(
            zero.next,
            NextState::RetryAt(NOW + 1_000),
            "Retry-After: 0 waits at least a second"
        );
    }
}
