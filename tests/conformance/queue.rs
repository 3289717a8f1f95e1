//! The queue: claims under a lease, lease expiry, limits, due times, release, next_due and
//! the queue counts.

use std::collections::HashSet;

use hookrelay::store::{NextState, QueueCounts};

use crate::{backends::Backend, support::*};

pub async fn a_claim_carries_the_event_intact(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let mut usage = usage_event(Usage::ok("sess-1", "gpt-test"), START + 7);
    usage.payload = bytes::Bytes::from_static(b"{\"exact\": \"bytes\" ,  \"kept\":[1,2]}");
    let plain = event("order.created", START + 8);
    let (usage_id, plain_id) = (usage.id.clone(), plain.id.clone());
    ingest(store, vec![usage, plain]).await;

    let mut claimed = claim(store, START + 10, &ep_default(), ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);

    assert_eq!(claimed.len(), 2);
    let (u, p) = (&claimed[0], &claimed[1]);
    assert_eq!(u.event_id, usage_id);
    assert_eq!(u.endpoint_id, ep_default());
    assert_eq!(u.event_type.as_str(), "usage.tracked");
    assert_eq!(&u.payload[..], b"{\"exact\": \"bytes\" ,  \"kept\":[1,2]}");
    assert_eq!(u.event_created_at_ms, START + 7);
    assert_eq!(u.session_id.as_deref(), Some("sess-1"));
    assert_eq!((u.attempts, u.total_attempts, u.throttled), (0, 0, 0));
    assert_eq!(p.event_id, plain_id);
    assert_eq!(p.event_type.as_str(), "order.created");
    assert_eq!(p.session_id, None);
    assert_eq!(p.event_created_at_ms, START + 8);
    let payload: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(payload["id"], plain_id.as_str());
}

pub async fn a_retried_claim_takes_only_due_deliveries_attempted_before(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        (0..4).map(|n| event("order.created", START + n)).collect(),
    )
    .await;
    let first = claim(store, START + 10, &ep_default(), 2).await;
    assert_eq!(first.len(), 2);
    for claimed in &first[..] {
        record(
            store,
            claimed,
            NextState::RetryAt(START + 1_000),
            START + 10,
        )
        .await;
    }
    let retried = |now: i64, limit: usize| {
        store.claim_retried(now, LEASE, "conformance".into(), ep_default(), limit)
    };

    // Not due yet; the two never attempted do not qualify.
    assert!(
        retried(START + 999, ALL)
            .await
            .expect("claim_retried")
            .is_empty()
    );
    let got = retried(START + 1_000, 1).await.expect("claim_retried");
    assert_eq!(got.len(), 1, "the limit applies");
    assert!(ids(&first).contains(&got[0].id));
    assert_eq!(got[0].total_attempts, 1);
    let rest = retried(START + 1_000, ALL).await.expect("claim_retried");
    assert_eq!(rest.len(), 1, "a leased delivery is not claimed twice");
    assert_ne!(rest[0].id, got[0].id);
    assert!(
        retried(START + 1_000, ALL)
            .await
            .expect("claim_retried")
            .is_empty()
    );
    // The fresh ones are still there for an ordinary claim.
    let fresh = claim(store, START + 1_000, &ep_default(), ALL).await;
    assert_eq!(fresh.len(), 2);
    assert!(fresh.iter().all(|c| c.total_attempts == 0));
}

pub async fn a_claimed_delivery_is_not_claimed_again_while_leased(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let other = backend.second_instance().await;

    let first = claim(store, START, &ep_default(), ALL).await;

    assert_eq!(first.len(), 1);
    for now in [START, START + 1, START + LEASE - 1] {
        assert!(
            claim(store, now, &ep_default(), ALL).await.is_empty(),
            "same instance at {now}"
        );
        assert!(
            claim(&other, now, &ep_default(), ALL).await.is_empty(),
            "other instance at {now}"
        );
    }
    // Leased work is still pending work.
    assert_eq!(store.counts().await.expect("counts").pending, 1);
}

pub async fn an_expired_lease_makes_the_delivery_claimable_again(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let other = backend.second_instance().await;
    let first = claim_one(store, START + 100).await;

    let again = claim(&other, START + 100 + LEASE, &ep_default(), ALL).await;

    assert_eq!(ids(&again), vec![first.id.clone()]);
    assert_ne!(again[0].lease, first.lease, "a new claim is a new lease");
    // Claiming spends nothing from the budget.
    assert_eq!((again[0].attempts, again[0].total_attempts), (0, 0));
    // And the new claim holds in turn.
    assert!(
        claim(store, START + 100 + 2 * LEASE - 1, &ep_default(), ALL)
            .await
            .is_empty()
    );
}

pub async fn the_claim_limit_applies_to_each_endpoint(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_second", &[], START)).await;
    ingest(
        store,
        (0..5).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    let second = endpoint_id("ep_second");

    let claimed = store
        .claim_due(
            START + 10,
            LEASE,
            "conformance".into(),
            vec![(ep_default(), 3), (second.clone(), 2)],
        )
        .await
        .expect("claim_due");

    let to = |id: &hookrelay::domain::EndpointId| {
        claimed.iter().filter(|c| &c.endpoint_id == id).count()
    };
    assert_eq!((to(&ep_default()), to(&second)), (3, 2));
    let ids: HashSet<_> = claimed.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 5, "no delivery twice");
    // A limit of 0 claims nothing; the rest is still there.
    let none = store
        .claim_due(
            START + 10,
            LEASE,
            "conformance".into(),
            vec![(ep_default(), 0)],
        )
        .await
        .expect("claim_due");
    assert!(none.is_empty());
    assert_eq!(claim(store, START + 10, &ep_default(), ALL).await.len(), 2);
    assert_eq!(claim(store, START + 10, &second, ALL).await.len(), 3);
}

pub async fn the_longest_waiting_deliveries_are_claimed_first(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    // Stored newest first, so storage order and due order differ.
    for at in [START + 3, START + 1, START + 4, START + 2] {
        ingest(store, vec![event("order.created", at)]).await;
    }

    let first_two = claim(store, START + 10, &ep_default(), 2).await;

    let mut created: Vec<i64> = first_two.iter().map(|c| c.event_created_at_ms).collect();
    created.sort();
    assert_eq!(created, vec![START + 1, START + 2]);
}

pub async fn a_delivery_is_not_claimed_before_its_retry_time(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim_one(store, START).await;
    let retry_at = START + 600_000;
    record(store, &claimed, NextState::RetryAt(retry_at), START).await;

    // Due only at its time, even though the lease it was claimed under has long run out.
    assert!(
        claim(store, START + LEASE + 1, &ep_default(), ALL)
            .await
            .is_empty()
    );
    assert!(
        claim(store, retry_at - 1, &ep_default(), ALL)
            .await
            .is_empty()
    );
    let again = claim(store, retry_at, &ep_default(), ALL).await;
    assert_eq!(ids(&again), vec![claimed.id]);
    assert_eq!((again[0].attempts, again[0].total_attempts), (1, 1));
}

pub async fn two_instances_claiming_at_once_never_share_a_delivery(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    for chunk in 0..4 {
        ingest(
            &store,
            (0..50)
                .map(|i| event("order.created", START + chunk * 50 + i))
                .collect(),
        )
        .await;
    }
    let other = backend.second_instance().await;
    let now = START + 1_000;

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let instance = if worker % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        workers.spawn(async move {
            let mut mine = Vec::new();
            // 200 deliveries in tens: far fewer rounds than this, unless claims never run dry.
            for _ in 0..100 {
                let claimed = instance
                    .claim_due(
                        now,
                        LEASE,
                        format!("worker-{worker}"),
                        vec![(ep_default(), 10)],
                    )
                    .await
                    .expect("claim_due");
                if claimed.is_empty() {
                    return mine;
                }
                assert!(claimed.len() <= 10, "the limit holds under contention");
                mine.extend(claimed.into_iter().map(|c| c.id));
            }
            panic!("worker-{worker} never ran out of due deliveries");
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.expect("worker"));
    }

    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), distinct.len(), "a delivery was claimed twice");
    assert_eq!(distinct.len(), 200, "every delivery was claimed");
}

pub async fn released_deliveries_are_due_at_once_without_spending_an_attempt(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        vec![event("order.created", START), event("order.created", START)],
    )
    .await;
    let claimed = claim(store, START + 10, &ep_default(), ALL).await;
    assert_eq!(claimed.len(), 2);

    // Only the first is released; the second stays leased.
    store
        .release(vec![(claimed[0].id.clone(), claimed[0].lease)], START + 20)
        .await
        .expect("release");

    let again = claim(store, START + 20, &ep_default(), ALL).await;
    assert_eq!(ids(&again), vec![claimed[0].id.clone()]);
    assert_eq!((again[0].attempts, again[0].total_attempts), (0, 0));
    let detail = delivery(store, &claimed[0].id).await;
    assert!(detail.attempts_log.is_empty());
}

pub async fn a_release_under_a_stale_lease_does_nothing(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let stale = claim_one(store, START).await;
    let current = claim_one(store, START + LEASE).await;

    store
        .release(vec![(stale.id.clone(), stale.lease)], START + LEASE + 1)
        .await
        .expect("release");

    // The current claim still holds.
    assert!(
        claim(store, START + LEASE + 1, &ep_default(), ALL)
            .await
            .is_empty()
    );
    record(store, &current, NextState::Delivered, START + LEASE + 2).await;
    assert_eq!(store.counts().await.expect("counts").pending, 0);
}

pub async fn next_due_reports_the_earliest_due_time_per_endpoint(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_orders", &["order.*"], START)).await;
    create(store, endpoint("ep_idle", &["nothing.ever"], START)).await;
    let orders = endpoint_id("ep_orders");
    ingest(store, vec![event("order.created", START + 5)]).await;
    ingest(store, vec![event("usage.tracked", START + 9)]).await;

    let mut due = store
        .next_due(vec![ep_default(), orders.clone(), endpoint_id("ep_idle")])
        .await
        .expect("next_due");
    due.sort();
    assert_eq!(
        due,
        vec![(ep_default(), START + 5), (orders.clone(), START + 5)]
    );

    // A retry pushes its delivery's due time; the earliest pending one counts.
    let first = claim(store, START + 10, &orders, ALL).await;
    record(
        store,
        &first[0],
        NextState::RetryAt(START + 90_000),
        START + 10,
    )
    .await;
    let claimed_default = claim(store, START + 10, &ep_default(), 1).await;
    assert_eq!(claimed_default[0].event_created_at_ms, START + 5);
    let mut due = store
        .next_due(vec![ep_default(), orders.clone()])
        .await
        .expect("next_due");
    due.sort();
    assert_eq!(
        due,
        vec![(ep_default(), START + 9), (orders.clone(), START + 90_000)]
    );

    // Nothing pending: left out.
    record(store, &claimed_default[0], NextState::Delivered, START + 11).await;
    settle_all(store, START + 12, NextState::Delivered).await;
    let due = store
        .next_due(vec![ep_default(), orders.clone()])
        .await
        .expect("next_due");
    assert_eq!(due, vec![(orders, START + 90_000)]);
}

pub async fn counts_are_empty_on_a_new_store(backend: Backend) {
    let counts = backend.store.counts().await.expect("counts");
    assert_eq!(counts, QueueCounts::default());
    assert_eq!(counts.oldest_pending_ms, None);
}

pub async fn counts_report_pending_dead_and_the_oldest_pending_event(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    for at in [START + 300, START + 100, START + 200, START + 400] {
        ingest(store, vec![event("order.created", at)]).await;
    }
    assert_eq!(
        store.counts().await.expect("counts"),
        QueueCounts {
            pending: 4,
            dead: 0,
            oldest_pending_ms: Some(START + 100)
        }
    );

    // The oldest is delivered, the next dead-lettered, the third retried later.
    let claimed = claim(store, START + 500, &ep_default(), 3).await;
    let mut claimed = claimed;
    claimed.sort_by_key(|c| c.event_created_at_ms);
    record(store, &claimed[0], NextState::Delivered, START + 500).await;
    record(store, &claimed[1], NextState::DeadLetter, START + 500).await;
    record(
        store,
        &claimed[2],
        NextState::RetryAt(START + 999_999),
        START + 500,
    )
    .await;

    assert_eq!(
        store.counts().await.expect("counts"),
        QueueCounts {
            pending: 2,
            dead: 1,
            oldest_pending_ms: Some(START + 300)
        }
    );
    let other = backend.second_instance().await;
    assert_eq!(
        other.counts().await.expect("counts"),
        QueueCounts {
            pending: 2,
            dead: 1,
            oldest_pending_ms: Some(START + 300)
        }
    );
}

/// Shutdown releases what the worker holds with one call, which first waits for ingest already
/// under way: ingest may still hand the worker deliveries, and one handed over after the
/// release would stay leased to a stopped worker until its lease ran out. An empty release is
/// that barrier (the worker makes it when it holds nothing).
pub async fn a_release_waits_for_ingest_already_under_way(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    let hold = backend.hold_writes().await;
    let mut ingest = std::pin::pin!(store.ingest(vec![event("order.created", START)]));
    // One poll queues the ingest; it then waits for the lock.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(ingest.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the ingest waits for the lock");
    let mut release = tokio::spawn({
        let store = store.clone();
        async move { store.release(Vec::new(), START).await }
    });
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut release).await;
    assert!(
        early.is_err(),
        "the release answered while an ingest queued before it was still under way"
    );
    hold.release().await;
    let stored = ingest.await.expect("ingest");
    release.await.expect("release task").expect("release");
    assert_eq!(stored.len(), 1);
    assert_eq!(store.counts().await.expect("counts").pending, 1);
}
