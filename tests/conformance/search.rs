//! What the operator's dashboard reads: deliveries by filter (pages and counts), replay and purge
//! of chosen dead letters, roll-up series and each endpoint's recent attempts.

use std::sync::Arc;

use hookrelay::{
    domain::{DeliveryId, EndpointId, EventId},
    store::{ClaimedDelivery, DeliveryFilter, DeliveryStatus, NextState, Selection, Store},
};

use crate::{backends::Backend, support::*};

/// A delivery as the test set it up: what every filter is checked against.
#[derive(Debug, Clone)]
struct Known {
    id: DeliveryId,
    event: EventId,
    endpoint: EndpointId,
    session: Option<String>,
    created: i64,
    status: DeliveryStatus,
}

impl Known {
    fn matches(&self, f: &DeliveryFilter) -> bool {
        f.session_id
            .as_ref()
            .is_none_or(|s| self.session.as_ref() == Some(s))
            && f.event_id.as_ref().is_none_or(|e| *e == self.event)
            && f.endpoint_id.as_ref().is_none_or(|e| *e == self.endpoint)
            && f.status.is_none_or(|s| s == self.status)
            && f.since_ms.is_none_or(|t| self.created >= t)
            && f.until_ms.is_none_or(|t| self.created < t)
    }
}

fn orders() -> EndpointId {
    endpoint_id("ep_orders")
}

/// Claims every due delivery of both endpoints at `now`.
async fn claim_both(store: &Arc<dyn Store>, now: i64) -> Vec<ClaimedDelivery> {
    store
        .claim_due(
            now,
            LEASE,
            "conformance".into(),
            vec![(ep_default(), ALL), (orders(), ALL)],
        )
        .await
        .expect("claim_due")
}

/// Six events a second apart from `START` (two sessions, two endpoints) and their ten
/// deliveries: some delivered, some dead, the rest pending.
async fn world(store: &Arc<dyn Store>) -> Vec<Known> {
    with_default_endpoint(store).await;
    create(store, endpoint("ep_orders", &["order.*"], START)).await;
    let events = vec![
        usage_event(Usage::ok("s1", "m"), START),
        event("order.created", START + 1_000),
        usage_event(Usage::ok("s2", "m"), START + 2_000),
        event("order.paid", START + 3_000),
        usage_event(Usage::ok("s1", "m"), START + 4_000),
        event("order.created", START + 5_000),
    ];
    ingest(store, events).await;
    let claimed = claim_both(store, START + 10_000).await;
    assert_eq!(claimed.len(), 9, "six to ep_default, three to ep_orders");
    let mut known = Vec::new();
    let mut records = Vec::new();
    for c in &claimed {
        // By when the event came and where it goes: delivered, dead or left pending.
        let second = (c.event_created_at_ms - START) / 1_000;
        let next = match (second, c.endpoint_id == orders()) {
            (0 | 1, false) | (3, true) => Some(NextState::Delivered),
            (2 | 3, false) | (1, true) => Some(NextState::DeadLetter),
            _ => None,
        };
        let status = match next {
            Some(NextState::Delivered) => DeliveryStatus::Delivered,
            Some(_) => DeliveryStatus::Dead,
            None => DeliveryStatus::Pending,
        };
        if let Some(next) = next {
            records.push(attempt(c, next, START + 10_000, 5));
        }
        known.push(Known {
            id: c.id.clone(),
            event: c.event_id.clone(),
            endpoint: c.endpoint_id.clone(),
            session: c.session_id.clone(),
            created: c.event_created_at_ms,
            status,
        });
    }
    store
        .record_attempts(records, vec![], START + 10_005)
        .await
        .expect("record_attempts");
    known
}

/// Checks a search (one page of everything) and a count against what the test set up; returns
/// how many matched.
async fn check(store: &Arc<dyn Store>, known: &[Known], filter: DeliveryFilter) -> usize {
    let mut expected: Vec<&Known> = known.iter().filter(|k| k.matches(&filter)).collect();
    expected.sort_by(|a, b| b.id.cmp(&a.id));
    let page = store
        .search_deliveries(filter.clone(), None, 100)
        .await
        .expect("search_deliveries");
    let found: Vec<_> = page.deliveries.iter().map(|d| d.id.clone()).collect();
    let wanted: Vec<_> = expected.iter().map(|k| k.id.clone()).collect();
    assert_eq!(found, wanted, "search with {filter:?}");
    assert_eq!(
        page.next_before, None,
        "one page holds them all: {filter:?}"
    );
    for (d, k) in page.deliveries.iter().zip(&expected) {
        assert_eq!(
            (
                &d.event_id,
                &d.endpoint_id,
                &d.session_id,
                d.status,
                d.created_at_ms
            ),
            (&k.event, &k.endpoint, &k.session, k.status, k.created),
            "what the search says of {}",
            k.id
        );
    }
    let count = store
        .count_deliveries(filter.clone())
        .await
        .expect("count_deliveries");
    assert_eq!(count, expected.len() as u64, "count with {filter:?}");
    expected.len()
}

pub async fn each_filter_alone_narrows_the_search_and_the_count(backend: Backend) {
    let store = &backend.store;
    let known = world(store).await;
    let all = check(store, &known, DeliveryFilter::default()).await;
    assert_eq!(all, 9);
    let some = |n: usize| assert!(n > 0 && n < all, "{n} of {all}: the filter narrows");
    let filters = [
        DeliveryFilter {
            session_id: Some("s1".into()),
            ..Default::default()
        },
        DeliveryFilter {
            event_id: Some(
                known
                    .iter()
                    .find(|k| k.endpoint == orders())
                    .expect("an order")
                    .event
                    .clone(),
            ),
            ..Default::default()
        },
        DeliveryFilter {
            endpoint_id: Some(orders()),
            ..Default::default()
        },
        DeliveryFilter {
            status: Some(DeliveryStatus::Pending),
            ..Default::default()
        },
        DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            ..Default::default()
        },
        DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            ..Default::default()
        },
        DeliveryFilter {
            since_ms: Some(START + 2_000),
            ..Default::default()
        },
        DeliveryFilter {
            until_ms: Some(START + 2_000),
            ..Default::default()
        },
    ];
    for filter in filters {
        some(check(store, &known, filter).await);
    }
    let nobody = DeliveryFilter {
        session_id: Some("nobody".into()),
        ..Default::default()
    };
    assert_eq!(check(store, &known, nobody).await, 0);
}

pub async fn filters_combine(backend: Backend) {
    let store = &backend.store;
    let known = world(store).await;
    let combined = [
        // A session and a status.
        DeliveryFilter {
            session_id: Some("s1".into()),
            status: Some(DeliveryStatus::Delivered),
            ..Default::default()
        },
        // An endpoint and pending (the claim index's own condition).
        DeliveryFilter {
            endpoint_id: Some(ep_default()),
            status: Some(DeliveryStatus::Pending),
            ..Default::default()
        },
        // An endpoint in a time range.
        DeliveryFilter {
            endpoint_id: Some(orders()),
            since_ms: Some(START + 1_000),
            until_ms: Some(START + 5_000),
            ..Default::default()
        },
        // A session in a time range.
        DeliveryFilter {
            session_id: Some("s1".into()),
            since_ms: Some(START + 1),
            ..Default::default()
        },
        // An event and an endpoint.
        DeliveryFilter {
            event_id: Some(
                known
                    .iter()
                    .find(|k| k.endpoint == orders())
                    .expect("an order")
                    .event
                    .clone(),
            ),
            endpoint_id: Some(orders()),
            ..Default::default()
        },
        // Dead in a time range, on one endpoint.
        DeliveryFilter {
            endpoint_id: Some(ep_default()),
            status: Some(DeliveryStatus::Dead),
            since_ms: Some(START + 3_000),
            ..Default::default()
        },
    ];
    for filter in combined {
        // Each field that is set, alone.
        let parts = [
            filter.session_id.clone().map(|s| DeliveryFilter {
                session_id: Some(s),
                ..Default::default()
            }),
            filter.event_id.clone().map(|e| DeliveryFilter {
                event_id: Some(e),
                ..Default::default()
            }),
            filter.endpoint_id.clone().map(|e| DeliveryFilter {
                endpoint_id: Some(e),
                ..Default::default()
            }),
            filter.status.map(|s| DeliveryFilter {
                status: Some(s),
                ..Default::default()
            }),
            (filter.since_ms.is_some() || filter.until_ms.is_some()).then(|| DeliveryFilter {
                since_ms: filter.since_ms,
                until_ms: filter.until_ms,
                ..Default::default()
            }),
        ];
        let alone: Vec<usize> = parts
            .iter()
            .flatten()
            .map(|part| known.iter().filter(|k| k.matches(part)).count())
            .collect();
        let n = check(store, &known, filter.clone()).await;
        assert!(n > 0, "{filter:?} matches something");
        assert!(
            alone.len() >= 2 && alone.iter().all(|&m| n < m),
            "{filter:?}: together the fields narrow more than each alone ({n} vs {alone:?})"
        );
    }
}

pub async fn paging_returns_every_delivery_once_newest_first(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    // Stored out of order, in three calls: the order is the events' acceptance.
    for chunk in [(10..25), (0..5), (5..10)] {
        ingest(
            store,
            chunk
                .map(|i| event("order.created", START + i * 7))
                .collect(),
        )
        .await;
    }
    for size in [10, 5] {
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = store
                .search_deliveries(DeliveryFilter::default(), before.clone(), size)
                .await
                .expect("search_deliveries");
            pages += 1;
            assert!(page.deliveries.len() <= size);
            seen.extend(
                page.deliveries
                    .iter()
                    .map(|d| (d.id.clone(), d.created_at_ms)),
            );
            match page.next_before {
                Some(next) => {
                    assert_eq!(page.deliveries.len(), size, "only the last page is short");
                    assert_eq!(Some(&next), page.deliveries.last().map(|d| &d.id));
                    before = Some(next);
                }
                None => break,
            }
            assert!(pages < 10, "paging ends");
        }
        assert_eq!(pages, 25_usize.div_ceil(size), "pages of {size}");
        let times: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
        let newest_first: Vec<i64> = (0..25).rev().map(|i| START + i * 7).collect();
        assert_eq!(
            times, newest_first,
            "each once, newest first, pages of {size}"
        );
        let mut ids: Vec<_> = seen.iter().map(|(id, _)| id.clone()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 25);
    }
}

pub async fn since_is_inclusive_and_until_exclusive(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let t = START + 10 * MINUTE;
    let u = t + 3 * MINUTE;
    let times = [t - 1, t, t + 1, u - 1, u, u + 1];
    ingest(
        store,
        times.iter().map(|&at| event("order.created", at)).collect(),
    )
    .await;
    let created = |filter: DeliveryFilter| {
        let store = Arc::clone(store);
        async move {
            let page = store
                .search_deliveries(filter.clone(), None, 100)
                .await
                .expect("search_deliveries");
            let count = store.count_deliveries(filter).await.expect("count");
            let mut at: Vec<i64> = page.deliveries.iter().map(|d| d.created_at_ms).collect();
            assert_eq!(count, at.len() as u64);
            at.reverse();
            at
        }
    };
    let range = |since, until| DeliveryFilter {
        since_ms: since,
        until_ms: until,
        ..Default::default()
    };
    assert_eq!(
        created(range(Some(t), None)).await,
        [t, t + 1, u - 1, u, u + 1]
    );
    assert_eq!(
        created(range(None, Some(u))).await,
        [t - 1, t, t + 1, u - 1]
    );
    assert_eq!(created(range(Some(t), Some(u))).await, [t, t + 1, u - 1]);
    assert_eq!(created(range(Some(t + 1), Some(u - 1))).await, [t + 1]);
    assert_eq!(created(range(Some(t), Some(t))).await, Vec::<i64>::new());
    assert_eq!(created(range(Some(u + 2), None)).await, Vec::<i64>::new());
}

/// Dead letters of both endpoints and sessions: `world`'s, plus what else is there.
fn dead(known: &[Known]) -> Vec<&Known> {
    known
        .iter()
        .filter(|k| k.status == DeliveryStatus::Dead)
        .collect()
}

async fn status_of(store: &Arc<dyn Store>, id: &DeliveryId) -> Option<DeliveryStatus> {
    store
        .delivery(id.clone())
        .await
        .expect("delivery")
        .map(|d| d.summary.status)
}

pub async fn replaying_or_purging_ids_acts_only_on_dead_letters(backend: Backend) {
    let store = &backend.store;
    let known = world(store).await;
    let dead = dead(&known);
    assert_eq!(dead.len(), 3);
    let delivered = known
        .iter()
        .find(|k| k.status == DeliveryStatus::Delivered)
        .expect("one");
    let pending = known
        .iter()
        .find(|k| k.status == DeliveryStatus::Pending)
        .expect("one");

    let chosen = vec![
        dead[0].id.clone(),
        delivered.id.clone(),
        pending.id.clone(),
        DeliveryId::generate(),
    ];
    let replayed = store
        .replay(Selection::Ids(chosen), START + 20_000)
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    assert_eq!(
        status_of(store, &dead[0].id).await,
        Some(DeliveryStatus::Pending)
    );
    assert_eq!(
        status_of(store, &dead[1].id).await,
        Some(DeliveryStatus::Dead)
    );
    assert_eq!(
        status_of(store, &delivered.id).await,
        Some(DeliveryStatus::Delivered)
    );

    let purged = store
        .purge(Selection::Ids(vec![
            dead[1].id.clone(),
            delivered.id.clone(),
            pending.id.clone(),
            dead[0].id.clone(),
        ]))
        .await
        .expect("purge");
    assert_eq!(purged, 1, "only the one still dead");
    assert_eq!(status_of(store, &dead[1].id).await, None);
    assert_eq!(
        status_of(store, &dead[0].id).await,
        Some(DeliveryStatus::Pending)
    );
    assert_eq!(
        status_of(store, &delivered.id).await,
        Some(DeliveryStatus::Delivered)
    );
    assert_eq!(
        status_of(store, &pending.id).await,
        Some(DeliveryStatus::Pending)
    );
    assert_eq!(
        status_of(store, &dead[2].id).await,
        Some(DeliveryStatus::Dead)
    );

    // More ids than one statement takes: the dead letter at the end is found all the same.
    let mut many: Vec<DeliveryId> = (0..1_500).map(|_| DeliveryId::generate()).collect();
    many.push(dead[2].id.clone());
    assert_eq!(store.purge(Selection::Ids(many)).await.expect("purge"), 1);
    assert_eq!(store.counts().await.expect("counts").dead, 0);
}

pub async fn replaying_or_purging_matching_acts_only_on_matching_dead_letters(backend: Backend) {
    let store = &backend.store;
    let known = world(store).await;
    let dead = dead(&known);
    let on = |endpoint: &EndpointId| -> Vec<DeliveryId> {
        dead.iter()
            .filter(|k| k.endpoint == *endpoint)
            .map(|k| k.id.clone())
            .collect()
    };
    assert_eq!((on(&orders()).len(), on(&ep_default()).len()), (1, 2));

    // The filter's status is ignored: only dead letters are replayed.
    let replayed = store
        .replay(
            Selection::Matching(DeliveryFilter {
                endpoint_id: Some(orders()),
                status: Some(DeliveryStatus::Delivered),
                ..Default::default()
            }),
            START + 20_000,
        )
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    assert_eq!(
        status_of(store, &on(&orders())[0]).await,
        Some(DeliveryStatus::Pending)
    );
    for id in on(&ep_default()) {
        assert_eq!(status_of(store, &id).await, Some(DeliveryStatus::Dead));
    }
    let delivered_orders = known
        .iter()
        .find(|k| k.endpoint == orders() && k.status == DeliveryStatus::Delivered)
        .expect("one");
    assert_eq!(
        status_of(store, &delivered_orders.id).await,
        Some(DeliveryStatus::Delivered)
    );

    // ep_default's dead letters are events 2 and 3 (s2's usage event and an order): purge the
    // one from s2 only.
    let purged = store
        .purge(Selection::Matching(DeliveryFilter {
            session_id: Some("s2".into()),
            ..Default::default()
        }))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let left = store.counts().await.expect("counts");
    assert_eq!(left.dead, 1);
    let by_time = store
        .replay(
            Selection::Matching(DeliveryFilter {
                since_ms: Some(START + 3_001),
                ..Default::default()
            }),
            START + 20_000,
        )
        .await
        .expect("replay");
    assert_eq!(by_time, 0, "the last dead letter is older");
    let by_time = store
        .replay(
            Selection::Matching(DeliveryFilter {
                since_ms: Some(START + 3_000),
                until_ms: Some(START + 3_001),
                ..Default::default()
            }),
            START + 20_000,
        )
        .await
        .expect("replay");
    assert_eq!(by_time, 1);
    assert_eq!(store.counts().await.expect("counts").dead, 0);
}

pub async fn matching_works_through_more_dead_letters_than_one_batch(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    let n = 1_203;
    ingest(
        store,
        (0..n).map(|i| event("order.created", START + i)).collect(),
    )
    .await;
    settle_all(store, START + 10_000, NextState::DeadLetter).await;
    let mine = DeliveryFilter {
        endpoint_id: Some(ep_default()),
        since_ms: Some(START + 3),
        ..Default::default()
    };
    let replayed = store
        .replay(Selection::Matching(mine.clone()), START + 20_000)
        .await
        .expect("replay");
    assert_eq!(replayed, n as u64 - 3);
    assert_eq!(store.counts().await.expect("counts").dead, 3);
    let purged = store
        .purge(Selection::Matching(DeliveryFilter::default()))
        .await
        .expect("purge");
    assert_eq!(purged, 3);
}

/// Sums a series' buckets.
fn total(series: &[(i64, hookrelay::domain::WindowTotals)]) -> hookrelay::domain::WindowTotals {
    series
        .iter()
        .fold(hookrelay::domain::WindowTotals::default(), |sum, (_, t)| {
            sum.merged(t)
        })
}

pub async fn series_buckets_sum_to_the_window_totals(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    // Events in minutes 0, 1, 2, 3, 8 and 9, each attempted in the minute it came.
    for minute in [0, 1, 2, 3, 8, 9] {
        let at = START + minute * MINUTE + 10;
        ingest(store, vec![event("order.created", at)]).await;
        let next = if minute % 2 == 0 {
            NextState::Delivered
        } else {
            NextState::RetryAt(START + 100 * MINUTE)
        };
        settle_all(store, at + 1_000, next).await;
    }
    let since = START + MINUTE + 30_000;
    let step = 3 * MINUTE;
    let series = store.series(since, step).await.expect("series");
    let starts: Vec<i64> = series.iter().map(|(at, _)| *at - START).collect();
    // From minute 1 in steps of three: [1, 4), then [4, 7) with nothing (absent), [7, 10).
    assert_eq!(starts, [MINUTE, 7 * MINUTE]);
    let ingested: Vec<u64> = series.iter().map(|(_, t)| t.ingested).collect();
    assert_eq!(ingested, [3, 2]);
    let attempts: Vec<u64> = series.iter().map(|(_, t)| t.attempts).collect();
    assert_eq!(attempts, [3, 2]);
    let window = store
        .window_totals(Some(since))
        .await
        .expect("window_totals");
    assert_eq!(total(&series), window);
    assert!(window.attempts > 0 && window.successes > 0 && window.failures > 0);
    // Over everything, from before the first roll-up.
    let everything = store
        .series(START - 5 * MINUTE, MINUTE)
        .await
        .expect("series");
    let minutes: Vec<i64> = everything
        .iter()
        .map(|(at, _)| (*at - START) / MINUTE)
        .collect();
    assert_eq!(minutes, [0, 1, 2, 3, 8, 9]);
    assert_eq!(
        total(&everything),
        store.window_totals(None).await.expect("totals")
    );
    // A step that is not whole minutes is cut to whole minutes.
    assert_eq!(
        store.series(since, 90_000).await.expect("series"),
        store.series(since, MINUTE).await.expect("series")
    );
}

pub async fn endpoint_activity_counts_attempts_and_lists_the_latest_errors(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    create(store, endpoint("ep_orders", &["order.*"], START)).await;
    ingest(
        store,
        (0..4)
            .map(|i| event("usage.other", START + i))
            .chain([event("order.created", START + 9)])
            .collect(),
    )
    .await;
    // Before the window: a failure on ep_default that must not count.
    let early = claim(store, START + 100, &ep_default(), 1).await;
    record_all(
        store,
        &early,
        NextState::RetryAt(START + 1_000),
        START + 100,
    )
    .await;
    let since = START + 1_000;
    // In the window, on ep_default: two delivered, one throttled, three failures (a retry, a
    // retry, then a dead letter), at increasing times.
    let mut due = claim(store, START + 1_000, &ep_default(), ALL).await;
    due.sort_by_key(|c| c.event_created_at_ms);
    assert_eq!(due.len(), 5);
    let plan = [
        (NextState::Delivered, 1_100),
        (NextState::Throttled(START + 50_000), 1_200),
        (NextState::RetryAt(START + 50_000), 1_300),
        (NextState::RetryAt(START + 50_000), 1_400),
        (NextState::Delivered, 1_450),
    ];
    for (c, (next, at)) in due.iter().zip(plan) {
        record(store, c, next, START + at).await;
    }
    let last = claim(store, START + 50_000, &ep_default(), ALL).await;
    let failing = last
        .iter()
        .find(|c| c.throttled == 0)
        .expect("a retried delivery")
        .clone();
    record(store, &failing, NextState::DeadLetter, START + 50_100).await;
    // ep_orders: one failure.
    let order = claim(store, START + 1_000, &orders(), ALL).await;
    record_all(
        store,
        &order,
        NextState::RetryAt(START + 90_000),
        START + 1_500,
    )
    .await;

    let activity = store
        .endpoint_activity(since, 2)
        .await
        .expect("endpoint_activity");
    let ids: Vec<_> = activity.iter().map(|a| a.endpoint_id.clone()).collect();
    assert_eq!(ids, [ep_default(), orders()]);
    let default = &activity[0];
    assert_eq!(
        (default.attempts, default.successes, default.failures),
        (5, 2, 3),
        "in the window, throttled left out"
    );
    let errors: Vec<i64> = default
        .last_errors
        .iter()
        .map(|e| e.at_ms - START)
        .collect();
    assert_eq!(errors, [50_100, 1_400], "newest first, two of three");
    assert_eq!(default.last_errors[0].delivery_id, failing.id);
    assert_eq!(default.last_errors[0].status_code, Some(410));
    assert_eq!(default.last_errors[0].error_kind.as_deref(), Some("status"));
    assert!(default.last_errors[0].error_detail.is_some());
    let orders_activity = &activity[1];
    assert_eq!(
        (
            orders_activity.attempts,
            orders_activity.successes,
            orders_activity.failures
        ),
        (1, 0, 1)
    );
    assert_eq!(orders_activity.last_errors.len(), 1);
    assert_eq!(orders_activity.last_errors[0].status_code, Some(503));

    let everything = store.endpoint_activity(START, 10).await.expect("activity");
    assert_eq!((everything[0].attempts, everything[0].failures), (6, 4));
    assert_eq!(everything[0].last_errors.len(), 4);
    let none = store.endpoint_activity(since, 0).await.expect("activity");
    assert!(none.iter().all(|a| a.last_errors.is_empty()));
    assert!(
        store
            .endpoint_activity(START + 60_000, 5)
            .await
            .expect("activity")
            .is_empty()
    );
}
