//! The delivery worker: a loop around two steps, claim and deliver.
//!
//! [`Worker::run_once`] does one round synchronously (claim what is due, deliver all of it,
//! return what happened) and is what tests drive. [`Worker::run`] (in `scheduler.rs`) is the
//! production loop driving the same two steps with rounds overlapping.
//!
//! Delivering one claimed delivery goes through the typed stages of [`super::attempt`]:
//! prepared → sent → decided (pure) → recorded. Per endpoint the worker keeps a rate limiter,
//! a circuit breaker, a `Retry-After` pause and the endpoint's health (`runtime.rs`): claims
//! are limited to what the rate allows, an open circuit claims nothing until its cool-down is
//! over and then one round of probes, half of them deliveries that failed before and half the
//! oldest due. Health is written with every attempt, so `endpoints show` sees it.

mod runtime;
mod scheduler;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, task::JoinSet};
use tracing::{info, warn};

use self::{
    runtime::{EndpointRuntime, Room},
    scheduler::{Recorder, Slot},
};
use super::{
    HttpSender, Target,
    attempt::{Spent, decide, prepare, send},
};
use crate::{
    clock::{Clock, millis},
    config::Config,
    domain::{Ask, EndpointId, Gate, GateLimits},
    store::{
        AttemptRecord, ClaimedDelivery, GatedClaim, GatedWant, Handoff, Leased, NextState, Store,
        StoreError,
    },
};

/// What one attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it.
    Delivered,
    /// It failed and will be tried again at this time (unix ms).
    Retrying {
        /// When the next attempt is due.
        at_ms: i64,
    },
    /// The receiver was busy (429) or a circuit probe failed: tried again at this time
    /// without spending the retry budget.
    Throttled {
        /// When the next attempt is due.
        at_ms: i64,
    },
    /// It failed for good and is now in the dead-letter queue.
    DeadLettered,
    /// Its endpoint is gone or disabled; the delivery went back to the queue untouched.
    Released,
}

/// Tuning of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Attempts in flight at once, in total.
    pub concurrency: usize,
    /// Attempts in flight at once, per endpoint.
    pub endpoint_concurrency: usize,
    /// Longest idle sleep before looking for work queued by another process; also how often
    /// endpoint settings are re-read.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
    /// This instance's id, stamped on its claims (and its heartbeats).
    pub instance: String,
}

/// Claims, sends and records deliveries.
pub struct Worker {
    store: Arc<dyn Store>,
    sender: HttpSender,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    wake: Arc<Notify>,
    settings: WorkerSettings,
    endpoints: Mutex<HashMap<EndpointId, EndpointRuntime>>,
    refreshed_at_ms: AtomicI64,
    refresh_requested: AtomicBool,
    last_beat_ms: AtomicI64,
    running: AtomicBool,
    /// Delivery workers on the database (heartbeats; 1 alone) and this one's rank among them:
    /// the endpoint concurrency cap is split between them, so together they never exceed it.
    live_workers: AtomicUsize,
    rank: AtomicUsize,
    /// Where ingest hands this process's worker deliveries it stored leased to it.
    handoff: Option<Arc<Handoff>>,
    /// The earliest retry this worker scheduled since its loop last looked (unix ms; `i64::MAX`
    /// for none): the loop claims again by then.
    retry_due_ms: AtomicI64,
}

/// A worker that has not reported for this long no longer takes a share of an endpoint's
/// concurrency (heartbeats come every few seconds; a crashed worker's share returns then).
const LIVE_WORKER_WINDOW_MS: i64 = 30_000;

/// The share of a concurrency cap of the worker ranked `rank` among `workers`: the cap divided
/// as evenly as whole requests allow, the first `cap % workers` taking one more, so the shares
/// add up to the cap exactly (some are 0 when the workers outnumber it).
pub fn share(cap: usize, workers: usize, rank: usize) -> usize {
    let workers = workers.max(1);
    cap / workers + usize::from(rank % workers < cap % workers)
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for the endpoints in `store`; `wake` is notified by ingest when work arrives.
    pub fn new(
        store: Arc<dyn Store>,
        sender: HttpSender,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        wake: Arc<Notify>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            handoff: store.handoff(),
            retry_due_ms: AtomicI64::new(i64::MAX),
            store,
            sender,
            clock,
            config,
            wake,
            settings,
            endpoints: Mutex::new(HashMap::new()),
            refreshed_at_ms: AtomicI64::new(i64::MIN),
            refresh_requested: AtomicBool::new(true),
            last_beat_ms: AtomicI64::new(0),
            running: AtomicBool::new(false),
            live_workers: AtomicUsize::new(1),
            rank: AtomicUsize::new(0),
        }
    }

    /// This worker's share of each endpoint's concurrency cap.
    fn endpoint_share(&self) -> usize {
        share(
            self.settings.endpoint_concurrency,
            self.live_workers.load(Ordering::Relaxed),
            self.rank.load(Ordering::Relaxed),
        )
    }

    /// Whether the production loop is running and went round recently: for `/ready`.
    pub fn is_alive(&self) -> bool {
        let stale_after = millis(self.settings.poll_interval) * 3 + 5_000;
        self.running.load(Ordering::Relaxed)
            && self.clock.now_ms() - self.last_beat_ms.load(Ordering::Relaxed) < stale_after
    }

    /// Asks the worker to re-read endpoint settings before its next claim, and wakes it.
    pub fn endpoints_changed(&self) {
        self.refresh_requested.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn runtimes(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointId, EndpointRuntime>> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads endpoints when asked to or when the poll interval has passed.
    async fn refresh(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let due = self.refresh_requested.swap(false, Ordering::SeqCst)
            || now.saturating_sub(self.refreshed_at_ms.load(Ordering::Relaxed))
                >= millis(self.settings.poll_interval);
        if !due {
            return Ok(());
        }
        // The endpoints, and what other instances on a shared database saw (their gates; none
        // alone on SQLite).
        let read = async {
            Ok::<_, StoreError>((
                self.store.endpoints().await?,
                self.store.gates().await?,
                self.store
                    .live_workers(now - LIVE_WORKER_WINDOW_MS, self.settings.instance.clone())
                    .await?,
            ))
        };
        let (endpoints, gates, workers) = match read.await {
            Ok(read) => read,
            Err(e) => {
                self.refresh_requested.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        self.live_workers.store(workers.0, Ordering::Relaxed);
        self.rank.store(workers.1, Ordering::Relaxed);
        let gates: HashMap<EndpointId, Gate> = gates.into_iter().collect();
        let mut runtimes = self.runtimes();
        let next = endpoints
            .into_iter()
            .map(|endpoint| {
                let target = Target::from_endpoint(&endpoint, &self.config);
                let previous = runtimes.remove(&endpoint.id);
                let mut runtime = EndpointRuntime::refreshed(previous, &endpoint, target, now);
                if let Some(gate) = gates.get(&endpoint.id) {
                    runtime.adopt(gate, now);
                }
                (endpoint.id, runtime)
            })
            .collect();
        *runtimes = next;
        self.refreshed_at_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// A claim must outlive the attempt and its recording, or a second worker could take the
    /// delivery while the first is still sending it.
    fn lease_ms(&self) -> i64 {
        let longest = self
            .runtimes()
            .values()
            .map(|r| r.target.timeout)
            .max()
            .unwrap_or(self.config.delivery.timeout);
        millis(longest) * 2 + 5_000
    }

    /// What to claim now, per endpoint, within the concurrency, rate and circuit limits, given
    /// what is `held` already (in flight, waiting in memory or handed over by ingest).
    ///
    /// What the worker may still hold is split evenly first between the endpoints with room
    /// that may have work due (not `drained` by the last claim), then what is left goes to any
    /// with room. Taken in map order alone, the first endpoints took it all round after round
    /// and the rest waited for the poll deadline (100 endpoints per event: 2,300 deliveries/s
    /// with a one-second poll, 5,600/s with 0.1 s).
    fn plan(
        &self,
        held: &HashMap<EndpointId, usize>,
        total_held: usize,
        drained: &HashSet<EndpointId>,
        now: i64,
    ) -> Vec<Want> {
        if !self.config.delivery.enabled {
            return Vec::new();
        }
        let free = self.total_depth().saturating_sub(total_held);
        let runtimes = self.runtimes();
        let rooms: Vec<(&EndpointId, Room)> = runtimes
            .iter()
            .filter_map(|(id, runtime)| {
                let busy = held.get(id).copied().unwrap_or(0);
                let cap = self.hold_cap(runtime, runtimes.len(), now);
                runtime.room(busy, cap, now).map(|room| (id, room))
            })
            .collect();
        let asks: Vec<(usize, bool)> = rooms
            .iter()
            .map(|(id, room)| (room.slots, !drained.contains(*id)))
            .collect();
        let mut wants: Vec<Want> = rooms
            .iter()
            .zip(split(free, &asks))
            .map(|((id, room), slots)| Want {
                endpoint: (*id).clone(),
                slots,
                probe: room.probe,
            })
            .collect();
        wants.retain(|want| want.slots > 0);
        wants
    }

    /// Deliveries the worker may hold for one endpoint of `endpoints` (in flight, waiting in
    /// memory, handed over): its share of the concurrency cap, and for one that sends freely
    /// ([`EndpointRuntime::depth`]) an even part of the memory beyond the total cap. Split
    /// evenly, so a few endpoints cannot fill memory while others' due work waits: with 100
    /// endpoints per event four of them held it all and the rest waited for the poll deadline.
    fn hold_cap(&self, runtime: &EndpointRuntime, endpoints: usize, now: i64) -> usize {
        let share = self.endpoint_share();
        if runtime.depth(now) <= 1 {
            return share;
        }
        let spare = (self.total_depth() - self.settings.concurrency) / endpoints.max(1);
        share + (share * (runtime.depth(now) - 1)).min(spare)
    }

    /// Deliveries the worker may hold at once, over all endpoints: in flight, and as many
    /// again three times over waiting in memory for fast receivers ([`runtime::PREFETCH`]).
    fn total_depth(&self) -> usize {
        self.settings.concurrency * runtime::PREFETCH
    }

    /// Claims due deliveries for every endpoint with room, given what is `held` already;
    /// returns them (with when their leases end) and how many were asked.
    async fn claim(
        &self,
        held: &HashMap<EndpointId, usize>,
        total_held: usize,
        drained: &HashSet<EndpointId>,
    ) -> Result<Claimed, StoreError> {
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "could not re-read endpoints; using the last known settings");
        }
        let now = self.clock.now_ms();
        let wants = self.plan(held, total_held, drained, now);
        let requested = wants.iter().map(|w| w.slots).sum();
        if requested == 0 {
            return Ok(Claimed::default());
        }
        let lease_ms = self.lease_ms();
        let gated = {
            let runtimes = self.runtimes();
            wants
                .iter()
                .map(|want| GatedWant {
                    endpoint: want.endpoint.clone(),
                    ask: Ask {
                        slots: want.slots,
                        probe: want.probe,
                    },
                    limits: GateLimits::new(
                        runtimes
                            .get(&want.endpoint)
                            .and_then(|r| r.target.rate_limit),
                    ),
                })
                .collect()
        };
        let GatedClaim {
            deliveries: claimed,
            held,
        } = self
            .store
            .claim_gated(now, lease_ms, self.settings.instance.clone(), gated)
            .await?;
        if !held.is_empty() {
            let mut runtimes = self.runtimes();
            for (endpoint, until) in held {
                if let Some(runtime) = runtimes.get_mut(&endpoint) {
                    runtime.held_until_ms = until;
                }
            }
        }

        let mut probes = Vec::new();
        {
            let mut runtimes = self.runtimes();
            for want in &wants {
                let Some(runtime) = runtimes.get_mut(&want.endpoint) else {
                    continue;
                };
                let ids = claimed
                    .iter()
                    .filter(|c| c.endpoint_id == want.endpoint)
                    .map(|c| c.id.clone());
                probes.extend(runtime.claimed(ids, want.probe, now));
            }
        }
        if !probes.is_empty() {
            // Persisted so that `endpoints show` (and other instances) see the probe.
            self.store.record_attempts(Vec::new(), probes, now).await?;
        }
        let drained = wants
            .iter()
            .filter(|want| {
                claimed
                    .iter()
                    .filter(|c| c.endpoint_id == want.endpoint)
                    .count()
                    < want.slots
            })
            .map(|want| want.endpoint.clone())
            .collect();
        crate::metrics::taken("claim", claimed.len());
        let leased = claimed
            .into_iter()
            .map(|delivery| Leased {
                delivery,
                until_ms: now + lease_ms,
            })
            .collect();
        Ok(Claimed {
            leased,
            requested,
            drained,
        })
    }

    /// Tells ingest how many deliveries for each endpoint to store leased to this worker and
    /// hand over in memory: what the endpoint may still hold beyond `held`, for endpoints that
    /// send freely (no rate limit, circuit closed, fast); none for the others, whose
    /// deliveries wait to be claimed.
    fn offer(&self, handoff: &Handoff, held: &HashMap<EndpointId, usize>) {
        let now = self.clock.now_ms();
        handoff.open(&self.settings.instance, self.lease_ms());
        let runtimes = self.runtimes();
        // What is handed over stays within what the worker may hold in all, less one round of
        // slots kept for claims: endpoints served only by claims (rate-limited, slow, retries)
        // are never starved by fast ones filling memory.
        let on_their_way: usize = runtimes.keys().map(|id| handoff.reserved(id)).sum();
        let mut budget = (self.total_depth() - self.settings.concurrency)
            .saturating_sub(held.values().sum::<usize>() + on_their_way);
        for (id, runtime) in runtimes.iter() {
            let room = if self.config.delivery.enabled && runtime.depth(now) > 1 {
                self.hold_cap(runtime, runtimes.len(), now)
                    .saturating_sub(held.get(id).copied().unwrap_or(0))
            } else {
                0
            };
            let reserved = handoff.reserved(id);
            let room = room.min(budget + reserved);
            budget = budget.saturating_sub(room.saturating_sub(reserved));
            handoff.offer(id, room);
        }
        handoff.withdraw_others(&|id| runtimes.contains_key(id));
    }

    /// Attempts one claimed delivery and records the result with the endpoint's new health.
    pub async fn deliver(&self, delivery: ClaimedDelivery) -> Result<Outcome, StoreError> {
        self.deliver_in_slot(delivery, None, None).await
    }

    /// [`Worker::deliver`], dropping `slot` as soon as the receiver's answer is applied to the
    /// endpoint's in-memory state (or the delivery is released): the endpoint's concurrency
    /// limit counts requests to the receiver, not the database write that records the answer,
    /// so the next request need not wait for it.
    /// With a `recorder`, the result is handed to it (recorded with others in one write)
    /// instead of written here; this returns once it is written, or once writing it has
    /// failed for good.
    async fn deliver_in_slot(
        &self,
        delivery: ClaimedDelivery,
        slot: Option<Slot>,
        recorder: Option<&Recorder>,
    ) -> Result<Outcome, StoreError> {
        let now = self.clock.now_ms();
        let taken = self
            .runtimes()
            .get_mut(&delivery.endpoint_id)
            .and_then(|runtime| runtime.take(&delivery.id, now));
        let Some((target, probing)) = taken else {
            drop(slot);
            self.store
                .release(vec![(delivery.id, delivery.lease)], now)
                .await?;
            return Ok(Outcome::Released);
        };

        let mut prepared = prepare(target, probing, &delivery, now);
        let sent = send(&self.sender, &mut prepared, &delivery).await;
        let duration_ms = sent.duration_ms;
        let now = self.clock.now_ms();
        let decision = decide(
            sent,
            Spent::from(&delivery),
            &prepared.target.policy,
            probing,
            now,
            rand::random(),
        );

        let health = self
            .runtimes()
            .get_mut(&delivery.endpoint_id)
            .map(|runtime| {
                runtime.fast = duration_ms <= runtime::FAST_ANSWER_MS;
                runtime.observe(
                    &delivery,
                    &decision,
                    probing,
                    self.config.delivery.endpoint_disable_after,
                    now,
                )
            });
        // Only once the in-memory health (circuit, pause, disabling) reflects the answer, so
        // the next claim for this endpoint is planned with it: a half-open circuit must not
        // send a second probe before the first one's answer is known.
        if let Some(slot) = slot {
            slot.answered();
        }

        let record = AttemptRecord {
            delivery_id: delivery.id.clone(),
            lease: delivery.lease,
            attempt_no: delivery.total_attempts + 1,
            started_at_ms: prepared.started_at_ms,
            duration_ms,
            status_code: decision.status_code,
            error_kind: decision.error_kind.map(str::to_owned),
            error_detail: decision.error_detail,
            response_snippet: decision.snippet,
            next: decision.next,
            latency_ms: now - delivery.event_created_at_ms,
        };
        let outcome = Outcome::of(record.next);
        if let NextState::RetryAt(at) | NextState::Throttled(at) = record.next {
            self.retry_due_ms.fetch_min(at, Ordering::Relaxed);
        }
        report(&delivery, &prepared.target.id, &record, outcome, now);
        match recorder {
            Some(recorder) => recorder.record(record, health).await?,
            None => {
                self.store
                    .record_attempts(vec![record], health.into_iter().collect(), now)
                    .await?;
            }
        }
        Ok(outcome)
    }

    /// One round: claims everything due (up to the limits), attempts it all concurrently,
    /// records the results, and returns what happened to each.
    pub async fn run_once(self: &Arc<Self>) -> Result<Vec<Outcome>, StoreError> {
        let claimed = self.claim(&HashMap::new(), 0, &HashSet::new()).await?;
        let mut attempts = JoinSet::new();
        for Leased { delivery, .. } in claimed.leased {
            let worker = Arc::clone(self);
            attempts.spawn(async move { worker.deliver(delivery).await });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome?),
                Err(e) => return Err(StoreError::caused("attempt task failed", e)),
            }
        }
        Ok(outcomes)
    }

    /// How long an idle loop may sleep: until the earliest moment something could be claimed.
    ///
    /// Asks the database only about endpoints whose next chance depends on time: those whose
    /// last claim found nothing more due (`drained`: a retry may fall due), and those held back
    /// by a pause, a circuit or a rate limit. An endpoint that may send freely and was simply
    /// not asked (no room left) is claimed for when a slot frees: reading its due time one
    /// endpoint at a time was a fifth of the server's CPU with 100 endpoints per event.
    async fn idle_wait(
        &self,
        held: &HashMap<EndpointId, usize>,
        drained: &HashSet<EndpointId>,
    ) -> Duration {
        let poll = self.settings.poll_interval;
        let now = self.clock.now_ms();
        let candidates: Vec<EndpointId> = {
            let runtimes = self.runtimes();
            runtimes
                .iter()
                .filter(|(id, r)| {
                    r.enabled
                        && held.get(*id).copied().unwrap_or(0)
                            < self.hold_cap(r, runtimes.len(), now)
                        && (drained.contains(*id) || !r.flowing(now) || r.throttle.is_some())
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let total_held: usize = held.values().sum();
        // At the global cap nothing can be claimed: a completion (or ingest) wakes the loop.
        if candidates.is_empty()
            || !self.config.delivery.enabled
            || total_held >= self.total_depth()
        {
            return poll;
        }
        let due = match self.store.next_due(candidates).await {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "could not read the next due time");
                return poll;
            }
        };
        let now = self.clock.now_ms();
        let runtimes = self.runtimes();
        let earliest = due
            .into_iter()
            .filter_map(|(id, due_at)| {
                let busy = held.get(&id).copied().unwrap_or(0);
                let opens_at = runtimes.get(&id)?.opens_at(busy, now)?;
                Some(due_at.max(opens_at))
            })
            .min();
        match earliest {
            // Never spin: something due that could not be claimed gets a short breather.
            Some(at) => {
                Duration::from_millis(u64::try_from(at - now).unwrap_or(0).max(1)).min(poll)
            }
            None => poll,
        }
    }
}

impl Outcome {
    fn of(next: NextState) -> Self {
        match next {
            NextState::Delivered => Self::Delivered,
            NextState::RetryAt(at_ms) => Self::Retrying { at_ms },
            NextState::Throttled(at_ms) => Self::Throttled { at_ms },
            NextState::DeadLetter => Self::DeadLettered,
        }
    }
}

/// What one claim brought.
#[derive(Default)]
struct Claimed {
    /// The deliveries, with when their leases end.
    leased: Vec<Leased>,
    /// How many were asked for.
    requested: usize,
    /// Endpoints that got fewer than asked: nothing more of theirs was due.
    drained: HashSet<EndpointId>,
}

/// A claim to make for one endpoint.
struct Want {
    endpoint: EndpointId,
    slots: usize,
    probe: bool,
}

/// Splits `free` between endpoints asking for `(slots, may have work)`: evenly first between
/// those that may have work, then what is left to any, in order. Never more than `free` in
/// all, nor more than an endpoint asks.
fn split(mut free: usize, asks: &[(usize, bool)]) -> Vec<usize> {
    let may_have_work = asks.iter().filter(|(_, work)| *work).count();
    let fair = (free / may_have_work.max(1)).max(1);
    let mut given = vec![0; asks.len()];
    for ((slots, work), given) in asks.iter().zip(&mut given) {
        if *work {
            *given = (*slots).min(fair).min(free);
            free -= *given;
        }
    }
    for ((slots, _), given) in asks.iter().zip(&mut given) {
        let more = (slots - *given).min(free);
        *given += more;
        free -= more;
    }
    given
}

/// Metrics and the log line of one recorded attempt.
fn report(
    delivery: &ClaimedDelivery,
    endpoint: &EndpointId,
    record: &AttemptRecord,
    outcome: Outcome,
    now: i64,
) {
    let outcome_label = match record.next {
        NextState::Delivered => "delivered",
        NextState::RetryAt(_) => "retry",
        NextState::Throttled(_) => "throttled",
        NextState::DeadLetter => "dead",
    };
    crate::metrics::attempt(
        endpoint.as_str(),
        outcome_label,
        record.status_code,
        record.duration_ms,
        (record.next == NextState::Delivered).then_some(record.latency_ms),
    );
    let session_id = delivery.session_id.as_deref().unwrap_or_default();
    match outcome {
        Outcome::Delivered => info!(
            event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %endpoint,
            session_id, attempt = record.attempt_no, status = record.status_code,
            duration_ms = record.duration_ms, latency_ms = record.latency_ms, "delivered"
        ),
        Outcome::Retrying { at_ms } | Outcome::Throttled { at_ms } => warn!(
            event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %endpoint,
            session_id, attempt = record.attempt_no, status = record.status_code,
            duration_ms = record.duration_ms,
            error = record.error_detail.as_deref().unwrap_or_default(),
            throttled = matches!(outcome, Outcome::Throttled { .. }),
            retry_in_ms = at_ms - now, "attempt failed; will retry"
        ),
        // A receiver's refusal is for a person to look at, not an error of hookrelay's.
        Outcome::DeadLettered | Outcome::Released => warn!(
            event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %endpoint,
            session_id, attempt = record.attempt_no, status = record.status_code,
            duration_ms = record.duration_ms,
            error = record.error_detail.as_deref().unwrap_or_default(), "dead-lettered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{share, split};

    #[test]
    fn free_room_is_split_evenly_between_endpoints_that_may_have_work() {
        // 100 endpoints each asking for 17 with 256 to give: every one gets some.
        let given = split(256, &[(17, true); 100]);
        assert_eq!(given.iter().sum::<usize>(), 256);
        assert!(given.iter().all(|&n| n >= 2), "{given:?}");
        // One with work among drained ones gets all it asks for first.
        let mut asks = vec![(17, false); 99];
        asks.insert(50, (17, true));
        let given = split(256, &asks);
        assert_eq!(given[50], 17);
        assert_eq!(given.iter().sum::<usize>(), 256);
        // Alone: everything it asks for, within what is free.
        assert_eq!(split(256, &[(300, true)]), [256]);
        assert_eq!(split(10, &[(4, true), (4, true), (4, false)]), [4, 4, 2]);
        // Less free than endpoints: the first ones get one each.
        assert_eq!(split(2, &[(5, true); 3]), [1, 1, 0]);
        assert_eq!(split(0, &[(5, true); 2]), [0, 0]);
    }

    #[test]
    fn shares_of_a_concurrency_cap_add_up_to_it() {
        for cap in [1, 2, 3, 16, 64] {
            for workers in 1..=20 {
                let total: usize = (0..workers).map(|rank| share(cap, workers, rank)).sum();
                assert_eq!(total, cap, "cap {cap}, {workers} workers");
            }
        }
        assert_eq!(share(16, 3, 0), 6);
        assert_eq!(share(16, 3, 2), 5);
        assert_eq!(
            share(2, 3, 2),
            0,
            "more workers than the cap: some get none"
        );
        assert_eq!(share(16, 1, 0), 16, "alone: all of it");
    }
}
