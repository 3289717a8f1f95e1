//! Endpoints: settings round-trip, enabled state and health, deletion, and `ep_default`
//! following `ZAPIER_WEBHOOK_URL`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use hookrelay::{
    endpoints::{CircuitState, Endpoint, EndpointHealth, EventFilter, RateLimit},
    store::{DeliveryStatus, HealthUpdate, NextState, Store},
};

use crate::{backends::Backend, support::*};

async fn fetch(store: &Arc<dyn Store>, id: &str) -> Endpoint {
    store
        .endpoint(endpoint_id(id))
        .await
        .expect("endpoint")
        .unwrap_or_else(|| panic!("endpoint {id} exists"))
}

/// Every setting of `b` equals `a`'s (`Endpoint` has no `PartialEq`).
fn assert_same_settings(a: &Endpoint, b: &Endpoint) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.url, b.url);
    assert_eq!(a.description, b.description);
    assert_eq!(a.filter, b.filter);
    assert_eq!(a.secret, b.secret);
    assert_eq!(a.previous_secret, b.previous_secret);
    assert_eq!(a.previous_secret_until_ms, b.previous_secret_until_ms);
    assert_eq!(a.headers, b.headers);
    assert_eq!(a.timeout, b.timeout);
    assert_eq!(a.max_retries, b.max_retries);
    assert_eq!(a.rate_limit, b.rate_limit);
    assert_eq!(a.circuit_threshold, b.circuit_threshold);
    assert_eq!(a.managed_by_config, b.managed_by_config);
}

/// An endpoint with every optional setting set.
fn full_endpoint(id: &str) -> Endpoint {
    let mut e = endpoint(id, &["order.*", "alert.fired"], START);
    e.url = url("https://receiver.example.test:8443/hooks/in?team=7");
    e.description = "Orders → CRM, «ünïcode» too".into();
    e.secret = Some(format!("whsec_{}", "b".repeat(40)));
    e.previous_secret = Some(format!("whsec_{}", "c".repeat(40)));
    e.previous_secret_until_ms = Some(START + DAY);
    e.headers = BTreeMap::from([
        ("Authorization".to_owned(), "Bearer token-1".to_owned()),
        ("X-Team".to_owned(), "seven".to_owned()),
    ]);
    e.timeout = Some(Duration::from_millis(2_500));
    e.max_retries = Some(7);
    e.rate_limit = Some(RateLimit::new(2.5, Some(4)).expect("rate limit"));
    e.circuit_threshold = Some(0);
    e
}

pub async fn an_endpoint_round_trips_every_setting(backend: Backend) {
    let store = &backend.store;
    let created = full_endpoint("ep_full");
    create(store, created.clone()).await;
    create(store, endpoint("ep_bare", &[], START)).await;

    let full = fetch(store, "ep_full").await;
    assert_same_settings(&created, &full);
    assert!(full.enabled);
    assert_eq!(full.disabled_reason, None);
    assert_eq!(full.health, EndpointHealth::default());
    assert_eq!((full.created_at_ms, full.updated_at_ms), (START, START));
    let bare = fetch(store, "ep_bare").await;
    assert_same_settings(&endpoint("ep_bare", &[], START), &bare);
    assert_eq!(bare.filter, EventFilter::default());
    assert_eq!(
        (
            bare.timeout,
            bare.max_retries,
            bare.rate_limit,
            bare.circuit_threshold
        ),
        (None, None, None, None)
    );
    // Another instance reads the same.
    let other = backend.second_instance().await;
    assert_same_settings(&created, &fetch(&other, "ep_full").await);
    assert!(
        store
            .endpoint(endpoint_id("ep_missing"))
            .await
            .expect("endpoint")
            .is_none()
    );
}

pub async fn creating_an_endpoint_twice_is_refused(backend: Backend) {
    let store = &backend.store;
    create(store, endpoint("ep_once", &["order.*"], START)).await;
    let mut second = full_endpoint("ep_once");
    second.description = "the second".into();

    let created = store
        .create_endpoint(second)
        .await
        .expect("create_endpoint");

    assert!(!created);
    let kept = fetch(store, "ep_once").await;
    assert_same_settings(&endpoint("ep_once", &["order.*"], START), &kept);
    assert_eq!(store.endpoints().await.expect("endpoints").len(), 1);
}

pub async fn updating_settings_keeps_enabled_state_and_health(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_target", &[], START)).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim(store, START, &endpoint_id("ep_target"), ALL).await;
    let health = EndpointHealth {
        circuit: CircuitState::Open,
        circuit_changed_at_ms: Some(START + 2),
        consecutive_failures: 3,
        failing_since_ms: Some(START),
        last_attempt_at_ms: Some(START + 2),
        last_success_at_ms: None,
    };
    store
        .record_attempts(
            vec![attempt(
                &claimed[0],
                NextState::RetryAt(START + MINUTE),
                START,
                2,
            )],
            vec![HealthUpdate {
                endpoint_id: endpoint_id("ep_target"),
                health,
                disable: None,
                shared: Default::default(),
            }],
            START + 2,
        )
        .await
        .expect("record_attempts");
    assert!(
        store
            .set_endpoint_state(
                endpoint_id("ep_target"),
                false,
                Some("maintenance".into()),
                START + 3
            )
            .await
            .expect("disable")
    );
    // A settings change made from a copy read before the disable and the failures.
    let mut changed = full_endpoint("ep_target");
    changed.enabled = true;
    changed.disabled_reason = None;
    changed.health = EndpointHealth::default();
    changed.updated_at_ms = START + 10;

    assert!(
        store
            .update_endpoint(changed.clone())
            .await
            .expect("update")
    );

    let updated = fetch(store, "ep_target").await;
    assert_same_settings(&changed, &updated);
    assert!(!updated.enabled, "the disable stands");
    assert_eq!(updated.disabled_reason.as_deref(), Some("maintenance"));
    assert_eq!(updated.health, health, "the health stands");
    assert_eq!(updated.created_at_ms, START);
    assert!(updated.updated_at_ms >= START + 10);
    let mut missing = endpoint("ep_missing", &[], START);
    missing.description = "nobody".into();
    assert!(!store.update_endpoint(missing).await.expect("update"));
    assert!(
        store
            .endpoint(endpoint_id("ep_missing"))
            .await
            .expect("endpoint")
            .is_none()
    );
}

/// Workers notice an operator's change by a newer `updated_at`, so it must move forward even
/// when the change carries an older clock reading.
pub async fn an_update_never_moves_updated_at_backwards(backend: Backend) {
    let store = &backend.store;
    create(store, endpoint("ep_target", &[], START + 100)).await;
    let mut stale = endpoint("ep_target", &["order.*"], START);
    stale.updated_at_ms = START + 50;

    assert!(store.update_endpoint(stale).await.expect("update"));

    let updated = fetch(store, "ep_target").await;
    assert!(
        updated.updated_at_ms > START + 100,
        "{}",
        updated.updated_at_ms
    );
    assert_eq!(updated.filter.patterns(), ["order.*"]);
}

pub async fn disabling_and_enabling_an_endpoint(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_target", &[], START)).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim(store, START, &endpoint_id("ep_target"), ALL).await;
    let failing = EndpointHealth {
        circuit: CircuitState::HalfOpen,
        circuit_changed_at_ms: Some(START + 1),
        consecutive_failures: 9,
        failing_since_ms: Some(START - DAY),
        last_attempt_at_ms: Some(START + 1),
        last_success_at_ms: Some(START - 2 * DAY),
    };
    store
        .record_attempts(
            vec![attempt(
                &claimed[0],
                NextState::RetryAt(START + MINUTE),
                START,
                1,
            )],
            vec![HealthUpdate {
                endpoint_id: endpoint_id("ep_target"),
                health: failing,
                disable: None,
                shared: Default::default(),
            }],
            START + 1,
        )
        .await
        .expect("record_attempts");

    assert!(
        store
            .set_endpoint_state(
                endpoint_id("ep_target"),
                false,
                Some("broken receiver".into()),
                START + 5
            )
            .await
            .expect("disable")
    );
    let disabled = fetch(store, "ep_target").await;
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason.as_deref(), Some("broken receiver"));
    assert_eq!(disabled.health, failing, "disabling keeps the health");
    assert!(disabled.updated_at_ms >= START + 5);
    // Its queued delivery waits; new events skip it.
    ingest(store, vec![event("order.created", START + 6)]).await;
    let queued = claim(store, START + MINUTE, &endpoint_id("ep_target"), ALL).await;
    assert_eq!(ids(&queued), vec![claimed[0].id.clone()]);

    assert!(
        store
            .set_endpoint_state(endpoint_id("ep_target"), true, None, START + 7)
            .await
            .expect("enable")
    );
    let enabled = fetch(store, "ep_target").await;
    assert!(enabled.enabled);
    assert_eq!(enabled.disabled_reason, None);
    assert_eq!(enabled.health.circuit, CircuitState::Closed);
    assert_eq!(enabled.health.circuit_changed_at_ms, None);
    assert_eq!(enabled.health.consecutive_failures, 0);
    assert_eq!(enabled.health.failing_since_ms, None);
    assert_eq!(
        enabled.health.last_attempt_at_ms,
        Some(START + 1),
        "history is kept"
    );
    assert_eq!(enabled.health.last_success_at_ms, Some(START - 2 * DAY));
    ingest(store, vec![event("order.created", START + 8)]).await;
    assert_eq!(
        claim(store, START + 8, &endpoint_id("ep_target"), ALL)
            .await
            .len(),
        1
    );
    assert!(
        !store
            .set_endpoint_state(endpoint_id("ep_missing"), false, None, START)
            .await
            .expect("set_endpoint_state")
    );
}

pub async fn an_endpoint_disabled_for_failing_continuously_keeps_queuing(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_flaky", &[], START)).await;
    ingest(store, vec![event("order.created", START)]).await;
    let claimed = claim(store, START, &endpoint_id("ep_flaky"), ALL).await;
    store
        .record_attempts(
            vec![attempt(
                &claimed[0],
                NextState::RetryAt(START + MINUTE),
                START,
                1,
            )],
            vec![HealthUpdate {
                endpoint_id: endpoint_id("ep_flaky"),
                health: EndpointHealth {
                    consecutive_failures: 50,
                    failing_since_ms: Some(START - DAY),
                    ..EndpointHealth::default()
                },
                disable: Some(
                    "failing continuously since 2027-01-14T08:00:00Z (last error: 503)".into(),
                ),
                shared: Default::default(),
            }],
            START + 1,
        )
        .await
        .expect("record_attempts");
    assert!(!fetch(store, "ep_flaky").await.enabled);

    // Disabled automatically: it still queues, so nothing is lost when it is enabled again.
    ingest(store, vec![event("order.created", START + 2)]).await;

    assert_eq!(store.counts().await.expect("counts").pending, 4);
    assert_eq!(
        claim(store, START + MINUTE, &endpoint_id("ep_flaky"), ALL)
            .await
            .len(),
        2
    );
}

pub async fn deleting_an_endpoint_removes_its_queue_but_keeps_delivered_history(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_doomed", &[], START)).await;
    let doomed = endpoint_id("ep_doomed");
    ingest(
        store,
        (0..3).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    let mut claimed = claim(store, START + 10, &doomed, ALL).await;
    claimed.sort_by_key(|c| c.event_created_at_ms);
    record(store, &claimed[0], NextState::Delivered, START + 10).await;
    record(store, &claimed[1], NextState::DeadLetter, START + 10).await;
    record(
        store,
        &claimed[2],
        NextState::RetryAt(START + MINUTE),
        START + 10,
    )
    .await;
    assert_eq!(store.counts().await.expect("counts").pending, 4);

    assert!(store.delete_endpoint(doomed.clone()).await.expect("delete"));

    assert!(
        store
            .endpoint(doomed.clone())
            .await
            .expect("endpoint")
            .is_none()
    );
    let history = delivery(store, &claimed[0].id).await;
    assert_eq!(history.summary.status, DeliveryStatus::Delivered);
    assert_eq!(history.attempts_log.len(), 1);
    assert!(
        store
            .delivery(claimed[1].id.clone())
            .await
            .expect("delivery")
            .is_none()
    );
    assert!(
        store
            .delivery(claimed[2].id.clone())
            .await
            .expect("delivery")
            .is_none()
    );
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts.pending, counts.dead),
        (3, 0),
        "ep_default's three remain"
    );
    assert!(
        store
            .dead_letters(10)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    assert!(
        store
            .next_due(vec![doomed.clone()])
            .await
            .expect("next_due")
            .is_empty()
    );
    // New events no longer go there.
    ingest(store, vec![event("order.created", START + 20)]).await;
    assert_eq!(store.counts().await.expect("counts").pending, 4);
    assert!(!store.delete_endpoint(doomed).await.expect("delete"));
    assert_eq!(
        store
            .endpoints()
            .await
            .expect("endpoints")
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec![ep_default()]
    );
}

pub async fn sync_default_endpoint_follows_the_configured_url(backend: Backend) {
    let store = &backend.store;
    store
        .sync_default_endpoint(Some(default_url()), START)
        .await
        .expect("sync");
    let created = fetch(store, "ep_default").await;
    assert_eq!(created.url, default_url());
    assert!(created.enabled && created.managed_by_config);
    ingest(store, vec![event("order.created", START + 1)]).await;

    // Unset: disabled, its queue kept, new events skip it.
    store
        .sync_default_endpoint(None, START + 2)
        .await
        .expect("sync");
    let unset = fetch(store, "ep_default").await;
    assert!(!unset.enabled);
    assert!(unset.disabled_reason.is_some());
    ingest(store, vec![event("order.created", START + 3)]).await;
    assert_eq!(store.counts().await.expect("counts").pending, 1);

    // Set again, to a new URL: enabled again, with it.
    let moved = url("https://hooks.example.test/moved");
    store
        .sync_default_endpoint(Some(moved.clone()), START + 4)
        .await
        .expect("sync");
    let reset = fetch(store, "ep_default").await;
    assert!(reset.enabled);
    assert_eq!(reset.disabled_reason, None);
    assert_eq!(reset.url, moved);
    assert_eq!(reset.created_at_ms, START);
    ingest(store, vec![event("order.created", START + 5)]).await;
    let queued = claim(store, START + 5, &ep_default(), ALL).await;
    let mut created_at: Vec<_> = queued.iter().map(|c| c.event_created_at_ms).collect();
    created_at.sort();
    assert_eq!(created_at, vec![START + 1, START + 5]);
    // Syncing twice changes nothing.
    store
        .sync_default_endpoint(Some(moved.clone()), START + 6)
        .await
        .expect("sync");
    assert_eq!(store.endpoints().await.expect("endpoints").len(), 1);
    assert!(fetch(store, "ep_default").await.enabled);
}

pub async fn restoring_the_default_url_does_not_enable_an_endpoint_an_operator_disabled(
    backend: Backend,
) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    assert!(
        store
            .set_endpoint_state(
                ep_default(),
                false,
                Some("operator says no".into()),
                START + 1
            )
            .await
            .expect("disable")
    );

    store
        .sync_default_endpoint(None, START + 2)
        .await
        .expect("sync");
    store
        .sync_default_endpoint(Some(default_url()), START + 3)
        .await
        .expect("sync");

    let endpoint = fetch(store, "ep_default").await;
    assert!(!endpoint.enabled);
    assert_eq!(
        endpoint.disabled_reason.as_deref(),
        Some("operator says no")
    );
}

pub async fn endpoints_are_listed_with_ep_default_first(backend: Backend) {
    let store = &backend.store;
    create(store, endpoint("ep_aaa", &[], START - 2_000)).await;
    create(store, endpoint("ep_zzz", &[], START - 1_000)).await;
    store
        .sync_default_endpoint(Some(default_url()), START)
        .await
        .expect("sync");
    create(store, endpoint("ep_later", &[], START + 1_000)).await;

    let listed: Vec<_> = store
        .endpoints()
        .await
        .expect("endpoints")
        .into_iter()
        .map(|e| e.id.as_str().to_owned())
        .collect();

    assert_eq!(listed[0], "ep_default");
    let mut rest = listed[1..].to_vec();
    rest.sort();
    assert_eq!(rest, vec!["ep_aaa", "ep_later", "ep_zzz"]);
    let other = backend.second_instance().await;
    assert_eq!(other.endpoints().await.expect("endpoints").len(), 4);
}

/// A store that cached the fan-out list must not keep fanning out to an endpoint another
/// instance deleted: the pending deliveries it left would never be claimed.
pub async fn an_endpoint_deleted_by_another_instance_gets_no_new_deliveries(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_doomed", &[], START)).await;
    let server = backend.second_instance().await;
    ingest(&server, vec![event("order.created", START)]).await;
    assert_eq!(server.counts().await.expect("counts").pending, 2);

    // An operator deletes the endpoint from another process (`hookrelay endpoints delete`).
    assert!(
        store
            .delete_endpoint(endpoint_id("ep_doomed"))
            .await
            .expect("delete")
    );
    ingest(&server, vec![event("order.created", START + 1)]).await;

    let counts = server.counts().await.expect("counts");
    assert_eq!(
        counts.pending, 2,
        "only ep_default's two deliveries may be pending: the deleted endpoint got a new one"
    );
}

/// An endpoint created by another instance gets the very next event, not one a cache allows.
pub async fn an_endpoint_created_by_another_instance_gets_the_next_event(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let server = backend.second_instance().await;
    ingest(&server, vec![event("order.created", START)]).await;

    create(store, endpoint("ep_new", &[], START + 1)).await;
    ingest(&server, vec![event("order.created", START + 2)]).await;

    let claimed = claim(&server, START + 2, &endpoint_id("ep_new"), ALL).await;
    assert_eq!(
        claimed.len(),
        1,
        "the event stored after the endpoint was created goes there"
    );
}

pub async fn enabling_an_endpoint_clears_what_its_gate_holds(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_gated", &[], START)).await;
    // One instance saw the receiver pause everyone and the circuit open.
    store
        .record_attempts(
            Vec::new(),
            vec![HealthUpdate {
                endpoint_id: endpoint_id("ep_gated"),
                health: EndpointHealth {
                    circuit: CircuitState::Open,
                    circuit_changed_at_ms: Some(START),
                    ..EndpointHealth::default()
                },
                disable: None,
                shared: hookrelay::store::SharedChange {
                    pause_until_ms: Some(START + 10 * MINUTE),
                    circuit: Some(hookrelay::store::CircuitEvent::Opened {
                        until_ms: START + 20 * MINUTE,
                    }),
                },
            }],
            START,
        )
        .await
        .expect("record_attempts");
    let held = |gates: &[(hookrelay::domain::EndpointId, hookrelay::domain::Gate)]| {
        gates
            .iter()
            .find(|(id, _)| id.as_str() == "ep_gated")
            .is_some_and(|(_, g)| {
                g.circuit != CircuitState::Closed || g.paused_until_ms > START + 1
            })
    };
    let before = store.gates().await.expect("gates");
    // Only a database several instances share keeps gates (SQLite has none to hold).
    assert_eq!(held(&before), !before.is_empty(), "{before:?}");
    assert!(
        store
            .set_endpoint_state(endpoint_id("ep_gated"), true, None, START + 1)
            .await
            .expect("enable")
    );
    let after = store.gates().await.expect("gates");
    assert!(
        !held(&after),
        "an operator's enabling clears the gate: {after:?}"
    );
}
