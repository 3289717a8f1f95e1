//! Worker heartbeats and leader leases for singleton tasks.

use crate::{backends::Backend, support::*};

pub async fn the_latest_heartbeat_is_the_most_recent_of_any_instance(backend: Backend) {
    let store = &backend.store;
    assert_eq!(store.latest_heartbeat().await.expect("latest"), None);

    store
        .heartbeat("a".into(), START, START + 1_000)
        .await
        .expect("beat");
    assert_eq!(
        store.latest_heartbeat().await.expect("latest"),
        Some(START + 1_000)
    );

    let other = backend.second_instance().await;
    other
        .heartbeat("b".into(), START, START + 5_000)
        .await
        .expect("beat");
    store
        .heartbeat("a".into(), START, START + 3_000)
        .await
        .expect("beat");
    assert_eq!(
        store.latest_heartbeat().await.expect("latest"),
        Some(START + 5_000)
    );
    other
        .heartbeat("b".into(), START, START + 9_000)
        .await
        .expect("beat");
    assert_eq!(
        store.latest_heartbeat().await.expect("latest"),
        Some(START + 9_000)
    );
}

pub async fn a_signed_off_instance_leaves_only_the_others_heartbeats(backend: Backend) {
    let store = &backend.store;
    for (instance, at) in [("a", START + 5_000), ("b", START + 1_000)] {
        store
            .heartbeat(instance.into(), START, at)
            .await
            .expect("heartbeat");
    }
    store.sign_off("a".into()).await.expect("sign off");
    assert_eq!(
        store.latest_heartbeat().await.expect("latest"),
        Some(START + 1_000),
        "b's beat is the latest left"
    );
    store.sign_off("b".into()).await.expect("sign off");
    store.sign_off("never-beat".into()).await.expect("a no-op");
    assert_eq!(store.latest_heartbeat().await.expect("latest"), None);
}

pub async fn the_first_holder_gets_the_lease_and_others_wait_for_it_to_expire(backend: Backend) {
    let store = &backend.store;
    let other = backend.second_instance().await;
    let ttl = 30_000;
    let lead = |instance: &std::sync::Arc<dyn hookrelay::store::Store>, holder: &str, now: i64| {
        let instance = instance.clone();
        let holder = holder.to_owned();
        async move {
            instance
                .try_lead("retention".into(), holder, now, ttl)
                .await
                .expect("try_lead")
        }
    };

    assert!(lead(store, "a", START).await, "a free lease is taken");
    assert!(!lead(&other, "b", START + 1).await, "held by a");
    assert!(!lead(&other, "b", START + ttl - 1).await, "still held by a");
    // a renews before expiry: b must wait for the renewed expiry.
    assert!(lead(store, "a", START + 20_000).await, "the holder renews");
    assert!(
        !lead(&other, "b", START + ttl).await,
        "renewed until START + 50 s"
    );
    assert!(!lead(&other, "b", START + 20_000 + ttl - 1).await);
    assert!(
        lead(&other, "b", START + 20_000 + ttl).await,
        "expired: b takes over"
    );
    assert!(
        !lead(store, "a", START + 20_000 + ttl + 1).await,
        "a lost it"
    );
    assert!(
        lead(&other, "b", START + 20_000 + ttl + 2).await,
        "b renews"
    );
}

pub async fn leases_of_different_tasks_are_independent(backend: Backend) {
    let store = &backend.store;
    assert!(
        store
            .try_lead("alerts".into(), "a".into(), START, 10_000)
            .await
            .expect("try_lead")
    );
    assert!(
        store
            .try_lead("retention".into(), "b".into(), START, 10_000)
            .await
            .expect("try_lead")
    );
    assert!(
        !store
            .try_lead("alerts".into(), "b".into(), START + 1, 10_000)
            .await
            .expect("try_lead")
    );
    assert!(
        !store
            .try_lead("retention".into(), "a".into(), START + 1, 10_000)
            .await
            .expect("try_lead")
    );
}

pub async fn two_instances_racing_for_a_free_lease_get_one_holder(backend: Backend) {
    let store = backend.store.clone();
    let other = backend.second_instance().await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..10 {
        let instance = if n % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.spawn(async move {
            let won = instance
                .try_lead("alerts".into(), format!("holder-{n}"), START, 60_000)
                .await
                .expect("try_lead");
            (n, won)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (n, won) = joined.expect("task");
        if won {
            winners.push(n);
        }
    }

    assert_eq!(winners.len(), 1, "one holder: {winners:?}");
    let holder = format!("holder-{}", winners[0]);
    assert!(
        store
            .try_lead("alerts".into(), holder, START + 1, 60_000)
            .await
            .expect("try_lead")
    );
}

pub async fn a_resigned_lease_is_free_at_once_and_only_its_holder_can_resign(backend: Backend) {
    let store = &backend.store;
    let other = backend.second_instance().await;
    assert!(
        store
            .try_lead("monitor".into(), "a".into(), START, 30_000)
            .await
            .expect("lead")
    );
    // Someone else's resignation changes nothing.
    other
        .resign("monitor".into(), "b".into())
        .await
        .expect("resign");
    assert!(
        !other
            .try_lead("monitor".into(), "b".into(), START + 1_000, 30_000)
            .await
            .expect("lead"),
        "b took a lease that a still held"
    );
    store
        .resign("monitor".into(), "a".into())
        .await
        .expect("resign");
    assert!(
        other
            .try_lead("monitor".into(), "b".into(), START + 2_000, 30_000)
            .await
            .expect("lead"),
        "the lease a gave up was not free"
    );
}
