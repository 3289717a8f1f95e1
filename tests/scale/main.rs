//! Several `hookrelay serve` processes on one PostgreSQL schema: they share the queue, a
//! killed one's claims are taken over by the survivors once their leases expire, the roles
//! split the work, and one instance at a time leads the monitor.
//!
//! Needs a PostgreSQL server: `HOOKRELAY_TEST_POSTGRES_URL=postgres://… cargo test --test
//! scale` (skipped without it, unless `HOOKRELAY_REQUIRE_POSTGRES=1`). The tests take turns
//! (`SERIAL`): each runs several servers, and on a small machine together they would starve
//! one another past the leases they check.

mod gates;
mod harness;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use harness::{Instance, Receiver, Role, TestSchema, poll_until, post_usage, postgres_url};

/// Held for the whole of each test, so they run one at a time whatever `--test-threads` says.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Events the three-instance test sends.
const EVENTS: usize = 10_000;
/// Client tasks sending them at once.
const CLIENTS: usize = 32;
/// Deliveries the receiver has seen when instance #2 is killed.
const KILL_AFTER: usize = 3_000;

/// What the clients of the three-instance test got back.
#[derive(Default)]
struct IngestTally {
    acknowledged: Mutex<HashSet<String>>,
    /// Events whose request to the killed instance failed, sent again to a survivor.
    resent: AtomicUsize,
    /// Of those, the ones the survivor recognised by their key: stored before the kill.
    replayed: AtomicUsize,
    /// Failed requests to instances that were alive (retried as well).
    errors_on_live: AtomicUsize,
}

/// Sends events (numbers from `next`) until `EVENTS` are taken, each to this client's
/// instance among those alive, again to a live one after a failure.
async fn ingest_client(
    client: usize,
    ingest_urls: Arc<Vec<String>>,
    alive: Arc<Vec<AtomicBool>>,
    next: Arc<AtomicUsize>,
    tally: Arc<IngestTally>,
) {
    // One keep-alive client per task, like a gateway process of its own.
    let http = reqwest::Client::new();
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= EVENTS {
            return;
        }
        let mut failed_on_killed = false;
        for attempt in 0.. {
            let live: Vec<usize> = (0..alive.len())
                .filter(|&i| alive[i].load(Ordering::SeqCst))
                .collect();
            let target = live[client % live.len()];
            match post_usage(&http, &ingest_urls[target], n).await {
                Ok(ack) => {
                    if failed_on_killed && ack.replayed {
                        tally.replayed.fetch_add(1, Ordering::SeqCst);
                    }
                    tally
                        .acknowledged
                        .lock()
                        .expect("tally lock")
                        .insert(ack.id);
                    break;
                }
                Err(error) => {
                    if !alive[target].load(Ordering::SeqCst) {
                        if !failed_on_killed {
                            tally.resent.fetch_add(1, Ordering::SeqCst);
                        }
                        failed_on_killed = true;
                    } else {
                        tally.errors_on_live.fetch_add(1, Ordering::SeqCst);
                        assert!(
                            attempt < 20,
                            "event {n}: instance #{} keeps failing: {error}",
                            target + 1
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
}

/// An attempt of a delivery, for the diagnosis of an unexpected duplicate: event id, attempt
/// number, HTTP status, error kind and outcome.
type AttemptRow = (String, i64, Option<i64>, Option<String>, String);

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_the_queue_and_survivors_take_over_a_killed_ones_leases() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("three_instances_share_the_queue") else {
        return;
    };
    let schema = TestSchema::create(&url, "three").await;
    let receiver = Receiver::start(Duration::from_millis(5)).await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(Role::All, &schema, &receiver).await);
    }
    let ingest_urls = Arc::new(
        instances
            .iter()
            .map(Instance::ingest_url)
            .collect::<Vec<_>>(),
    );
    let alive = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect::<Vec<_>>());
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(IngestTally::default());

    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(ingest_client(
            client,
            Arc::clone(&ingest_urls),
            Arc::clone(&alive),
            Arc::clone(&next),
            Arc::clone(&tally),
        ));
    }

    poll_until(
        Duration::from_secs(180),
        "the first deliveries to arrive",
        || async { (receiver.arrived() >= KILL_AFTER).then_some(()) },
    )
    .await;
    // The kill must catch instance #2 with claims out, or it proves nothing: on a loaded
    // machine it may start claiming later than the others. Several, so that they cannot all
    // be recorded in the moment between this look and the kill.
    let pattern = instances[1].like_pattern();
    poll_until(
        Duration::from_secs(60),
        "instance #2 to hold claims",
        || async {
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM deliveries
                 WHERE status = 'pending' AND lease_token IS NOT NULL AND claimed_by LIKE $1",
            )
            .bind(&pattern)
            .fetch_one(&schema.pool)
            .await
            .ok()?;
            (held >= 3).then_some(())
        },
    )
    .await;
    let arrived_at_kill = receiver.arrived();
    let sent_at_kill = next.load(Ordering::SeqCst).min(EVENTS);
    let killed_after = started.elapsed();
    alive[1].store(false, Ordering::SeqCst);
    instances[1].kill();
    let killed_at_ms = unix_ms();
    let killed = &instances[1];

    // What the killed instance had claimed and not recorded. FOR UPDATE waits for any
    // transaction of its still open on the server (a COMMIT it sent just before dying is
    // applied, anything else rolled back) and reads the rows as they then are.
    let in_flight: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, event_id FROM deliveries
         WHERE status = 'pending' AND lease_token IS NOT NULL AND claimed_by LIKE $1
         FOR UPDATE",
    )
    .bind(killed.like_pattern())
    .fetch_all(&schema.pool)
    .await
    .expect("read the killed instance's claims");
    assert!(
        !in_flight.is_empty(),
        "instance #2 had nothing in flight when killed: the test proves nothing"
    );
    let in_flight_events: HashSet<&String> = in_flight.iter().map(|(_, event)| event).collect();

    while let Some(done) = clients.join_next().await {
        done.expect("ingest client");
    }
    let acknowledged = tally.acknowledged.lock().expect("tally lock").clone();
    let ingested_after = started.elapsed();
    assert_eq!(
        acknowledged.len(),
        EVENTS,
        "every event was eventually acknowledged (keys make each event one event)"
    );

    receiver
        .wait_for_all(
            acknowledged.iter(),
            Duration::from_secs(30),
            Duration::from_secs(300),
        )
        .await;
    let all_arrived_after = started.elapsed();
    poll_until(
        Duration::from_secs(30),
        "no delivery left pending",
        || async { (schema.count_status("pending").await == 0).then_some(()) },
    )
    .await;
    assert_eq!(schema.count_status("dead").await, 0, "dead deliveries");

    // Whatever the database holds arrived: the events stored but never acknowledged too.
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM deliveries")
        .fetch_all(&schema.pool)
        .await
        .expect("read deliveries");
    let per_id = receiver.per_id();
    let never_arrived: Vec<&String> = stored
        .iter()
        .filter(|id| !per_id.contains_key(*id))
        .collect();
    assert!(
        never_arrived.is_empty(),
        "delivered in the database but never arrived: {never_arrived:?}"
    );

    // Only what was in flight at the kill may arrive twice.
    let repeated: HashMap<&String, usize> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id, *n))
        .collect();
    let unexplained: Vec<_> = repeated
        .iter()
        .filter(|(id, _)| !in_flight_events.contains(*id))
        .collect();
    if !unexplained.is_empty() {
        let ids: Vec<String> = unexplained.iter().map(|(id, _)| (**id).clone()).collect();
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT d.event_id, a.attempt_no, a.status_code, a.error_kind, a.outcome
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.event_id = ANY($1) ORDER BY d.event_id, a.id",
        )
        .bind(&ids)
        .fetch_all(&schema.pool)
        .await
        .expect("read attempts");
        panic!(
            "{} event(s) arrived more than once without having been in flight at the kill: \
             {unexplained:?}; their attempts: {attempts:?}",
            unexplained.len()
        );
    }
    let duplicates: usize = repeated.values().map(|n| n - 1).sum();
    assert!(duplicates <= in_flight.len());

    // The survivors took the killed instance's claims over and delivered them.
    let ids: Vec<String> = in_flight.iter().map(|(id, _)| id.clone()).collect();
    let finished: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT id, status, claimed_by, finished_at FROM deliveries WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&schema.pool)
    .await
    .expect("read the taken-over deliveries");
    assert_eq!(finished.len(), in_flight.len());
    let taken_over_ms = finished
        .iter()
        .filter_map(|(_, _, _, at)| *at)
        .max()
        .map_or(0, |at| at - killed_at_ms);
    for (id, status, claimed_by, _) in &finished {
        assert_eq!(status, "delivered", "delivery {id}");
        let claimant = claimed_by.as_deref().unwrap_or_default();
        assert!(
            instances[0].names(claimant) || instances[2].names(claimant),
            "delivery {id} was in flight at the kill and ends claimed by {claimant:?}, \
             not by a survivor (pids {} and {})",
            instances[0].pid,
            instances[2].pid
        );
    }

    let per_second = |events: usize, took: Duration| events as f64 / took.as_secs_f64();
    println!(
        "scale: 3 instances, {} events acknowledged ({sent_at_kill} sent and {arrived_at_kill} \
         delivered before the kill at {killed_after:.2?}; {} re-sent to a survivor after the \
         kill, {} of them already stored; {} errors from live instances), {} in flight at the \
         kill (the last of them delivered by a survivor {:.1} s after it), {duplicates} duplicate(s) ({} event(s) \
         repeated); all ingested after \
         {ingested_after:.2?}, all arrived after {all_arrived_after:.2?}: {:.0} delivered \
         events/s overall, {:.0}/s before the kill",
        acknowledged.len(),
        tally.resent.load(Ordering::SeqCst),
        tally.replayed.load(Ordering::SeqCst),
        tally.errors_on_live.load(Ordering::SeqCst),
        in_flight.len(),
        taken_over_ms as f64 / 1000.0,
        repeated.len(),
        per_second(per_id.len(), all_arrived_after),
        per_second(arrived_at_kill, killed_after),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_roles_split_the_work() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("api_and_worker_roles_split_the_work") else {
        return;
    };
    let schema = TestSchema::create(&url, "roles").await;
    let receiver = Receiver::start(Duration::from_millis(2)).await;
    // The worker sets ep_default up; the API instance, started after it without
    // ZAPIER_WEBHOOK_URL, must leave it enabled, and be ready without a worker of its own.
    let worker = Instance::start(Role::Worker, &schema, &receiver).await;
    let api = Instance::start(Role::Api, &schema, &receiver).await;
    let ready = reqwest::get(format!("{}/ready", api.address()))
        .await
        .expect("GET /ready");
    assert_eq!(ready.status(), 200, "an API-only instance is ready");

    let ingest_url = api.ingest_url();
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (ingest_url, next) = (ingest_url.clone(), Arc::clone(&next));
        clients.spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= 500 {
                    return ids;
                }
                let ack = post_usage(&http, &ingest_url, n)
                    .await
                    .unwrap_or_else(|e| panic!("event {n}: {e}"));
                ids.push(ack.id);
            }
        });
    }
    let mut acknowledged = HashSet::new();
    while let Some(ids) = clients.join_next().await {
        acknowledged.extend(ids.expect("ingest client"));
    }
    assert_eq!(acknowledged.len(), 500);
    receiver
        .wait_for_all(
            acknowledged.iter(),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
        .await;

    let claimants: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT claimed_by, COUNT(*) FROM deliveries GROUP BY claimed_by ORDER BY claimed_by",
    )
    .fetch_all(&schema.pool)
    .await
    .expect("read claimants");
    let claimed_by_worker: i64 = claimants
        .iter()
        .filter(|(who, _)| who.as_deref().is_some_and(|who| worker.names(who)))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        claimed_by_worker, 500,
        "every delivery claimed by the worker (pid {}), none by the API (pid {}): {claimants:?}",
        worker.pid, api.pid
    );

    let (holder, _) = poll_until(Duration::from_secs(10), "a monitor leader", || async {
        schema.monitor_leader().await
    })
    .await;
    assert!(
        api.names(&holder) != worker.names(&holder),
        "the monitor lease names exactly one of api {} and worker {}: {holder}",
        api.pid,
        worker.pid
    );
    println!(
        "roles: 500 events through the API (pid {}), all delivered by the worker (pid {}); \
         monitor led by the {}",
        api.pid,
        worker.pid,
        if api.names(&holder) { "API" } else { "worker" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_leads_and_a_survivor_takes_over() {
    let _turn = SERIAL.lock().await;
    let Some(url) = postgres_url("one_instance_leads_and_a_survivor_takes_over") else {
        return;
    };
    let schema = TestSchema::create(&url, "leader").await;
    let receiver = Receiver::start(Duration::ZERO).await;
    let mut instances = [
        Instance::start(Role::All, &schema, &receiver).await,
        Instance::start(Role::All, &schema, &receiver).await,
    ];

    let (holder, mut expires_at) =
        poll_until(Duration::from_secs(10), "a monitor leader", || async {
            schema.monitor_leader().await
        })
        .await;
    let leader = instances
        .iter()
        .position(|i| i.names(&holder))
        .unwrap_or_else(|| panic!("the monitor lease names neither instance: {holder}"));
    // Two monitor ticks of 0.5 s per second: the leader renews, nobody else takes over.
    let watched = Instant::now();
    let mut renewals = 0;
    while watched.elapsed() < Duration::from_secs(3) {
        let (now_holder, now_expires) = schema.monitor_leader().await.expect("a lease row");
        assert_eq!(now_holder, holder, "the leader changed with both alive");
        if now_expires > expires_at {
            renewals += 1;
            expires_at = now_expires;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewals >= 2,
        "the leader renewed its lease {renewals} times in 3 s"
    );

    instances[leader].kill();
    let killed_at = Instant::now();
    let survivor = &instances[1 - leader];
    let new_holder = poll_until(
        Duration::from_secs(10),
        "the survivor to take the monitor lease over",
        || async {
            schema
                .monitor_leader()
                .await
                .map(|(holder, _)| holder)
                .filter(|holder| survivor.names(holder))
        },
    )
    .await;
    println!(
        "leader: pid {} led ({renewals} renewals in 3 s); killed, pid {} ({new_holder}) took \
         over after {:.2?}",
        instances[leader].pid,
        survivor.pid,
        killed_at.elapsed()
    );
}

/// What the load of the PostgreSQL fault test got back.
#[derive(Default)]
struct FaultTally {
    acknowledged: Mutex<HashSet<String>>,
    /// 503s that carried `Retry-After` and a JSON `storage_unavailable` reason.
    unavailable: AtomicUsize,
    /// Anything else that was not a 202: a wrong status, a body without a reason, no answer.
    wrong: Mutex<Vec<String>>,
    /// When each 202 came, for "resumed within seconds".
    acknowledged_at: Mutex<Vec<Instant>>,
}

async fn fault_client(url: String, client: usize, stop: Arc<AtomicBool>, tally: Arc<FaultTally>) {
    let http = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let body = harness::usage_event(&format!("fault-{client}-{n}"));
        let response = match http.post(&url).json(&body).send().await {
            Ok(response) => response,
            Err(e) => {
                tally
                    .wrong
                    .lock()
                    .expect("tally")
                    .push(format!("no answer: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        match status {
            202 => {
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                tally.acknowledged.lock().expect("tally").insert(id);
                tally
                    .acknowledged_at
                    .lock()
                    .expect("tally")
                    .push(Instant::now());
            }
            503 if retry_after && body["code"] == "storage_unavailable" => {
                tally.unavailable.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => tally
                .wrong
                .lock()
                .expect("tally")
                .push(format!("{status} (retry-after: {retry_after}): {body}")),
        }
    }
}

#[tokio::test]
async fn postgres_going_away_under_load_answers_503_and_loses_nothing_acknowledged() {
    let Some(url) = postgres_url("postgres_going_away_under_load") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let schema = TestSchema::create(&url, "pgfault").await;
    let receiver = Receiver::start(Duration::ZERO).await;
    let mut direct = reqwest::Url::parse(&url).expect("HOOKRELAY_TEST_POSTGRES_URL is a URL");
    let target = direct
        .socket_addrs(|| Some(5432))
        .expect("PostgreSQL address")[0];
    let proxy = harness::DatabaseProxy::start(target).await;
    direct.set_port(Some(proxy.port)).expect("port");
    let mut instance = Instance::start_via(Role::All, &schema, &receiver, direct.as_str()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(FaultTally::default());
    let clients: Vec<_> = (0..8)
        .map(|client| {
            tokio::spawn(fault_client(
                instance.ingest_url(),
                client,
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();
    let acknowledged = || tally.acknowledged.lock().expect("tally").len();
    poll_until(Duration::from_secs(10), "events flowing", || async {
        (acknowledged() >= 200).then_some(())
    })
    .await;

    // Every backend of this instance terminated, three times over, under load.
    for _ in 0..3 {
        let terminated: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE client_addr IS NOT NULL AND client_port = ANY($1)",
        )
        .bind(proxy.backend_ports())
        .fetch_one(&schema.pool)
        .await
        .expect("terminate backends");
        assert!(terminated > 0, "the instance's connections were found");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then the server is gone for 3 s: connections dropped, new ones closed at once.
    proxy.cut();
    let cut_at = Instant::now();
    let unavailable_before = tally.unavailable.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tally.unavailable.load(Ordering::SeqCst) > unavailable_before,
        "ingest answered 503 while the database was away"
    );
    assert!(instance.is_running(), "hookrelay kept running");
    proxy.restore();
    let restored_at = Instant::now();
    let resumed = poll_until(Duration::from_secs(10), "ingest to resume", || async {
        tally
            .acknowledged_at
            .lock()
            .expect("tally")
            .iter()
            .copied()
            .find(|at| *at > restored_at)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client");
    }
    assert!(instance.is_running(), "hookrelay kept running");
    let wrong = tally.wrong.lock().expect("tally").clone();
    assert!(
        wrong.is_empty(),
        "answers other than 202 or a 503 with a reason: {wrong:?}"
    );

    let ids: Vec<String> = tally
        .acknowledged
        .lock()
        .expect("tally")
        .iter()
        .cloned()
        .collect();
    receiver
        .wait_for_all(ids.iter(), Duration::from_secs(15), Duration::from_secs(60))
        .await;
    println!(
        "postgres away: {} acknowledged, {} answered 503; ingest resumed {:.2?} after the \
         server came back ({:.2?} after the cut), every acknowledged event delivered",
        ids.len(),
        tally.unavailable.load(Ordering::SeqCst),
        resumed - restored_at,
        resumed - cut_at,
    );
    drop(instance);
}
