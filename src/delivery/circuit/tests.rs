//! Table tests of the breaker: direct transitions, then whole scenarios played against a
//! model of the worker (claims within the breaker's admission, probes mixing retried and fresh
//! deliveries, each delivery on its own retry schedule) on a simulated clock.

use super::*;

const POLICY: CircuitPolicy = CircuitPolicy {
    min_failures: 10,
    failure_rate: 0.8,
    window_ms: 30_000,
    cooldown_ms: 2_000,
    max_cooldown_ms: 30_000,
    probes: 3,
    probe_timeout_ms: 25_000,
};

fn fail(b: &mut Breaker, delivery: u64, now: i64) -> Option<Transition> {
    b.record(
        Answer::first(delivery, Signal::Failure),
        false,
        &POLICY,
        now,
    )
}

fn open_breaker(now: i64) -> Breaker {
    let mut b = Breaker::default();
    for d in 0..10 {
        fail(&mut b, d, now);
    }
    assert_eq!(b.state(), CircuitState::Open);
    b
}

#[test]
fn one_event_retrying_never_opens_the_circuit_however_often_it_fails() {
    let mut b = Breaker::default();
    for n in 0..100 {
        assert_eq!(fail(&mut b, 7, n * 100), None);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    // Nine different events are still too few; the tenth opens it.
    for d in 8..=15 {
        fail(&mut b, d, 10_000 + d as i64);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&mut b, 16, 20_000);
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn the_rate_decides_and_429_is_not_judged() {
    // 9 failing events among 10: 90% but under the minimum count.
    let mut b = Breaker::default();
    b.record(Answer::first(100, Signal::Success), false, &POLICY, 0);
    for d in 0..9 {
        fail(&mut b, d, 1);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    for n in 0..50 {
        b.record(Answer::first(200 + n, Signal::Neutral), false, &POLICY, 2);
    }
    // The 10th failure: 10 of 11 judged (429s not counted) = 91% ≥ 80%.
    let t = fail(&mut b, 9, 3).expect("opens");
    assert_eq!(
        (t.from, t.to, t.cooldown_ms),
        (CircuitState::Closed, CircuitState::Open, 2_000)
    );

    // With successes making the rate 10/13 = 77% it stays closed, and an event that
    // succeeds on its retry stops counting as failing.
    let mut b = Breaker::default();
    for n in 0..3 {
        b.record(Answer::first(100 + n, Signal::Success), false, &POLICY, 0);
    }
    for d in 0..10 {
        fail(&mut b, d, 1);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    let mut b = Breaker::default();
    for d in 0..9 {
        fail(&mut b, d, 1);
        b.record(Answer::retry(d, Signal::Success), false, &POLICY, 2);
    }
    fail(&mut b, 9, 3);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn alternating_success_and_failure_never_opens() {
    let mut b = Breaker::default();
    for d in 0..10_000_u64 {
        let signal = if d % 2 == 0 {
            Signal::Success
        } else {
            Signal::Failure
        };
        assert_eq!(
            b.record(Answer::first(d, signal), false, &POLICY, d as i64 * 10),
            None,
            "at {d}"
        );
    }
    // The same answers on one event's retries (fail, succeed, fail, …) do not add up either.
    for n in 0..1000 {
        let signal = if n % 2 == 0 {
            Signal::Failure
        } else {
            Signal::Success
        };
        b.record(Answer::retry(42, signal), false, &POLICY, 100_000 + n);
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn first_failures_stop_counting_once_a_retry_goes_through() {
    // A dead endpoint: ten events fail their first attempt, nothing has recovered: open.
    open_breaker(0);
    // One event failed and then succeeded on its retry: first failures are provisional now.
    let mut b = Breaker::default();
    fail(&mut b, 1, 0);
    b.record(Answer::retry(1, Signal::Success), false, &POLICY, 1_000);
    for d in 2..100 {
        assert_eq!(fail(&mut b, d, 1_000), None, "event {d}");
    }
    // Then their retries fail too: once failed retries are not outnumbered by those that
    // went through, the first failures count again and the circuit opens on the spot.
    let t = b
        .record(Answer::retry(2, Signal::Failure), false, &POLICY, 2_000)
        .expect("opens");
    assert_eq!(t.to, CircuitState::Open);
    // Retries going through at a high rate keep first failures provisional however many of
    // them fill the window; only the retries' own record decides.
    let mut b = Breaker::default();
    for d in 0..5_000_u64 {
        let now = d as i64;
        assert_eq!(fail(&mut b, 10_000 + d, now), None, "event {d}");
        b.record(Answer::retry(d, Signal::Success), false, &POLICY, now);
    }
    // A failure that dead-letters its delivery counts at once, retried or not.
    let mut b = Breaker::default();
    b.record(Answer::retry(1, Signal::Success), false, &POLICY, 0);
    for d in 2..12 {
        let last = Answer {
            last: true,
            ..Answer::first(d, Signal::Failure)
        };
        b.record(last, false, &POLICY, 1);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn a_retry_closing_the_circuit_keeps_first_failures_provisional() {
    let mut b = open_breaker(0);
    b.probes_sent(2, 2_000);
    b.record(Answer::retry(3, Signal::Success), true, &POLICY, 2_000)
        .expect("closes");
    for d in 100..200 {
        assert_eq!(fail(&mut b, d, 2_100), None);
    }
    // Closed by a first attempt instead: first failures count again.
    let mut b = open_breaker(0);
    b.probes_sent(2, 2_000);
    b.record(Answer::first(3, Signal::Success), true, &POLICY, 2_000)
        .expect("closes");
    for d in 100..110 {
        fail(&mut b, d, 2_100);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn failures_older_than_the_window_are_forgotten() {
    let mut b = Breaker::default();
    for d in 0..9 {
        fail(&mut b, d, 0);
    }
    fail(&mut b, 9, POLICY.window_ms + 1);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn min_failures_zero_never_opens() {
    let off = CircuitPolicy {
        min_failures: 0,
        ..POLICY
    };
    let mut b = Breaker::default();
    for d in 0..1000 {
        b.record(Answer::first(d, Signal::Failure), false, &off, d as i64);
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn a_slow_recovery_doubles_the_cooldown_until_a_probe_succeeds() {
    let mut b = open_breaker(0);
    let mut now = 0;
    // Probes fail twice, then succeed.
    for (round, expected_wait) in [(0, 2_000), (1, 4_000), (2, 8_000)] {
        assert_eq!(
            b.admission(&POLICY, now + expected_wait - 1),
            Admission::Wait(Some(now + expected_wait)),
            "round {round}"
        );
        now += expected_wait;
        assert_eq!(b.admission(&POLICY, now), Admission::Probe(3));
        let t = b.probes_sent(3, now).expect("half-open");
        assert_eq!(t.to, CircuitState::HalfOpen);
        assert_eq!(b.admission(&POLICY, now), Admission::Wait(None));
        if round < 2 {
            assert_eq!(
                b.record(Answer::first(1, Signal::Failure), true, &POLICY, now),
                None
            );
            assert_eq!(
                b.record(Answer::first(2, Signal::Failure), true, &POLICY, now),
                None,
                "judged together"
            );
            let t = b
                .record(Answer::first(3, Signal::Failure), true, &POLICY, now)
                .expect("re-opens");
            assert_eq!(t.to, CircuitState::Open);
            assert_eq!(t.cooldown_ms, expected_wait * 2);
        } else {
            b.record(Answer::first(1, Signal::Failure), true, &POLICY, now);
            let t = b
                .record(Answer::first(2, Signal::Success), true, &POLICY, now)
                .expect("closes");
            assert_eq!(t.to, CircuitState::Closed);
        }
    }
    assert_eq!(b.admission(&POLICY, now), Admission::Flow);
    // The last probe's late failure and stragglers change nothing.
    assert_eq!(
        b.record(Answer::first(3, Signal::Failure), true, &POLICY, now),
        None
    );
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn the_cooldown_is_capped_and_relapses_soon_after_closing_keep_growing_it() {
    let mut b = open_breaker(0);
    let mut now = 0;
    for _ in 0..10 {
        now += b.cooldown_ms(&POLICY);
        b.probes_sent(1, now);
        b.record(Answer::first(1, Signal::Failure), true, &POLICY, now);
    }
    assert_eq!(b.cooldown_ms(&POLICY), 30_000);
    now += 30_000;
    b.probes_sent(1, now);
    b.record(Answer::first(1, Signal::Success), true, &POLICY, now);
    // Failing again right after closing: the recovery did not hold.
    for d in 0..10 {
        fail(&mut b, d, now + 100);
    }
    assert_eq!(b.cooldown_ms(&POLICY), 30_000);
    // Opening long after the last close starts from the first cool-down again.
    let mut b = open_breaker(0);
    b.probes_sent(1, 2_000);
    b.record(Answer::first(1, Signal::Success), true, &POLICY, 2_000);
    for d in 0..10 {
        fail(&mut b, d, 2_000 + POLICY.window_ms + 1);
    }
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(b.cooldown_ms(&POLICY), 2_000);
}

#[test]
fn a_busy_probe_closes_and_a_lost_round_is_probed_again() {
    let mut b = open_breaker(0);
    b.probes_sent(2, 2_000);
    assert_eq!(
        b.record(Answer::first(1, Signal::Neutral), true, &POLICY, 2_000)
            .map(|t| t.to),
        Some(CircuitState::Closed)
    );

    let mut b = open_breaker(0);
    b.probes_sent(2, 2_000);
    b.probe_abandoned(&POLICY, 2_100);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    b.probe_abandoned(&POLICY, 2_200);
    assert_eq!(b.admission(&POLICY, 2_200), Admission::Probe(3));

    // A probe whose answer never comes: after the probe timeout another round may go.
    let mut b = open_breaker(0);
    b.probes_sent(1, 2_000);
    assert_eq!(
        b.admission(&POLICY, 2_000 + POLICY.probe_timeout_ms - 1),
        Admission::Wait(None)
    );
    assert_eq!(
        b.admission(&POLICY, 2_000 + POLICY.probe_timeout_ms),
        Admission::Probe(3)
    );
}

#[test]
fn a_restart_resumes_an_open_circuit() {
    let health = EndpointHealth {
        circuit: CircuitState::HalfOpen,
        circuit_changed_at_ms: Some(5_000),
        ..EndpointHealth::default()
    };
    let b = Breaker::from_health(&health);
    assert_eq!(b.admission(&POLICY, 6_000), Admission::Wait(Some(7_000)));
    assert_eq!(b.admission(&POLICY, 7_000), Admission::Probe(3));
}

// ---- Scenarios -------------------------------------------------------------------------

/// How the receiver answers an event's attempt: `(event, attempt_no from 1, now_ms) -> ok`.
type Receiver = fn(usize, u32, i64) -> bool;

struct Scenario {
    name: &'static str,
    /// When each event is accepted, ms.
    arrivals: Vec<i64>,
    receiver: Receiver,
    /// Events the receiver never accepts.
    poison: fn(usize) -> bool,
    /// Deliveries the worker model sends per tick while the circuit is closed.
    per_tick: usize,
}

#[derive(Debug, Default)]
struct Report {
    /// When the last healthy event arrived, ms.
    healthy_done_ms: Option<i64>,
    dead: Vec<usize>,
    /// Attempts in [from, to).
    attempts_between: usize,
    opened: usize,
}

struct Delivery {
    event: usize,
    due: i64,
    attempts: u32,
    throttled: u32,
    done: bool,
    dead: bool,
}

const RETRY_BASE_MS: i64 = 1_000;
const MAX_RETRIES: u32 = 3;
const TICK_MS: i64 = 50;

/// Plays a scenario: every tick, the worker model claims what the breaker admits (oldest due
/// first; probes half retried, half by due time), the receiver answers within the tick, and
/// each answer goes through the same rules as the worker's: a failure spends the delivery's
/// own budget, except a failed probe, which waits for its next retry time without spending.
fn play(s: &Scenario, count_from: i64, count_to: i64) -> Report {
    let mut b = Breaker::default();
    let mut ds: Vec<Delivery> = Vec::new();
    let mut report = Report::default();
    let end = 300_000;
    let mut now = 0;
    while now < end {
        for (event, at) in s.arrivals.iter().enumerate() {
            if *at > now - TICK_MS && *at <= now {
                ds.push(Delivery {
                    event,
                    due: *at,
                    attempts: 0,
                    throttled: 0,
                    done: false,
                    dead: false,
                });
            }
        }
        let mut due: Vec<usize> = (0..ds.len())
            .filter(|&i| !ds[i].done && ds[i].due <= now)
            .collect();
        due.sort_by_key(|&i| ds[i].due);
        let (picked, probing): (Vec<usize>, bool) = match b.admission(&POLICY, now) {
            Admission::Flow => (due.into_iter().take(s.per_tick).collect(), false),
            Admission::Probe(k) => {
                let k = k as usize;
                let mut picked: Vec<usize> = due
                    .iter()
                    .copied()
                    .filter(|&i| ds[i].attempts + ds[i].throttled > 0)
                    .take(k.div_ceil(2))
                    .collect();
                for i in due {
                    if picked.len() == k {
                        break;
                    }
                    if !picked.contains(&i) {
                        picked.push(i);
                    }
                }
                if let Some(t) = b.probes_sent(picked.len() as u32, now) {
                    assert_eq!(t.to, CircuitState::HalfOpen);
                }
                (picked, true)
            }
            Admission::Wait(_) => (Vec::new(), false),
        };
        for i in picked {
            let d = &mut ds[i];
            let attempt_no = d.attempts + d.throttled + 1;
            if (count_from..count_to).contains(&now) {
                report.attempts_between += 1;
            }
            let ok = !(s.poison)(d.event) && (s.receiver)(d.event, attempt_no, now);
            let signal = if ok { Signal::Success } else { Signal::Failure };
            let answer = Answer {
                delivery: i as u64,
                signal,
                retried: d.attempts + d.throttled > 0,
                last: !probing && d.attempts + 1 > MAX_RETRIES,
            };
            if let Some(t) = b.record(answer, probing, &POLICY, now)
                && t.to == CircuitState::Open
            {
                report.opened += 1;
            }
            if ok {
                d.done = true;
                if !(s.poison)(d.event) {
                    report.healthy_done_ms = report.healthy_done_ms.max(Some(now));
                }
            } else if probing {
                d.throttled += 1;
                d.due = now + (RETRY_BASE_MS << d.attempts.min(10));
            } else {
                d.attempts += 1;
                if d.attempts > MAX_RETRIES {
                    d.done = true;
                    d.dead = true;
                    report.dead.push(d.event);
                } else {
                    d.due = now + (RETRY_BASE_MS << (d.attempts - 1));
                }
            }
        }
        now += TICK_MS;
    }
    let healthy_left = ds
        .iter()
        .filter(|d| !d.done && !(s.poison)(d.event))
        .count();
    assert_eq!(
        healthy_left, 0,
        "{}: healthy events never delivered",
        s.name
    );
    assert_eq!(
        ds.len(),
        s.arrivals.len(),
        "{}: every event arrived",
        s.name
    );
    report
}

fn never(_: usize) -> bool {
    false
}

#[test]
fn scenarios_deliver_healthy_events_and_dead_letter_only_poison() {
    struct Row {
        scenario: Scenario,
        /// Every healthy event arrived by then, ms.
        done_by_ms: i64,
        /// Attempts sent in [from, to) at most.
        attempts_window: (i64, i64, usize),
        /// Times the circuit opened: (at least, at most).
        opened: (usize, usize),
    }
    let table = vec![
        Row {
            // The report that filed the issue: 50 at once, every first attempt fails.
            scenario: Scenario {
                name: "flaky-first, 50 at once",
                arrivals: vec![0; 50],
                receiver: |_, attempt, _| attempt > 1,
                poison: never,
                per_tick: 16,
            },
            done_by_ms: 6_000,
            attempts_window: (0, 300_000, 50 * 2 + 20),
            opened: (0, 10),
        },
        Row {
            scenario: Scenario {
                name: "flaky-first, a steady 20/s",
                arrivals: (0..600).map(|n| n * 50).collect(),
                receiver: |_, attempt, _| attempt > 1,
                poison: never,
                per_tick: 16,
            },
            done_by_ms: 36_000,
            attempts_window: (0, 300_000, 600 * 2 + 60),
            opened: (0, 10),
        },
        Row {
            // Ten times the window's capacity per second: the evidence that retries go
            // through must not be crowded out of the window by the first failures.
            scenario: Scenario {
                name: "flaky-first, a steady 1,000/s",
                arrivals: (0..10_000).collect(),
                receiver: |_, attempt, _| attempt > 1,
                poison: never,
                per_tick: 200,
            },
            done_by_ms: 14_000,
            attempts_window: (0, 300_000, 10_000 * 2 + 60),
            opened: (0, 3),
        },
        Row {
            scenario: Scenario {
                name: "5% poison at 20/s",
                arrivals: (0..600).map(|n| n * 50).collect(),
                receiver: |_, _, _| true,
                poison: |event| event % 20 == 7,
                per_tick: 16,
            },
            done_by_ms: 30_000,
            attempts_window: (0, 300_000, 570 + 30 * 4),
            opened: (0, 0),
        },
        Row {
            scenario: Scenario {
                name: "outage of 20 s at 20/s, then recovery",
                arrivals: (0..600).map(|n| n * 50).collect(),
                receiver: |_, _, now| now >= 20_000,
                poison: never,
                per_tick: 16,
            },
            // Probes at 2, 6, 14 and 30 s: the first after the outage ends succeeds, then
            // the backlog of ~500 drains at the model's 16 a tick.
            done_by_ms: 33_000,
            // A trickle while down: the attempts that open it, then 3 probes a round.
            attempts_window: (0, 20_000, 10 + 4 * 3),
            opened: (1, 5),
        },
        Row {
            scenario: Scenario {
                name: "half the events poison",
                arrivals: (0..600).map(|n| n * 50).collect(),
                receiver: |event, _, _| event % 2 == 0,
                poison: |event| event % 2 == 1,
                per_tick: 16,
            },
            done_by_ms: 30_000,
            attempts_window: (0, 300_000, 300 + 300 * 4),
            opened: (0, 0),
        },
    ];
    for row in table {
        let (from, to, max_attempts) = row.attempts_window;
        let report = play(&row.scenario, from, to);
        let name = row.scenario.name;
        let done = report.healthy_done_ms.expect("something delivered");
        assert!(
            done <= row.done_by_ms,
            "{name}: healthy done at {done} ms, wanted ≤ {}",
            row.done_by_ms
        );
        assert!(
            report.attempts_between <= max_attempts,
            "{name}: {} attempts in [{from}, {to})",
            report.attempts_between
        );
        assert!(
            (row.opened.0..=row.opened.1).contains(&report.opened),
            "{name}: opened {} times",
            report.opened
        );
        let poison: Vec<usize> = (0..row.scenario.arrivals.len())
            .filter(|&e| (row.scenario.poison)(e))
            .collect();
        let mut dead = report.dead.clone();
        dead.sort_unstable();
        assert_eq!(
            dead, poison,
            "{name}: dead letters are exactly the poison events"
        );
    }
}

#[test]
fn another_instances_opening_is_adopted_with_its_cool_down() {
    let mut b = Breaker::default();
    // The gate: opened at 1_000 by another instance, cooling down until 9_000.
    let t = b
        .adopt(CircuitState::Open, 9_000, 1_000, &POLICY)
        .expect("adopted");
    assert_eq!(
        (t.from, t.to, t.cooldown_ms),
        (CircuitState::Closed, CircuitState::Open, 8_000)
    );
    assert_eq!(b.admission(&POLICY, 8_999), Admission::Wait(Some(9_000)));
    assert_eq!(b.admission(&POLICY, 9_000), Admission::Probe(3));
    // The same news again, or an older closing, changes nothing.
    assert_eq!(b.adopt(CircuitState::Open, 9_000, 1_000, &POLICY), None);
    assert_eq!(b.admission(&POLICY, 9_000), Admission::Probe(3));
    assert_eq!(b.adopt(CircuitState::Closed, 0, 500, &POLICY), None);
    // Another instance's probe went through: closed here too.
    let t = b
        .adopt(CircuitState::Closed, 0, 12_000, &POLICY)
        .expect("adopted");
    assert_eq!(t.to, CircuitState::Closed);
    assert_eq!(b.admission(&POLICY, 12_001), Admission::Flow);
}

#[test]
fn an_opening_is_adopted_whatever_its_time_so_no_gate_stays_open_unprobed() {
    // The gate says open, stamped earlier than this breaker's last change (another host's
    // clock, a late commit): still adopted, so this instance probes when it cools down.
    let mut b = Breaker::default();
    b.record(Answer::first(1, Signal::Success), false, &POLICY, 50_000);
    assert!(
        b.adopt(CircuitState::Open, 52_000, 10_000, &POLICY)
            .is_some()
    );
    assert_eq!(b.admission(&POLICY, 52_000), Admission::Probe(3));
    // A later failed round elsewhere moves the next probe later, never earlier.
    b.adopt(CircuitState::Open, 60_000, 55_000, &POLICY);
    assert_eq!(b.admission(&POLICY, 59_999), Admission::Wait(Some(60_000)));
    b.adopt(CircuitState::Open, 40_000, 30_000, &POLICY);
    assert_eq!(b.admission(&POLICY, 59_999), Admission::Wait(Some(60_000)));
}

#[test]
fn a_closing_older_than_this_breakers_own_opening_is_ignored() {
    let mut b = open_breaker(5_000);
    assert_eq!(b.adopt(CircuitState::Closed, 0, 4_000, &POLICY), None);
    assert_eq!(b.state(), CircuitState::Open);
}
