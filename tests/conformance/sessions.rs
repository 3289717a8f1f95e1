//! Sessions and analytics: usage events aggregate per session, per model and per day, in the
//! same transactions as the events, so no concurrent writer loses a count.

use hookrelay::{
    domain::{ModelUsage, WebhookCounts},
    store::{NextState, Store},
};

use crate::{backends::Backend, support::*};

/// Midnight UTC of the day `START` falls in.
const TODAY: i64 = START - START.rem_euclid(DAY);

fn model(name: &str, queries: u64, tokens: u64) -> ModelUsage {
    ModelUsage {
        model: name.to_owned(),
        queries,
        tokens,
    }
}

fn close(actual: Option<f64>, expected: f64) -> bool {
    actual.is_some_and(|a| (a - expected).abs() < 1e-9)
}

async fn session(store: &std::sync::Arc<dyn Store>, id: &str) -> hookrelay::domain::SessionStats {
    store
        .session(id.to_owned())
        .await
        .expect("session")
        .unwrap_or_else(|| panic!("session {id} exists"))
}

pub async fn usage_events_aggregate_per_session(backend: Backend) {
    let store = &backend.store;
    ingest(
        store,
        vec![usage_event(
            Usage::ok("s1", "gpt-a").took(100).tokens(10),
            START + 1_000,
        )],
    )
    .await;
    ingest(
        store,
        vec![
            usage_event(
                Usage::ok("s1", "gpt-b").took(300).tokens(0).failed(),
                START + 500,
            ),
            usage_event(Usage::ok("s2", "gpt-b").took(50).tokens(7), START + 1_500),
            usage_event(Usage::ok("s1", "gpt-a").took(200).tokens(30), START + 2_000),
        ],
    )
    .await;

    let s1 = session(store, "s1").await;
    assert_eq!(s1.session_id, "s1");
    assert_eq!(
        (s1.first_seen_ms, s1.last_seen_ms),
        (START + 500, START + 2_000)
    );
    assert_eq!((s1.queries, s1.successes, s1.failures), (3, 2, 1));
    assert_eq!(s1.total_response_time_ms, 600);
    assert!(
        close(s1.avg_response_time_ms, 200.0),
        "{:?}",
        s1.avg_response_time_ms
    );
    assert_eq!(s1.estimated_tokens, 40);
    assert_eq!(s1.models, vec![model("gpt-a", 2, 40), model("gpt-b", 1, 0)]);
    assert_eq!(
        s1.webhooks,
        WebhookCounts::default(),
        "no endpoint, no webhooks"
    );
    let s2 = session(store, "s2").await;
    assert_eq!((s2.queries, s2.successes, s2.estimated_tokens), (1, 1, 7));
    assert_eq!(s2.models, vec![model("gpt-b", 1, 7)]);
    assert!(store.session("s3".into()).await.expect("session").is_none());
}

pub async fn events_without_usage_facts_aggregate_nothing(backend: Backend) {
    let store = &backend.store;
    let mut plain = event("order.created", START);
    plain.session_id = Some("s1".into());
    ingest(store, vec![plain]).await;

    assert!(store.session("s1".into()).await.expect("session").is_none());
    assert!(
        store
            .sessions(0, i64::MAX, 10)
            .await
            .expect("sessions")
            .is_empty()
    );
    assert_eq!(
        store
            .analytics(START, 1)
            .await
            .expect("analytics")
            .queries
            .total,
        0
    );
}

pub async fn a_duplicate_usage_event_is_not_counted_again(backend: Backend) {
    let store = &backend.store;
    let once = keyed(usage_event(Usage::ok("s1", "gpt-a"), START), "usage-1");
    ingest(store, vec![once]).await;

    let again = keyed(usage_event(Usage::ok("s1", "gpt-a"), START + 10), "usage-1");
    let outcome = store.ingest(vec![again]).await.expect("ingest");

    assert!(outcome[0].duplicate);
    let s1 = session(store, "s1").await;
    assert_eq!(
        (s1.queries, s1.estimated_tokens, s1.last_seen_ms),
        (1, 10, START)
    );
    assert_eq!(s1.models, vec![model("gpt-a", 1, 10)]);
    assert_eq!(
        store
            .analytics(START, 1)
            .await
            .expect("analytics")
            .queries
            .total,
        1
    );
}

pub async fn a_sessions_webhook_counts_follow_its_deliveries(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_second", &["usage.*"], START)).await;
    ingest(
        store,
        (0..3)
            .map(|i| usage_event(Usage::ok("s1", "m"), START + i))
            .chain([usage_event(Usage::ok("s2", "m"), START)])
            .collect(),
    )
    .await;
    let mut on_default: Vec<_> = claim(store, START + 10, &ep_default(), ALL)
        .await
        .into_iter()
        .filter(|c| c.session_id.as_deref() == Some("s1"))
        .collect();
    on_default.sort_by_key(|c| c.event_created_at_ms);
    record(store, &on_default[0], NextState::Delivered, START + 10).await;
    record(store, &on_default[1], NextState::Delivered, START + 10).await;
    record(store, &on_default[2], NextState::DeadLetter, START + 10).await;

    let s1 = session(store, "s1").await;
    assert_eq!(
        s1.webhooks,
        WebhookCounts {
            delivered: 2,
            pending: 3,
            dead: 1
        }
    );
    let s2 = session(store, "s2").await;
    // s2's delivery to ep_default was claimed but not finished: still pending.
    assert_eq!(
        s2.webhooks,
        WebhookCounts {
            delivered: 0,
            pending: 2,
            dead: 0
        }
    );
}

pub async fn sessions_are_listed_most_recent_first_within_the_window(backend: Backend) {
    let store = &backend.store;
    for (id, last_seen) in [
        ("a", START + 1_000),
        ("b", START + 3_000),
        ("c", START + 2_000),
        ("d", START + 5_000),
        ("e", START + 999),
    ] {
        ingest(
            store,
            vec![
                usage_event(Usage::ok(id, "m"), START),
                usage_event(Usage::ok(id, "m"), last_seen),
            ],
        )
        .await;
    }

    let listed = store
        .sessions(START + 1_000, START + 5_000, 10)
        .await
        .expect("sessions");

    let order: Vec<_> = listed.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(
        order,
        vec!["b", "c", "a"],
        "since is inclusive, until exclusive"
    );
    assert!(
        listed
            .iter()
            .all(|s| s.queries == 2 && s.models == vec![model("m", 2, 20)])
    );
    let limited = store
        .sessions(START + 1_000, START + 5_000, 2)
        .await
        .expect("sessions");
    let order: Vec<_> = limited.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(order, vec!["b", "c"]);
    let everything = store
        .sessions(START, START + 5_001, 100)
        .await
        .expect("sessions");
    assert_eq!(everything.len(), 5);
    assert_eq!(everything[0].session_id, "d");
}

pub async fn analytics_sums_usage_by_model_over_whole_days(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        vec![
            usage_event(Usage::ok("today-1", "model-a").took(100).tokens(50), START),
            usage_event(
                Usage::ok("today-1", "model-a")
                    .took(300)
                    .tokens(10)
                    .failed(),
                START,
            ),
            usage_event(Usage::ok("today-2", "model-b").took(200).tokens(100), START),
        ],
    )
    .await;
    // Early this morning (same UTC day), yesterday evening, and ten days ago.
    ingest(
        store,
        vec![usage_event(
            Usage::ok("dawn", "model-a").took(100).tokens(1),
            TODAY,
        )],
    )
    .await;
    ingest(
        store,
        vec![usage_event(
            Usage::ok("yesterday", "model-a").took(100).tokens(5),
            TODAY - 1,
        )],
    )
    .await;
    ingest(
        store,
        vec![usage_event(
            Usage::ok("old", "model-c").took(100).tokens(1_000),
            TODAY - 10 * DAY,
        )],
    )
    .await;
    // Webhooks: yesterday one delivered; today two delivered and one dead-lettered.
    let yesterday = claim(store, TODAY - 1, &ep_default(), ALL).await;
    assert_eq!(yesterday.len(), 2);
    record_all(store, &yesterday, NextState::Delivered, TODAY - 100).await;
    let today = claim(store, START, &ep_default(), ALL).await;
    assert_eq!(today.len(), 4);
    record_all(store, &today[..2], NextState::Delivered, START).await;
    record(store, &today[2], NextState::DeadLetter, START).await;
    record(store, &today[3], NextState::RetryAt(START + 60_000), START).await;

    let one = store.analytics(START, 1).await.expect("analytics");
    assert_eq!((one.since_ms, one.days), (TODAY, 1));
    assert_eq!((one.sessions.total, one.sessions.total_queries), (3, 4));
    assert_eq!(
        (one.queries.total, one.queries.successes, one.queries.tokens),
        (4, 3, 161)
    );
    assert!(
        close(one.queries.success_rate, 0.75),
        "{:?}",
        one.queries.success_rate
    );
    assert!(close(one.queries.avg_response_time_ms, 175.0));
    assert_eq!(
        one.models,
        vec![model("model-b", 1, 100), model("model-a", 3, 61)]
    );
    assert_eq!(
        (
            one.webhooks.delivered,
            one.webhooks.dead_lettered,
            one.webhooks.attempts
        ),
        (2, 1, 4)
    );
    assert!(close(one.webhooks.success_rate, 2.0 / 3.0));

    let two = store.analytics(START, 2).await.expect("analytics");
    assert_eq!(two.since_ms, TODAY - DAY);
    assert_eq!(
        (two.sessions.total, two.queries.total, two.queries.tokens),
        (4, 5, 166)
    );
    assert_eq!(
        two.models,
        vec![model("model-b", 1, 100), model("model-a", 4, 66)]
    );
    assert_eq!((two.webhooks.delivered, two.webhooks.attempts), (4, 6));

    let month = store.analytics(START, 30).await.expect("analytics");
    assert_eq!((month.sessions.total, month.queries.total), (5, 6));
    assert_eq!(month.models[0], model("model-c", 1, 1_000));
}

pub async fn analytics_of_an_empty_period_has_no_rates(backend: Backend) {
    let store = &backend.store;
    ingest(
        store,
        vec![usage_event(Usage::ok("old", "m"), START - 40 * DAY)],
    )
    .await;

    let empty = store.analytics(START, 7).await.expect("analytics");

    assert_eq!(
        (
            empty.sessions.total,
            empty.queries.total,
            empty.queries.tokens
        ),
        (0, 0, 0)
    );
    assert_eq!(empty.queries.success_rate, None);
    assert_eq!(empty.queries.avg_response_time_ms, None);
    assert_eq!(empty.webhooks.success_rate, None);
    assert!(empty.models.is_empty());
}

pub async fn concurrent_usage_from_two_instances_adds_up(backend: Backend) {
    let store = backend.store.clone();
    let other = backend.second_instance().await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8i64 {
        let instance = if task % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.spawn(async move {
            for i in 0..25i64 {
                let n = task * 25 + i;
                // m1 for one call in four (3 tokens each), m2 for the rest (4 tokens each).
                let mut usage = if n % 4 == 0 {
                    Usage::ok("shared", "m1").tokens(3)
                } else {
                    Usage::ok("shared", "m2").tokens(4)
                }
                .took(10);
                if n % 5 == 0 {
                    usage = usage.failed();
                }
                // Alternately one event per call and a pair per call.
                let events = if i % 2 == 0 {
                    vec![usage_event(usage, START + n)]
                } else {
                    vec![
                        usage_event(usage.clone(), START + n),
                        usage_event(Usage::ok(&format!("own-{task}"), "m3"), START + n),
                    ]
                };
                instance.ingest(events).await.expect("ingest");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }

    let shared = session(&store, "shared").await;
    assert_eq!(
        (shared.queries, shared.successes, shared.failures),
        (200, 160, 40)
    );
    assert_eq!(
        (shared.total_response_time_ms, shared.estimated_tokens),
        (2_000, 750)
    );
    assert_eq!(
        (shared.first_seen_ms, shared.last_seen_ms),
        (START, START + 199)
    );
    assert_eq!(
        shared.models,
        vec![model("m2", 150, 600), model("m1", 50, 150)],
        "per model, the tokens too"
    );
    for task in 0..8 {
        assert_eq!(session(&other, &format!("own-{task}")).await.queries, 12);
    }
    let analytics = other.analytics(START, 1).await.expect("analytics");
    assert_eq!(
        (analytics.queries.total, analytics.sessions.total),
        (296, 9)
    );
    assert_eq!(
        (analytics.queries.successes, analytics.queries.tokens),
        (256, 1_710)
    );
    assert_eq!(
        analytics.models,
        vec![
            model("m3", 96, 960),
            model("m2", 150, 600),
            model("m1", 50, 150)
        ]
    );
}
