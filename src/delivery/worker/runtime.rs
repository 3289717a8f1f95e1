//! What the worker keeps per endpoint between attempts (its sending settings, rate limiter,
//! circuit breaker, `Retry-After` pause and health) and the two moments it changes: when the
//! endpoint rows are re-read, and when a decided answer arrives.

use std::{
    collections::HashSet,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    time::Duration,
};

use tracing::{info, warn};

use crate::{
    clock::millis,
    delivery::{Admission, Answer, Breaker, Decision, Target, Transition, track_health},
    domain::{
        CircuitState, DeliveryId, Endpoint, EndpointHealth, EndpointId, Gate, Throttle, rfc3339,
    },
    store::{CircuitEvent, ClaimedDelivery, HealthUpdate, NextState, SharedChange},
};

/// How long a disabling decided here outweighs a database row that does not show it yet.
const DISABLING_HOLD_MS: i64 = 30_000;

/// See [`EndpointRuntime::depth`]: enough to cover a claim's commit while slots turn over.
pub(super) const PREFETCH: usize = 4;

/// An answer within this long counts as fast ([`EndpointRuntime::fast`]).
pub(super) const FAST_ANSWER_MS: i64 = 250;

/// One endpoint as the worker sees it.
pub(super) struct EndpointRuntime {
    pub(super) target: Target,
    pub(super) enabled: bool,
    pub(super) throttle: Option<Throttle>,
    /// A receiver's 429 `Retry-After` holds every delivery to it until then (unix ms).
    pub(super) paused_until_ms: i64,
    /// The endpoint's gate (shared with other instances) refused the last claim: nothing is
    /// asked for again before this (unix ms).
    pub(super) held_until_ms: i64,
    pub(super) health: EndpointHealth,
    /// This worker's circuit breaker for the endpoint; `health.circuit` mirrors it.
    pub(super) breaker: Breaker,
    /// Deliveries out as probes of the current half-open round.
    pub(super) probes: HashSet<DeliveryId>,
    /// The row's `updated_at` when last read: a newer one means an operator changed it.
    updated_at_ms: i64,
    /// This worker disabled it (failing too long) and the database may not show it yet.
    disabling: bool,
    /// Its last attempt was answered quickly: the worker keeps deliveries for it in memory,
    /// ahead of free slots (a slow receiver would keep them past their lease).
    pub(super) fast: bool,
}

/// What the worker may claim for one endpoint right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room {
    pub(super) slots: usize,
    /// The deliveries claimed are a half-open circuit's probe round.
    pub(super) probe: bool,
}

impl EndpointRuntime {
    /// The runtime for `endpoint` as just read from the database, carrying over what
    /// `previous` (this worker's memory of it) knows that the row may not show yet.
    pub(super) fn refreshed(
        previous: Option<Self>,
        endpoint: &Endpoint,
        target: Target,
        now: i64,
    ) -> Self {
        // The row was not changed by an operator since this worker last read it.
        let unchanged = previous
            .as_ref()
            .is_some_and(|p| p.updated_at_ms >= endpoint.updated_at_ms);
        let paused_until_ms = previous.as_ref().map_or(0, |p| p.paused_until_ms);
        let held_until_ms = previous.as_ref().map_or(0, |p| p.held_until_ms);
        // The database may lag behind this worker's own latest result (written a moment
        // later): keep the newer health in memory, unless an operator has changed the
        // endpoint since (enabling it resets its health).
        let mut health = match &previous {
            Some(p)
                if unchanged
                    && p.health.last_attempt_at_ms >= endpoint.health.last_attempt_at_ms =>
            {
                p.health
            }
            _ => endpoint.health,
        };
        // The breaker is this worker's own judgement; it starts from the stored state when
        // the endpoint is first seen or an operator has changed it (enabling closes it).
        let (breaker, probes) = match &previous {
            Some(p) if unchanged => (p.breaker.clone(), p.probes.clone()),
            _ => (Breaker::from_health(&endpoint.health), HashSet::new()),
        };
        health.circuit = breaker.state();
        if health.circuit != endpoint.health.circuit {
            health.circuit_changed_at_ms = Some(breaker.changed_at_ms());
        }
        // Likewise an automatic disabling this worker decided, which is in memory before its
        // record commits: a refresh in between must not re-enable the endpoint. Bounded in
        // time: if that record never lands, the database's word wins again.
        let disabling = endpoint.enabled
            && unchanged
            && previous.as_ref().is_some_and(|p| {
                p.disabling
                    && p.health
                        .last_attempt_at_ms
                        .is_some_and(|at| now - at < DISABLING_HOLD_MS)
            });
        let fast = previous.as_ref().is_none_or(|p| p.fast);
        // Keep the limiter's schedule unless the limit itself changed.
        let throttle = match (previous.and_then(|p| p.throttle), target.rate_limit) {
            (Some(throttle), Some(limit)) if throttle.limit() == limit => Some(throttle),
            (_, limit) => limit.map(Throttle::new),
        };
        Self {
            fast,
            held_until_ms,
            enabled: endpoint.enabled && !disabling,
            disabling,
            health,
            breaker,
            probes,
            throttle,
            paused_until_ms,
            updated_at_ms: endpoint.updated_at_ms,
            target,
        }
    }

    /// Takes what another instance on the same database decided about the endpoint (its
    /// gate): a receiver's pause, a circuit it opened or closed.
    pub(super) fn adopt(&mut self, gate: &Gate, now: i64) {
        self.paused_until_ms = self.paused_until_ms.max(gate.paused_until_ms);
        let (circuit, open_until) = match gate.circuit {
            // Another instance's live probe round: its answers decide; ask again soon.
            CircuitState::HalfOpen if gate.probe_until_ms > now => {
                self.held_until_ms = self
                    .held_until_ms
                    .max(gate.probe_until_ms.min(now + crate::domain::RECHECK_MS));
                return;
            }
            // A round whose holder never answered: open, due for a probe now.
            CircuitState::HalfOpen => (CircuitState::Open, gate.probe_until_ms),
            circuit => (circuit, gate.open_until_ms),
        };
        if let Some(transition) = self.breaker.adopt(
            circuit,
            open_until,
            gate.changed_at_ms,
            &self.target.circuit,
        ) {
            self.health.circuit = transition.to;
            self.health.circuit_changed_at_ms = Some(gate.changed_at_ms);
            if transition.to != CircuitState::HalfOpen {
                self.probes.clear();
            }
            info!(endpoint = %self.target.id, to = %transition.to, "circuit changed by another instance");
        }
    }

    /// What may be claimed now with `busy` requests out, within the endpoint's concurrency,
    /// rate limit, pause and circuit; `None` when nothing.
    pub(super) fn room(&self, busy: usize, concurrency: usize, now: i64) -> Option<Room> {
        if !self.enabled || self.paused_until_ms > now || self.held_until_ms > now {
            return None;
        }
        let (mut slots, probe) = match self.breaker.admission(&self.target.circuit, now) {
            Admission::Flow => (concurrency.saturating_sub(busy), false),
            // Probes go once the attempts sent before the circuit opened have answered.
            Admission::Probe(probes) if busy == 0 => ((probes as usize).min(concurrency), true),
            Admission::Probe(_) | Admission::Wait(_) => return None,
        };
        if let Some(throttle) = &self.throttle {
            slots = slots.min(throttle.available(now));
        }
        (slots > 0).then_some(Room { slots, probe })
    }

    /// Whether deliveries may go out now without asking anything but a free slot: enabled,
    /// not paused or held, circuit closed. (A probe round's deliveries go regardless.)
    pub(super) fn flowing(&self, now: i64) -> bool {
        self.enabled
            && self.paused_until_ms <= now
            && self.held_until_ms <= now
            && matches!(
                self.breaker.admission(&self.target.circuit, now),
                Admission::Flow
            )
    }

    /// How many times its share of the concurrency cap the worker may hold for it (in flight,
    /// waiting in memory, or handed over by ingest): more than one only for a fast receiver
    /// without a rate limit, whose deliveries can be sent from memory as slots free, with no
    /// claim between one request and the next.
    pub(super) fn depth(&self, now: i64) -> usize {
        if self.fast && self.throttle.is_none() && self.flowing(now) {
            PREFETCH
        } else {
            1
        }
    }

    /// The earliest moment something due could be claimed (with `busy` requests out), or
    /// `None` when only an answer can change that (it wakes the worker).
    pub(super) fn opens_at(&self, busy: usize, now: i64) -> Option<i64> {
        let gate = match self.breaker.admission(&self.target.circuit, now) {
            Admission::Flow => now,
            // With attempts still in flight no probe goes: their completion wakes the loop.
            Admission::Probe(_) if busy > 0 => return None,
            Admission::Probe(_) => now,
            Admission::Wait(Some(at)) => at,
            Admission::Wait(None) => return None,
        };
        let gate = self
            .throttle
            .as_ref()
            .map_or(gate, |t| gate.max(t.next_free_ms(now)));
        Some(gate.max(self.paused_until_ms).max(self.held_until_ms))
    }

    /// Accounts for `count` deliveries claimed at `now`; returns the health to persist when
    /// they start a probe round.
    pub(super) fn claimed(
        &mut self,
        claimed: impl Iterator<Item = DeliveryId>,
        probe: bool,
        now: i64,
    ) -> Option<HealthUpdate> {
        let ids: HashSet<DeliveryId> = claimed.collect();
        let count = ids.len();
        if let Some(throttle) = &mut self.throttle {
            throttle.take(now, count);
        }
        if !probe || count == 0 {
            return None;
        }
        self.probes = ids;
        self.breaker.probes_sent(count as u32, now);
        self.health.circuit = self.breaker.state();
        self.health.circuit_changed_at_ms = Some(now);
        info!(endpoint = %self.target.id, probes = count, "circuit half-open: sending probe deliveries");
        Some(HealthUpdate {
            endpoint_id: self.target.id.clone(),
            health: self.health,
            disable: None,
            // The claim itself started the cluster's probe round (the gate's holder).
            shared: SharedChange::default(),
        })
    }

    /// Takes `delivery` out of the probe round; `Some(target, probing)` when it may be sent,
    /// `None` when the endpoint is disabled (the delivery goes back to the queue).
    pub(super) fn take(&mut self, delivery: &DeliveryId, now: i64) -> Option<(Target, bool)> {
        let probing = self.probes.remove(delivery);
        if !self.enabled && probing {
            self.breaker.probe_abandoned(&self.target.circuit, now);
        }
        self.enabled.then(|| (self.target.clone(), probing))
    }

    /// Applies a decided answer to the endpoint: its health, a receiver's pause, the circuit
    /// breaker's judgement and, past `disable_after` of continuous failure, disabling. Returns
    /// the health to record with the attempt.
    pub(super) fn observe(
        &mut self,
        delivery: &ClaimedDelivery,
        decision: &Decision,
        probing: bool,
        disable_after: Option<Duration>,
        now: i64,
    ) -> HealthUpdate {
        self.health = track_health(self.health, decision.signal, now);
        let mut shared = SharedChange::default();
        if let (NextState::Throttled(until), Some(429)) = (decision.next, decision.status_code) {
            // The receiver asked everyone to wait, not just this delivery: every instance.
            self.paused_until_ms = self.paused_until_ms.max(until);
            shared.pause_until_ms = Some(until);
        }
        let answer = Answer {
            delivery: BuildHasherDefault::<DefaultHasher>::default().hash_one(&delivery.id),
            signal: decision.signal,
            retried: delivery.total_attempts > 0,
            last: decision.next == NextState::DeadLetter,
        };
        if let Some(transition) = self
            .breaker
            .record(answer, probing, &self.target.circuit, now)
        {
            self.health.circuit = transition.to;
            self.health.circuit_changed_at_ms = Some(now);
            if transition.to != CircuitState::HalfOpen {
                self.probes.clear();
            }
            shared.circuit = match transition.to {
                CircuitState::Open => Some(CircuitEvent::Opened {
                    until_ms: now + transition.cooldown_ms,
                }),
                CircuitState::Closed => Some(CircuitEvent::Closed),
                CircuitState::HalfOpen => None,
            };
            log_circuit_change(&self.target.id, transition, &self.health);
        }
        let disable = disable_after.and_then(|after| {
            disable_reason(&self.health, after, decision.error_detail.as_deref(), now)
        });
        if let Some(reason) = &disable {
            self.enabled = false;
            self.disabling = true;
            warn!(endpoint = %self.target.id, reason, "endpoint disabled");
        }
        HealthUpdate {
            endpoint_id: delivery.endpoint_id.clone(),
            health: self.health,
            disable,
            shared,
        }
    }
}

/// Why an endpoint that has failed continuously for longer than `after` is disabled.
fn disable_reason(
    health: &EndpointHealth,
    after: Duration,
    last_error: Option<&str>,
    now: i64,
) -> Option<String> {
    let since = health.failing_since_ms?;
    (now - since >= millis(after)).then(|| {
        format!(
            "failing continuously since {} (last error: {})",
            rfc3339(since),
            last_error.unwrap_or("unknown")
        )
    })
}

fn log_circuit_change(endpoint: &EndpointId, transition: Transition, health: &EndpointHealth) {
    match transition.to {
        CircuitState::Open => warn!(
            endpoint = %endpoint,
            from = %transition.from,
            consecutive_failures = health.consecutive_failures,
            cooldown_ms = transition.cooldown_ms,
            "circuit opened: deliveries to this endpoint wait for a round of probes"
        ),
        CircuitState::Closed => {
            info!(endpoint = %endpoint, "circuit closed: deliveries resume")
        }
        CircuitState::HalfOpen => {}
    }
}
