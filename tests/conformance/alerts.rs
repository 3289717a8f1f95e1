//! Alerts: stored transitions (fire once per active rule, resolve), and which notifications
//! are still owed.

use hookrelay::monitor::{Alert, AlertLevel, Condition};

use crate::{backends::Backend, support::*};

fn condition(rule: &str, level: AlertLevel) -> Condition {
    Condition {
        rule: rule.to_owned(),
        level,
        message: format!("{rule} crossed its threshold"),
        value: Some(0.5),
        threshold: Some(0.9),
    }
}

fn rules(alerts: &[Alert]) -> Vec<&str> {
    alerts.iter().map(|a| a.rule.as_str()).collect()
}

pub async fn firing_a_rule_stores_an_active_alert(backend: Backend) {
    let store = &backend.store;
    let wanted = condition("success_rate", AlertLevel::Critical);

    let (fired, resolved) = store
        .apply_alerts(
            vec![wanted.clone(), condition("dlq_size", AlertLevel::Warning)],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");

    assert!(resolved.is_empty());
    assert_eq!(rules(&fired), vec!["success_rate", "dlq_size"]);
    let alert = &fired[0];
    assert_eq!(alert.level, AlertLevel::Critical);
    assert_eq!(alert.message, wanted.message);
    assert_eq!((alert.value, alert.threshold), (Some(0.5), Some(0.9)));
    assert_eq!((alert.fired_at_ms, alert.resolved_at_ms), (START, None));
    assert_ne!(fired[0].id, fired[1].id);
    let active = store.active_alerts().await.expect("active_alerts");
    assert_eq!(active, fired);
    let other = backend.second_instance().await;
    assert_eq!(other.active_alerts().await.expect("active_alerts"), fired);
}

pub async fn a_rule_already_active_is_not_fired_again(backend: Backend) {
    let store = &backend.store;
    let (first, _) = store
        .apply_alerts(
            vec![condition("error_rate", AlertLevel::Critical)],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");

    let (again, _) = store
        .apply_alerts(
            vec![condition("error_rate", AlertLevel::Critical)],
            vec![],
            START + MINUTE,
        )
        .await
        .expect("apply_alerts");
    let other = backend.second_instance().await;
    let (from_other, _) = other
        .apply_alerts(
            vec![condition("error_rate", AlertLevel::Critical)],
            vec![],
            START + 2 * MINUTE,
        )
        .await
        .expect("apply_alerts");

    assert!(again.is_empty());
    assert!(from_other.is_empty());
    assert_eq!(store.active_alerts().await.expect("active_alerts"), first);
    assert_eq!(
        store.recent_alerts(10).await.expect("recent_alerts").len(),
        1
    );
}

pub async fn two_instances_firing_the_same_rule_at_once_store_one_alert(backend: Backend) {
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
            instance
                .apply_alerts(
                    vec![condition("response_time", AlertLevel::Warning)],
                    vec![],
                    START + n,
                )
                .await
                .expect("apply_alerts")
                .0
        });
    }
    let mut fired = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        fired.extend(joined.expect("task"));
    }

    assert_eq!(fired.len(), 1, "exactly one instance fired it: {fired:?}");
    assert_eq!(store.active_alerts().await.expect("active_alerts"), fired);
}

pub async fn resolving_an_alert_ends_it(backend: Backend) {
    let store = &backend.store;
    let (fired, _) = store
        .apply_alerts(
            vec![
                condition("a", AlertLevel::Warning),
                condition("b", AlertLevel::Warning),
            ],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");

    let (_, resolved) = store
        .apply_alerts(vec![], vec![fired[0].id], START + MINUTE)
        .await
        .expect("apply_alerts");

    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].id, fired[0].id);
    assert_eq!(resolved[0].resolved_at_ms, Some(START + MINUTE));
    assert_eq!(resolved[0].fired_at_ms, START);
    assert_eq!(
        rules(&store.active_alerts().await.expect("active_alerts")),
        vec!["b"]
    );
    // Resolving again, or an unknown id, resolves nothing.
    let (_, again) = store
        .apply_alerts(vec![], vec![fired[0].id, 987_654], START + 2 * MINUTE)
        .await
        .expect("apply_alerts");
    assert!(again.is_empty());
    let recent = store.recent_alerts(10).await.expect("recent_alerts");
    let stored = recent
        .iter()
        .find(|a| a.id == fired[0].id)
        .expect("kept in history");
    assert_eq!(stored.resolved_at_ms, Some(START + MINUTE));
}

pub async fn a_resolved_rule_can_fire_again(backend: Backend) {
    let store = &backend.store;
    let (first, _) = store
        .apply_alerts(
            vec![condition("dlq_size", AlertLevel::Warning)],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");
    store
        .apply_alerts(vec![], vec![first[0].id], START + MINUTE)
        .await
        .expect("apply_alerts");

    let (second, _) = store
        .apply_alerts(
            vec![condition("dlq_size", AlertLevel::Warning)],
            vec![],
            START + 2 * MINUTE,
        )
        .await
        .expect("apply_alerts");

    assert_eq!(second.len(), 1);
    assert_ne!(second[0].id, first[0].id);
    let recent = store.recent_alerts(10).await.expect("recent_alerts");
    assert_eq!(
        recent
            .iter()
            .map(|a| (a.id, a.fired_at_ms))
            .collect::<Vec<_>>(),
        vec![(second[0].id, START + 2 * MINUTE), (first[0].id, START)],
        "newest first"
    );
    assert_eq!(
        store.recent_alerts(1).await.expect("recent_alerts").len(),
        1
    );
}

pub async fn an_alert_escalates_by_resolving_and_firing_in_one_call(backend: Backend) {
    let store = &backend.store;
    let (warning, _) = store
        .apply_alerts(
            vec![condition("success_rate", AlertLevel::Warning)],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");

    let (fired, resolved) = store
        .apply_alerts(
            vec![condition("success_rate", AlertLevel::Critical)],
            vec![warning[0].id],
            START + MINUTE,
        )
        .await
        .expect("apply_alerts");

    assert_eq!(resolved.len(), 1);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].level, AlertLevel::Critical);
    let active = store.active_alerts().await.expect("active_alerts");
    assert_eq!(active, fired);
}

pub async fn unsent_alerts_are_owed_until_marked_sent(backend: Backend) {
    let store = &backend.store;
    let (fired, _) = store
        .apply_alerts(
            vec![
                condition("a", AlertLevel::Warning),
                condition("b", AlertLevel::Critical),
            ],
            vec![],
            START,
        )
        .await
        .expect("apply_alerts");

    let (owed_fired, owed_resolved) = store.unsent_alerts(START - DAY).await.expect("unsent");
    assert_eq!(rules(&owed_fired), vec!["a", "b"]);
    assert!(owed_resolved.is_empty());

    store
        .mark_alerts_sent(vec![fired[0].id], vec![], START + 1)
        .await
        .expect("mark_alerts_sent");
    let (owed_fired, _) = store.unsent_alerts(START - DAY).await.expect("unsent");
    assert_eq!(rules(&owed_fired), vec!["b"]);

    // `a` resolves: its resolution is owed, until sent.
    store
        .apply_alerts(vec![], vec![fired[0].id], START + MINUTE)
        .await
        .expect("apply_alerts");
    let other = backend.second_instance().await;
    let (owed_fired, owed_resolved) = other.unsent_alerts(START - DAY).await.expect("unsent");
    assert_eq!(rules(&owed_fired), vec!["b"]);
    assert_eq!(rules(&owed_resolved), vec!["a"]);
    assert_eq!(owed_resolved[0].resolved_at_ms, Some(START + MINUTE));
    other
        .mark_alerts_sent(vec![fired[1].id], vec![fired[0].id], START + MINUTE + 1)
        .await
        .expect("mark_alerts_sent");
    let (owed_fired, owed_resolved) = store.unsent_alerts(START - DAY).await.expect("unsent");
    assert!(owed_fired.is_empty());
    assert!(owed_resolved.is_empty());
}

pub async fn unsent_alerts_older_than_the_horizon_are_not_owed(backend: Backend) {
    let store = &backend.store;
    let (old, _) = store
        .apply_alerts(vec![condition("old", AlertLevel::Warning)], vec![], START)
        .await
        .expect("apply_alerts");
    store
        .apply_alerts(
            vec![condition("new", AlertLevel::Warning)],
            vec![],
            START + DAY,
        )
        .await
        .expect("apply_alerts");
    store
        .apply_alerts(vec![], vec![old[0].id], START + DAY)
        .await
        .expect("apply_alerts");

    let (fired, resolved) = store.unsent_alerts(START + 1).await.expect("unsent");

    assert_eq!(rules(&fired), vec!["new"]);
    assert_eq!(rules(&resolved), vec!["old"], "its resolution is recent");
}
