//! The dead-letter queue: listing, replay with a fresh retry budget, purge.

use std::sync::Arc;

use hookrelay::{
    domain::DeliveryId,
    store::{DeliveryStatus, NextState, Selection, Store},
};

use crate::{backends::Backend, support::*};

/// Queues `n` events, each failed twice (a retry, then a dead letter), the `i`th dying at
/// `START + 1_000 * (i + 1)`, so the last one is the newest dead letter.
async fn dead_letters(store: &Arc<dyn Store>, n: i64) -> Vec<DeliveryId> {
    with_default_endpoint(store).await;
    ingest(
        store,
        (0..n).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    let mut claimed = claim(store, START + 100, &ep_default(), ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);
    let retries = claimed
        .iter()
        .zip(1..)
        .map(|(c, i)| attempt(c, NextState::RetryAt(START + 1_000 * i), START + 100, 5))
        .collect();
    store
        .record_attempts(retries, vec![], START + 105)
        .await
        .expect("record_attempts");
    for (original, i) in claimed.iter().zip(1..) {
        let at = START + 1_000 * i;
        let again = claim_one(store, at).await;
        assert_eq!(again.id, original.id);
        record(store, &again, NextState::DeadLetter, at).await;
    }
    claimed.into_iter().map(|c| c.id).collect()
}

pub async fn dead_letters_are_listed_newest_first_up_to_the_limit(backend: Backend) {
    let store = &backend.store;
    let dead = dead_letters(store, 3).await;

    let listed = store.dead_letters(10).await.expect("dead_letters");
    let listed_ids: Vec<_> = listed.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        listed_ids,
        vec![dead[2].clone(), dead[1].clone(), dead[0].clone()]
    );
    assert!(listed.iter().all(|d| d.status == DeliveryStatus::Dead));
    let two = store.dead_letters(2).await.expect("dead_letters");
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].id, dead[2]);
}

pub async fn replaying_one_dead_letter_requeues_it_with_a_fresh_budget(backend: Backend) {
    let store = &backend.store;
    let dead = dead_letters(store, 2).await;

    let replayed = store
        .replay(Selection::One(dead[0].clone()), START + 50_000)
        .await
        .expect("replay");

    assert_eq!(replayed, 1);
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (1, 1));
    let listed: Vec<_> = store
        .dead_letters(10)
        .await
        .expect("dead_letters")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec![dead[1].clone()]);
    let detail = delivery(store, &dead[0]).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Pending);
    assert_eq!(detail.summary.attempts, 0, "a fresh retry budget");
    assert_eq!(detail.summary.total_attempts, 2, "history is kept");
    assert_eq!(detail.summary.finished_at_ms, None);
    assert_eq!(detail.attempts_log.len(), 2);
    assert!(
        claim(store, START + 49_999, &ep_default(), ALL)
            .await
            .is_empty()
    );
    let again = claim(store, START + 50_000, &ep_default(), ALL).await;
    assert_eq!(ids(&again), vec![dead[0].clone()]);
    assert_eq!((again[0].attempts, again[0].total_attempts), (0, 2));
}

pub async fn a_replayed_delivery_gets_a_fresh_allowance_of_429s(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let first = claim_one(store, START + 100).await;
    record(
        store,
        &first,
        NextState::Throttled(START + 1_000),
        START + 100,
    )
    .await;
    let second = claim_one(store, START + 1_000).await;
    assert_eq!(second.throttled, 1, "the 429 was counted");
    record(store, &second, NextState::DeadLetter, START + 1_000).await;

    let replayed = store
        .replay(Selection::One(second.id.clone()), START + 2_000)
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let again = claim_one(store, START + 2_000).await;
    assert_eq!(
        (again.attempts, again.throttled, again.total_attempts),
        (0, 0, 2),
        "a fresh budget of retries and of 429s; the history is kept"
    );
}

pub async fn replaying_all_requeues_every_dead_letter(backend: Backend) {
    let store = &backend.store;
    let mut dead = dead_letters(store, 3).await;
    dead.sort();

    let replayed = store
        .replay(Selection::All, START + 50_000)
        .await
        .expect("replay");

    assert_eq!(replayed, 3);
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (3, 0));
    assert!(
        store
            .dead_letters(10)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    let again = claim(store, START + 50_000, &ep_default(), ALL).await;
    assert_eq!(ids(&again), dead);
    assert!(
        again
            .iter()
            .all(|c| c.attempts == 0 && c.total_attempts == 2)
    );
    // Replayed work can die again, and be replayed again.
    record_all(store, &again, NextState::DeadLetter, START + 50_000).await;
    assert_eq!(
        store
            .replay(Selection::All, START + 60_000)
            .await
            .expect("replay"),
        3
    );
}

pub async fn replaying_in_batches_walks_every_dead_letter_once_in_id_order(backend: Backend) {
    let store = &backend.store;
    let mut dead = dead_letters(store, 5).await;
    dead.sort();

    let (first, last) = store
        .replay_batch(None, 2, START + 50_000)
        .await
        .expect("replay_batch");
    assert_eq!((first, last.as_ref()), (2, Some(&dead[1])));
    // What is replayed and dies again behind the cursor is not replayed a second time.
    let again = claim(store, START + 50_000, &ep_default(), ALL).await;
    record_all(store, &again, NextState::DeadLetter, START + 50_000).await;
    let (second, last) = store
        .replay_batch(last, 2, START + 60_000)
        .await
        .expect("replay_batch");
    assert_eq!((second, last.as_ref()), (2, Some(&dead[3])));
    let (third, last) = store
        .replay_batch(last, 2, START + 60_000)
        .await
        .expect("replay_batch");
    assert_eq!((third, last.as_ref()), (1, Some(&dead[4])));
    let (none, end) = store
        .replay_batch(last, 2, START + 60_000)
        .await
        .expect("replay_batch");
    assert_eq!((none, end), (0, None));
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (3, 2));
    let pending = claim(store, START + 60_000, &ep_default(), ALL).await;
    assert!(pending.iter().all(|c| c.attempts == 0), "a fresh budget");
    assert_eq!(ids(&pending), dead[2..].to_vec());
}

pub async fn purging_one_dead_letter_deletes_only_it(backend: Backend) {
    let store = &backend.store;
    let dead = dead_letters(store, 2).await;

    let purged = store
        .purge(Selection::One(dead[0].clone()))
        .await
        .expect("purge");

    assert_eq!(purged, 1);
    assert!(
        store
            .delivery(dead[0].clone())
            .await
            .expect("delivery")
            .is_none()
    );
    assert_eq!(
        delivery(store, &dead[1]).await.summary.status,
        DeliveryStatus::Dead
    );
    assert_eq!(store.counts().await.expect("counts").dead, 1);
    // Gone for good: nothing to replay.
    assert_eq!(
        store
            .replay(Selection::One(dead[0].clone()), START + 50_000)
            .await
            .expect("replay"),
        0
    );
}

pub async fn purging_all_deletes_every_dead_letter(backend: Backend) {
    let store = &backend.store;
    let dead = dead_letters(store, 3).await;

    let purged = store.purge(Selection::All).await.expect("purge");

    assert_eq!(purged, 3);
    assert_eq!(store.counts().await.expect("counts"), Default::default());
    assert!(
        store
            .dead_letters(10)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    for id in dead {
        assert!(store.delivery(id).await.expect("delivery").is_none());
    }
    assert_eq!(store.purge(Selection::All).await.expect("purge"), 0);
}

pub async fn replaying_or_purging_work_that_is_not_dead_does_nothing(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        vec![
            event("order.created", START),
            event("order.created", START + 1),
        ],
    )
    .await;
    let mut claimed = claim(store, START + 10, &ep_default(), ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);
    record(store, &claimed[0], NextState::Delivered, START + 10).await;
    record(
        store,
        &claimed[1],
        NextState::RetryAt(START + 90_000),
        START + 10,
    )
    .await;
    let (delivered, pending) = (claimed[0].id.clone(), claimed[1].id.clone());

    for id in [&delivered, &pending] {
        assert_eq!(
            store
                .replay(Selection::One(id.clone()), START + 20)
                .await
                .expect("replay"),
            0
        );
        assert_eq!(
            store
                .purge(Selection::One(id.clone()))
                .await
                .expect("purge"),
            0
        );
    }
    assert_eq!(
        store
            .replay(Selection::All, START + 20)
            .await
            .expect("replay"),
        0
    );
    assert_eq!(store.purge(Selection::All).await.expect("purge"), 0);
    let unknown = DeliveryId::generate();
    assert_eq!(
        store
            .replay(Selection::One(unknown.clone()), START + 20)
            .await
            .expect("replay"),
        0
    );
    assert_eq!(
        store.purge(Selection::One(unknown)).await.expect("purge"),
        0
    );

    let d = delivery(store, &delivered).await.summary;
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Delivered, 1));
    let p = delivery(store, &pending).await.summary;
    assert_eq!(
        (p.status, p.attempts, p.next_attempt_at_ms),
        (DeliveryStatus::Pending, 1, Some(START + 90_000))
    );
    assert!(
        claim(store, START + 89_999, &ep_default(), ALL)
            .await
            .is_empty()
    );
}
