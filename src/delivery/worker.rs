//! The delivery worker: a loop around claim → send → record.
//!
//! [`Worker::run_once`] does one round synchronously (claim what is due, attempt all of it,
//! record the results) and is what tests drive. [`Worker::run`] is the production loop built
//! from the same steps: it keeps up to `concurrency` attempts in flight (at most
//! `endpoint_concurrency` per endpoint, so one slow receiver cannot occupy every slot), claims
//! more as slots free up, and sleeps only when nothing is due: until the next due time, a poll
//! tick, or a wake-up from ingest, whichever comes first.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant, UNIX_EPOCH},
};

use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Failure, HttpSender, SendError, Target, parse_retry_after, signed_headers};
use crate::{
    clock::{Clock, millis},
    domain::{DeliveryId, EndpointId},
    store::{AttemptRecord, ClaimedDelivery, LeaseToken, NextState, Store, StoreError},
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
    /// It failed for good and is now in the dead-letter queue.
    DeadLettered,
    /// Its endpoint is no longer configured; the delivery went back to the queue untouched.
    Released,
}

/// Tuning of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Attempts in flight at once, in total.
    pub concurrency: usize,
    /// Attempts in flight at once, per endpoint.
    pub endpoint_concurrency: usize,
    /// Longest idle sleep before looking for work queued by another process.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_grace: Duration,
}

/// Claims, sends and records deliveries.
pub struct Worker {
    store: Arc<dyn Store>,
    sender: HttpSender,
    clock: Arc<dyn Clock>,
    targets: Vec<Target>,
    wake: Arc<Notify>,
    settings: WorkerSettings,
    last_beat_ms: AtomicI64,
    running: AtomicBool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// Bookkeeping for one attempt running in the production loop.
struct InFlight {
    delivery: DeliveryId,
    lease: LeaseToken,
    endpoint: EndpointId,
}

impl Worker {
    /// A worker delivering to `targets`; `wake` is notified by ingest when work arrives.
    pub fn new(
        store: Arc<dyn Store>,
        sender: HttpSender,
        clock: Arc<dyn Clock>,
        targets: Vec<Target>,
        wake: Arc<Notify>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            store,
            sender,
            clock,
            targets,
            wake,
            settings,
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

    /// A claim must outlive the attempt and its recording, or a second worker could take the
    /// delivery while the first is still sending it.
    fn lease_ms(&self) -> i64 {
        self.targets
            .iter()
            .map(|t| millis(t.timeout) * 2 + 5_000)
            .max()
            .unwrap_or(5_000)
    }

    fn target(&self, endpoint: &EndpointId) -> Option<&Target> {
        self.targets.iter().find(|t| &t.id == endpoint)
    }

    /// Claims due deliveries for every target with free slots.
    async fn claim(
        &self,
        in_flight: &HashMap<EndpointId, usize>,
        total_in_flight: usize,
    ) -> Result<(Vec<ClaimedDelivery>, usize), StoreError> {
        let mut free = self.settings.concurrency.saturating_sub(total_in_flight);
        let mut wanted = Vec::new();
        for target in &self.targets {
            let busy = in_flight.get(&target.id).copied().unwrap_or(0);
            let slots = self
                .settings
                .endpoint_concurrency
                .saturating_sub(busy)
                .min(free);
            if slots > 0 {
                free -= slots;
                wanted.push((target.id.clone(), slots));
            }
        }
        let requested = wanted.iter().map(|(_, n)| n).sum();
        if requested == 0 {
            return Ok((Vec::new(), 0));
        }
        let claimed = self
            .store
            .claim_due(self.clock.now_ms(), self.lease_ms(), wanted)
            .await?;
        Ok((claimed, requested))
    }

    /// Sends one claimed delivery and decides what follows, without touching the store.
    async fn attempt(&self, target: &Target, delivery: &ClaimedDelivery) -> AttemptRecord {
        let started_at_ms = self.clock.now_ms();
        let headers = signed_headers(
            target,
            &delivery.event_id,
            started_at_ms.div_euclid(1000),
            &delivery.payload,
        );
        let started = Instant::now();
        let result = self
            .sender
            .post(
                &target.url,
                headers,
                delivery.payload.clone(),
                target.timeout,
            )
            .await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now_ms = self.clock.now_ms();
        let wall_now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));

        let (status_code, response_snippet, failure) = match result {
            Ok(response) if response.status.is_success() => {
                (Some(response.status.as_u16()), Some(response.snippet), None)
            }
            Ok(response) => {
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
                (
                    Some(code),
                    Some(response.snippet),
                    Some((Failure::Status { code, retry_after }, detail)),
                )
            }
            Err(error) => {
                let failure = match &error {
                    SendError::Timeout(_) => Failure::Timeout,
                    SendError::Connect(_) => Failure::Connect,
                    SendError::Network(_) => Failure::Network,
                };
                (None, None, Some((failure, error.to_string())))
            }
        };

        let attempts_made = delivery.attempts + 1;
        let (next, error_kind, error_detail) = match failure {
            None => (NextState::Delivered, None, None),
            Some((failure, detail)) => {
                let next = match target
                    .policy
                    .next_delay(attempts_made, &failure, rand::random())
                {
                    Some(delay) => NextState::RetryAt(now_ms + millis(delay)),
                    None => NextState::DeadLetter,
                };
                let detail = if next == NextState::DeadLetter && failure.is_retryable() {
                    format!("retries exhausted after {attempts_made} attempts; last: {detail}")
                } else {
                    detail
                };
                (next, Some(failure.kind().to_owned()), Some(detail))
            }
        };
        AttemptRecord {
            delivery_id: delivery.id.clone(),
            lease: delivery.lease,
            attempt_no: delivery.total_attempts + 1,
            started_at_ms,
            duration_ms,
            status_code,
            error_kind,
            error_detail,
            response_snippet,
            next,
        }
    }

    /// Attempts one claimed delivery and records the result.
    pub async fn deliver(&self, delivery: ClaimedDelivery) -> Result<Outcome, StoreError> {
        let Some(target) = self.target(&delivery.endpoint_id) else {
            self.store
                .release(vec![(delivery.id, delivery.lease)], self.clock.now_ms())
                .await?;
            return Ok(Outcome::Released);
        };
        let record = self.attempt(target, &delivery).await;
        let outcome = match record.next {
            NextState::Delivered => Outcome::Delivered,
            NextState::RetryAt(at_ms) => Outcome::Retrying { at_ms },
            NextState::DeadLetter => Outcome::DeadLettered,
        };
        let latency_ms = self.clock.now_ms() - delivery.event_created_at_ms;
        match outcome {
            Outcome::Delivered => info!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                latency_ms, "delivered"
            ),
            Outcome::Retrying { at_ms } => warn!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                error = record.error_detail.as_deref().unwrap_or_default(),
                retry_in_ms = at_ms - self.clock.now_ms(), "attempt failed; will retry"
            ),
            Outcome::DeadLettered | Outcome::Released => error!(
                event_id = %delivery.event_id, delivery_id = %delivery.id, endpoint = %target.id,
                attempt = record.attempt_no, status = record.status_code, duration_ms = record.duration_ms,
                error = record.error_detail.as_deref().unwrap_or_default(), "dead-lettered"
            ),
        }
        self.store
            .record_attempts(vec![record], self.clock.now_ms())
            .await?;
        Ok(outcome)
    }

    /// One round: claims everything due (up to the concurrency limits), attempts it all
    /// concurrently, records the results, and returns what happened to each.
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

    /// How long an idle loop may sleep.
    async fn idle_wait(&self) -> Duration {
        let poll = self.settings.poll_interval;
        let endpoints = self
            .targets
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>();
        if endpoints.is_empty() {
            return poll;
        }
        match self.store.next_due_ms(endpoints).await {
            Ok(Some(due)) => {
                let wait = u64::try_from(due - self.clock.now_ms()).unwrap_or(0);
                Duration::from_millis(wait).min(poll)
            }
            Ok(None) => poll,
            Err(e) => {
                warn!(error = %e, "could not read the next due time");
                poll
            }
        }
    }

    /// The production loop; returns after `shutdown` is cancelled and in-flight attempts have
    /// finished or, past the grace period, been released back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.running.store(true, Ordering::Relaxed);
        info!(
            targets = self.targets.len(),
            concurrency = self.settings.concurrency,
            "delivery worker started"
        );
        if self.targets.is_empty() {
            info!(
                "no endpoint to deliver to (ZAPIER_WEBHOOK_URL unset or ENABLE_WEBHOOK=false); events are stored until one is configured"
            );
        }
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
        let mut per_endpoint: HashMap<EndpointId, usize> = HashMap::new();
        let finished = |id: tokio::task::Id,
                        in_flight: &mut HashMap<tokio::task::Id, InFlight>,
                        per_endpoint: &mut HashMap<EndpointId, usize>| {
            if let Some(done) = in_flight.remove(&id)
                && let Some(count) = per_endpoint.get_mut(&done.endpoint)
            {
                *count = count.saturating_sub(1);
            }
        };

        while !shutdown.is_cancelled() {
            self.last_beat_ms
                .store(self.clock.now_ms(), Ordering::Relaxed);
            while let Some(joined) = tasks.try_join_next_with_id() {
                let id = joined.map_or_else(|e| e.id(), |(id, ())| id);
                finished(id, &mut in_flight, &mut per_endpoint);
            }

            let claimed = match self.claim(&per_endpoint, tasks.len()).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    error!(error = %e, "claiming deliveries failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(self.settings.poll_interval) => continue,
                    }
                }
            };
            let (claimed, requested) = claimed;
            let saturated = requested > 0 && claimed.len() == requested;
            for delivery in claimed {
                let endpoint = delivery.endpoint_id.clone();
                let record = InFlight {
                    delivery: delivery.id.clone(),
                    lease: delivery.lease,
                    endpoint: endpoint.clone(),
                };
                let worker = Arc::clone(&self);
                let handle = tasks.spawn(async move {
                    if let Err(e) = worker.deliver(delivery).await {
                        error!(error = %e, "recording a delivery attempt failed; the lease will expire and it will be retried");
                    }
                });
                in_flight.insert(handle.id(), record);
                *per_endpoint.entry(endpoint).or_default() += 1;
            }
            if saturated && tasks.len() < self.settings.concurrency {
                // Everything asked for was due: there may be more.
                continue;
            }

            let wait = self.idle_wait().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = joined.map_or_else(|e| e.id(), |(id, ())| id);
                    finished(id, &mut in_flight, &mut per_endpoint);
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
                        finished(id, &mut in_flight, &mut per_endpoint);
                    }
                    None => break,
                },
                () = &mut grace => {
                    tasks.abort_all();
                    while let Some(joined) = tasks.join_next_with_id().await {
                        // A task that completed before the abort has recorded its result.
                        if let Ok((id, ())) = joined {
                            finished(id, &mut in_flight, &mut per_endpoint);
                        }
                    }
                    break;
                }
            }
        }
        if !in_flight.is_empty() {
            let leases: Vec<_> = in_flight
                .into_values()
                .map(|f| (f.delivery, f.lease))
                .collect();
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
