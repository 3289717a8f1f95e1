//! An endpoint's gate: what every instance on a shared PostgreSQL database agrees about sending
//! to it, so several instances behave as one. The receiver's rate limit holds for their sum
//! (one GCRA schedule), a `Retry-After` pause or an open circuit seen by one holds them all, and
//! one instance at a time runs an open circuit's probe round. For a rate-limited endpoint or a
//! probe round the store locks the gate, asks [`grant`] how many deliveries a claim may take,
//! claims them, and writes back [`Gate::after_claim`]: pure arithmetic, tested here by tables.
//! (The concurrency cap is split between the live instances instead: see the worker.)

use super::CircuitState;

/// The shared state of one endpoint's gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Theoretical arrival time of the next request under the rate limit, unix ms (GCRA).
    pub tat_ms: f64,
    /// A receiver's `Retry-After`: nothing is claimed before this, unix ms.
    pub paused_until_ms: i64,
    /// The circuit as the cluster sees it.
    pub circuit: CircuitState,
    /// While open: the end of the cool-down, unix ms.
    pub open_until_ms: i64,
    /// While half-open: the instance running the probe round.
    pub probe_holder: Option<String>,
    /// While half-open: when that round is given up if its answers never come, unix ms.
    pub probe_until_ms: i64,
    /// When the circuit last changed, unix ms.
    pub changed_at_ms: i64,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            tat_ms: 0.0,
            paused_until_ms: 0,
            circuit: CircuitState::Closed,
            open_until_ms: 0,
            probe_holder: None,
            probe_until_ms: 0,
            changed_at_ms: 0,
        }
    }
}

/// The rate limit a claimant applies to an endpoint (from its settings and the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateLimits {
    /// Milliseconds between requests at the sustained rate; 0 without a rate limit.
    pub interval_ms: f64,
    /// How far ahead of the schedule a burst may run (interval × (burst − 1)).
    pub tolerance_ms: f64,
}

impl GateLimits {
    /// Limits from a rate (`None`: unlimited).
    pub fn new(rate: Option<super::RateLimit>) -> Self {
        match rate {
            Some(rate) => {
                let interval_ms = 1000.0 / rate.per_second;
                Self {
                    interval_ms,
                    tolerance_ms: interval_ms * f64::from(rate.burst.saturating_sub(1)),
                }
            }
            None => Self {
                interval_ms: 0.0,
                tolerance_ms: 0.0,
            },
        }
    }

    /// Whether a claim needs the gate's schedule.
    pub fn is_limited(&self) -> bool {
        self.interval_ms > 0.0
    }
}

/// What a claimant asks of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Deliveries it could send now (its own slots and local limits).
    pub slots: usize,
    /// Its breaker wants to start a probe round.
    pub probe: bool,
}

/// What a claimant may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Deliveries it may claim.
    pub slots: usize,
    /// They start the cluster's probe round, held by this claimant.
    pub probe_round: bool,
}

const NOTHING: Grant = Grant {
    slots: 0,
    probe_round: false,
};

/// How many deliveries a claimant may claim at `now_ms`.
pub fn grant(gate: &Gate, limits: &GateLimits, ask: Ask, now_ms: i64) -> Grant {
    if ask.slots == 0 || gate.paused_until_ms > now_ms {
        return NOTHING;
    }
    let probe_round = match gate.circuit {
        CircuitState::Closed => false,
        CircuitState::Open if gate.open_until_ms > now_ms => return NOTHING,
        // A live round, whoever holds it: its answers decide (the holder's breaker waits too).
        CircuitState::HalfOpen if gate.probe_until_ms > now_ms => return NOTHING,
        // Cooled down, or a round whose holder never answered: the next probe round is
        // whoever asks for one first; a claimant whose breaker has not seen the circuit open
        // gets nothing until it has.
        CircuitState::Open | CircuitState::HalfOpen if ask.probe => true,
        CircuitState::Open | CircuitState::HalfOpen => return NOTHING,
    };
    let mut slots = ask.slots;
    if limits.interval_ms > 0.0 {
        let now = now_ms as f64;
        let headroom = now + limits.tolerance_ms - gate.tat_ms.max(now);
        let available = if headroom < 0.0 {
            0
        } else {
            (headroom / limits.interval_ms).floor() as usize + 1
        };
        slots = slots.min(available);
    }
    Grant { slots, probe_round }
}

/// A claimant refused by a gate checks again no later than this after: the gate may change
/// (a probe goes through elsewhere) before any time it names.
pub const RECHECK_MS: i64 = 1_000;

impl Gate {
    /// Until when a claimant that was granted nothing need not ask again: the end of the pause,
    /// of the cool-down or live probe round, or the next request the rate allows (at most
    /// [`RECHECK_MS`] away). A claimant that would hold no claim back asks at once.
    pub fn held_until(&self, limits: &GateLimits, now_ms: i64) -> i64 {
        let mut until = now_ms;
        until = until.max(self.paused_until_ms);
        match self.circuit {
            CircuitState::Closed => {}
            CircuitState::Open => until = until.max(self.open_until_ms),
            CircuitState::HalfOpen => until = until.max(self.probe_until_ms),
        }
        if limits.is_limited() {
            until = until.max((self.tat_ms - limits.tolerance_ms).ceil() as i64);
        }
        until.min(now_ms + RECHECK_MS)
    }

    /// The gate after `claimed` deliveries were claimed under `grant` (a probe round that
    /// claimed nothing starts nothing: the circuit stays open until something is due).
    pub fn after_claim(
        &self,
        limits: &GateLimits,
        grant: Grant,
        claimed: usize,
        claimant: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Self {
        let mut next = self.clone();
        if limits.interval_ms > 0.0 && claimed > 0 {
            next.tat_ms = self.tat_ms.max(now_ms as f64) + limits.interval_ms * claimed as f64;
        }
        if grant.probe_round && claimed > 0 {
            next.circuit = CircuitState::HalfOpen;
            next.probe_holder = Some(claimant.to_owned());
            next.probe_until_ms = now_ms + lease_ms;
            next.changed_at_ms = now_ms;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RateLimit;

    const NOW: i64 = 1_800_000_000_000;

    fn limits(per_second: f64, burst: u32) -> GateLimits {
        GateLimits::new(Some(RateLimit { per_second, burst }))
    }

    fn ask(slots: usize) -> Ask {
        Ask {
            slots,
            probe: false,
        }
    }

    #[test]
    fn the_rate_limit_holds_for_every_claimant_together() {
        // 10/s with a burst of 5, three instances each asking for 5 at once.
        let limits = limits(10.0, 5);
        let mut gate = Gate::default();
        let mut granted = Vec::new();
        for claimant in ["a", "b", "c"] {
            let g = grant(&gate, &limits, ask(5), NOW);
            gate = gate.after_claim(&limits, g, g.slots, claimant, NOW, 30_000);
            granted.push(g.slots);
        }
        assert_eq!(granted, [5, 0, 0], "the burst once, not three times");
        // Then the rate: over the next second, claims every 10 ms from all three take ten.
        let mut total = 0;
        for step in 1..=100 {
            let now = NOW + step * 10;
            for claimant in ["a", "b", "c"] {
                let g = grant(&gate, &limits, ask(10), now);
                gate = gate.after_claim(&limits, g, g.slots, claimant, now, 30_000);
                total += g.slots;
            }
        }
        assert_eq!(total, 10);
    }

    #[test]
    fn a_refused_claimant_waits_for_what_holds_it_but_checks_again_within_a_second() {
        let limits = limits(10.0, 5);
        // The burst is spent: the next request is due one interval after the schedule's start.
        let spent = Gate {
            tat_ms: (NOW + 500) as f64,
            ..Gate::default()
        };
        assert_eq!(spent.held_until(&limits, NOW), NOW + 100);
        let paused = Gate {
            paused_until_ms: NOW + 300,
            ..Gate::default()
        };
        assert_eq!(paused.held_until(&GateLimits::new(None), NOW), NOW + 300);
        let long_round = Gate {
            circuit: CircuitState::HalfOpen,
            probe_until_ms: NOW + 60_000,
            ..Gate::default()
        };
        assert_eq!(
            long_round.held_until(&GateLimits::new(None), NOW),
            NOW + RECHECK_MS
        );
        assert_eq!(Gate::default().held_until(&GateLimits::new(None), NOW), NOW);
    }

    #[test]
    fn only_what_was_claimed_spends_the_allowance() {
        let limits = limits(10.0, 5);
        let gate = Gate::default();
        let g = grant(&gate, &limits, ask(5), NOW);
        // Only two were due.
        let gate = gate.after_claim(&limits, g, 2, "a", NOW, 30_000);
        assert_eq!(grant(&gate, &limits, ask(5), NOW).slots, 3);
    }

    #[test]
    fn a_pause_or_an_open_circuit_holds_everyone() {
        let limits = GateLimits::new(None);
        let paused = Gate {
            paused_until_ms: NOW + 1,
            ..Gate::default()
        };
        assert_eq!(grant(&paused, &limits, ask(3), NOW).slots, 0);
        assert_eq!(grant(&paused, &limits, ask(3), NOW + 1).slots, 3);
        let open = Gate {
            circuit: CircuitState::Open,
            open_until_ms: NOW + 2_000,
            ..Gate::default()
        };
        let probe = Ask {
            slots: 3,
            probe: true,
        };
        assert_eq!(grant(&open, &limits, probe, NOW), NOTHING, "cooling down");
        let cooled = NOW + 2_000;
        assert_eq!(
            grant(&open, &limits, ask(3), cooled),
            NOTHING,
            "only a probe round"
        );
        assert_eq!(
            grant(&open, &limits, probe, cooled),
            Grant {
                slots: 3,
                probe_round: true
            }
        );
    }

    #[test]
    fn one_instance_at_a_time_runs_the_probe_round() {
        let limits = GateLimits::new(None);
        let open = Gate {
            circuit: CircuitState::Open,
            open_until_ms: NOW,
            ..Gate::default()
        };
        let probe = Ask {
            slots: 3,
            probe: true,
        };
        let g = grant(&open, &limits, probe, NOW);
        let held = open.after_claim(&limits, g, 3, "a", NOW, 25_000);
        assert_eq!(held.circuit, CircuitState::HalfOpen);
        assert_eq!(held.probe_holder.as_deref(), Some("a"));
        for claimant in ["a", "b", "c"] {
            assert_eq!(grant(&held, &limits, probe, NOW + 1), NOTHING, "{claimant}");
        }
        // The holder died: once its round lapses, another takes it over.
        let lapsed = NOW + 25_000;
        assert_eq!(grant(&held, &limits, probe, lapsed).slots, 3);
        // A probe round that found nothing due starts nothing.
        let idle = open.after_claim(&limits, g, 0, "a", NOW, 25_000);
        assert_eq!(idle, open);
    }
}
