//! Per-client ingest rate limiting: `WEBHOOK_RATE_LIMIT` requests per `WEBHOOK_RATE_WINDOW`,
//! plus `WEBHOOK_BURST_ALLOWANCE`, by GCRA so capacity refills continuously instead of
//! resetting in lumps. It reuses the outbound limiter's arithmetic ([`Throttle`]) on the
//! injected clock, so tests control time.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::Serialize;

use crate::domain::{RateLimit, Throttle};

/// Where a client stands.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RateState {
    /// The client key (`key:1` for the first ingest secret, or an IP address).
    pub client: String,
    /// Requests allowed in a full window, burst included.
    pub limit: u32,
    /// Requests the client may make right now.
    pub remaining: u32,
    /// Seconds until the full allowance is back.
    pub reset_seconds: u64,
    /// Seconds until the next request is allowed (0 when one is allowed now).
    pub retry_after_seconds: u64,
}

/// A keyed limiter.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    window: Duration,
    clients: Mutex<HashMap<String, Throttle>>,
}

/// Beyond this many tracked clients, those back at full allowance are forgotten.
const PRUNE_AT: usize = 100_000;

impl RateLimiter {
    /// `requests` per `window`, with `burst` extra at once.
    pub fn new(requests: u32, window: Duration, burst: u32) -> Self {
        let per_second = f64::from(requests.max(1)) / window.as_secs_f64().max(0.001);
        Self {
            limit: RateLimit {
                per_second,
                burst: requests.saturating_add(burst).max(1),
            },
            window,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self, client: &str, throttle: &Throttle, now_ms: i64) -> RateState {
        let remaining = throttle.available(now_ms).min(self.limit.burst as usize) as u32;
        let full_at = throttle.full_at_ms(now_ms);
        let retry_at = throttle.next_free_ms(now_ms);
        RateState {
            client: client.to_owned(),
            limit: self.limit.burst,
            remaining,
            reset_seconds: ((full_at - now_ms).max(0) as u64).div_ceil(1000),
            retry_after_seconds: ((retry_at - now_ms).max(0) as u64).div_ceil(1000),
        }
    }

    /// Counts one request from `client`; `Err` when it is over the limit (nothing counted).
    pub fn check(&self, client: &str, now_ms: i64) -> Result<RateState, RateState> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= PRUNE_AT {
            clients.retain(|_, throttle| throttle.full_at_ms(now_ms) > now_ms);
        }
        let throttle = clients
            .entry(client.to_owned())
            .or_insert_with(|| Throttle::new(self.limit));
        if throttle.available(now_ms) == 0 {
            return Err(self.state(client, throttle, now_ms));
        }
        throttle.take(now_ms, 1);
        Ok(self.state(client, throttle, now_ms))
    }

    /// The state of one client (a client never seen has its full allowance).
    pub fn status(&self, client: &str, now_ms: i64) -> RateState {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match clients.get(client) {
            Some(throttle) => self.state(client, throttle, now_ms),
            None => self.state(client, &Throttle::new(self.limit), now_ms),
        }
    }

    /// Every client not back at full allowance, most constrained first.
    pub fn active(&self, now_ms: i64) -> Vec<RateState> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: Vec<RateState> = clients
            .iter()
            .filter(|(_, throttle)| throttle.full_at_ms(now_ms) > now_ms)
            .map(|(client, throttle)| self.state(client, throttle, now_ms))
            .collect();
        states.sort_by_key(|s| (s.remaining, s.client.clone()));
        states
    }

    /// The window of the allowance.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Requests per window, and the burst on top, as configured.
    pub fn allowance(&self) -> (u32, u32) {
        let requests = (self.limit.per_second * self.window.as_secs_f64()).round() as u32;
        (requests, self.limit.burst.saturating_sub(requests))
    }

    /// The effective GCRA limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_allowance_then_one_request_per_interval() {
        // 100 per hour plus 10: 110 at once, then one every 36 s.
        let limiter = RateLimiter::new(100, Duration::from_secs(3600), 10);
        let now = 1_000_000_000;
        for n in 0..110 {
            let state = limiter
                .check("1.2.3.4", now)
                .unwrap_or_else(|s| panic!("request {n} refused: {s:?}"));
            assert_eq!(state.remaining, 109 - n);
        }
        let refused = limiter.check("1.2.3.4", now).expect_err("over the limit");
        assert_eq!(refused.retry_after_seconds, 36);
        assert_eq!(refused.reset_seconds, 110 * 36);
        // Others are not affected.
        assert!(limiter.check("5.6.7.8", now).is_ok());
        // Capacity refills continuously: one more after 36 s, not a whole window later.
        assert!(limiter.check("1.2.3.4", now + 35_999).is_err());
        assert!(limiter.check("1.2.3.4", now + 36_000).is_ok());
        assert!(limiter.check("1.2.3.4", now + 36_000).is_err());
    }

    #[test]
    fn status_reports_without_counting() {
        let limiter = RateLimiter::new(10, Duration::from_secs(10), 0);
        let now = 5_000_000;
        assert_eq!(limiter.status("a", now).remaining, 10);
        limiter.check("a", now).unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(limiter.status("a", now).remaining, 9);
        assert_eq!(limiter.status("a", now).remaining, 9);
        assert_eq!(limiter.active(now).len(), 1);
        assert!(limiter.active(now + 2_000).is_empty());
    }
}
