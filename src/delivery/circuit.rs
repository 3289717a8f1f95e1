//! The circuit breaker: a pure function from an endpoint's health and an attempt's result to
//! its new health.

use crate::endpoints::{CircuitState, EndpointHealth};

/// What an attempt said about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 2xx.
    Success,
    /// A failure that says the endpoint is unwell (5xx, 4xx, timeout, refused connection).
    Failure,
    /// Says nothing about health (429: the endpoint is fine, only busy).
    Neutral,
}

/// Circuit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit; 0 never opens it.
    pub threshold: u32,
    /// How long an open circuit waits before one probe, in ms.
    pub cooldown_ms: i64,
}

/// Applies one attempt's result.
pub fn after_attempt(
    health: EndpointHealth,
    signal: Signal,
    policy: CircuitPolicy,
    now_ms: i64,
) -> EndpointHealth {
    let mut next = EndpointHealth {
        last_attempt_at_ms: Some(now_ms),
        ..health
    };
    match signal {
        Signal::Neutral => {
            // A probe answered 429 proves the endpoint is up.
            if health.circuit == CircuitState::HalfOpen {
                next.circuit = CircuitState::Closed;
                next.circuit_changed_at_ms = Some(now_ms);
            }
        }
        Signal::Success => {
            next.consecutive_failures = 0;
            next.failing_since_ms = None;
            next.last_success_at_ms = Some(now_ms);
            if health.circuit != CircuitState::Closed {
                next.circuit = CircuitState::Closed;
                next.circuit_changed_at_ms = Some(now_ms);
            }
        }
        Signal::Failure => {
            next.consecutive_failures = health.consecutive_failures.saturating_add(1);
            next.failing_since_ms = health.failing_since_ms.or(Some(now_ms));
            let trips = match health.circuit {
                CircuitState::HalfOpen => true,
                CircuitState::Closed => {
                    policy.threshold > 0 && next.consecutive_failures >= policy.threshold
                }
                CircuitState::Open => false,
            };
            if trips {
                next.circuit = CircuitState::Open;
                next.circuit_changed_at_ms = Some(now_ms);
            }
        }
    }
    next
}

/// Whether an open circuit's cool-down is over, so one probe may go.
pub fn probe_due(health: &EndpointHealth, policy: CircuitPolicy, now_ms: i64) -> bool {
    health.circuit == CircuitState::Open
        && health
            .circuit_changed_at_ms
            .is_none_or(|changed| now_ms >= changed + policy.cooldown_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CircuitPolicy = CircuitPolicy {
        threshold: 3,
        cooldown_ms: 30_000,
    };

    #[test]
    fn the_circuit_opens_after_the_threshold_and_a_probe_closes_it() {
        let mut health = EndpointHealth::default();
        for n in 1..=2 {
            health = after_attempt(health, Signal::Failure, POLICY, n);
            assert_eq!(health.circuit, CircuitState::Closed);
        }
        health = after_attempt(health, Signal::Failure, POLICY, 3);
        assert_eq!(health.circuit, CircuitState::Open);
        assert_eq!(health.circuit_changed_at_ms, Some(3));
        assert_eq!(health.failing_since_ms, Some(1));
        assert!(!probe_due(&health, POLICY, 30_002));
        assert!(probe_due(&health, POLICY, 30_003));

        health.circuit = CircuitState::HalfOpen;
        let reopened = after_attempt(health, Signal::Failure, POLICY, 40_000);
        assert_eq!(reopened.circuit, CircuitState::Open);
        assert_eq!(reopened.circuit_changed_at_ms, Some(40_000));

        let closed = after_attempt(health, Signal::Success, POLICY, 40_000);
        assert_eq!(closed.circuit, CircuitState::Closed);
        assert_eq!(
            (closed.consecutive_failures, closed.failing_since_ms),
            (0, None)
        );
    }

    #[test]
    fn a_success_resets_the_count_and_429_counts_for_nothing() {
        let mut health = EndpointHealth::default();
        health = after_attempt(health, Signal::Failure, POLICY, 1);
        health = after_attempt(health, Signal::Failure, POLICY, 2);
        health = after_attempt(health, Signal::Neutral, POLICY, 3);
        assert_eq!(health.consecutive_failures, 2);
        health = after_attempt(health, Signal::Success, POLICY, 4);
        health = after_attempt(health, Signal::Failure, POLICY, 5);
        health = after_attempt(health, Signal::Failure, POLICY, 6);
        assert_eq!(health.circuit, CircuitState::Closed);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let off = CircuitPolicy {
            threshold: 0,
            ..POLICY
        };
        let mut health = EndpointHealth::default();
        for n in 0..1000 {
            health = after_attempt(health, Signal::Failure, off, n);
        }
        assert_eq!(health.circuit, CircuitState::Closed);
        assert_eq!(health.consecutive_failures, 1000);
    }
}
