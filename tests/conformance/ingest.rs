//! Ingest: events are stored with one pending delivery per enabled matching endpoint, and an
//! idempotency key seen before stores nothing new.

use std::collections::BTreeSet;

use hookrelay::store::{InboundMessage, NewEvent, Store, StoreError};

use crate::{backends::Backend, support::*};

/// Every event type `ep_orders` (`order.*`) and `ep_alerts` (exactly `alert.fired`) take.
async fn with_filtered_endpoints(store: &std::sync::Arc<dyn Store>) {
    with_default_endpoint(store).await;
    create(store, endpoint("ep_orders", &["order.*"], START)).await;
    create(store, endpoint("ep_alerts", &["alert.fired"], START)).await;
}

pub async fn an_event_gets_a_pending_delivery_for_every_enabled_matching_endpoint(
    backend: Backend,
) {
    let store = &backend.store;
    with_filtered_endpoints(store).await;
    create(store, endpoint("ep_everything", &["*"], START)).await;

    let ids = ingest(store, vec![event("order.created", START + 1)]).await;

    assert_eq!(ids.len(), 1);
    assert_eq!(store.counts().await.expect("counts").pending, 3);
    for (endpoint, expected) in [
        ("ep_default", 1),
        ("ep_orders", 1),
        ("ep_everything", 1),
        ("ep_alerts", 0),
    ] {
        let claimed = claim(store, START + 1, &endpoint_id(endpoint), ALL).await;
        assert_eq!(claimed.len(), expected, "deliveries to {endpoint}");
        assert!(claimed.iter().all(|c| c.event_id == ids[0]));
    }
}

pub async fn an_endpoint_whose_filter_excludes_the_type_gets_no_delivery(backend: Backend) {
    let store = &backend.store;
    with_filtered_endpoints(store).await;

    ingest(
        store,
        vec![
            event("alert.fired", START),
            event("alert.resolved", START),
            event("orders.created", START),
            event("usage.tracked", START),
        ],
    )
    .await;

    // ep_default takes all four; ep_alerts only `alert.fired`; `order.*` matches none of them.
    assert_eq!(store.counts().await.expect("counts").pending, 5);
    let alerts = claim(store, START, &endpoint_id("ep_alerts"), ALL).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].event_type.as_str(), "alert.fired");
    assert!(
        claim(store, START, &endpoint_id("ep_orders"), ALL)
            .await
            .is_empty()
    );
    assert_eq!(claim(store, START, &ep_default(), ALL).await.len(), 4);
}

pub async fn an_event_with_no_endpoint_is_stored_without_deliveries(backend: Backend) {
    let store = &backend.store;

    let first = store
        .ingest(vec![keyed(event("order.created", START), "k-1")])
        .await
        .expect("ingest");

    assert!(!first[0].duplicate);
    assert_eq!(store.counts().await.expect("counts").pending, 0);
    // Stored all the same: its key is known now.
    let again = store
        .ingest(vec![keyed(event("order.created", START + 1), "k-1")])
        .await
        .expect("ingest");
    assert_eq!(again[0].id, first[0].id);
    assert!(again[0].duplicate);
}

pub async fn a_disabled_endpoint_gets_no_new_deliveries(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_paused", &[], START)).await;
    assert!(
        store
            .set_endpoint_state(
                endpoint_id("ep_paused"),
                false,
                Some("paused".into()),
                START
            )
            .await
            .expect("disable")
    );

    ingest(store, vec![event("order.created", START + 1)]).await;

    assert!(
        claim(store, START + 1, &endpoint_id("ep_paused"), ALL)
            .await
            .is_empty()
    );
    assert_eq!(claim(store, START + 1, &ep_default(), ALL).await.len(), 1);
}

pub async fn a_repeated_idempotency_key_returns_the_original_id_and_stores_nothing(
    backend: Backend,
) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let original = keyed(event("order.created", START), "order-42");
    let original_id = original.id.clone();
    let first = store.ingest(vec![original]).await.expect("ingest");

    let retry = keyed(event("order.created", START + 10), "order-42");
    let retry_id = retry.id.clone();
    let second = store.ingest(vec![retry]).await.expect("ingest");

    assert_eq!(first[0].id, original_id);
    assert!(!first[0].duplicate);
    assert_eq!(second[0].id, original_id);
    assert_ne!(second[0].id, retry_id);
    assert!(second[0].duplicate);
    let queued = claim(store, START + 10, &ep_default(), ALL).await;
    assert_eq!(queued.len(), 1, "the duplicate queued nothing");
    assert_eq!(queued[0].event_id, original_id);
    assert_eq!(
        queued[0].event_created_at_ms, START,
        "the original was kept"
    );
}

pub async fn duplicates_within_one_ingest_call_are_stored_once_and_answered_in_order(
    backend: Backend,
) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let a = keyed(event("order.created", START), "a");
    let b = keyed(event("order.created", START), "b");
    let a_again = keyed(event("order.created", START), "a");
    let unkeyed = event("order.created", START);
    let (a_id, b_id, unkeyed_id) = (a.id.clone(), b.id.clone(), unkeyed.id.clone());

    let outcomes = store
        .ingest(vec![a, b, a_again, unkeyed])
        .await
        .expect("ingest");

    let seen: Vec<_> = outcomes
        .iter()
        .map(|o| (o.id.clone(), o.duplicate))
        .collect();
    assert_eq!(
        seen,
        vec![
            (a_id.clone(), false),
            (b_id.clone(), false),
            (a_id.clone(), true),
            (unkeyed_id.clone(), false),
        ]
    );
    assert_eq!(store.counts().await.expect("counts").pending, 3);
    let events: BTreeSet<_> = claim(store, START, &ep_default(), ALL)
        .await
        .into_iter()
        .map(|c| c.event_id)
        .collect();
    assert_eq!(events, BTreeSet::from([a_id, b_id, unkeyed_id]));
}

pub async fn events_without_a_key_are_never_duplicates(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;

    ingest(
        store,
        vec![event("order.created", START), event("order.created", START)],
    )
    .await;
    ingest(store, vec![event("order.created", START)]).await;

    assert_eq!(store.counts().await.expect("counts").pending, 3);
}

pub async fn a_key_seen_by_another_instance_is_a_duplicate(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let other = backend.second_instance().await;
    let first = store
        .ingest(vec![keyed(event("order.created", START), "shared")])
        .await
        .expect("ingest");

    let second = other
        .ingest(vec![keyed(event("order.created", START + 1), "shared")])
        .await
        .expect("ingest");

    assert!(second[0].duplicate);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(other.counts().await.expect("counts").pending, 1);
}

pub async fn two_instances_storing_the_same_key_at_once_store_it_once(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    let other = backend.second_instance().await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..20i64 {
        for instance in [&store, &other] {
            let instance = instance.clone();
            let event = keyed(
                event("order.created", START + round),
                &format!("race-{round}"),
            );
            tasks.spawn(async move { (round, instance.ingest(vec![event]).await) });
        }
    }
    let mut by_round: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
    while let Some(joined) = tasks.join_next().await {
        let (round, outcome) = joined.expect("task");
        by_round
            .entry(round)
            .or_default()
            .push(outcome.expect("ingest").remove(0));
    }

    for (round, outcomes) in by_round {
        assert_eq!(outcomes.len(), 2);
        assert_eq!(
            outcomes.iter().filter(|o| !o.duplicate).count(),
            1,
            "round {round}: exactly one was stored: {outcomes:?}"
        );
        assert_eq!(
            outcomes[0].id, outcomes[1].id,
            "round {round}: both got the stored id"
        );
    }
    assert_eq!(store.counts().await.expect("counts").pending, 20);
}

pub async fn a_failed_ingest_stores_none_of_its_events(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let first = keyed(usage_event(Usage::ok("s1", "m"), START), "first");
    // The same event id twice: the group cannot be stored.
    let clash = usage_event(Usage::ok("s1", "m"), START);
    let mut clash_twin = usage_event(Usage::ok("s1", "m"), START);
    clash_twin.id = clash.id.clone();

    let failed = store
        .ingest(vec![first.clone(), clash.clone(), clash_twin])
        .await;

    assert!(
        failed.is_err(),
        "a group with a clashing id fails: {failed:?}"
    );
    assert_eq!(store.counts().await.expect("counts").pending, 0);
    assert!(
        store.session("s1".into()).await.expect("session").is_none(),
        "no usage counted"
    );
    assert_eq!(
        store
            .window_totals(None)
            .await
            .expect("window_totals")
            .ingested,
        0
    );
    // Nothing of it was kept: the key and the ids are free, and the store still works.
    let stored = store
        .ingest(vec![first.clone(), clash])
        .await
        .expect("ingest");
    assert_eq!(stored.iter().filter(|o| !o.duplicate).count(), 2);
    assert_eq!(stored[0].id, first.id);
    assert_eq!(store.counts().await.expect("counts").pending, 2);
    assert_eq!(
        store
            .session("s1".into())
            .await
            .expect("session")
            .expect("s1")
            .queries,
        2
    );
}

pub async fn a_failed_ingest_does_not_disturb_concurrent_ones(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40i64 {
        let store = store.clone();
        tasks.spawn(async move {
            let good = usage_event(Usage::ok("s", "m").tokens(1), START + n);
            let events = if n % 4 == 3 {
                // A group that fails: its second event reuses the first one's id.
                let mut twin = usage_event(Usage::ok("s", "m").tokens(1_000), START + n);
                twin.id = good.id.clone();
                vec![good, twin]
            } else {
                vec![good]
            };
            (n % 4 == 3, store.ingest(events).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (bad, outcome) = joined.expect("task");
        assert_eq!(outcome.is_err(), bad, "{outcome:?}");
    }

    assert_eq!(store.counts().await.expect("counts").pending, 30);
    let s = store
        .session("s".into())
        .await
        .expect("session")
        .expect("s");
    assert_eq!((s.queries, s.estimated_tokens), (30, 30));
    assert_eq!(
        store
            .window_totals(None)
            .await
            .expect("window_totals")
            .ingested,
        30
    );
}

fn message(id: &str, expires_at_ms: i64) -> InboundMessage {
    InboundMessage {
        id: id.into(),
        expires_at_ms,
    }
}

pub async fn a_message_id_is_accepted_once_until_it_expires(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let first = store
        .ingest_message(
            message("msg_1", START + 600_000),
            START,
            vec![event("order.created", START)],
        )
        .await
        .expect("first");
    assert_eq!(first.len(), 1);

    let replay = store
        .ingest_message(
            message("msg_1", START + 700_000),
            START + 100_000,
            vec![event("order.created", START + 100_000)],
        )
        .await;
    assert!(matches!(replay, Err(StoreError::Replayed)), "{replay:?}");
    assert_eq!(
        store.counts().await.expect("counts").pending,
        1,
        "a replay stores nothing"
    );
    // Another id, and an id without events, go through.
    store
        .ingest_message(
            message("msg_2", START + 600_000),
            START,
            vec![event("order.created", START)],
        )
        .await
        .expect("another id");
    // Once expired, the id may be used again (its timestamp would be refused by then anyway).
    store
        .ingest_message(
            message("msg_1", START + 1_300_000),
            START + 600_000,
            vec![event("order.created", START + 600_000)],
        )
        .await
        .expect("after expiry");
    assert_eq!(store.counts().await.expect("counts").pending, 3);
}

pub async fn a_message_id_seen_by_another_instance_is_a_replay(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let other = backend.second_instance().await;
    store
        .ingest_message(
            message("msg_shared", START + 600_000),
            START,
            vec![event("order.created", START)],
        )
        .await
        .expect("first");
    let replay = other
        .ingest_message(
            message("msg_shared", START + 600_000),
            START + 1,
            vec![event("order.created", START + 1)],
        )
        .await;
    assert!(matches!(replay, Err(StoreError::Replayed)), "{replay:?}");
    assert_eq!(other.counts().await.expect("counts").pending, 1);
}

pub async fn replays_racing_each_other_store_one_and_leave_the_others_alone(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    let other = backend.second_instance().await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..10i64 {
        for instance in [&store, &other, &store] {
            let instance = instance.clone();
            tasks.spawn(async move {
                let result = instance
                    .ingest_message(
                        message(&format!("msg_race_{round}"), START + 600_000),
                        START,
                        vec![event("order.created", START)],
                    )
                    .await;
                (round, result)
            });
        }
        // A request without a message id in the same groups is never refused.
        let instance = store.clone();
        tasks.spawn(async move {
            let result = instance.ingest(vec![event("order.created", START)]).await;
            (-1, result)
        });
    }
    let mut accepted = std::collections::BTreeMap::<i64, usize>::new();
    while let Some(joined) = tasks.join_next().await {
        let (round, result) = joined.expect("task");
        match result {
            Ok(stored) => {
                assert_eq!(stored.len(), 1);
                *accepted.entry(round).or_default() += 1;
            }
            Err(StoreError::Replayed) => assert!(round >= 0, "an unsigned ingest was refused"),
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert_eq!(accepted.remove(&-1), Some(10));
    assert!(
        accepted.values().all(|&n| n == 1) && accepted.len() == 10,
        "exactly one per id: {accepted:?}"
    );
    assert_eq!(store.counts().await.expect("counts").pending, 20);
}

pub async fn expired_message_ids_are_swept_as_new_ones_arrive(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    for n in 0..20 {
        store
            .ingest_message(
                message(&format!("msg_old_{n}"), START + 1_000),
                START,
                Vec::new(),
            )
            .await
            .expect("old");
    }
    // Each new id sweeps a few expired ones: after enough arrivals none of the old remain, so
    // each old id can be recorded afresh without being a replay either way; the count shows it.
    for n in 0..5 {
        store
            .ingest_message(
                message(&format!("msg_new_{n}"), START + 600_000),
                START + 2_000,
                Vec::new(),
            )
            .await
            .expect("new");
    }
    assert_eq!(
        backend.inbound_messages().await,
        5,
        "20 expired ids swept by 5 arrivals"
    );
}

fn fingerprinted(event: NewEvent, key: &str, fingerprint: &str) -> NewEvent {
    let mut event = keyed(event, key);
    event.request_fingerprint = Some(fingerprint.to_owned());
    event
}

pub async fn a_key_reused_for_a_different_request_is_refused_and_stores_nothing(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let other = backend.second_instance().await;
    let first = store
        .ingest(vec![fingerprinted(
            event("order.created", START),
            "order.created k-1",
            "aaaa",
        )])
        .await
        .expect("first");
    // The same request again: the original's id, nothing new.
    let again = other
        .ingest(vec![fingerprinted(
            event("order.created", START + 1),
            "order.created k-1",
            "aaaa",
        )])
        .await
        .expect("again");
    assert!(again[0].duplicate);
    assert_eq!(again[0].id, first[0].id);
    // Another request with that key: refused, with the client's key, and nothing stored.
    for instance in [store, &other] {
        let reused = instance
            .ingest(vec![
                event("order.created", START + 2),
                fingerprinted(
                    event("order.created", START + 2),
                    "order.created k-1",
                    "bbbb",
                ),
            ])
            .await;
        match reused {
            Err(StoreError::KeyReused(key)) => assert_eq!(key, "k-1"),
            other => panic!("expected KeyReused, got {other:?}"),
        }
    }
    assert_eq!(store.counts().await.expect("counts").pending, 1);
    // A request in the same group commit as a refused one is not disturbed.
    let (refused, fine) = tokio::join!(
        store.ingest(vec![fingerprinted(
            event("order.created", START + 3),
            "order.created k-1",
            "cccc"
        )]),
        other.ingest(vec![event("order.created", START + 3)]),
    );
    assert!(matches!(refused, Err(StoreError::KeyReused(_))));
    assert_eq!(fine.expect("fine").len(), 1);
    assert_eq!(store.counts().await.expect("counts").pending, 2);
}

pub async fn a_request_refused_for_its_key_does_not_use_up_its_message_id(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    store
        .ingest(vec![fingerprinted(
            event("order.created", START),
            "order.created k-9",
            "aaaa",
        )])
        .await
        .expect("first");
    let refused = store
        .ingest_message(
            message("msg_retry", START + 600_000),
            START,
            vec![fingerprinted(
                event("order.created", START),
                "order.created k-9",
                "bbbb",
            )],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::KeyReused(_))),
        "{refused:?}"
    );
    // The sender fixes its key and sends the same message again: not a replay.
    store
        .ingest_message(
            message("msg_retry", START + 600_000),
            START + 1,
            vec![fingerprinted(
                event("order.created", START + 1),
                "order.created k-10",
                "bbbb",
            )],
        )
        .await
        .expect("the message id was not used up");
    assert_eq!(store.counts().await.expect("counts").pending, 2);
}
