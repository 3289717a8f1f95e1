//! Retention: old finished work goes, in batches; pending and dead-lettered work and anything
//! newer than the cut-off stay; a dry run only counts.

use std::sync::Arc;

use hookrelay::{
    domain::{AlertLevel, CleanupReport, Condition, DeliveryId, EventId},
    store::{DeliveryStatus, NextState, OnProgress, Store},
};

use crate::{backends::Backend, support::*};

/// Everything before this is old.
const CUTOFF: i64 = START + DAY;

fn condition(rule: &str) -> Condition {
    Condition {
        rule: rule.to_owned(),
        level: AlertLevel::Warning,
        message: format!("{rule} is off"),
        value: None,
        threshold: None,
    }
}

/// What the scene stored, to look up afterwards.
struct Scene {
    /// Old and fully delivered: must go.
    gone: Vec<DeliveryId>,
    /// Must stay, with the status they must still have.
    kept: Vec<(DeliveryId, DeliveryStatus)>,
}

/// What a cleanup at `CUTOFF` must report for [`scene`].
const EXPECTED: CleanupReport = CleanupReport {
    // the endpoint-less event, `done`, and the two old usage events
    events: 4,
    // `done`, `idle` and `active`'s old one
    deliveries: 3,
    // `done` took two attempts
    attempts: 4,
    // `idle`; `active` was seen after the cut-off
    sessions: 1,
    // `old`; `late` resolved after the cut-off, `ongoing` is still active
    alerts: 1,
    // the minutes of START and START + 5 minutes
    rollups: 2,
    dry_run: false,
};

/// Old and new work of every kind, all through the trait.
async fn scene(store: &Arc<dyn Store>) -> Scene {
    // An old event stored while there was no endpoint: no deliveries at all.
    ingest(store, vec![keyed(event("order.created", START), "orphan")]).await;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_second", &["split.*"], START)).await;

    let done = keyed(event("order.created", START + 1_000), "done");
    let waiting = keyed(event("order.created", START + 1_000), "waiting");
    let dead = event("order.created", START + 1_000);
    let split = event("split.x", START + 1_000);
    let idle = usage_event(Usage::ok("idle", "m"), START + 1_000);
    let active_old = usage_event(Usage::ok("active", "m"), START + 1_000);
    let kinds: Vec<EventId> = [&done, &waiting, &dead, &split, &idle, &active_old]
        .iter()
        .map(|e| e.id.clone())
        .collect();
    ingest(store, vec![done, waiting, dead, split, idle, active_old]).await;
    let claimed = claim(store, START + 2_000, &ep_default(), ALL).await;
    let of = |k: usize| {
        claimed
            .iter()
            .find(|c| c.event_id == kinds[k])
            .expect("claimed")
            .clone()
    };
    let (done, waiting, dead, split, idle, active_old) = (of(0), of(1), of(2), of(3), of(4), of(5));
    record(
        store,
        &done,
        NextState::RetryAt(START + 5 * MINUTE),
        START + 2_000,
    )
    .await;
    record_all(
        store,
        &[split.clone(), idle.clone(), active_old.clone()],
        NextState::Delivered,
        START + 3_000,
    )
    .await;
    record(store, &dead, NextState::DeadLetter, START + 3_000).await;
    // `done` succeeds at its second attempt, five minutes later (a second old minute).
    let done_again = claim(store, START + 5 * MINUTE, &ep_default(), ALL)
        .await
        .into_iter()
        .find(|c| c.id == done.id)
        .expect("done is due again");
    record(store, &done_again, NextState::Delivered, START + 5 * MINUTE).await;
    let split_second = claim(store, START + 2_000, &endpoint_id("ep_second"), ALL).await;
    assert_eq!(split_second.len(), 1);

    // New work: at the cut-off exactly, and after it.
    ingest(
        store,
        vec![
            event("order.created", CUTOFF),
            event("order.created", CUTOFF + 1_000),
            usage_event(Usage::ok("active", "m"), CUTOFF + 1_000),
        ],
    )
    .await;
    let new = settle_since(store, CUTOFF + 2_000, CUTOFF, NextState::Delivered).await;
    assert_eq!(new.len(), 3);

    // Alerts: resolved before the cut-off, resolved after it, and still active.
    for rule in ["old", "late", "ongoing"] {
        let (fired, _) = store
            .apply_alerts(vec![condition(rule)], vec![], START)
            .await
            .expect("fire");
        assert_eq!(fired.len(), 1);
        let resolve_at = match rule {
            "old" => START + 10,
            "late" => CUTOFF + 5,
            _ => continue,
        };
        store
            .apply_alerts(vec![], vec![fired[0].id], resolve_at)
            .await
            .expect("resolve");
    }

    let mut kept: Vec<_> = new
        .into_iter()
        .map(|id| (id, DeliveryStatus::Delivered))
        .collect();
    kept.extend([
        (waiting.id, DeliveryStatus::Pending),
        (dead.id, DeliveryStatus::Dead),
        (split.id, DeliveryStatus::Delivered),
        (split_second[0].id.clone(), DeliveryStatus::Pending),
    ]);
    Scene {
        gone: vec![done.id, idle.id, active_old.id],
        kept,
    }
}

async fn rules(store: &Arc<dyn Store>) -> Vec<String> {
    let mut rules: Vec<_> = store
        .recent_alerts(100)
        .await
        .expect("recent_alerts")
        .into_iter()
        .map(|a| a.rule)
        .collect();
    rules.sort();
    rules
}

pub async fn a_dry_run_counts_without_deleting(backend: Backend) {
    let store = &backend.store;
    let scene = scene(store).await;
    let totals_before = store.window_totals(None).await.expect("window_totals");

    let report = store
        .cleanup(CUTOFF, true, OnProgress::none())
        .await
        .expect("cleanup");

    assert_eq!(
        report,
        CleanupReport {
            dry_run: true,
            ..EXPECTED
        }
    );
    for id in &scene.gone {
        assert!(
            store
                .delivery(id.clone())
                .await
                .expect("delivery")
                .is_some()
        );
    }
    assert!(
        store
            .session("idle".into())
            .await
            .expect("session")
            .is_some()
    );
    assert_eq!(rules(store).await, vec!["late", "old", "ongoing"]);
    assert_eq!(
        store.window_totals(None).await.expect("window_totals"),
        totals_before
    );
    // Nothing changed, so a second dry run says the same, and the real run does what it said.
    assert_eq!(
        store
            .cleanup(CUTOFF, true, OnProgress::none())
            .await
            .expect("cleanup"),
        report
    );
    assert_eq!(
        store
            .cleanup(CUTOFF, false, OnProgress::none())
            .await
            .expect("cleanup"),
        EXPECTED
    );
}

pub async fn cleanup_removes_old_finished_work_and_reports_it(backend: Backend) {
    let store = &backend.store;
    let scene = scene(store).await;

    let report = store
        .cleanup(CUTOFF, false, OnProgress::none())
        .await
        .expect("cleanup");

    assert_eq!(report, EXPECTED);
    for id in &scene.gone {
        assert!(
            store
                .delivery(id.clone())
                .await
                .expect("delivery")
                .is_none(),
            "{id} removed"
        );
    }
    // The events went too: their idempotency keys are free again.
    for key in ["orphan", "done"] {
        let again = store
            .ingest(vec![keyed(event("order.created", CUTOFF + 9_000), key)])
            .await
            .expect("ingest");
        assert!(!again[0].duplicate, "event `{key}` was removed");
    }
    assert!(
        store
            .session("idle".into())
            .await
            .expect("session")
            .is_none()
    );
    assert_eq!(rules(store).await, vec!["late", "ongoing"]);
    let totals = store.window_totals(None).await.expect("window_totals");
    assert_eq!(totals.attempts, 3, "only the new minute's roll-up is left");
    // Nothing old and finished is left.
    assert_eq!(
        store
            .cleanup(CUTOFF, false, OnProgress::none())
            .await
            .expect("cleanup"),
        CleanupReport::default()
    );
}

pub async fn cleanup_never_removes_pending_dead_or_newer_work(backend: Backend) {
    let store = &backend.store;
    let scene = scene(store).await;

    store
        .cleanup(CUTOFF, false, OnProgress::none())
        .await
        .expect("cleanup");

    for (id, status) in &scene.kept {
        assert_eq!(
            delivery(store, id).await.summary.status,
            *status,
            "{id} kept"
        );
    }
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.dead), (2, 1));
    assert_eq!(counts.oldest_pending_ms, Some(START + 1_000));
    // The dead letter's attempt log stays with it, and it can still be replayed.
    let dead = &scene
        .kept
        .iter()
        .find(|(_, s)| *s == DeliveryStatus::Dead)
        .expect("dead")
        .0;
    assert_eq!(delivery(store, dead).await.attempts_log.len(), 1);
    assert_eq!(
        store
            .replay(hookrelay::store::Selection::All, CUTOFF + 10_000)
            .await
            .expect("replay"),
        1
    );
    // The pending event keeps its idempotency key.
    let again = store
        .ingest(vec![keyed(
            event("order.created", CUTOFF + 9_000),
            "waiting",
        )])
        .await
        .expect("ingest");
    assert!(again[0].duplicate);
    let active = store
        .session("active".into())
        .await
        .expect("session")
        .expect("kept");
    assert_eq!(active.queries, 2);
    assert_eq!(
        store
            .active_alerts()
            .await
            .expect("active")
            .iter()
            .map(|a| a.rule.as_str())
            .collect::<Vec<_>>(),
        vec!["ongoing"]
    );
}

pub async fn cleanup_works_through_more_than_one_batch(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    // 2,530 old events, three to a millisecond (so batches end inside a run of equal times),
    // one in 84 left pending (the very oldest among them), the rest delivered.
    let total = 2_530i64;
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        ingest(
            store,
            chunk
                .iter()
                .map(|i| event("order.created", START + i / 3))
                .collect(),
        )
        .await;
    }
    let mut claimed = claim(store, START + 10_000, &ep_default(), ALL).await;
    assert_eq!(claimed.len() as i64, total);
    claimed.sort_by(|a, b| (a.event_created_at_ms, &a.id).cmp(&(b.event_created_at_ms, &b.id)));
    let (pending, delivered): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 84 == 0);
    let delivered: Vec<_> = delivered.into_iter().map(|(_, c)| c).collect();
    record_all(store, &delivered, NextState::Delivered, START + 10_000).await;
    // And some newer work that must stay.
    ingest(
        store,
        (0..10)
            .map(|i| event("order.created", CUTOFF + i))
            .collect(),
    )
    .await;
    let newer = settle_since(store, CUTOFF + 100, CUTOFF, NextState::Delivered).await;
    assert_eq!(newer.len(), 10);
    let expected = delivered.len() as u64;
    assert_eq!(expected, 2_499);

    let dry = store
        .cleanup(CUTOFF, true, OnProgress::none())
        .await
        .expect("cleanup");
    let (progress, reports) = recorded_progress();
    let report = store
        .cleanup(CUTOFF, false, progress)
        .await
        .expect("cleanup");
    // The events phase counts its total first, then reports each batch of a thousand.
    let events: Vec<_> = reports
        .lock()
        .expect("reports")
        .iter()
        .filter(|p| p.phase == "removing delivered events")
        .map(|p| (p.done, p.total))
        .collect();
    assert_eq!(
        events,
        [0, 1_000, 2_000, expected].map(|done| (done, Some(expected)))
    );

    assert_eq!(
        (dry.events, dry.deliveries, dry.attempts),
        (expected, expected, expected)
    );
    assert_eq!(
        (report.events, report.deliveries, report.attempts),
        (expected, expected, expected)
    );
    for c in &delivered {
        assert!(
            store
                .delivery(c.id.clone())
                .await
                .expect("delivery")
                .is_none(),
            "{} removed",
            c.id
        );
    }
    for (_, c) in &pending {
        assert_eq!(
            delivery(store, &c.id).await.summary.status,
            DeliveryStatus::Pending
        );
    }
    for id in &newer {
        assert_eq!(
            delivery(store, id).await.summary.status,
            DeliveryStatus::Delivered
        );
    }
    assert_eq!(
        store.counts().await.expect("counts").pending,
        pending.len() as u64
    );
    assert_eq!(pending.len(), 31);
    assert_eq!(
        store
            .cleanup(CUTOFF, false, OnProgress::none())
            .await
            .expect("cleanup")
            .events,
        0
    );
}
