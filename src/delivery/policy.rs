//! The retry policy: a pure function from what happened to what happens next.

use std::time::{Duration, SystemTime};

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The receiver answered with a non-2xx status.
    Status {
        /// The HTTP status.
        code: u16,
        /// The receiver's `Retry-After`, already converted to a delay.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, DNS).
    Connect,
    /// The TLS handshake failed (bad certificate, not TLS, closed during the handshake).
    Tls,
    /// The connection broke mid-request.
    Network,
}

impl Failure {
    /// Whether trying again may help: network trouble, timeouts, 408, 429 and 5xx.
    /// Every other status (3xx redirects, which are never followed, and 4xx including 410)
    /// means the request itself is wrong for this receiver, so it is dead-lettered at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { code, .. } => matches!(code, 408 | 429 | 500..=599),
            Self::Timeout | Self::Connect | Self::Tls | Self::Network => true,
        }
    }

    /// A short kind for the attempt log: `status`, `redirect`, `timeout`, `connect`, `tls`,
    /// `network`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { code, .. } if (300..400).contains(code) => "redirect",
            Self::Status { .. } => "status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Network => "network",
        }
    }
}

/// How often and how patiently a delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`WEBHOOK_MAX_RETRIES`).
    pub max_retries: u32,
    /// Delay before the first retry (`WEBHOOK_RETRY_DELAY_SECONDS`); doubles each retry.
    pub base_delay: Duration,
    /// Cap on any one delay, `Retry-After` included.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt, or `None` to dead-letter.
    ///
    /// `attempts_made` counts the attempt that just failed (1 after the first). `jitter` is a
    /// number in `[0, 1)`; it spreads the exponential delay over ±25% so that deliveries which
    /// failed together do not all retry in the same instant. A `Retry-After` from the receiver
    /// replaces the computed delay, bounded below by one second (or the base delay, if
    /// shorter), so `Retry-After: 0` cannot burn the budget in a burst, and above by
    /// `max_delay`.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        failure: &Failure,
        jitter: f64,
    ) -> Option<Duration> {
        if !failure.is_retryable() || attempts_made > self.max_retries {
            return None;
        }
        if let Failure::Status {
            retry_after: Some(wait),
            ..
        } = failure
        {
            return Some(self.bound_retry_after(*wait));
        }
        let exponent = attempts_made.saturating_sub(1).min(30);
        let exponential = self.base_delay.saturating_mul(1 << exponent);
        let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
        Some(exponential.mul_f64(factor).min(self.max_delay))
    }
}

impl RetryPolicy {
    /// A receiver's requested wait, within `[min(1 s, base_delay), max_delay]`.
    pub fn bound_retry_after(&self, wait: Duration) -> Duration {
        let floor = self.base_delay.min(Duration::from_secs(1));
        wait.max(floor).min(self.max_delay.max(floor))
    }
}

/// Reads a `Retry-After` value: delta seconds, or an HTTP date (relative to `now`).
/// A date in the past means "now"; anything unreadable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(3600),
    };

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn retryable_and_permanent_failures_follow_the_table() {
        let table: &[(Failure, bool)] = &[
            (status(500), true),
            (status(502), true),
            (status(503), true),
            (status(599), true),
            (status(408), true),
            (status(429), true),
            (status(400), false),
            (status(401), false),
            (status(404), false),
            (status(410), false),
            (status(422), false),
            (status(301), false),
            (status(302), false),
            (status(307), false),
            (Failure::Timeout, true),
            (Failure::Connect, true),
            (Failure::Tls, true),
            (Failure::Network, true),
        ];
        for (failure, retryable) in table {
            assert_eq!(failure.is_retryable(), *retryable, "{failure:?}");
            assert_eq!(
                POLICY.next_delay(1, failure, 0.5).is_some(),
                *retryable,
                "{failure:?}"
            );
        }
    }

    #[test]
    fn delays_double_from_the_base_and_stop_after_max_retries() {
        // jitter 0.5 gives the unjittered value.
        let delays: Vec<_> = (1..=4)
            .map(|n| POLICY.next_delay(n, &Failure::Timeout, 0.5))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(240)),
                None
            ]
        );
        let none = RetryPolicy {
            max_retries: 0,
            ..POLICY
        };
        assert_eq!(none.next_delay(1, &Failure::Timeout, 0.5), None);
    }

    #[test]
    fn retry_after_replaces_the_computed_delay_within_the_cap() {
        let asked = |secs| Failure::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            POLICY.next_delay(1, &asked(5), 0.9),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            POLICY.next_delay(1, &asked(86_400), 0.9),
            Some(Duration::from_secs(3600))
        );
        // `Retry-After: 0` cannot turn the retries into a burst.
        assert_eq!(
            POLICY.next_delay(1, &asked(0), 0.9),
            Some(Duration::from_secs(1))
        );
        // Retry-After does not extend the budget.
        assert_eq!(POLICY.next_delay(4, &asked(5), 0.9), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    proptest! {
        #[test]
        fn delays_stay_within_jitter_bounds_and_the_cap(
            attempt in 1u32..=20,
            base_ms in 0u64..=120_000,
            cap_ms in 0u64..=7_200_000,
            jitter in 0.0f64..1.0,
            code in prop::sample::select(vec![408u16, 429, 500, 502, 503, 504]),
        ) {
            let policy = RetryPolicy {
                max_retries: 20,
                base_delay: Duration::from_millis(base_ms),
                max_delay: Duration::from_millis(cap_ms),
            };
            let delay = policy
                .next_delay(attempt, &Failure::Status { code, retry_after: None }, jitter)
                .expect("retryable within budget");
            let exponential = Duration::from_millis(base_ms).saturating_mul(1 << (attempt - 1));
            prop_assert!(delay <= policy.max_delay);
            prop_assert!(delay >= exponential.mul_f64(0.75).min(policy.max_delay));
            prop_assert!(delay <= exponential.mul_f64(1.25));
        }

        #[test]
        fn nothing_is_retried_past_the_budget(attempt in 0u32..50, max in 0u32..20, jitter in 0.0f64..1.0) {
            let policy = RetryPolicy { max_retries: max, ..POLICY };
            let delay = policy.next_delay(attempt, &Failure::Timeout, jitter);
            prop_assert_eq!(delay.is_some(), attempt <= max);
        }

        #[test]
        fn client_errors_are_never_retried(code in 400u16..500, attempt in 1u32..4) {
            prop_assume!(code != 408 && code != 429);
            prop_assert_eq!(POLICY.next_delay(attempt, &status(code), 0.5), None);
        }
    }
}
