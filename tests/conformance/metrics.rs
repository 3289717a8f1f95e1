//! Windowed totals: per-minute roll-ups of ingests and attempts, written with what they count.

use hookrelay::{monitor::WindowTotals, store::NextState};

use crate::{backends::Backend, support::*};

pub async fn window_totals_count_ingests_and_duplicates_at_their_minute(backend: Backend) {
    let store = &backend.store;
    ingest(
        store,
        vec![
            keyed(event("order.created", START), "k"),
            event("order.created", START + 1),
            event("order.created", START + 2),
        ],
    )
    .await;
    store
        .ingest(vec![
            keyed(event("order.created", START + MINUTE), "k"),
            event("order.created", START + MINUTE),
        ])
        .await
        .expect("ingest");

    let all = store.window_totals(None).await.expect("window_totals");
    assert_eq!((all.ingested, all.duplicates), (4, 1));
    assert_eq!(all.attempts, 0);
    let last_minute = store
        .window_totals(Some(START + MINUTE))
        .await
        .expect("window_totals");
    assert_eq!((last_minute.ingested, last_minute.duplicates), (1, 1));
    assert_eq!(
        store
            .window_totals(Some(START + 2 * MINUTE))
            .await
            .expect("window_totals"),
        WindowTotals::default()
    );
}

pub async fn window_totals_count_attempt_outcomes_and_durations(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        (0..4).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    let mut claimed = claim(store, START + 2 * MINUTE, &ep_default(), ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);
    let at = START + 2 * MINUTE;

    store
        .record_attempts(
            vec![
                attempt(&claimed[0], NextState::Delivered, at, 5),
                attempt(&claimed[1], NextState::RetryAt(at + MINUTE), at, 30),
                attempt(&claimed[2], NextState::DeadLetter, at, 700),
                attempt(&claimed[3], NextState::Throttled(at + MINUTE), at, 40_000),
            ],
            vec![],
            at + 1,
        )
        .await
        .expect("record_attempts");

    let window = store.window_totals(Some(at)).await.expect("window_totals");
    let mut buckets = [0u64; 12];
    // <= 10 ms, <= 50 ms, <= 1,000 ms; the throttled attempt is not an attempt here.
    buckets[0] = 1;
    buckets[2] = 1;
    buckets[6] = 1;
    assert_eq!(
        window,
        WindowTotals {
            ingested: 0,
            duplicates: 0,
            attempts: 3,
            successes: 1,
            failures: 2,
            throttled: 1,
            retries: 1,
            delivered: 1,
            dead_lettered: 1,
            duration_sum_ms: 735,
            // the delivered one: accepted at START, done at START + 2 minutes + 5 ms
            latency_sum_ms: 2 * MINUTE as u64 + 5,
            buckets,
            // The slowest counted attempt (the throttled one is not counted).
            duration_max_ms: 700,
        }
    );
    let all = store.window_totals(None).await.expect("window_totals");
    assert_eq!(
        all,
        WindowTotals {
            ingested: 4,
            ..window
        }
    );
}

pub async fn a_window_starting_after_older_activity_excludes_it(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        vec![event("order.created", START), event("order.created", START)],
    )
    .await;
    settle_all(store, START + 1_000, NextState::Delivered).await;
    let later = START + 10 * MINUTE;
    ingest(store, vec![event("order.created", later)]).await;
    settle_all(store, later + 1_000, NextState::RetryAt(later + MINUTE)).await;

    let recent = store
        .window_totals(Some(START + MINUTE))
        .await
        .expect("window_totals");
    assert_eq!(
        (
            recent.ingested,
            recent.attempts,
            recent.delivered,
            recent.retries
        ),
        (1, 1, 0, 1)
    );
    let from_later = store
        .window_totals(Some(later))
        .await
        .expect("window_totals");
    assert_eq!(from_later, recent);
    let all = store.window_totals(None).await.expect("window_totals");
    assert_eq!(
        (all.ingested, all.attempts, all.delivered, all.retries),
        (3, 3, 2, 1)
    );
    let from_start = store
        .window_totals(Some(START))
        .await
        .expect("window_totals");
    assert_eq!(from_start, all);
    assert_eq!(
        store
            .window_totals(Some(later + MINUTE))
            .await
            .expect("window_totals"),
        WindowTotals::default()
    );
}

pub async fn an_attempt_under_a_stale_lease_is_not_counted(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let stale = claim_one(store, START).await;
    let current = claim_one(store, START + LEASE).await;

    record(store, &stale, NextState::DeadLetter, START + LEASE + 1).await;
    let after_stale = store.window_totals(None).await.expect("window_totals");
    record(store, &current, NextState::Delivered, START + LEASE + 2).await;

    assert_eq!(
        (
            after_stale.attempts,
            after_stale.failures,
            after_stale.dead_lettered
        ),
        (0, 0, 0)
    );
    let all = store.window_totals(None).await.expect("window_totals");
    assert_eq!((all.attempts, all.delivered, all.dead_lettered), (1, 1, 0));
}

pub async fn attempts_recorded_by_two_instances_at_once_are_all_counted(backend: Backend) {
    let store = backend.store.clone();
    with_default_endpoint(&store).await;
    ingest(
        &store,
        (0..120)
            .map(|i| event("order.created", START + i))
            .collect(),
    )
    .await;
    let other = backend.second_instance().await;
    let claimed = claim(&store, START + 1_000, &ep_default(), ALL).await;
    assert_eq!(claimed.len(), 120);

    let mut tasks = tokio::task::JoinSet::new();
    for (n, chunk) in claimed.chunks(5).enumerate() {
        let instance = if n % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            record_all(&instance, &chunk, NextState::Delivered, START + 1_000).await;
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }

    let all = store.window_totals(None).await.expect("window_totals");
    assert_eq!(
        (all.ingested, all.attempts, all.successes, all.delivered),
        (120, 120, 120, 120)
    );
    assert_eq!(all.buckets[0], 120);
    assert_eq!(store.counts().await.expect("counts").pending, 0);
}
