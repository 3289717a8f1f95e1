//! The production loop: [`Worker::run`] keeps up to `concurrency` attempts in flight (at
//! most `endpoint_concurrency` per endpoint, so one slow receiver cannot occupy every slot),
//! claims more as slots free up, and sleeps only when nothing is due. It drives the same two
//! steps as [`Worker::run_once`] (claim, then deliver each claimed delivery); what it adds is
//! only the overlap of rounds: the slot accounting, the cap on results still being recorded,
//! and the orderly shutdown.
//!
//! Deliveries reach the loop two ways: claimed from the database, or handed over by ingest in
//! memory, already leased (`store::Handoff`). Either way they wait in memory for a free slot
//! of their endpoint; for a fast receiver the loop holds a few times its slots (claimed or
//! offered to ingest), so a slot that frees is refilled at once instead of after a claim.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Worker;
use crate::{
    clock::{Clock, millis},
    domain::{DeliveryId, EndpointId},
    store::{AttemptRecord, HealthUpdate, LeaseToken, Leased, Store, StoreError},
};

/// Writes the results of answered attempts, as many at a time as arrived while the previous
/// write was committing: one job for a round of results instead of one per attempt (each job
/// is a hand-off to the writer and back). An attempt task waits until its result is written,
/// so the cap on tasks bounds the answered deliveries not yet recorded: what a crash sends a
/// second time. It also holds claiming back when results arrive faster than they are written.
/// A batch whose write fails for good releases its tasks too (their deliveries go out again
/// when their leases lapse): one failing database must not stop the worker for good.
pub(super) struct Recorder {
    results: tokio::sync::mpsc::Sender<Answered>,
}

/// One answered attempt on its way to the database, and whom to tell once it is written.
struct Answered {
    record: AttemptRecord,
    health: Option<HealthUpdate>,
    written: tokio::sync::oneshot::Sender<()>,
}

/// Results written in one job, at most.
const RECORD_BATCH: usize = 512;

/// How long a result waits for others when only a few arrived together. Under light load each
/// result was a commit of its own, rewriting whole pages of the deliveries, attempts and
/// roll-up B-trees for one row each: at 1,000 events/s the write-ahead log took 88 KB per
/// event. Only the "delivered" mark and its attempt task wait (the receiver already has the
/// event, and its slot is free), and a crash within it costs a second send, as a crash before
/// any result is written always has. No wait once every task that could add one has.
const RECORD_LINGER: Duration = Duration::from_millis(10);

/// Batches this small wait for more ([`RECORD_LINGER`]); larger ones are written at once.
const RECORD_LINGER_BELOW: usize = 64;

/// Pauses before writing a failed batch of results again (its length: the tries).
const RECORD_RETRIES: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::ZERO,
];

impl Recorder {
    /// Starts the task that writes results to `store`; it ends once every sender is dropped
    /// and what they sent is written.
    fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        capacity: usize,
    ) -> (Self, JoinHandle<()>) {
        Self::writing(capacity, move |records, health| {
            let store = Arc::clone(&store);
            let now = clock.now_ms();
            async move { store.record_attempts(records, health, now).await }
        })
    }

    /// [`Recorder::start`], writing each batch with `write`.
    fn writing<W, F>(capacity: usize, mut write: W) -> (Self, JoinHandle<()>)
    where
        W: FnMut(Vec<AttemptRecord>, Vec<HealthUpdate>) -> F + Send + 'static,
        F: Future<Output = Result<(), StoreError>> + Send,
    {
        let (results, mut incoming) = tokio::sync::mpsc::channel::<Answered>(capacity.max(1));
        let writer = tokio::spawn(async move {
            // At most `capacity` tasks wait for their results: once that many are in, no
            // other can come until this batch is written.
            let most = capacity.clamp(1, RECORD_BATCH);
            let mut batch = Vec::with_capacity(most);
            while gather(&mut incoming, &mut batch, most).await > 0 {
                let mut records = Vec::with_capacity(batch.len());
                let mut health = Vec::new();
                let mut waiting = Vec::with_capacity(batch.len());
                for answered in batch.drain(..) {
                    records.push(answered.record);
                    health.extend(answered.health);
                    waiting.push(answered.written);
                }
                // A failed write committed nothing (its whole group is undone): trying it again
                // is safe, and spares answered deliveries a second send when their leases lapse.
                for (attempt, pause) in RECORD_RETRIES.iter().enumerate() {
                    let written = write(records.clone(), health.clone()).await;
                    match written {
                        Ok(()) => break,
                        Err(e) if attempt + 1 < RECORD_RETRIES.len() => {
                            warn!(error = %e, count = records.len(), "recording delivery attempts failed; trying again");
                            tokio::time::sleep(*pause).await;
                        }
                        Err(e) => {
                            error!(error = %e, count = records.len(), "recording delivery attempts failed; their leases will expire and they will be sent again");
                        }
                    }
                }
                for written in waiting {
                    let _ = written.send(());
                }
            }
        });
        (Self { results }, writer)
    }

    /// Hands one result over and waits until it is written, or until writing it has failed
    /// for good (the recorder logs that once for its whole batch).
    pub(super) async fn record(
        &self,
        record: AttemptRecord,
        health: Option<HealthUpdate>,
    ) -> Result<(), StoreError> {
        let (written, done) = tokio::sync::oneshot::channel();
        self.results
            .send(Answered {
                record,
                health,
                written,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)
    }
}

/// Waits for results and takes what is waiting, up to `most`; when that is only a few, waits
/// up to [`RECORD_LINGER`] for more to share their commit, unless `most` have come. Returns
/// how many it took: 0 once every sender is gone and nothing is left.
async fn gather<T>(
    incoming: &mut tokio::sync::mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    most: usize,
) -> usize {
    if incoming.recv_many(batch, most).await == 0 {
        return 0;
    }
    if batch.len() < RECORD_LINGER_BELOW {
        let until = tokio::time::Instant::now() + RECORD_LINGER;
        while batch.len() < most {
            let room = most - batch.len();
            match tokio::time::timeout_at(until, incoming.recv_many(batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    batch.len()
}

/// Bookkeeping for one attempt running in the production loop.
struct InFlight {
    delivery: DeliveryId,
    lease: LeaseToken,
    /// Set once the receiver has answered: from then on the task only records the result.
    answered: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// Attempt tasks allowed per unit of `concurrency`: those waiting for an answer, and answered
/// ones whose result is still being written. Beyond, the worker claims nothing until the
/// database catches up. So it also bounds what a crash can send twice: the documented
/// `4 × HOOKRELAY_DELIVERY_CONCURRENCY`.
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

/// Whether the loop should ask the database for due deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Nothing,
    Anything,
}

/// Deliveries claimed or handed over, waiting in memory for a slot of their endpoint, oldest
/// first per endpoint.
#[derive(Default)]
struct Waiting {
    by_endpoint: HashMap<EndpointId, VecDeque<Leased>>,
    len: usize,
}

impl Waiting {
    fn extend(&mut self, leased: impl IntoIterator<Item = Leased>) {
        for leased in leased {
            self.len += 1;
            self.by_endpoint
                .entry(leased.delivery.endpoint_id.clone())
                .or_default()
                .push_back(leased);
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Leased> + '_ {
        self.len = 0;
        self.by_endpoint.drain().flat_map(|(_, queue)| queue)
    }
}

/// The production loop's bookkeeping of the deliveries it holds.
struct Flights {
    /// A task holds a slot (of its endpoint and of the total) while its request is out; it is
    /// still tracked in `in_flight`, for release at shutdown, until its result is recorded.
    tasks: JoinSet<()>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    /// Requests out per endpoint.
    per_endpoint: HashMap<EndpointId, usize>,
    freed: tokio::sync::mpsc::UnboundedSender<EndpointId>,
    waiting: Waiting,
    /// Attempt tasks, answered or not, are capped (answered ones stay until their result is
    /// written), so a slow database holds claiming back.
    max_tasks: usize,
    recorder: Arc<Recorder>,
}

impl Flights {
    fn finished(&mut self, id: tokio::task::Id) {
        self.in_flight.remove(&id);
    }

    fn free(&mut self, endpoint: &EndpointId) {
        if let Some(count) = self.per_endpoint.get_mut(endpoint) {
            *count = count.saturating_sub(1);
        }
    }

    /// Whether a slot freed for `endpoint` calls for a claim: not while deliveries for it wait
    /// in memory (they refill the slot), nor when its last claim found nothing more due.
    fn may_need_claim(
        &self,
        endpoint: &EndpointId,
        drained: &std::collections::HashSet<EndpointId>,
    ) -> bool {
        !drained.contains(endpoint)
            && self
                .waiting
                .by_endpoint
                .get(endpoint)
                .is_none_or(VecDeque::is_empty)
    }

    fn busy(&self) -> usize {
        self.per_endpoint.values().sum()
    }

    /// What each endpoint holds: requests out and deliveries waiting for a slot.
    fn held(&self) -> (HashMap<EndpointId, usize>, usize) {
        let mut held = self.per_endpoint.clone();
        for (endpoint, queue) in &self.waiting.by_endpoint {
            *held.entry(endpoint.clone()).or_default() += queue.len();
        }
        let total = held.values().sum();
        (held, total)
    }
}

impl Worker {
    /// Sends waiting deliveries into free slots. Those that may not go now (their endpoint
    /// paused, its circuit open, disabled or gone, or too little of the lease left) go back to
    /// the queue, due at once, to be claimed again when they may.
    /// Returns whether any went back.
    async fn dispatch(self: &Arc<Self>, flights: &mut Flights) -> bool {
        let now = self.clock.now_ms();
        let share = self.endpoint_share();
        let mut busy = flights.busy();
        let mut start = Vec::new();
        let mut release = Vec::new();
        {
            let runtimes = self.runtimes();
            for (endpoint, queue) in &mut flights.waiting.by_endpoint {
                let runtime = runtimes.get(endpoint);
                let mut out = flights.per_endpoint.get(endpoint).copied().unwrap_or(0);
                while let Some(front) = queue.front() {
                    let Some(runtime) = runtime else {
                        release.extend(queue.drain(..));
                        break;
                    };
                    let probe = runtime.probes.contains(&front.delivery.id);
                    if !probe && !runtime.flowing(now) {
                        release.extend(queue.drain(..));
                        break;
                    }
                    // Sent only with twice the timeout left of its lease (a lease is twice the
                    // timeout and 5 s): after the longest request, as long again remains to
                    // record the answer, so a slow write cannot let the lease lapse and the
                    // delivery go out a second time. It waits a few seconds at most.
                    if front.until_ms - now < 2 * millis(runtime.target.timeout) {
                        release.extend(queue.pop_front());
                        continue;
                    }
                    if out >= share
                        || busy >= self.settings.concurrency
                        || flights.tasks.len() + start.len() >= flights.max_tasks
                    {
                        break;
                    }
                    out += 1;
                    busy += 1;
                    start.extend(queue.pop_front());
                }
            }
        }
        flights
            .waiting
            .by_endpoint
            .retain(|_, queue| !queue.is_empty());
        flights.waiting.len = flights
            .waiting
            .by_endpoint
            .values()
            .map(VecDeque::len)
            .sum();
        for leased in start {
            self.start(flights, leased);
        }
        let released = !release.is_empty();
        if released {
            let leases = release
                .into_iter()
                .map(|l| (l.delivery.id, l.delivery.lease))
                .collect();
            if let Err(e) = self.store.release(leases, now).await {
                warn!(error = %e, "could not put deliveries back in the queue; they return when their lease expires");
            }
        }
        released
    }

    /// Starts the attempt of one delivery in a slot of its endpoint.
    fn start(self: &Arc<Self>, flights: &mut Flights, leased: Leased) {
        let delivery = leased.delivery;
        let endpoint = delivery.endpoint_id.clone();
        let worker = Arc::clone(self);
        let answered = Arc::new(AtomicBool::new(false));
        let slot = Slot {
            endpoint: endpoint.clone(),
            freed: flights.freed.clone(),
            answered: Arc::clone(&answered),
        };
        let record_id = delivery.id.clone();
        let lease = delivery.lease;
        let recorder = Arc::clone(&flights.recorder);
        let handle = flights.tasks.spawn(async move {
            if let Err(e) = worker
                .deliver_in_slot(delivery, Some(slot), Some(&recorder))
                .await
            {
                error!(error = %e, "recording a delivery attempt failed; the lease will expire and it will be retried");
            }
        });
        flights.in_flight.insert(
            handle.id(),
            InFlight {
                delivery: record_id,
                lease,
                answered,
                abort: handle,
            },
        );
        *flights.per_endpoint.entry(endpoint).or_default() += 1;
    }

    /// Resolves when ingest has handed deliveries over (never without a handoff).
    async fn handed_over(&self) {
        match &self.handoff {
            Some(handoff) => handoff.queued().await,
            None => std::future::pending().await,
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
        if !self.config.delivery.enabled {
            info!("ENABLE_WEBHOOK=false: events are stored and sent once it is true again");
        }
        let (freed, mut slots_freed) = tokio::sync::mpsc::unbounded_channel::<EndpointId>();
        let max_tasks = self.settings.concurrency * RECORDING_FACTOR;
        let (recorder, recording) =
            Recorder::start(Arc::clone(&self.store), Arc::clone(&self.clock), max_tasks);
        // Whether the database may hold deliveries due now that the loop has not claimed: after
        // a wake-up (ingest left some unleased, a replay, another process), when the wait for
        // the next due time ends, after a claim that got all it asked for and after putting
        // deliveries back. Not when ingest handed deliveries over: only memory changed.
        let mut due = Due::Anything;
        let mut drained = std::collections::HashSet::new();
        // When the loop asks the database again whatever happens meanwhile: the next due time
        // it read (a retry, a paused or open endpoint, another process's work), at most one
        // poll interval ahead. A deadline kept across passes, so that a stream of handed-over
        // deliveries and freed slots cannot keep putting it off.
        let mut check_at = tokio::time::Instant::now();
        let mut flights = Flights {
            recorder: Arc::new(recorder),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            per_endpoint: HashMap::new(),
            freed,
            waiting: Waiting::default(),
            max_tasks,
        };

        while !shutdown.is_cancelled() {
            self.last_beat_ms
                .store(self.clock.now_ms(), Ordering::Relaxed);
            // Retries this worker scheduled itself are due by their time.
            let retry_at = self.retry_due_ms.swap(i64::MAX, Ordering::Relaxed);
            if retry_at != i64::MAX {
                let delay = u64::try_from(retry_at - self.clock.now_ms()).unwrap_or(0);
                check_at = check_at.min(tokio::time::Instant::now() + Duration::from_millis(delay));
            }
            if tokio::time::Instant::now() >= check_at {
                due = Due::Anything;
            }
            while let Some(joined) = flights.tasks.try_join_next_with_id() {
                flights.finished(joined.map_or_else(|e| e.id(), |(id, ())| id));
            }
            while let Ok(endpoint) = slots_freed.try_recv() {
                if flights.may_need_claim(&endpoint, &drained) {
                    due = Due::Anything;
                }
                flights.free(&endpoint);
            }
            if let Some(handoff) = &self.handoff {
                let handed = handoff.take();
                crate::metrics::taken("handoff", handed.len());
                flights.waiting.extend(handed);
            }
            if self.dispatch(&mut flights).await {
                due = Due::Anything;
            }

            let mut saturated = false;
            let claimed_now = due != Due::Nothing;
            if claimed_now {
                // Attempt tasks still recording count against what may be claimed, so near
                // their cap claims shrink.
                let (held, total_held) = flights.held();
                let load = total_held.max(flights.tasks.len() + flights.waiting.len);
                let claimed = match self.claim(&held, load, &drained).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        error!(error = %e, "claiming deliveries failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(self.settings.poll_interval) => continue,
                        }
                    }
                };
                saturated = claimed.requested > 0 && claimed.leased.len() == claimed.requested;
                due = Due::Nothing;
                drained = claimed.drained;
                flights.waiting.extend(claimed.leased);
                if self.dispatch(&mut flights).await {
                    due = Due::Anything;
                }
            }
            if let Some(handoff) = &self.handoff {
                self.offer(handoff, &flights.held().0);
            }
            if saturated
                && flights.busy() < self.settings.concurrency
                && flights.tasks.len() < flights.max_tasks
            {
                // Everything asked for was due: there may be more.
                due = Due::Anything;
                continue;
            }

            // At the cap only a finished recording makes room: wait for one (or a wake-up)
            // rather than asking the database when work is due.
            if claimed_now {
                let wait = if flights.tasks.len() >= flights.max_tasks {
                    self.settings.poll_interval
                } else {
                    self.idle_wait(&flights.held().0, &drained).await
                };
                check_at = tokio::time::Instant::now() + wait;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                // Handed over in memory: nothing new in the database.
                () = self.handed_over() => {}
                () = self.wake.notified() => {
                    due = Due::Anything;
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
                Some(endpoint) = slots_freed.recv(), if flights.tasks.len() < flights.max_tasks => {
                    if flights.may_need_claim(&endpoint, &drained) {
                        due = Due::Anything;
                    }
                    flights.free(&endpoint);
                }
                Some(joined) = flights.tasks.join_next_with_id(), if !flights.tasks.is_empty() => {
                    flights.finished(joined.map_or_else(|e| e.id(), |(id, ())| id));
                }
                () = tokio::time::sleep_until(check_at) => due = Due::Anything,
            }
        }

        info!(in_flight = flights.tasks.len(), "delivery worker stopping");
        // Nothing more is handed over; what was, and what waits for a slot, goes back.
        let mut unsent: Vec<Leased> = flights.waiting.drain().collect();
        if let Some(handoff) = &self.handoff {
            unsent.extend(handoff.close());
        }
        let mut tasks = flights.tasks;
        let mut in_flight = flights.in_flight;
        let finished = |id: tokio::task::Id, in_flight: &mut HashMap<tokio::task::Id, InFlight>| {
            in_flight.remove(&id);
        };
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
            let grace = tokio::time::sleep(RECORD_GRACE);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    joined = tasks.join_next_with_id() => match joined {
                        // A task that completed has had its result written (or given up
                        // on: the recorder logs that).
                        Some(Ok((id, ()))) => finished(id, &mut in_flight),
                        Some(Err(_)) => {}
                        None => break,
                    },
                    () = &mut grace => {
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        break;
                    }
                }
            }
        }
        // Every task has ended: the recorder writes what it was handed, then stops.
        drop(flights.recorder);
        if tokio::time::timeout(RECORD_GRACE, recording).await.is_err() {
            warn!(
                "results still unrecorded at shutdown; those deliveries return when their lease expires"
            );
        }
        // Ingest groups that reserved before the handoff closed may still be committing: a write
        // queued behind them (the writer takes writes in order) returns once they have, and
        // have handed their deliveries over.
        if let Some(handoff) = &self.handoff {
            if let Err(e) = self.store.release(Vec::new(), self.clock.now_ms()).await {
                debug!(error = %e, "could not wait for ingest in progress");
            }
            unsent.extend(handoff.close());
        }
        let leases: Vec<_> = in_flight
            .into_values()
            .filter(|task| !task.answered.load(Ordering::SeqCst))
            .map(|task| (task.delivery, task.lease))
            .chain(
                unsent
                    .into_iter()
                    .map(|l| (l.delivery.id, l.delivery.lease)),
            )
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

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_attempt_is_done_only_once_its_result_is_written() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (recorder, writer) = Recorder::writing(8, {
            let (gate, written) = (Arc::clone(&gate), Arc::clone(&written));
            move |records: Vec<AttemptRecord>, _| {
                let (gate, written) = (Arc::clone(&gate), Arc::clone(&written));
                async move {
                    gate.acquire().await.expect("open").forget();
                    let ids = records.into_iter().map(|r| r.delivery_id);
                    written.lock().expect("lock").extend(ids);
                    Ok(())
                }
            }
        });
        let delivery = DeliveryId::generate();
        let attempt = tokio::spawn({
            let delivery = delivery.clone();
            async move { recorder.record(answer(delivery), None).await }
        });
        // Long past the linger: the batch is being written, and the attempt still waits.
        tokio::time::sleep(RECORD_LINGER * 10).await;
        assert!(!attempt.is_finished(), "done before its result was written");
        gate.add_permits(1);
        attempt.await.expect("task").expect("recorded");
        assert_eq!(*written.lock().expect("lock"), [delivery]);
        writer.await.expect("the writer ends with its last sender");
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_the_database_keeps_refusing_is_given_up_after_the_retries() {
        let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (recorder, writer) = Recorder::writing(8, {
            let tries = Arc::clone(&tries);
            move |_: Vec<AttemptRecord>, _| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err(StoreError::database("disk I/O error")) }
            }
        });
        let started = Instant::now();
        let attempt = recorder.record(answer(DeliveryId::generate()), None);
        attempt.await.expect("released, not stuck");
        assert_eq!(tries.load(Ordering::SeqCst), RECORD_RETRIES.len());
        let paused: Duration = RECORD_RETRIES.iter().sum();
        assert_eq!(
            started.elapsed(),
            RECORD_LINGER + paused,
            "only after every try"
        );
        drop(recorder);
        writer.await.expect("the writer ends with its last sender");
    }

    fn answer(delivery_id: DeliveryId) -> AttemptRecord {
        AttemptRecord {
            delivery_id,
            lease: LeaseToken(1),
            attempt_no: 1,
            started_at_ms: 0,
            duration_ms: 3,
            status_code: Some(200),
            error_kind: None,
            error_detail: None,
            response_snippet: None,
            next: crate::store::NextState::Delivered,
            latency_ms: 5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_result_waits_for_others_to_share_its_commit() {
        let (results, mut incoming) = tokio::sync::mpsc::channel(1024);
        results.send(1).await.expect("send");
        let late = results.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RECORD_LINGER / 2).await;
            late.send(2).await.expect("send");
            // Past the linger: left for the next batch.
            tokio::time::sleep(RECORD_LINGER).await;
            late.send(3).await.expect("send");
        });
        let started = Instant::now();
        let mut batch = Vec::new();
        assert_eq!(gather(&mut incoming, &mut batch, RECORD_BATCH).await, 2);
        assert_eq!(batch, [1, 2]);
        assert_eq!(
            started.elapsed(),
            RECORD_LINGER,
            "no longer than the linger"
        );
        batch.clear();
        assert_eq!(gather(&mut incoming, &mut batch, RECORD_BATCH).await, 1);
        assert_eq!(batch, [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_round_of_results_is_written_at_once() {
        let (results, mut incoming) = tokio::sync::mpsc::channel(1024);
        for n in 0..RECORD_LINGER_BELOW {
            results.send(n).await.expect("send");
        }
        let started = Instant::now();
        let mut batch = Vec::new();
        assert_eq!(
            gather(&mut incoming, &mut batch, RECORD_BATCH).await,
            RECORD_LINGER_BELOW
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_holding_every_result_that_could_come_is_written_at_once() {
        // With a cap of 4 tasks, the 4 results are all there can be until they are written.
        let (results, mut incoming) = tokio::sync::mpsc::channel(4);
        for n in 0..4 {
            results.send(n).await.expect("send");
        }
        let started = Instant::now();
        let mut batch = Vec::new();
        assert_eq!(gather(&mut incoming, &mut batch, 4).await, 4);
        assert_eq!(started.elapsed(), Duration::ZERO, "no linger");
        // Fewer than the cap: the linger holds, for the others to join.
        batch.clear();
        results.send(4).await.expect("send");
        assert_eq!(gather(&mut incoming, &mut batch, 4).await, 1);
        assert_eq!(started.elapsed(), RECORD_LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_results_are_taken_when_the_senders_are_gone() {
        let (results, mut incoming) = tokio::sync::mpsc::channel(1024);
        results.send(7).await.expect("send");
        drop(results);
        let started = Instant::now();
        let mut batch = Vec::new();
        assert_eq!(gather(&mut incoming, &mut batch, RECORD_BATCH).await, 1);
        assert!(
            started.elapsed() < RECORD_LINGER,
            "no wait once nothing more can come"
        );
        batch.clear();
        assert_eq!(
            gather(&mut incoming, &mut batch, RECORD_BATCH).await,
            0,
            "done"
        );
    }
}
