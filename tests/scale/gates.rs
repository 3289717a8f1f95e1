//! Three instances on one schema send to an endpoint as one: its rate limit holds for their
//! sum, and when it goes down only one probe round at a time reaches it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    SERIAL,
    harness::{Instance, Receiver, Role, TestSchema, poll_until, post_usage, postgres_url},
};

/// Requests per second the endpoint is limited to (its burst is as large: `RateLimit::new`).
const RATE: usize = 20;

/// Arrivals per wall-clock second, from the receiver's log.
fn per_second(log: &[(u64, u16)]) -> BTreeMap<u64, usize> {
    let mut seconds = BTreeMap::new();
    for (at, _) in log {
        *seconds.entry(at / 1000).or_default() += 1;
    }
    seconds
}

async fn three_instances(
    schema: &TestSchema,
    receiver: &Receiver,
    settings: &[(&str, &str)],
) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start_with(Role::All, schema, receiver, settings).await);
    }
    instances
}

async fn post_events(instances: &[Instance], count: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let url = instances[n % instances.len()].ingest_url();
        let ack = post_usage(&http, &url, n).await.expect("accepted");
        ids.push(ack.id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_hold_an_endpoints_rate_limit_together() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("three_instances_hold_an_endpoints_rate_limit_together") else {
        return;
    };
    let schema = TestSchema::create(&url, "gate_rate").await;
    // The receiver takes RATE a second and answers 429 beyond, as a catch hook does.
    let receiver = Receiver::start_limited(RATE).await;
    let rate = RATE.to_string();
    let instances = three_instances(
        &schema,
        &receiver,
        &[("HOOKRELAY_ENDPOINT_RATE_LIMIT", &rate)],
    )
    .await;
    let events = 8 * RATE;
    let ids = post_events(&instances, events).await;
    receiver
        .wait_for_all(ids.iter(), Duration::from_secs(20), Duration::from_secs(60))
        .await;

    let log = receiver.log();
    let seconds = per_second(&log);
    let busiest = seconds.values().copied().max().unwrap_or(0);
    let refused = log.iter().filter(|(_, status)| *status == 429).count();
    eprintln!(
        "{events} events through 3 instances, limit {RATE}/s (burst {RATE}): arrivals per second {:?}, {refused} answered 429",
        seconds.values().collect::<Vec<_>>()
    );
    // GCRA lets the burst go at once, then RATE a second: no wall-clock second sees more.
    assert!(
        busiest <= 2 * RATE,
        "{busiest} requests in one second, limit {RATE}/s + burst {RATE}"
    );
    schema
        .wait_for_status(
            "delivered",
            i64::try_from(events).expect("count"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        schema.count_status("dead").await,
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_send_an_endpoint_that_is_down_one_probe_round_at_a_time() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("three_instances_send_an_endpoint_that_is_down") else {
        return;
    };
    let schema = TestSchema::create(&url, "gate_down").await;
    let receiver = Receiver::start(Duration::ZERO).await;
    receiver.set_down(true);
    // A circuit that opens after 10 failing events, cools down 1 s (doubling), probes 3.
    let instances = three_instances(
        &schema,
        &receiver,
        &[
            ("HOOKRELAY_CIRCUIT_FAILURE_THRESHOLD", "10"),
            ("HOOKRELAY_CIRCUIT_COOLDOWN_SECONDS", "1"),
            ("HOOKRELAY_CIRCUIT_PROBES", "3"),
            ("WEBHOOK_MAX_RETRIES", "20"),
        ],
    )
    .await;
    let ids = post_events(&instances, 200).await;
    // The circuit opens (some instance saw ten events fail)...
    let opened_at = poll_until(Duration::from_secs(20), "the circuit to open", || async {
        let gate: Option<(String, i64)> = sqlx::query_as(
            "SELECT circuit, changed_at_ms FROM endpoint_gates WHERE endpoint_id = 'ep_default'",
        )
        .fetch_optional(&schema.pool)
        .await
        .expect("read the gate");
        gate.filter(|(circuit, _)| circuit != "closed")
            .map(|(_, at)| at)
    })
    .await;
    // ...then for a while only probes reach the receiver.
    // The window watched: from 2 s after the opening (requests in flight then have answered)
    // for 8 s. Waiting out a window is the measurement here, not a guess at readiness.
    let settled = u64::try_from(opened_at).expect("time") + 2_000;
    let end = settled + 8_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    tokio::time::sleep(Duration::from_millis(end.saturating_sub(now))).await;
    let log = receiver.log();
    let during: Vec<u64> = log
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| (settled..end).contains(at))
        .collect();
    let before = log.iter().filter(|(at, _)| *at < settled).count();
    eprintln!(
        "receiver down: {before} requests until 2 s after the circuit opened, then {} in 8 s: {:?}",
        during.len(),
        during.iter().map(|at| at - settled).collect::<Vec<_>>()
    );
    // Cool-downs of 1, 2, 4, 8 s (each from the round before's failure): at most four rounds
    // of three in 8 s, however many instances; three instances each probing on their own
    // would send three times that.
    assert!(
        during.len() <= 4 * 3,
        "{} requests reached a dead receiver in 8 s",
        during.len()
    );

    // Back up: the next probe closes the circuit and everything arrives, nothing dead.
    receiver.set_down(false);
    receiver
        .wait_for_all(ids.iter(), Duration::from_secs(40), Duration::from_secs(90))
        .await;
    assert_eq!(schema.count_status("dead").await, 0);
    let _keep: Arc<Vec<Instance>> = Arc::new(instances);
}

/// Deliveries taken by the worker without a claim, from an instance's `/metrics`.
async fn handed_over(http: &reqwest::Client, instance: &Instance) -> u64 {
    let metrics = http
        .get(format!("{}/metrics", instance.address()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("hookrelay_deliveries_taken_total") && line.contains("via=\"handoff\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_another_instance_saw_stops_deliveries_being_handed_over() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("a_pause_another_instance_saw_stops_deliveries_being_handed_over")
    else {
        return;
    };
    let schema = TestSchema::create(&url, "gate_handoff").await;
    let receiver = Receiver::start(Duration::ZERO).await;
    // The worker re-reads the gates only every 30 s: until then it still has room for the
    // endpoint, and only ingest's own look at the gate keeps the pause.
    let instance = Instance::start_with(
        Role::All,
        &schema,
        &receiver,
        &[("HOOKRELAY_POLL_INTERVAL_SECONDS", "30")],
    )
    .await;
    let http = reqwest::Client::new();
    // Events go one at a time until one is handed over (the worker offers room once its
    // loop has gone round).
    let mut sent = 0;
    poll_until(Duration::from_secs(20), "an event handed over", || {
        sent += 1;
        let (http, instance, receiver, n) = (&http, &instance, &receiver, sent);
        async move {
            post_usage(http, &instance.ingest_url(), n)
                .await
                .expect("accepted");
            poll_until(Duration::from_secs(10), "the event to arrive", || async {
                (receiver.arrived() >= n).then_some(())
            })
            .await;
            (handed_over(http, instance).await > 0).then_some(())
        }
    })
    .await;

    // Another instance was told to back off (a 429 with Retry-After): it wrote the pause.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    sqlx::query("UPDATE endpoint_gates SET paused_until_ms = $1 WHERE endpoint_id = 'ep_default'")
        .bind(now_ms + 600_000)
        .execute(&schema.pool)
        .await
        .expect("pause the gate");
    let mut paused = Vec::new();
    for n in sent + 1..=sent + 5 {
        let ack = post_usage(&http, &instance.ingest_url(), n)
            .await
            .expect("accepted");
        paused.push(ack.id);
    }
    // Stored due, not leased to the worker: a claim skips them while the gate holds.
    let (due, leased): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE lease_token IS NULL),
                COUNT(*) FILTER (WHERE lease_token IS NOT NULL)
         FROM deliveries WHERE event_id = ANY($1) AND status = 'pending'",
    )
    .bind(&paused)
    .fetch_one(&schema.pool)
    .await
    .expect("read the deliveries");
    assert_eq!(
        (due, leased),
        (5, 0),
        "deliveries of events accepted during the pause"
    );
}
