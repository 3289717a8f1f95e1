//! The delivery worker: a loop around claim → send → record.
//!
//! [`Worker::run_once`] does one round synchronously (claim what is due, attempt all of it,
//! record the results) and is what tests drive. [`Worker::run`] is the production loop built
//! from the same steps: it keeps up to `concurrency` attempts in flight (at most
//! `endpoint_concurrency` per endpoint, so one slow receiver cannot occupy every slot), claims
//! more as slots free up, and sleeps only when nothing is due: until the next due time, the
//! next free slot of a rate limit, a circuit's probe time, a poll tick, or a wake-up from
//! ingest, whichever comes first.
//!
//! Per endpoint it keeps a rate limiter ([`Throttle`]) and a circuit [`Breaker`]: claims are
//! limited to what the rate allows, an open circuit claims nothing until its cool-down is over
//! and then one round of probes, half of them deliveries that failed before and half the
//! oldest due. Health is written with every attempt, so `endpoints show` sees it.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    Admission, Answer, Breaker, Failure, HttpSender, SendError, Signal, Target, Transition,
    parse_retry_after, signed_headers, track_health,
};
use crate::{
    clock::{Clock, millis},
    config::Config,
    domain::{CircuitState, DeliveryId, EndpointHealth, EndpointId, Throttle, rfc3339},
    store::{
        AttemptRecord, ClaimedDelivery, HealthUpdate, LeaseToken, NextState, Store, StoreError,
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

/// A delivery answered 429 this many times starts spending its retry budget on further 429s,
/// so a receiver that never accepts anything cannot hold an event forever.
pub const MAX_THROTTLED: u32 = 100;

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

/// What the worker keeps per endpoint.
struct EndpointRuntime {
    target: Target,
    enabled: bool,
    throttle: Option<Throttle>,
    /// A receiver's 429 `Retry-After` holds every delivery to it until then (unix ms).
    paused_until_ms: i64,
    health: EndpointHealth,
    /// This worker's circuit breaker for the endpoint; `health.circuit` mirrors it.
    breaker: Breaker,
    /// Deliveries out as probes of the current half-open round.
    probes: HashSet<DeliveryId>,
    /// The row's `updated_at` when last read: a newer one means an operator changed it.
    updated_at_ms: i64,
    /// This worker disabled it (failing too long) and the database may not show it yet.
    disabling: bool,
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
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Bookkeeping for one attempt running in the production loop.
struct InFlight {
    delivery: DeliveryId,
    lease: LeaseToken,
    /// Set once the receiver has answered: from then on the task only records the result.
    answered: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// How long a disabling decided here outweighs a database row that does not show it yet.
const DISABLING_HOLD_MS: i64 = 30_000;

/// Recording tasks allowed per unit of `concurrency`: answered attempts whose result is still
/// being written. Beyond, the worker claims nothing until the database catches up.
const RECORDING_FACTOR: usize = 4;

/// A request slot of one endpoint: given back (through the worker loop's channel) when dropped,
/// which is as soon as the receiver has answered, or when the task ends in any other way.
struct Slot {
    endpoint: EndpointId,
    freed: tokio::sync::mpsc::UnboundedSender<EndpointId>,
    answered: Arc<AtomicBool>,
}

impl Slot {
    /// The receiver answered (and its answer is applied in memory): only recording is left.
    fn answered(self) {
        self.answered.store(true, Ordering::SeqCst);
    }
}

/// How long shutdown waits, after the grace period, for answered attempts to be recorded.
/// Their leases are not released: releasing could overtake the record and send them again.
const RECORD_GRACE: Duration = Duration::from_secs(5);

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.freed.send(self.endpoint.clone());
    }
}

/// A claim to make for one endpoint.
struct Want {
    endpoint: EndpointId,
    slots: usize,
    probe: bool,
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
        }
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
        let endpoints = match self.store.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                self.refresh_requested.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let mut runtimes = self.runtimes();
        let mut next = HashMap::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let target = Target::from_endpoint(&endpoint, &self.config);
            let previous = runtimes.remove(&endpoint.id);
            let paused_until_ms = previous.as_ref().map_or(0, |p| p.paused_until_ms);
            // The database may lag behind this worker's own latest result (written a moment
            // later): keep the newer health in memory, unless an operator has changed the
            // endpoint since (enabling it resets its health).
            let mut health = match &previous {
                Some(p)
                    if p.updated_at_ms >= endpoint.updated_at_ms
                        && p.health.last_attempt_at_ms >= endpoint.health.last_attempt_at_ms =>
                {
                    p.health
                }
                _ => endpoint.health,
            };
            // The breaker is this worker's own judgement; it starts from the stored state
            // when the endpoint is first seen or an operator has changed it (enabling closes it).
            let (breaker, probes) = match &previous {
                Some(p) if p.updated_at_ms >= endpoint.updated_at_ms => {
                    (p.breaker.clone(), p.probes.clone())
                }
                _ => (Breaker::from_health(&endpoint.health), HashSet::new()),
            };
            health.circuit = breaker.state();
            if health.circuit != endpoint.health.circuit {
                health.circuit_changed_at_ms = Some(breaker.changed_at_ms());
            }
            // Likewise an automatic disabling this worker decided, which is in memory before its
            // record commits: a refresh in between must not re-enable the endpoint.
            // Bounded in time: if that record never lands, the database's word wins again.
            let disabling = endpoint.enabled
                && previous.as_ref().is_some_and(|p| {
                    p.disabling
                        && p.updated_at_ms >= endpoint.updated_at_ms
                        && p.health
                            .last_attempt_at_ms
                            .is_some_and(|at| now - at < DISABLING_HOLD_MS)
                });
            let enabled = endpoint.enabled && !disabling;
            // Keep the limiter's schedule unless the limit itself changed.
            let throttle = match (previous.and_then(|p| p.throttle), target.rate_limit) {
                (Some(throttle), Some(limit)) if throttle.limit() == limit => Some(throttle),
                (_, limit) => limit.map(Throttle::new),
            };
            next.insert(
                endpoint.id.clone(),
                EndpointRuntime {
                    enabled,
                    disabling,
                    health,
                    breaker,
                    probes,
                    throttle,
                    paused_until_ms,
                    updated_at_ms: endpoint.updated_at_ms,
                    target,
                },
            );
        }
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
            .unwrap_or(self.config.timeout);
        millis(longest) * 2 + 5_000
    }

    /// What to claim now, per endpoint, within the concurrency, rate and circuit limits.
    fn plan(
        &self,
        in_flight: &HashMap<EndpointId, usize>,
        total_in_flight: usize,
        now: i64,
    ) -> Vec<Want> {
        if !self.config.webhook_enabled {
            return Vec::new();
        }
        let mut free = self.settings.concurrency.saturating_sub(total_in_flight);
        let mut wants = Vec::new();
        for (id, runtime) in self.runtimes().iter() {
            if !runtime.enabled || free == 0 || runtime.paused_until_ms > now {
                continue;
            }
            let busy = in_flight.get(id).copied().unwrap_or(0);
            let (mut slots, probe) = match runtime.breaker.admission(&runtime.target.circuit, now) {
                Admission::Flow => (
                    self.settings.endpoint_concurrency.saturating_sub(busy),
                    false,
                ),
                // Probes go once the attempts sent before the circuit opened have answered.
                Admission::Probe(probes) if busy == 0 => (
                    (probes as usize).min(self.settings.endpoint_concurrency),
                    true,
                ),
                Admission::Probe(_) | Admission::Wait(_) => continue,
            };
            if let Some(throttle) = &runtime.throttle {
                slots = slots.min(throttle.available(now));
            }
            slots = slots.min(free);
            if slots > 0 {
                free -= slots;
                wants.push(Want {
                    endpoint: id.clone(),
                    slots,
                    probe,
                });
            }
        }
        wants
    }

    /// Claims due deliveries for every endpoint with room; returns them and how many were asked.
    async fn claim(
        &self,
        in_flight: &HashMap<EndpointId, usize>,
        total_in_flight: usize,
    ) -> Result<(Vec<ClaimedDelivery>, usize), StoreError> {
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "could not re-read endpoints; using the last known settings");
        }
        let now = self.clock.now_ms();
        let wants = self.plan(in_flight, total_in_flight, now);
        let requested = wants.iter().map(|w| w.slots).sum();
        if requested == 0 {
            return Ok((Vec::new(), 0));
        }
        let lease_ms = self.lease_ms();
        let mut claimed = self
            .store
            .claim_due(
                now,
                lease_ms,
                self.settings.instance.clone(),
                wants
                    .iter()
                    .filter(|w| !w.probe)
                    .map(|w| (w.endpoint.clone(), w.slots))
                    .collect(),
            )
            .await?;
        for want in wants.iter().filter(|w| w.probe) {
            // Half the probes re-try deliveries that failed before, the rest are the oldest
            // due: a receiver that fails only first attempts, or only some events, answers
            // one of them and closes the circuit; a dead one fails them all.
            let mut probes = self
                .store
                .claim_retried(
                    now,
                    lease_ms,
                    self.settings.instance.clone(),
                    want.endpoint.clone(),
                    want.slots.div_ceil(2),
                )
                .await?;
            let rest = want.slots - probes.len();
            probes.extend(
                self.store
                    .claim_due(
                        now,
                        lease_ms,
                        self.settings.instance.clone(),
                        vec![(want.endpoint.clone(), rest)],
                    )
                    .await?,
            );
            claimed.extend(probes);
        }

        let mut probes = Vec::new();
        {
            let mut runtimes = self.runtimes();
            for want in &wants {
                let count = claimed
                    .iter()
                    .filter(|c| c.endpoint_id == want.endpoint)
                    .count();
                let Some(runtime) = runtimes.get_mut(&want.endpoint) else {
                    continue;
                };
                if let Some(throttle) = &mut runtime.throttle {
                    throttle.take(now, count);
                }
                if want.probe && count > 0 {
                    runtime.probes = claimed
                        .iter()
                        .filter(|c| c.endpoint_id == want.endpoint)
                        .map(|c| c.id.clone())
                        .collect();
                    runtime.breaker.probes_sent(count as u32, now);
                    runtime.health.circuit = runtime.breaker.state();
                    runtime.health.circuit_changed_at_ms = Some(now);
                    info!(endpoint = %want.endpoint, probes = count, "circuit half-open: sending probe deliveries");
                    probes.push(HealthUpdate {
                        endpoint_id: want.endpoint.clone(),
                        health: runtime.health,
                        disable: None,
                    });
                }
            }
        }
        if !probes.is_empty() {
            // Persisted so that `endpoints show` (and other instances) see the probe.
            self.store.record_attempts(Vec::new(), probes, now).await?;
        }
        Ok((claimed, requested))
    }

    /// Sends one claimed delivery and decides what follows, without touching the store.
    async fn attempt(
        &self,
        target: &Target,
        probing: bool,
        delivery: &ClaimedDelivery,
    ) -> (AttemptRecord, Signal) {
        let started_at_ms = self.clock.now_ms();
        let headers = signed_headers(
            target,
            &delivery.event_id,
            started_at_ms.div_euclid(1000),
            &delivery.payload,
        );
        let started = Instant::now();
        let result = if target.require_https && !target.url.is_https() {
            Err(None)
        } else {
            self.sender
                .post(
                    &target.url,
                    headers,
                    delivery.payload.clone(),
                    target.timeout,
                )
                .await
                .map_err(Some)
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now_ms = self.clock.now_ms();
        let wall_now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
        let attempts_made = delivery.attempts + 1;

        let mut record = AttemptRecord {
            delivery_id: delivery.id.clone(),
            lease: delivery.lease,
            attempt_no: delivery.total_attempts + 1,
            started_at_ms,
            duration_ms,
            status_code: None,
            error_kind: None,
            error_detail: None,
            response_snippet: None,
            next: NextState::Delivered,
            latency_ms: now_ms - delivery.event_created_at_ms,
        };
        let failure = match result {
            Ok(response) => {
                record.status_code = Some(response.status.as_u16());
                record.response_snippet = Some(response.snippet);
                if response.status.is_success() {
                    return (record, Signal::Success);
                }
                let code = response.status.as_u16();
                let mut detail = format!("HTTP {}", response.status);
                if response.status.is_redirection() {
                    detail.push_str(": redirects are not followed");
                    if let Some(location) = &response.location {
                        detail.push_str(&format!(
                            " (Location: {})",
                            location.chars().take(200).collect::<String>()
                        ));
                    }
                }
                let retry_after = response
                    .retry_after
                    .as_deref()
                    .and_then(|value| parse_retry_after(value, wall_now));
                (Failure::Status { code, retry_after }, detail)
            }
            Err(None) => {
                record.error_kind = Some("insecure".into());
                record.error_detail =
                    Some("the endpoint URL is http:// while REQUIRE_HTTPS=true".into());
                record.next = NextState::DeadLetter;
                return (record, Signal::Neutral);
            }
            Err(Some(SendError::Blocked(blocked))) => {
                record.error_kind = Some("blocked".into());
                record.error_detail = Some(blocked.to_string());
                record.next = NextState::DeadLetter;
                return (record, Signal::Neutral);
            }
            Err(Some(error)) => {
                let failure = match &error {
                    SendError::Timeout(_) => Failure::Timeout,
                    SendError::Connect(_) => Failure::Connect,
                    SendError::Tls(_) => Failure::Tls,
                    SendError::Network(_) | SendError::Blocked(_) => Failure::Network,
                };
                (failure, error.to_string())
            }
        };
        let (failure, detail) = failure;
        record.error_kind = Some(failure.kind().to_owned());
        let jitter: f64 = rand::random();

        if let Failure::Status {
            code: 429,
            retry_after,
        } = failure
            && delivery.throttled < MAX_THROTTLED
        {
            // Busy, not broken: come back later without spending the budget.
            let wait = retry_after
                .map(|wait| target.policy.bound_retry_after(wait))
                .or_else(|| target.policy.next_delay(1, &Failure::Timeout, jitter))
                .unwrap_or(target.policy.base_delay);
            record.next = NextState::Throttled(now_ms + millis(wait));
            record.error_detail = Some(detail);
            return (record, Signal::Neutral);
        }
        if probing && failure.is_retryable() {
            // A probe tests the endpoint, not the event: a failure (the endpoint still looks
            // down) keeps the delivery's schedule but spends none of its budget, so a long
            // outage does not dead-letter the probed events.
            let delay = target
                .policy
                .next_delay(1, &failure, jitter)
                .unwrap_or(target.policy.base_delay);
            record.next = NextState::Throttled(now_ms + millis(delay));
            record.error_detail = Some(format!("{detail} (circuit probe)"));
            return (record, Signal::Failure);
        }
        record.next = match target.policy.next_delay(attempts_made, &failure, jitter) {
            Some(delay) => NextState::RetryAt(now_ms + millis(delay)),
            None => NextState::DeadLetter,
        };
        record.error_detail = Some(
            if record.next == NextState::DeadLetter && failure.is_retryable() {
                format!("retries exhausted after {attempts_made} attempts; last: {detail}")
            } else {
                detail
            },
        );
        (record, Signal::Failure)
    }

    /// Attempts one claimed delivery and records the result with the endpoint's new health.
    pub async fn deliver(&self, delivery: ClaimedDelivery) -> Result<Outcome, StoreError> {
        self.deliver_freeing(delivery, None).await
    }

    /// [`Worker::deliver`], dropping `slot` as soon as the receiver's answer is applied to the
    /// endpoint's in-memory state (or the delivery is released): the endpoint's concurrency limit counts requests to the receiver,
    /// not the database write that records the answer, so the next request need not wait for it.
    async fn deliver_freeing(
        &self,
        delivery: ClaimedDelivery,
        slot: Option<Slot>,
    ) -> Result<Outcome, StoreError> {
        let found = self
            .runtimes()
            .get_mut(&delivery.endpoint_id)
            .and_then(|runtime| {
                let probing = runtime.probes.remove(&delivery.id);
                if !runtime.enabled && probing {
                    runtime
                        .breaker
                        .probe_abandoned(&runtime.target.circuit, self.clock.now_ms());
                }
                runtime.enabled.then(|| (runtime.target.clone(), probing))
            });
        let Some((target, probing)) = found else {
            drop(slot);
            self.store
                .release(vec![(delivery.id, delivery.lease)], self.clock.now_ms())
                .await?;
            return Ok(Outcome::Released);
        };
        let (record, signal) = self.attempt(&target, probing, &delivery).await;
        let now = self.clock.now_ms();

        let health_update = {
            let mut runtimes = self.runtimes();
            runtimes.get_mut(&delivery.endpoint_id).map(|runtime| {
                runtime.health = track_health(runtime.health, signal, now);
                if let (NextState::Throttled(until), Some(429)) = (record.next, record.status_code)
                {
                    // The receiver asked everyone to wait, not just this delivery.
                    runtime.paused_until_ms = runtime.paused_until_ms.max(until);
                }
                let key = BuildHasherDefault::<DefaultHasher>::default().hash_one(&delivery.id);
                let answer = Answer {
                    delivery: key,
                    signal,
                    retried: delivery.total_attempts > 0,
                    last: matches!(record.next, NextState::DeadLetter),
                };
                if let Some(transition) =
                    runtime
                        .breaker
                        .record(answer, probing, &target.circuit, now)
                {
                    runtime.health.circuit = transition.to;
                    runtime.health.circuit_changed_at_ms = Some(now);
                    if transition.to != CircuitState::HalfOpen {
                        runtime.probes.clear();
                    }
                    log_circuit_change(&target.id, transition, &runtime.health);
                }
                let disable =
                    self.disable_reason(&runtime.health, record.error_detail.as_deref(), now);
                if let Some(reason) = &disable {
                    runtime.enabled = false;
                    runtime.disabling = true;
                    warn!(endpoint = %target.id, reason, "endpoint disabled");
                }
                HealthUpdate {
                    endpoint_id: delivery.endpoint_id.clone(),
                    health: runtime.health,
                    disable,
                }
            })
        };
        // Only once the in-memory health (circuit, pause, disabling) reflects the answer, so
        // the next claim for this endpoint is planned with it: a half-open circuit must not
        // send a second probe before the first one's answer is known.
        if let Some(slot) = slot {
            slot.answered();
        }

        let outcome = match record.next {
            NextState::Delivered => Outcome::Delivered,
            NextState::RetryAt(at_ms) => Outcome::Retrying { at_ms },
            NextState::Throttled(at_ms) => Outcome::Throttled { at_ms },
            NextState::DeadLetter => Outcome::DeadLettered,
        };
        let latency_ms = now - delivery.event_created_at_ms;
        let outcome_label = match record.next {
            NextState::Delivered => "delivered",
            NextState::RetryAt(_) => "retry",
            NextState::Throttled(_) => "throttled",
            NextState::DeadLetter => "dead",
        };
        crate::metrics::attempt(
            target.id.as_str(),
            outcome_label,
            record.status_code,
            record.duration_ms,
            (record.next == NextState::Delivered).then_some(latency_ms),
        );
        match outcome {
            Outcome::Delivered => info!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                session_id = delivery.session_id.as_deref().unwrap_or_default(),
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                latency_ms, "delivered"
            ),
            Outcome::Retrying { at_ms } | Outcome::Throttled { at_ms } => warn!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                session_id = delivery.session_id.as_deref().unwrap_or_default(),
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                error = record.error_detail.as_deref().unwrap_or_default(),
                throttled = matches!(outcome, Outcome::Throttled { .. }),
                retry_in_ms = at_ms - now, "attempt failed; will retry"
            ),
            // A receiver's refusal is for a person to look at, not an error of hookrelay's.
            Outcome::DeadLettered | Outcome::Released => warn!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                session_id = delivery.session_id.as_deref().unwrap_or_default(),
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                error = record.error_detail.as_deref().unwrap_or_default(), "dead-lettered"
            ),
        }
        self.store
            .record_attempts(vec![record], health_update.into_iter().collect(), now)
            .await?;
        Ok(outcome)
    }

    /// Disables an endpoint that has failed continuously for longer than allowed.
    fn disable_reason(
        &self,
        health: &EndpointHealth,
        last_error: Option<&str>,
        now: i64,
    ) -> Option<String> {
        let after = self.config.endpoint_disable_after?;
        let since = health.failing_since_ms?;
        (now - since >= millis(after)).then(|| {
            format!(
                "failing continuously since {} (last error: {})",
                rfc3339(since),
                last_error.unwrap_or("unknown")
            )
        })
    }

    /// One round: claims everything due (up to the limits), attempts it all concurrently,
    /// records the results, and returns what happened to each.
    pub async fn run_once(self: &Arc<Self>) -> Result<Vec<Outcome>, StoreError> {
        let (claimed, _) = self.claim(&HashMap::new(), 0).await?;
        let mut attempts = JoinSet::new();
        for delivery in claimed {
            let worker = Arc::clone(self);
            attempts.spawn(async move { worker.deliver(delivery).await });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome?),
                Err(e) => return Err(StoreError::Database(format!("attempt task failed: {e}"))),
            }
        }
        Ok(outcomes)
    }

    /// How long an idle loop may sleep: until the earliest moment something could be claimed.
    async fn idle_wait(&self, in_flight: &HashMap<EndpointId, usize>) -> Duration {
        let poll = self.settings.poll_interval;
        let candidates: Vec<EndpointId> = self
            .runtimes()
            .iter()
            .filter(|(id, r)| {
                r.enabled
                    && in_flight.get(*id).copied().unwrap_or(0) < self.settings.endpoint_concurrency
            })
            .map(|(id, _)| id.clone())
            .collect();
        let total_in_flight: usize = in_flight.values().sum();
        // At the global cap nothing can be claimed: a completion (or ingest) wakes the loop.
        if candidates.is_empty()
            || !self.config.webhook_enabled
            || total_in_flight >= self.settings.concurrency
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
                let runtime = runtimes.get(&id)?;
                let gate = match runtime.breaker.admission(&runtime.target.circuit, now) {
                    Admission::Flow => now,
                    // With attempts still in flight no probe goes: their completion wakes the loop.
                    Admission::Probe(_) if in_flight.get(&id).copied().unwrap_or(0) > 0 => {
                        return None;
                    }
                    Admission::Probe(_) => now,
                    Admission::Wait(Some(at)) => at,
                    // The probes' answers wake the loop.
                    Admission::Wait(None) => return None,
                };
                let gate = runtime
                    .throttle
                    .as_ref()
                    .map_or(gate, |t| gate.max(t.next_free_ms(now)))
                    .max(runtime.paused_until_ms);
                Some(due_at.max(gate))
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

    /// The production loop; returns after `shutdown` is cancelled and in-flight attempts have
    /// finished or, past the grace period, been released back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.running.store(true, Ordering::Relaxed);
        info!(
            concurrency = self.settings.concurrency,
            "delivery worker started"
        );
        if !self.config.webhook_enabled {
            info!("ENABLE_WEBHOOK=false: events are stored and sent once it is true again");
        }
        // A task holds a slot (of its endpoint and of the total) while its request is out;
        // it is still tracked in `in_flight`, for release at shutdown, until its result is
        // recorded. Recording tasks are capped too, so a slow database holds claiming back.
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
        let mut per_endpoint: HashMap<EndpointId, usize> = HashMap::new();
        let (freed, mut slots_freed) = tokio::sync::mpsc::unbounded_channel::<EndpointId>();
        let finished = |id: tokio::task::Id, in_flight: &mut HashMap<tokio::task::Id, InFlight>| {
            in_flight.remove(&id);
        };
        let free = |endpoint: EndpointId, per_endpoint: &mut HashMap<EndpointId, usize>| {
            if let Some(count) = per_endpoint.get_mut(&endpoint) {
                *count = count.saturating_sub(1);
            }
        };
        let max_tasks = self.settings.concurrency * RECORDING_FACTOR;

        while !shutdown.is_cancelled() {
            self.last_beat_ms
                .store(self.clock.now_ms(), Ordering::Relaxed);
            while let Some(joined) = tasks.try_join_next_with_id() {
                let id = joined.map_or_else(|e| e.id(), |(id, ())| id);
                finished(id, &mut in_flight);
            }
            while let Ok(endpoint) = slots_freed.try_recv() {
                free(endpoint, &mut per_endpoint);
            }
            let busy: usize = per_endpoint.values().sum();
            // Near the cap on recording tasks, claim only what keeps under it.
            let load = busy.max(
                self.settings
                    .concurrency
                    .saturating_sub(max_tasks.saturating_sub(tasks.len())),
            );

            let (claimed, requested) = match self.claim(&per_endpoint, load).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    error!(error = %e, "claiming deliveries failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(self.settings.poll_interval) => continue,
                    }
                }
            };
            let saturated = requested > 0 && claimed.len() == requested;
            for delivery in claimed {
                let endpoint = delivery.endpoint_id.clone();
                let worker = Arc::clone(&self);
                let answered = Arc::new(AtomicBool::new(false));
                let slot = Slot {
                    endpoint: endpoint.clone(),
                    freed: freed.clone(),
                    answered: Arc::clone(&answered),
                };
                let record_id = delivery.id.clone();
                let lease = delivery.lease;
                let handle = tasks.spawn(async move {
                    if let Err(e) = worker.deliver_freeing(delivery, Some(slot)).await {
                        error!(error = %e, "recording a delivery attempt failed; the lease will expire and it will be retried");
                    }
                });
                in_flight.insert(
                    handle.id(),
                    InFlight {
                        delivery: record_id,
                        lease,
                        answered,
                        abort: handle,
                    },
                );
                *per_endpoint.entry(endpoint).or_default() += 1;
            }
            let busy: usize = per_endpoint.values().sum();
            if saturated && busy < self.settings.concurrency && tasks.len() < max_tasks {
                // Everything asked for was due: there may be more.
                continue;
            }

            // At the cap only a finished recording makes room: wait for one (or a wake-up)
            // rather than asking the database when work is due.
            let wait = if tasks.len() >= max_tasks {
                self.settings.poll_interval
            } else {
                self.idle_wait(&per_endpoint).await
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                Some(endpoint) = slots_freed.recv(), if tasks.len() < max_tasks => {
                    free(endpoint, &mut per_endpoint);
                }
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = joined.map_or_else(|e| e.id(), |(id, ())| id);
                    finished(id, &mut in_flight);
                }
                () = tokio::time::sleep(wait) => {}
            }
        }

        info!(in_flight = tasks.len(), "delivery worker stopping");
        let grace = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = tasks.join_next_with_id() => match joined {
                    Some(joined) => {
                        let id = joined.map_or_else(|e| e.id(), |(id, ())| id);
                        finished(id, &mut in_flight);
                    }
                    None => break,
                },
                () = &mut grace => break,
            }
        }
        // Past the grace period: requests still waiting for an answer are abandoned and their
        // leases released (due at once, no attempt spent); answered ones get a little longer
        // to be recorded and are never released, which could overtake their record and send
        // them a second time. Whatever is still unrecorded after that returns when its lease
        // expires.
        if !tasks.is_empty() {
            for task in in_flight.values() {
                if !task.answered.load(Ordering::SeqCst) {
                    task.abort.abort();
                }
            }
            let recording = tokio::time::sleep(RECORD_GRACE);
            tokio::pin!(recording);
            loop {
                tokio::select! {
                    joined = tasks.join_next_with_id() => match joined {
                        // A task that completed has recorded its result.
                        Some(Ok((id, ()))) => finished(id, &mut in_flight),
                        Some(Err(_)) => {}
                        None => break,
                    },
                    () = &mut recording => {
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        break;
                    }
                }
            }
        }
        let leases: Vec<_> = in_flight
            .into_values()
            .filter(|task| !task.answered.load(Ordering::SeqCst))
            .map(|task| (task.delivery, task.lease))
            .collect();
        if !leases.is_empty() {
            let count = leases.len();
            match self.store.release(leases, self.clock.now_ms()).await {
                Ok(()) => info!(count, "released unfinished deliveries back to the queue"),
                Err(e) => {
                    warn!(error = %e, count, "could not release deliveries; they return when their lease expires")
                }
            }
        }
        self.running.store(false, Ordering::Relaxed);
        debug!("delivery worker stopped");
    }
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
