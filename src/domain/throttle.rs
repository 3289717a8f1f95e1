//! Rate limiting arithmetic: GCRA (the generic cell rate algorithm), so requests are spaced
//! evenly instead of released in lumps at window boundaries. The worker throttles each
//! endpoint with it; the ingest guard limits each client with it.
//!
//! The worker needs two things a keyed limiter crate does not offer together: how many
//! requests may go *now* (to claim exactly that many, never claiming work it cannot send), and
//! when the next one may go (to sleep until then), both on the injected clock so tests control
//! time. That is a few lines of arithmetic.

use super::RateLimit;

/// The state of one endpoint's limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// Milliseconds between requests at the sustained rate.
    interval_ms: f64,
    /// How far ahead of the schedule a burst may run.
    tolerance_ms: f64,
    /// Theoretical arrival time of the next request, unix ms.
    tat_ms: f64,
    limit: RateLimit,
}

impl Throttle {
    /// A fresh limiter allowing a full burst at once.
    pub fn new(limit: RateLimit) -> Self {
        let interval_ms = 1000.0 / limit.per_second;
        Self {
            interval_ms,
            tolerance_ms: interval_ms * f64::from(limit.burst.saturating_sub(1)),
            tat_ms: 0.0,
            limit,
        }
    }

    /// The limit this enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// How many requests may start at `now_ms`.
    pub fn available(&self, now_ms: i64) -> usize {
        let now = now_ms as f64;
        let tat = self.tat_ms.max(now);
        let headroom = now + self.tolerance_ms - tat;
        if headroom < 0.0 {
            return 0;
        }
        (headroom / self.interval_ms).floor() as usize + 1
    }

    /// Records that `count` requests started at `now_ms` (call with at most `available`).
    pub fn take(&mut self, now_ms: i64, count: usize) {
        let tat = self.tat_ms.max(now_ms as f64);
        self.tat_ms = tat + self.interval_ms * count as f64;
    }

    /// When the full burst is available again, unix ms.
    pub fn full_at_ms(&self, now_ms: i64) -> i64 {
        (self.tat_ms.max(now_ms as f64)).ceil() as i64
    }

    /// When the next request may start, unix ms.
    pub fn next_free_ms(&self, now_ms: i64) -> i64 {
        if self.available(now_ms) > 0 {
            now_ms
        } else {
            (self.tat_ms - self.tolerance_ms).ceil() as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_full_burst_goes_at_once_then_requests_are_spaced_evenly() {
        let mut throttle = Throttle::new(limit(10.0, 5));
        let now = 1_000_000;
        assert_eq!(throttle.available(now), 5);
        throttle.take(now, 5);
        assert_eq!(throttle.available(now), 0);
        assert_eq!(throttle.next_free_ms(now), now + 100);
        assert_eq!(throttle.available(now + 99), 0);
        assert_eq!(throttle.available(now + 100), 1);
        throttle.take(now + 100, 1);
        assert_eq!(throttle.available(now + 150), 0);
        // After a quiet second the burst is back, not more.
        assert_eq!(throttle.available(now + 5_000), 5);
    }

    proptest! {
        /// Over any window, no more than burst + rate × window requests start.
        #[test]
        fn never_exceeds_the_rate_over_any_horizon(
            per_second in 1.0f64..200.0,
            burst in 1u32..50,
            steps in prop::collection::vec(0i64..50, 1..300),
        ) {
            let mut throttle = Throttle::new(limit(per_second, burst));
            let start = 1_000_000i64;
            let mut now = start;
            let mut sent = 0usize;
            for step in steps {
                now += step;
                let n = throttle.available(now);
                throttle.take(now, n);
                sent += n;
            }
            let allowed = f64::from(burst) + per_second * (now - start) as f64 / 1000.0;
            prop_assert!(sent as f64 <= allowed + 1e-6, "sent {} > allowed {}", sent, allowed);
        }
    }
}
