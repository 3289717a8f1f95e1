//! Deliveries handed straight from ingest to this process's worker.
//!
//! Most deliveries are due the moment they are stored, and a worker with free slots would only
//! claim them back from the database a moment later, with a write and a commit of its own
//! between acceptance and sending. Instead the worker *offers* room per endpoint, ingest
//! stores a delivery already leased to the worker when room is offered, and once the group
//! commit is durable the delivery is queued here, in memory, for the worker to send.
//!
//! The row is still the durable copy: it is written in the ingest transaction with the lease
//! (`lease_token`, `claimed_by`, `next_attempt_at` = when the lease ends). If the process dies
//! before the attempt is recorded, the lease lapses and the delivery is claimed again like any
//! other. Room is counted so that what the worker holds, what is queued here and what ingest
//! has reserved in transactions not yet committed never exceed what the worker offered.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use super::{ClaimedDelivery, LeaseToken, NewEvent};
use crate::domain::{DeliveryId, EndpointId};

/// A delivery leased in the transaction that stored it, and until when (unix ms).
#[derive(Debug)]
pub struct Leased {
    /// What to send.
    pub delivery: ClaimedDelivery,
    /// When the lease ends: past it the delivery may be claimed again.
    pub until_ms: i64,
}

/// The meeting point of ingest and the worker of one process (see the module docs).
#[derive(Debug, Default)]
pub struct Handoff {
    state: Mutex<State>,
    queued: Notify,
    /// Ingest stored deliveries without a lease since [`Handoff::take_unleased`] last looked:
    /// the worker must claim them from the database.
    unleased: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Who the leases are for (`claimed_by`) and how long they last; `None` while no worker
    /// takes deliveries (then nothing is reserved).
    worker: Option<(String, i64)>,
    /// Per endpoint: room left for new reservations, and reservations made but not yet taken
    /// by the worker (in uncommitted transactions or queued).
    room: HashMap<EndpointId, Room>,
    queue: VecDeque<Leased>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Room {
    open: usize,
    reserved: usize,
}

/// What ingest needs to store a delivery leased to the worker.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The worker's instance id, stored as `claimed_by`.
    pub claimant: String,
    /// When the lease ends, unix ms.
    pub until_ms: i64,
}

impl Handoff {
    /// A handoff with no worker taking deliveries yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters and a queue: a panic elsewhere leaves them usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The worker takes deliveries for `claimant`, each leased for `lease_ms` from when it is
    /// stored.
    pub fn open(&self, claimant: &str, lease_ms: i64) {
        let mut state = self.state();
        // Called on every pass of the worker's loop: no new string while nothing changed.
        if state
            .worker
            .as_ref()
            .is_none_or(|(current, lease)| current != claimant || *lease != lease_ms)
        {
            state.worker = Some((claimant.to_owned(), lease_ms));
        }
    }

    /// The worker takes no more deliveries; returns what is queued (to be released). Ingest
    /// transactions still in flight may queue a few more: call again after they settle.
    pub fn close(&self) -> Vec<Leased> {
        let mut state = self.state();
        state.worker = None;
        for room in state.room.values_mut() {
            room.open = 0;
        }
        let taken: Vec<Leased> = state.queue.drain(..).collect();
        for leased in &taken {
            if let Some(room) = state.room.get_mut(&leased.delivery.endpoint_id) {
                room.reserved = room.reserved.saturating_sub(1);
            }
        }
        taken
    }

    /// The worker will hold up to `total` deliveries for `endpoint` beyond those it already
    /// holds: room for that many, less what ingest has reserved and the worker not yet taken.
    /// Zero stops reservations for the endpoint.
    pub fn offer(&self, endpoint: &EndpointId, total: usize) {
        let mut state = self.state();
        match state.room.get_mut(endpoint) {
            Some(room) => room.open = total.saturating_sub(room.reserved),
            None if total > 0 => {
                state.room.insert(
                    endpoint.clone(),
                    Room {
                        open: total,
                        reserved: 0,
                    },
                );
            }
            None => {}
        }
    }

    /// Withdraws every endpoint's offer except those in `keep` (endpoints gone or no longer
    /// taking deliveries in memory).
    pub fn withdraw_others(&self, keep: &dyn Fn(&EndpointId) -> bool) {
        let mut state = self.state();
        state.room.retain(|endpoint, room| {
            if !keep(endpoint) {
                room.open = 0;
            }
            room.open > 0 || room.reserved > 0
        });
    }

    /// Deliveries for `endpoint` reserved and not yet taken by the worker: they are on their way.
    pub fn reserved(&self, endpoint: &EndpointId) -> usize {
        self.state()
            .room
            .get(endpoint)
            .map_or(0, |room| room.reserved)
    }

    /// Takes everything queued, oldest first.
    pub fn take(&self) -> Vec<Leased> {
        let mut state = self.state();
        let taken: Vec<Leased> = state.queue.drain(..).collect();
        for leased in &taken {
            if let Some(room) = state.room.get_mut(&leased.delivery.endpoint_id) {
                room.reserved = room.reserved.saturating_sub(1);
            }
        }
        taken
    }

    /// Resolves once something is queued (at once if something was queued since the last
    /// call).
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Whether ingest stored deliveries without a lease (due now, for the worker to claim)
    /// since the last call.
    pub fn take_unleased(&self) -> bool {
        self.unleased.swap(false, Ordering::AcqRel)
    }

    /// Whether a worker takes deliveries and any endpoint has room: if not, every delivery
    /// will be stored due, and a store can skip what only a leased one needs.
    pub(crate) fn offering(&self) -> bool {
        let state = self.state();
        state.worker.is_some() && state.room.values().any(|room| room.open > 0)
    }

    /// Ingest stored a delivery due without asking for room (its endpoint's gate holds it):
    /// [`Handoff::take_unleased`] says so, as after a refused [`Handoff::reserve`].
    pub(crate) fn stored_due(&self) {
        self.unleased.store(true, Ordering::Release);
    }

    /// Reserves room for one delivery to `endpoint`, to be stored leased; `None` when the
    /// worker offered none (the delivery is stored due, and [`Handoff::take_unleased`] says
    /// so). The caller must [`Handoff::deliver`] or [`Handoff::unreserve`] it.
    pub(crate) fn reserve(&self, endpoint: &EndpointId, now_ms: i64) -> Option<Lease> {
        let mut state = self.state();
        let lease = state.worker.clone();
        let room = state.room.get_mut(endpoint);
        let (Some((claimant, lease_ms)), Some(room)) = (lease, room) else {
            self.unleased.store(true, Ordering::Release);
            return None;
        };
        if room.open == 0 {
            self.unleased.store(true, Ordering::Release);
            return None;
        }
        room.open -= 1;
        room.reserved += 1;
        Some(Lease {
            claimant,
            until_ms: now_ms + lease_ms,
        })
    }

    /// Queues deliveries whose leased rows are now durable, and wakes the worker.
    pub(crate) fn deliver(&self, leased: Vec<Leased>) {
        if leased.is_empty() {
            return;
        }
        self.state().queue.extend(leased);
        self.queued.notify_one();
    }

    /// Gives back reservations whose rows were never stored (the transaction failed).
    pub(crate) fn unreserve(&self, endpoints: impl Iterator<Item = EndpointId>) {
        let mut state = self.state();
        for endpoint in endpoints {
            if let Some(room) = state.room.get_mut(&endpoint) {
                room.reserved = room.reserved.saturating_sub(1);
            }
        }
    }
}

/// Deliveries leased in one ingest job: queued for the worker once their group has committed,
/// given back if it never does (dropped without [`Handed::commit`]).
#[derive(Debug)]
pub(crate) struct Handed {
    handoff: Arc<Handoff>,
    leased: Vec<Leased>,
}

impl Handed {
    pub(crate) fn new(handoff: Arc<Handoff>) -> Self {
        Self {
            handoff,
            leased: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, delivery: ClaimedDelivery, until_ms: i64) {
        self.leased.push(Leased { delivery, until_ms });
    }

    /// Holds the first delivery of `event` to `endpoint`, stored as `id` leased with `token`.
    pub(crate) fn push_new(
        &mut self,
        event: &NewEvent,
        id: DeliveryId,
        endpoint: &EndpointId,
        token: LeaseToken,
        lease: &Lease,
    ) {
        let delivery = ClaimedDelivery {
            id,
            event_id: event.id.clone(),
            endpoint_id: endpoint.clone(),
            event_type: event.event_type.clone(),
            payload: event.payload.clone(),
            event_created_at_ms: event.created_at_ms,
            session_id: event.session_id.clone(),
            attempts: 0,
            total_attempts: 0,
            throttled: 0,
            lease: token,
        };
        self.push(delivery, lease.until_ms);
    }

    /// The rows are durable: the worker may send them.
    pub(crate) fn commit(mut self) {
        self.handoff.deliver(std::mem::take(&mut self.leased));
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if !self.leased.is_empty() {
            self.handoff.unreserve(
                self.leased
                    .drain(..)
                    .map(|leased| leased.delivery.endpoint_id),
            );
        }
    }
}

/// A fresh lease token for the deliveries of one ingest job.
pub(crate) fn token() -> LeaseToken {
    LeaseToken(rand::random::<i64>())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::{DeliveryId, EventId, EventType};

    fn delivery(endpoint: &EndpointId) -> ClaimedDelivery {
        ClaimedDelivery {
            id: DeliveryId::generate_at(1_000),
            event_id: EventId::generate(),
            endpoint_id: endpoint.clone(),
            event_type: EventType::from_trusted("usage.tracked".to_owned()),
            payload: Bytes::from_static(b"{}"),
            event_created_at_ms: 1_000,
            session_id: None,
            attempts: 0,
            total_attempts: 0,
            throttled: 0,
            lease: token(),
        }
    }

    /// Reserves one delivery for `endpoint` as ingest does, returning it ready to commit.
    fn reserve_one(handoff: &Arc<Handoff>, endpoint: &EndpointId) -> Option<Handed> {
        let lease = handoff.reserve(endpoint, 1_000)?;
        let mut handed = Handed::new(Arc::clone(handoff));
        handed.push(delivery(endpoint), lease.until_ms);
        Some(handed)
    }

    #[test]
    fn nothing_is_reserved_before_the_worker_opens_and_offers_room() {
        let handoff = Handoff::new();
        let endpoint = EndpointId::default_endpoint();
        handoff.offer(&endpoint, 4);
        assert!(handoff.reserve(&endpoint, 0).is_none(), "no worker yet");
        assert!(
            handoff.take_unleased(),
            "stored due: the worker must be woken"
        );
        assert!(!handoff.take_unleased(), "said once");

        handoff.open("instance-a", 30_000);
        let other = EndpointId::generate();
        assert!(
            handoff.reserve(&other, 0).is_none(),
            "no room offered there"
        );
        let lease = handoff.reserve(&endpoint, 5_000).expect("room offered");
        assert_eq!(lease.claimant, "instance-a");
        assert_eq!(lease.until_ms, 35_000);
    }

    #[test]
    fn what_is_reserved_or_queued_counts_against_the_offer_until_the_worker_takes_it() {
        let handoff = Handoff::new();
        let endpoint = EndpointId::default_endpoint();
        handoff.open("a", 30_000);
        handoff.offer(&endpoint, 2);
        let first = reserve_one(&handoff, &endpoint).expect("room for one");
        let second = reserve_one(&handoff, &endpoint).expect("room for two");
        assert!(reserve_one(&handoff, &endpoint).is_none(), "offer used up");
        // The worker re-offers the same total while both are on their way: still full.
        handoff.offer(&endpoint, 2);
        assert!(reserve_one(&handoff, &endpoint).is_none());
        assert_eq!(handoff.reserved(&endpoint), 2);

        first.commit();
        second.commit();
        let taken = handoff.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].until_ms, 31_000);
        assert_eq!(handoff.reserved(&endpoint), 0, "the worker holds them now");
        // The worker now counts them itself and offers what is left of its total.
        handoff.offer(&endpoint, 1);
        assert!(reserve_one(&handoff, &endpoint).is_some());
    }

    #[test]
    fn a_reservation_whose_transaction_fails_is_given_back_and_never_queued() {
        let handoff = Handoff::new();
        let endpoint = EndpointId::default_endpoint();
        handoff.open("a", 30_000);
        handoff.offer(&endpoint, 1);
        let handed = reserve_one(&handoff, &endpoint).expect("room");
        drop(handed);
        assert_eq!(handoff.reserved(&endpoint), 0);
        assert!(handoff.take().is_empty(), "nothing stored, nothing to send");
        handoff.offer(&endpoint, 1);
        assert!(reserve_one(&handoff, &endpoint).is_some(), "room is back");
    }

    #[test]
    fn closing_returns_what_is_queued_and_stops_reservations() {
        let handoff = Handoff::new();
        let endpoint = EndpointId::default_endpoint();
        handoff.open("a", 30_000);
        handoff.offer(&endpoint, 3);
        reserve_one(&handoff, &endpoint).expect("room").commit();
        let in_flight = reserve_one(&handoff, &endpoint).expect("room");
        assert_eq!(handoff.close().len(), 1, "the committed one goes back");
        assert!(handoff.reserve(&endpoint, 0).is_none(), "closed");
        // A transaction that reserved before the close commits after it: a second close
        // returns it too.
        in_flight.commit();
        assert_eq!(handoff.close().len(), 1);
    }

    #[test]
    fn withdrawn_endpoints_take_nothing_more() {
        let handoff = Handoff::new();
        let kept = EndpointId::default_endpoint();
        let gone = EndpointId::generate();
        handoff.open("a", 30_000);
        handoff.offer(&kept, 1);
        handoff.offer(&gone, 1);
        handoff.withdraw_others(&|id| *id == kept);
        assert!(handoff.reserve(&gone, 0).is_none());
        assert!(handoff.reserve(&kept, 0).is_some());
    }
}
