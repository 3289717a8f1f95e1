//! Recording attempts: each outcome moves the delivery to its next state, only under the lease
//! it was claimed with, together with the endpoint's health.

use hookrelay::{
    endpoints::{CircuitState, EndpointHealth},
    store::{DeliveryStatus, HealthUpdate, NextState},
};

use crate::{backends::Backend, support::*};

pub async fn a_delivered_attempt_ends_the_delivery(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim_one(store, START + 10).await;

    store
        .record_attempts(
            vec![attempt(&claimed, NextState::Delivered, START + 10, 42)],
            vec![],
            START + 52,
        )
        .await
        .expect("record_attempts");

    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (0, 0));
    let detail = delivery(store, &claimed.id).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Delivered);
    assert_eq!(detail.summary.event_id, claimed.event_id);
    assert_eq!(detail.summary.endpoint_id, ep_default());
    assert_eq!(detail.summary.event_type, "order.created");
    assert_eq!(
        (detail.summary.attempts, detail.summary.total_attempts),
        (1, 1)
    );
    assert_eq!(detail.summary.last_status, Some(200));
    assert_eq!(detail.summary.last_error, None);
    assert_eq!(detail.summary.created_at_ms, START);
    assert_eq!(detail.summary.next_attempt_at_ms, None);
    assert_eq!(detail.summary.finished_at_ms, Some(START + 52));
    assert_eq!(detail.payload["id"], claimed.event_id.as_str());
    assert_eq!(detail.attempts_log.len(), 1);
    let log = &detail.attempts_log[0];
    assert_eq!(log.attempt_no, 1);
    assert_eq!(log.started_at_ms, START + 10);
    assert_eq!(log.duration_ms, 42);
    assert_eq!(log.status_code, Some(200));
    assert_eq!(log.error_kind, None);
    assert_eq!(
        log.response_snippet.as_deref(),
        Some("answer to attempt at 1800000000010")
    );
    assert_eq!(log.outcome, "delivered");
    // Never claimed again, whenever.
    assert!(
        claim(store, START + 10 * LEASE, &ep_default(), ALL)
            .await
            .is_empty()
    );
}

pub async fn a_retry_is_due_at_its_time_and_spends_the_retry_budget(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let first = claim_one(store, START).await;

    record(store, &first, NextState::RetryAt(START + 5_000), START).await;

    let detail = delivery(store, &first.id).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Pending);
    assert_eq!(detail.summary.next_attempt_at_ms, Some(START + 5_000));
    assert_eq!(
        (detail.summary.attempts, detail.summary.total_attempts),
        (1, 1)
    );
    assert_eq!(detail.summary.last_status, Some(503));
    assert_eq!(
        detail.summary.last_error.as_deref(),
        Some("attempt at 1800000000000 failed")
    );
    assert_eq!(detail.summary.finished_at_ms, None);
    assert_eq!(detail.attempts_log[0].outcome, "retry");
    assert!(
        claim(store, START + 4_999, &ep_default(), ALL)
            .await
            .is_empty()
    );

    let second = claim_one(store, START + 5_000).await;
    assert_eq!((second.attempts, second.total_attempts), (1, 1));
    record(
        store,
        &second,
        NextState::RetryAt(START + 20_000),
        START + 5_000,
    )
    .await;
    let third = claim_one(store, START + 20_000).await;
    assert_eq!((third.attempts, third.total_attempts), (2, 2));
    let log = delivery(store, &first.id).await.attempts_log;
    assert_eq!(
        log.iter().map(|a| a.attempt_no).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

pub async fn a_throttled_attempt_does_not_spend_the_retry_budget(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let first = claim_one(store, START).await;
    record(store, &first, NextState::RetryAt(START + 1_000), START).await;
    let second = claim_one(store, START + 1_000).await;

    record(
        store,
        &second,
        NextState::Throttled(START + 3_000),
        START + 1_000,
    )
    .await;

    assert!(
        claim(store, START + 2_999, &ep_default(), ALL)
            .await
            .is_empty()
    );
    let third = claim_one(store, START + 3_000).await;
    assert_eq!(third.attempts, 1, "the budget is unchanged");
    assert_eq!(third.throttled, 1);
    assert_eq!(third.total_attempts, 2, "it still was an attempt");
    record(
        store,
        &third,
        NextState::Throttled(START + 4_000),
        START + 3_000,
    )
    .await;
    let detail = delivery(store, &first.id).await;
    assert_eq!((detail.summary.attempts, detail.summary.throttled), (1, 2));
    assert_eq!(detail.summary.last_status, Some(429));
    assert_eq!(
        detail
            .attempts_log
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        vec!["retry", "throttled", "throttled"]
    );
}

pub async fn a_dead_letter_moves_the_delivery_to_the_dlq(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![usage_event(Usage::ok("sess-dlq", "m"), START)]).await;
    let claimed = claim_one(store, START).await;

    record(store, &claimed, NextState::DeadLetter, START + 100).await;

    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (0, 1));
    let dead = store.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, claimed.id);
    assert_eq!(d.status, DeliveryStatus::Dead);
    assert_eq!(d.session_id.as_deref(), Some("sess-dlq"));
    assert_eq!(d.event_type, "usage.tracked");
    assert_eq!((d.attempts, d.total_attempts), (1, 1));
    assert_eq!(d.last_status, Some(410));
    assert_eq!(
        d.last_error.as_deref(),
        Some("attempt at 1800000000100 failed")
    );
    assert_eq!(d.finished_at_ms, Some(START + 105));
    assert_eq!(d.next_attempt_at_ms, None);
    assert!(
        claim(store, START + 10 * LEASE, &ep_default(), ALL)
            .await
            .is_empty()
    );
}

pub async fn a_stale_lease_cannot_overwrite_the_new_claim(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let other = backend.second_instance().await;
    let stale = claim_one(store, START).await;
    // The first claimant stalls past its lease; another instance takes the delivery over.
    let current = claim(&other, START + LEASE, &ep_default(), ALL).await;
    assert_eq!(ids(&current), vec![stale.id.clone()]);

    record(store, &stale, NextState::DeadLetter, START + LEASE + 1).await;

    let detail = delivery(store, &stale.id).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Pending);
    assert_eq!(detail.summary.attempts, 0, "the stale result spent nothing");
    assert_eq!(store.counts().await.expect("counts").dead, 0);
    assert!(
        claim(store, START + LEASE + 2, &ep_default(), ALL)
            .await
            .is_empty(),
        "the new claim still holds"
    );
    // The new claimant's result wins.
    record(&other, &current[0], NextState::Delivered, START + LEASE + 3).await;
    let detail = delivery(store, &stale.id).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Delivered);
    assert_eq!(store.counts().await.expect("counts"), Default::default());
}

pub async fn a_stale_lease_cannot_overwrite_a_result_already_recorded(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let stale = claim_one(store, START).await;
    let current = claim_one(store, START + LEASE).await;
    record(store, &current, NextState::Delivered, START + LEASE).await;

    record(
        store,
        &stale,
        NextState::RetryAt(START + LEASE + 10),
        START + LEASE + 1,
    )
    .await;

    let detail = delivery(store, &stale.id).await;
    assert_eq!(detail.summary.status, DeliveryStatus::Delivered);
    assert_eq!(detail.summary.attempts, 1);
    assert!(
        claim(store, START + 10 * LEASE, &ep_default(), ALL)
            .await
            .is_empty()
    );
}

pub async fn one_call_records_several_attempts(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        (0..3).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    let mut claimed = claim(store, START + 10, &ep_default(), ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);

    store
        .record_attempts(
            vec![
                attempt(&claimed[0], NextState::Delivered, START + 10, 5),
                attempt(&claimed[1], NextState::DeadLetter, START + 10, 5),
                attempt(
                    &claimed[2],
                    NextState::RetryAt(START + 99_000),
                    START + 10,
                    5,
                ),
            ],
            vec![],
            START + 20,
        )
        .await
        .expect("record_attempts");

    let status = |i: usize| {
        let id = claimed[i].id.clone();
        async move { delivery(store, &id).await.summary.status }
    };
    assert_eq!(status(0).await, DeliveryStatus::Delivered);
    assert_eq!(status(1).await, DeliveryStatus::Dead);
    assert_eq!(status(2).await, DeliveryStatus::Pending);
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (1, 1));
}

pub async fn health_recorded_with_an_attempt_is_visible_on_the_endpoint(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim_one(store, START).await;
    let health = EndpointHealth {
        circuit: CircuitState::Open,
        circuit_changed_at_ms: Some(START + 1),
        consecutive_failures: 5,
        failing_since_ms: Some(START - 60_000),
        last_attempt_at_ms: Some(START + 1),
        last_success_at_ms: Some(START - 120_000),
    };

    store
        .record_attempts(
            vec![attempt(
                &claimed,
                NextState::RetryAt(START + 60_000),
                START,
                1,
            )],
            vec![HealthUpdate {
                endpoint_id: ep_default(),
                health,
                disable: None,
                shared: Default::default(),
            }],
            START + 1,
        )
        .await
        .expect("record_attempts");

    let other = backend.second_instance().await;
    let endpoint = other
        .endpoint(ep_default())
        .await
        .expect("endpoint")
        .expect("ep_default exists");
    assert_eq!(endpoint.health, health);
    assert!(endpoint.enabled);
    assert_eq!(endpoint.disabled_reason, None);
}

pub async fn a_health_update_can_disable_the_endpoint(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim_one(store, START).await;
    let health = EndpointHealth {
        consecutive_failures: 1,
        failing_since_ms: Some(START),
        last_attempt_at_ms: Some(START),
        ..EndpointHealth::default()
    };

    store
        .record_attempts(
            vec![attempt(
                &claimed,
                NextState::RetryAt(START + 60_000),
                START,
                1,
            )],
            vec![HealthUpdate {
                endpoint_id: ep_default(),
                health,
                disable: Some("failing continuously since then".into()),
                shared: Default::default(),
            }],
            START + 1,
        )
        .await
        .expect("record_attempts");

    let endpoint = store
        .endpoint(ep_default())
        .await
        .expect("endpoint")
        .expect("ep_default exists");
    assert!(!endpoint.enabled);
    assert_eq!(
        endpoint.disabled_reason.as_deref(),
        Some("failing continuously since then")
    );
    assert_eq!(endpoint.health, health);
}

pub async fn recording_an_attempt_for_a_removed_delivery_is_harmless(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_doomed", &[], START)).await;
    ingest(store, vec![event("order.created", START)]).await;
    let doomed = claim(store, START, &endpoint_id("ep_doomed"), ALL).await;
    let kept = claim_one(store, START).await;
    assert!(
        store
            .delete_endpoint(endpoint_id("ep_doomed"))
            .await
            .expect("delete")
    );

    // The worker finishes its in-flight attempt after the endpoint is gone.
    store
        .record_attempts(
            vec![
                attempt(&doomed[0], NextState::Delivered, START + 1, 1),
                attempt(&kept, NextState::Delivered, START + 1, 1),
            ],
            vec![],
            START + 2,
        )
        .await
        .expect("recording for a removed delivery does not fail the others");

    assert!(
        store
            .delivery(doomed[0].id.clone())
            .await
            .expect("delivery")
            .is_none()
    );
    assert_eq!(
        delivery(store, &kept.id).await.summary.status,
        DeliveryStatus::Delivered
    );
}
