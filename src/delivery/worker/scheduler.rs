//! The production loop: [`Worker::run`] keeps up to `concurrency` attempts in flight (at
//! most `endpoint_concurrency` per endpoint, so one slow receiver cannot occupy every slot),
//! claims more as slots free up, and sleeps only when nothing is due. It drives the same two
//! steps as [`Worker::run_once`] (claim, then deliver each claimed delivery); what it adds is
//! only the overlap of rounds: the slot accounting, the cap on results still being recorded,
//! and the orderly shutdown.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Worker;
use crate::{
    domain::{DeliveryId, EndpointId},
    store::LeaseToken,
};

/// Bookkeeping for one attempt running in the production loop.
struct InFlight {
    delivery: DeliveryId,
    lease: LeaseToken,
    /// Set once the receiver has answered: from then on the task only records the result.
    answered: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// Recording tasks allowed per unit of `concurrency`: answered attempts whose result is still
/// being written. Beyond, the worker claims nothing until the database catches up.
const RECORDING_FACTOR: usize = 4;

/// How long a worker woken by new work waits before claiming while other workers share the
/// queue (see the loop).
const SHARED_QUEUE_LINGER: Duration = Duration::from_millis(5);

/// How long shutdown waits, after the grace period, for answered attempts to be recorded.
/// Their leases are not released: releasing could overtake the record and send them again.
const RECORD_GRACE: Duration = Duration::from_secs(5);

/// A request slot of one endpoint: given back (through the worker loop's channel) when dropped,
/// which is as soon as the receiver has answered, or when the task ends in any other way.
pub(super) struct Slot {
    endpoint: EndpointId,
    freed: tokio::sync::mpsc::UnboundedSender<EndpointId>,
    answered: Arc<AtomicBool>,
}

impl Slot {
    /// The receiver answered (and its answer is applied in memory): only recording is left.
    pub(super) fn answered(self) {
        self.answered.store(true, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.freed.send(self.endpoint.clone());
    }
}

impl Worker {
    /// The production loop; returns after `shutdown` is cancelled and in-flight attempts have
    /// finished or, past the grace period, been released back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.running.store(true, Ordering::Relaxed);
        info!(
            concurrency = self.settings.concurrency,
            "delivery worker started"
        );
        if !self.config.delivery.enabled {
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
                    if let Err(e) = worker.deliver_in_slot(delivery, Some(slot)).await {
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
                () = self.wake.notified() => {
                    // Woken by new work while other workers share the queue: each would claim
                    // the few deliveries due right now, and commit for them. A moment's wait
                    // lets a batch gather, so the workers together commit fewer, fuller claims.
                    if self.live_workers.load(Ordering::Relaxed) > 1 {
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(SHARED_QUEUE_LINGER) => {}
                        }
                    }
                }
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
