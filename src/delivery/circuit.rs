//! The circuit breaker: a pure state machine over an endpoint's recent attempts and the clock.
//!
//! It must tell a dead endpoint from failing events. A burst of first attempts that fail
//! together, or a few "poison" events that fail on every try, say little about the endpoint;
//! an endpoint that fails most attempts, of several different events, and goes on failing the
//! probes sent after a pause, is down. So:
//!
//! - **Closed → open** on a failure *rate across events*: among the deliveries attempted in
//!   the last `window`, each judged by its latest answer, at least `min_failures` failed and
//!   they make up at least `failure_rate` of them. One event retrying counts once, so neither
//!   a poison event nor a retried one weighs more than a healthy one. 429 and refusals of our
//!   own (blocked address, `REQUIRE_HTTPS`) are not judged.
//! - **A first failure is provisional.** An event failing its first attempt counts against
//!   the endpoint only while retries do not go through: when most of the recent retries in
//!   the window (the last [`RETRY_CAPACITY`]) succeeded, an event counts as failing only once
//!   its retry fails too, or its failure was its last. So a receiver that fails every first
//!   attempt (a cold start, a Zap warming up) never trips it for long, at any rate, while a
//!   dead one, with no such recovery in sight, opens it after `min_failures` events; and one
//!   that dies after such a spell opens it as soon as its retries fail.
//! - **Open → half-open** after a cool-down that starts at `cooldown` and doubles with every
//!   probe round that fails (and with every re-opening soon after closing), up to
//!   `max_cooldown`. Half-open sends up to `probes` deliveries of different events at once.
//! - **Half-open → closed** as soon as one probe is answered 2xx (or 429: busy, but up), with
//!   a fresh window; **half-open → open** when every probe of the round has failed.
//!
//! Each delivery keeps its own retry schedule throughout: an event that fails spends its own
//! retries and is dead-lettered on its own; while the circuit is open nothing is sent but the
//! probes, so a receiver that is really down gets a trickle, not a flood.

use std::collections::VecDeque;

use crate::domain::{CircuitState, EndpointHealth};

/// What an attempt said about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 2xx.
    Success,
    /// A failure that says the endpoint may be unwell (5xx, 4xx, timeout, refused connection).
    Failure,
    /// Says nothing against the endpoint (429: up, only busy; or a refusal of our own).
    Neutral,
}

/// One answer, as the breaker judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Which delivery (a hash of its id).
    pub delivery: u64,
    /// What the answer says about the endpoint.
    pub signal: Signal,
    /// The delivery had been attempted before without success.
    pub retried: bool,
    /// No retry follows a failure (the delivery is dead-lettered).
    pub last: bool,
}

impl Answer {
    /// A first attempt's answer, with retries to come.
    pub fn first(delivery: u64, signal: Signal) -> Self {
        Self {
            delivery,
            signal,
            retried: false,
            last: false,
        }
    }

    /// A retry's answer, with more retries to come.
    pub fn retry(delivery: u64, signal: Signal) -> Self {
        Self {
            retried: true,
            ..Self::first(delivery, signal)
        }
    }
}

/// Circuit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitPolicy {
    /// Deliveries whose latest attempt in the window failed, before the rate is judged; 0
    /// never opens.
    pub min_failures: u32,
    /// Share of the deliveries judged in the window that must be failing, in `[0, 1]`.
    pub failure_rate: f64,
    /// How far back attempts count, in ms.
    pub window_ms: i64,
    /// The first cool-down of an open circuit, in ms.
    pub cooldown_ms: i64,
    /// The longest cool-down, in ms.
    pub max_cooldown_ms: i64,
    /// Probe deliveries per half-open round.
    pub probes: u32,
    /// A probe round with answers still missing after this long is judged on what it has
    /// (a probe whose task vanished must not hold the circuit half-open for ever), in ms.
    pub probe_timeout_ms: i64,
}

/// Deliveries kept in the window; enough to judge a rate, bounded whatever the traffic.
const WINDOW_CAPACITY: usize = 512;

/// Retry answers kept apart from the window, so that at a high rate the first failures do
/// not crowd the evidence of retries going through out of it.
pub const RETRY_CAPACITY: usize = 64;

/// A delivery's latest judged answer in the window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    /// Which delivery (a hash of its id).
    delivery: u64,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Delivered at the first attempt.
    Delivered,
    /// Delivered after failing: evidence that failures here are the events', not the
    /// endpoint's.
    Recovered,
    /// Failed once, retries to come.
    FailedOnce,
    /// Failed again, or for good.
    Failing,
}

impl Verdict {
    fn of(answer: Answer) -> Option<Self> {
        match answer.signal {
            Signal::Neutral => None,
            Signal::Success if answer.retried => Some(Verdict::Recovered),
            Signal::Success => Some(Verdict::Delivered),
            Signal::Failure if answer.retried || answer.last => Some(Verdict::Failing),
            Signal::Failure => Some(Verdict::FailedOnce),
        }
    }
}

/// A half-open round's answers so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Round {
    outstanding: u32,
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: deliveries flow.
    Flow,
    /// A probe round may start with up to this many deliveries.
    Probe(u32),
    /// Nothing may go until this time (open), or until the probes answer (`None`).
    Wait(Option<i64>),
}

/// A change of state, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// While open: how long until the next probe round, in ms.
    pub cooldown_ms: i64,
}

/// One endpoint's circuit breaker. Only the worker that sends to the endpoint holds it; the
/// state it reaches is written to the endpoint's health for people and other processes.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: CircuitState,
    changed_at_ms: i64,
    /// Doublings of the cool-down: probe rounds failed (and quick re-openings) in a row.
    level: u32,
    closed_at_ms: Option<i64>,
    window: VecDeque<Sample>,
    /// The latest retries' answers in the window: (when, went through).
    retries: VecDeque<(i64, bool)>,
    round: Option<Round>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: CircuitState::Closed,
            changed_at_ms: 0,
            level: 0,
            closed_at_ms: None,
            window: VecDeque::new(),
            retries: VecDeque::new(),
            round: None,
        }
    }
}

impl Breaker {
    /// A breaker resuming from stored health (after a restart): an open or half-open circuit
    /// stays open, its next probe due one first cool-down after its last change.
    pub fn from_health(health: &EndpointHealth) -> Self {
        let state = match health.circuit {
            CircuitState::Closed => CircuitState::Closed,
            CircuitState::Open | CircuitState::HalfOpen => CircuitState::Open,
        };
        Self {
            state,
            changed_at_ms: health.circuit_changed_at_ms.unwrap_or(0),
            ..Self::default()
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// When the state last changed, unix ms.
    pub fn changed_at_ms(&self) -> i64 {
        self.changed_at_ms
    }

    /// The cool-down of the current (or next) open period.
    pub fn cooldown_ms(&self, policy: &CircuitPolicy) -> i64 {
        let doubled = policy
            .cooldown_ms
            .saturating_mul(1_i64 << self.level.min(30));
        doubled.min(policy.max_cooldown_ms.max(policy.cooldown_ms))
    }

    /// What may be sent at `now_ms`.
    pub fn admission(&self, policy: &CircuitPolicy, now_ms: i64) -> Admission {
        match self.state {
            CircuitState::Closed => Admission::Flow,
            CircuitState::Open => {
                let at = self.changed_at_ms.saturating_add(self.cooldown_ms(policy));
                if now_ms >= at {
                    Admission::Probe(policy.probes.max(1))
                } else {
                    Admission::Wait(Some(at))
                }
            }
            CircuitState::HalfOpen => {
                let stale = self.changed_at_ms.saturating_add(policy.probe_timeout_ms);
                if now_ms >= stale {
                    Admission::Probe(policy.probes.max(1))
                } else {
                    Admission::Wait(None)
                }
            }
        }
    }

    /// A probe round of `sent` deliveries has started (nothing is done for 0: the circuit
    /// stays open until something is due).
    pub fn probes_sent(&mut self, sent: u32, now_ms: i64) -> Option<Transition> {
        if sent == 0 || self.state == CircuitState::Closed {
            return None;
        }
        let from = self.state;
        self.state = CircuitState::HalfOpen;
        self.changed_at_ms = now_ms;
        self.round = Some(Round { outstanding: sent });
        (from != CircuitState::HalfOpen).then_some(Transition {
            from,
            to: CircuitState::HalfOpen,
            cooldown_ms: 0,
        })
    }

    /// Applies one attempt's answer. `probe` says whether it was sent as a probe of the
    /// current half-open round; other answers arriving while the circuit is not closed were
    /// sent before it opened and change nothing.
    pub fn record(
        &mut self,
        answer: Answer,
        probe: bool,
        policy: &CircuitPolicy,
        now_ms: i64,
    ) -> Option<Transition> {
        let signal = answer.signal;
        match self.state {
            CircuitState::Closed => {
                let verdict = Verdict::of(answer)?;
                self.push(answer, verdict, policy, now_ms);
                if signal == Signal::Failure && self.should_open(policy, now_ms) {
                    // Re-opening soon after closing means the recovery did not hold.
                    let relapse = self
                        .closed_at_ms
                        .is_some_and(|closed| now_ms - closed < policy.window_ms);
                    self.level = if relapse { self.level + 1 } else { 0 };
                    return Some(self.open(policy, now_ms));
                }
                None
            }
            CircuitState::HalfOpen if probe => {
                if signal != Signal::Failure {
                    let transition = self.close(now_ms);
                    // The fresh window starts with what closed it: a retry going through
                    // tells the events that fail their first attempt next not to count yet.
                    if let Some(verdict) = Verdict::of(answer) {
                        self.push(answer, verdict, policy, now_ms);
                    }
                    return Some(transition);
                }
                let round = self.round.get_or_insert(Round { outstanding: 1 });
                round.outstanding = round.outstanding.saturating_sub(1);
                if round.outstanding == 0 {
                    self.level += 1;
                    return Some(self.open(policy, now_ms));
                }
                None
            }
            CircuitState::HalfOpen | CircuitState::Open => None,
        }
    }

    /// A probe ended without an answer (released at shutdown, endpoint disabled): the round
    /// waits for one answer fewer; if none is left, the circuit returns to open, due at once.
    pub fn probe_abandoned(&mut self, policy: &CircuitPolicy, now_ms: i64) {
        if self.state != CircuitState::HalfOpen {
            return;
        }
        if let Some(round) = &mut self.round {
            round.outstanding = round.outstanding.saturating_sub(1);
            if round.outstanding == 0 {
                self.round = None;
                self.state = CircuitState::Open;
                self.changed_at_ms = now_ms.saturating_sub(self.cooldown_ms(policy));
            }
        }
    }

    fn push(&mut self, answer: Answer, verdict: Verdict, policy: &CircuitPolicy, now_ms: i64) {
        let delivery = answer.delivery;
        let horizon = now_ms.saturating_sub(policy.window_ms);
        if answer.retried {
            if self.retries.len() >= RETRY_CAPACITY {
                self.retries.pop_front();
            }
            self.retries
                .push_back((now_ms, verdict == Verdict::Recovered));
        }
        // A delivery counts once, by its latest answer.
        if let Some(at) = self.window.iter().position(|s| s.delivery == delivery) {
            self.window.remove(at);
        }
        while self.window.front().is_some_and(|s| s.at_ms <= horizon)
            || self.window.len() >= WINDOW_CAPACITY
        {
            self.window.pop_front();
        }
        self.window.push_back(Sample {
            at_ms: now_ms,
            delivery,
            verdict,
        });
    }

    /// Most of the retries answered in the window went through.
    fn retries_recover(&self, policy: &CircuitPolicy, now_ms: i64) -> bool {
        let horizon = now_ms.saturating_sub(policy.window_ms);
        let (recovered, failed) =
            self.retries
                .iter()
                .filter(|(at, _)| *at > horizon)
                .fold(
                    (0, 0),
                    |(r, f), (_, ok)| if *ok { (r + 1, f) } else { (r, f + 1) },
                );
        recovered > failed
    }

    fn should_open(&self, policy: &CircuitPolicy, now_ms: i64) -> bool {
        if policy.min_failures == 0 {
            return false;
        }
        let recovering = self.retries_recover(policy, now_ms);
        let (mut failing, mut judged) = (0_usize, 0_usize);
        for sample in &self.window {
            match sample.verdict {
                Verdict::FailedOnce if recovering => continue,
                Verdict::FailedOnce | Verdict::Failing => failing += 1,
                Verdict::Delivered | Verdict::Recovered => {}
            }
            judged += 1;
        }
        failing >= policy.min_failures as usize
            && failing as f64 >= policy.failure_rate * judged as f64
    }

    /// Takes over what another instance on the same database decided (its endpoint gate): a
    /// circuit it opened, whose cool-down ends at `open_until_ms`, or closed after a probe went
    /// through at `changed_at_ms`. An opening is always taken (a gate left open with no one to
    /// probe it would hold the endpoint for good; if it is stale, this breaker's probe closes
    /// it); a closing only when it is newer than this breaker's own last change.
    pub fn adopt(
        &mut self,
        circuit: CircuitState,
        open_until_ms: i64,
        changed_at_ms: i64,
        policy: &CircuitPolicy,
    ) -> Option<Transition> {
        match (circuit, self.state) {
            (CircuitState::Open, CircuitState::Closed) => {
                let mut transition = self.open(policy, changed_at_ms);
                // Due for a probe when the gate's cool-down ends, not this breaker's.
                self.changed_at_ms = open_until_ms.saturating_sub(self.cooldown_ms(policy));
                transition.cooldown_ms = open_until_ms.saturating_sub(changed_at_ms).max(0);
                Some(transition)
            }
            // Another instance's probe round failed: the next one is due when the gate says.
            (CircuitState::Open, CircuitState::Open) => {
                let due = open_until_ms.saturating_sub(self.cooldown_ms(policy));
                self.changed_at_ms = self.changed_at_ms.max(due);
                None
            }
            (CircuitState::Closed, CircuitState::Open | CircuitState::HalfOpen)
                if changed_at_ms > self.changed_at_ms =>
            {
                Some(self.close(changed_at_ms))
            }
            _ => None,
        }
    }

    fn open(&mut self, policy: &CircuitPolicy, now_ms: i64) -> Transition {
        let from = self.state;
        self.state = CircuitState::Open;
        self.changed_at_ms = now_ms;
        self.round = None;
        Transition {
            from,
            to: CircuitState::Open,
            cooldown_ms: self.cooldown_ms(policy),
        }
    }

    fn close(&mut self, now_ms: i64) -> Transition {
        let from = self.state;
        self.state = CircuitState::Closed;
        self.changed_at_ms = now_ms;
        self.closed_at_ms = Some(now_ms);
        self.round = None;
        // Judge the endpoint afresh: the failures that opened it are history.
        self.window.clear();
        self.retries.clear();
        Transition {
            from,
            to: CircuitState::Closed,
            cooldown_ms: 0,
        }
    }
}

/// The health counters that go with one more attempt (the circuit itself is the breaker's).
pub fn track_health(health: EndpointHealth, signal: Signal, now_ms: i64) -> EndpointHealth {
    let mut next = EndpointHealth {
        last_attempt_at_ms: Some(now_ms),
        ..health
    };
    match signal {
        Signal::Success => {
            next.consecutive_failures = 0;
            next.failing_since_ms = None;
            next.last_success_at_ms = Some(now_ms);
        }
        Signal::Failure => {
            next.consecutive_failures = health.consecutive_failures.saturating_add(1);
            next.failing_since_ms = health.failing_since_ms.or(Some(now_ms));
        }
        Signal::Neutral => {}
    }
    next
}

#[cfg(test)]
mod tests;
