//! Sessions, analytics, retention, maintenance, backup and restore.

use std::{sync::Arc, time::Duration};

use hookrelay::{Relay, clock::ManualClock, domain::UsageEvent};
use serde_json::Value;

use crate::helpers::{
    Reply, TestApp, TestReceiver, config, execute_sql, hookrelay, sqlite_only, usage_event,
};

const START_MS: i64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn call(session: &str, model: &str, ms: u64, tokens: u64, success: bool) -> UsageEvent {
    UsageEvent {
        session_id: session.into(),
        query: "Why does this fail?".into(),
        model_name: model.into(),
        response_time_ms: ms,
        estimated_tokens: tokens,
        success,
        user_agent: None,
    }
}

async fn manual(
    receiver: &TestReceiver,
    extra: &[(&str, &str)],
) -> (Relay, ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let mut vars = vec![
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_MAX_RETRIES", "0"),
    ];
    vars.extend_from_slice(extra);
    let clock = ManualClock::new(START_MS);
    let relay = Relay::open_with_clock(config(dir.path(), &vars), Arc::new(clock.clone()))
        .await
        .expect("open");
    (relay, clock, dir)
}

#[tokio::test]
async fn session_aggregates_follow_mixed_events_and_their_webhooks() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, _dir) = manual(&receiver, &[]).await;
    relay
        .track_usage(call("alice", "gpt-4o-mini", 1000, 100, true))
        .await
        .expect("track");
    clock.advance(Duration::from_secs(60));
    relay
        .track_usage(call("alice", "gpt-4o-mini", 3000, 300, true))
        .await
        .expect("track");
    relay
        .track_usage(call("alice", "claude-3-haiku", 500, 50, false))
        .await
        .expect("track");
    relay
        .track_usage(call("bob", "gpt-4o", 200, 20, true))
        .await
        .expect("track");

    let alice = relay
        .session_stats("alice")
        .await
        .expect("stats")
        .expect("alice");
    assert_eq!((alice.queries, alice.successes, alice.failures), (3, 2, 1));
    assert_eq!(alice.total_response_time_ms, 4500);
    assert_eq!(alice.avg_response_time_ms, Some(1500.0));
    assert_eq!(alice.estimated_tokens, 450);
    assert_eq!(
        (alice.first_seen_ms, alice.last_seen_ms),
        (START_MS, START_MS + 60_000)
    );
    let models: Vec<(String, u64, u64)> = alice
        .models
        .iter()
        .map(|m| (m.model.clone(), m.queries, m.tokens))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o-mini".to_owned(), 2, 400),
            ("claude-3-haiku".to_owned(), 1, 50)
        ]
    );
    assert_eq!(
        (
            alice.webhooks.pending,
            alice.webhooks.delivered,
            alice.webhooks.dead
        ),
        (3, 0, 0)
    );

    receiver.script([Reply::status(200), Reply::status(200), Reply::status(410)]);
    receiver.always(Reply::status(200));
    let outcomes = relay.worker().run_once().await.expect("run");
    assert_eq!(outcomes.len(), 4);
    let alice = relay
        .session_stats("alice")
        .await
        .expect("stats")
        .expect("alice");
    assert_eq!(alice.webhooks.pending, 0);
    assert_eq!(alice.webhooks.delivered + alice.webhooks.dead, 3);
    assert!(
        relay
            .session_stats("nobody")
            .await
            .expect("stats")
            .is_none()
    );

    let recent = relay
        .sessions(START_MS + 1, i64::MAX, 10)
        .await
        .expect("list");
    let ids: Vec<&str> = recent.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"], "most recent first, ties by id");
}

#[tokio::test]
async fn analytics_cover_exactly_the_requested_days() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, _dir) = manual(&receiver, &[]).await;
    // Ten days ago: outside a 7-day summary.
    relay
        .track_usage(call("old", "gpt-4", 9000, 900, false))
        .await
        .expect("track");
    relay.worker().run_once().await.expect("run");
    clock.advance(DAY * 10);
    relay
        .track_usage(call("a", "gpt-4o-mini", 1000, 100, true))
        .await
        .expect("track");
    relay
        .track_usage(call("a", "gpt-4o-mini", 2000, 200, false))
        .await
        .expect("track");
    relay
        .track_usage(call("b", "claude-3-haiku", 600, 60, true))
        .await
        .expect("track");
    receiver.script([Reply::status(200), Reply::status(200), Reply::status(404)]);
    relay.worker().run_once().await.expect("run");

    let week = relay.analytics(7).await.expect("analytics");
    assert_eq!(week.sessions.total, 2);
    assert_eq!(week.queries.total, 3);
    assert_eq!(week.sessions.total_queries, 3);
    assert_eq!(week.queries.successes, 2);
    assert_eq!(week.queries.tokens, 360);
    assert_eq!(week.queries.avg_response_time_ms, Some(1200.0));
    let models: Vec<(String, u64)> = week
        .models
        .iter()
        .map(|m| (m.model.clone(), m.tokens))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o-mini".to_owned(), 300),
            ("claude-3-haiku".to_owned(), 60)
        ]
    );
    assert_eq!(
        (week.webhooks.delivered, week.webhooks.dead_lettered),
        (2, 1)
    );
    assert_eq!(week.webhooks.success_rate, Some(2.0 / 3.0));

    let month = relay.analytics(30).await.expect("analytics");
    assert_eq!(month.queries.total, 4);
    assert_eq!(month.sessions.total, 3);
}

#[tokio::test]
async fn retention_removes_exactly_old_delivered_work_and_never_pending_or_dead() {
    let receiver = TestReceiver::start().await;
    let (relay, clock, dir) = manual(&receiver, &[("ENABLE_WEBHOOK", "true")]).await;
    // Old: one delivered, one dead.
    relay
        .track_usage(call("old-delivered", "m", 1, 1, true))
        .await
        .expect("track");
    relay.worker().run_once().await.expect("run");
    receiver.always(Reply::status(410));
    relay
        .track_usage(call("old-dead", "m", 1, 1, true))
        .await
        .expect("track");
    relay.worker().run_once().await.expect("run");
    // Old and still pending: its endpoint is disabled, so it waits.
    drop(relay);
    let url = receiver.url();
    let paused = Relay::open_with_clock(
        config(
            dir.path(),
            &[
                ("ZAPIER_WEBHOOK_URL", url.as_str()),
                ("ENABLE_WEBHOOK", "false"),
            ],
        ),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open");
    let key = hookrelay::domain::IdempotencyKey::parse("order-1").expect("key");
    let pending = paused
        .track_usage_batch(
            vec![call("old-pending", "m", 1, 1, true)],
            Some(key.clone()),
        )
        .await
        .expect("track");
    clock.advance(DAY * 31);
    paused
        .track_usage(call("recent", "m", 1, 1, true))
        .await
        .expect("track");

    let preview = paused.cleanup(30, true).await.expect("dry run");
    assert_eq!(
        (preview.events, preview.deliveries, preview.attempts),
        (1, 1, 1)
    );
    assert_eq!(preview.sessions, 3, "the three old sessions are idle");
    assert!(preview.dry_run);
    let done = paused.cleanup(30, false).await.expect("cleanup");
    assert_eq!(
        (done.events, done.deliveries, done.attempts, done.sessions),
        (1, 1, 1, 3)
    );
    assert!(!done.dry_run);
    let again = paused.cleanup(30, false).await.expect("cleanup");
    assert_eq!(again.events, 0, "nothing left to remove");
    // The incremental vacuum gives every free page back.
    let maintained = paused.maintain(false).await.expect("maintain");
    assert_eq!(maintained.integrity, ["ok"]);
    assert_eq!(maintained.free_pages_after, 0, "{maintained:?}");

    let counts = paused.counts().await.expect("counts");
    assert_eq!(
        (counts.pending, counts.dead),
        (2, 1),
        "pending and dead-lettered work is kept"
    );
    // The pending event's idempotency key still answers with its id.
    let retried = paused
        .track_usage_batch(vec![call("old-pending", "m", 1, 1, true)], Some(key))
        .await
        .expect("track");
    assert!(retried[0].duplicate);
    assert_eq!(retried[0].id, pending[0].id);
}

#[tokio::test]
async fn a_backup_taken_under_load_holds_every_event_acknowledged_before_it() {
    if sqlite_only("backups copy the SQLite file (PostgreSQL has pg_dump)") {
        return;
    }
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[("ENABLE_WEBHOOK", "false")]).await;
    let writer_relay = app.relay.clone();
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (relay, acknowledged, stop) = (
            writer_relay.clone(),
            Arc::clone(&acknowledged),
            stop.clone(),
        );
        writers.spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let id = relay
                    .track_usage(call(&format!("w{w}"), "m", 1, 1, true))
                    .await
                    .expect("track");
                acknowledged.lock().expect("lock").push(id.to_string());
                n += 1;
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    while acknowledged.lock().expect("lock").len() < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before: Vec<String> = acknowledged.lock().expect("lock").clone();
    let backup = app.dir.path().join("backup.db");
    app.relay.backup(backup.clone()).await.expect("backup");
    stop.cancel();
    while writers.join_next().await.is_some() {}

    // Restore into a fresh place and check it.
    let restored_dir = tempfile::tempdir().expect("dir");
    let target = restored_dir.path().join("hookrelay.db");
    hookrelay::store::restore(&backup, &target).expect("restore");
    let conn = rusqlite::Connection::open(&target).expect("open");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(integrity, "ok");
    let mut find = conn
        .prepare("SELECT COUNT(*) FROM events WHERE id = ?1")
        .expect("prepare");
    let missing = before
        .iter()
        .filter(|id| {
            find.query_row([id.as_str()], |r| r.get::<_, i64>(0))
                .expect("query")
                == 0
        })
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged events missing from the backup",
        before.len()
    );
    // And it opens as a working database.
    let restored = Relay::open(config(restored_dir.path(), &[]))
        .await
        .expect("open restored");
    assert!(restored.counts().await.expect("counts").pending >= before.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_copies_one_snapshot_in_steps_while_writes_commit_between_them() {
    if sqlite_only("backup copies the SQLite file") {
        return;
    }
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    // A few MiB, so the copy takes several steps.
    let long = UsageEvent {
        query: "q".repeat(2_000),
        ..call("big", "m", 1, 1, true)
    };
    for _ in 0..12 {
        app.relay
            .track_usage_batch(vec![long.clone(); 500], None)
            .await
            .expect("track");
    }
    let stored = app.relay.db_stats().await.expect("stats");
    let events_before = stored
        .tables
        .iter()
        .find(|t| t.name == "events")
        .map(|t| t.rows);
    assert_eq!(events_before, Some(6_000));

    // Between steps, events commit (one per report, the first few).
    let handle = tokio::runtime::Handle::current();
    let relay = app.relay.clone();
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (kept_written, kept_reports) = (Arc::clone(&written), Arc::clone(&reports));
    let on_progress = hookrelay::store::OnProgress::new(move |progress| {
        kept_reports.lock().expect("lock").push(progress);
        let mut written = kept_written.lock().expect("lock");
        if written.len() < 3 {
            let id = handle
                .block_on(relay.track_usage(call("during", "m", 1, 1, true)))
                .expect("track during the backup");
            written.push(id.to_string());
        }
    });
    let backup = app.dir.path().join("stepped.db");
    app.relay
        .backup_with_progress(backup.clone(), on_progress)
        .await
        .expect("backup");

    // Pages only ever forward, to the end: no write sent the copy back to its start.
    let reports = reports.lock().expect("lock").clone();
    assert!(reports.len() >= 4, "several steps: {reports:?}");
    assert!(
        reports.windows(2).all(|w| w[0].done < w[1].done),
        "{reports:?}"
    );
    let last = reports.last().expect("a report");
    assert_eq!((last.phase, Some(last.done)), ("copying pages", last.total));
    assert_eq!(written.lock().expect("lock").len(), 3);
    // The copy is the snapshot the backup began with: complete, without what came later.
    let conn = rusqlite::Connection::open(&backup).expect("open");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(integrity, "ok");
    let events: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(events, 6_000);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(journal, "delete", "one self-contained file");
}

#[tokio::test]
async fn restore_refuses_while_a_server_uses_the_database_and_stats_and_maintenance_work() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(
        &receiver.url(),
        &[("HOOKRELAY_ALERT_INTERVAL_SECONDS", "0.2")],
    )
    .await;
    app.post_json("/api/webhook/usage", &usage_event("r")).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let stats = app.relay.db_stats().await.expect("stats");
    assert!(
        stats
            .tables
            .iter()
            .any(|t| t.name == "events" && t.rows == 1),
        "{:?}",
        stats.tables
    );
    assert!(stats.schema_version >= 1, "the schema is migrated");
    let maintained = app.relay.maintain(false).await.expect("maintain");
    assert_eq!(maintained.integrity, ["ok"]);

    if sqlite_only("backup and restore copy the SQLite file (PostgreSQL has pg_dump)") {
        return;
    }
    let backup = app.dir.path().join("copy.db");
    app.relay.backup(backup.clone()).await.expect("backup");
    assert!(
        app.relay.backup(backup.clone()).await.is_err(),
        "an existing file is never overwritten"
    );

    // The server reports in through its heartbeat: restore refuses.
    let dir = app.dir.path().to_path_buf();
    crate::helpers::eventually(Duration::from_secs(10), "heartbeat", || async {
        app.relay.report(None).await.worker_alive
    })
    .await;
    let output = tokio::task::spawn_blocking(move || {
        hookrelay(&dir, &[])
            .args(["restore", &backup.to_string_lossy()])
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Stop it first"));
}

#[tokio::test]
async fn sessions_and_analytics_are_served_to_admins() {
    let receiver = TestReceiver::start().await;
    let token = "sessions-admin-token-0123456789abcdef";
    let app = TestApp::spawn(&receiver.url(), &[("HOOKRELAY_ADMIN_TOKEN", token)]).await;
    app.post_json("/api/webhook/usage", &usage_event("api-session"))
        .await;
    let get = |path: &str| app.http.get(app.url(path)).bearer_auth(token).send();
    let session: Value = get("/api/v1/sessions/api-session")
        .await
        .expect("r")
        .json()
        .await
        .expect("j");
    assert_eq!(session["queries"], 1);
    assert_eq!(session["models"][0]["model"], "gpt-4o-mini");
    assert_eq!(get("/api/v1/sessions/nope").await.expect("r").status(), 404);
    let list: Value = get("/api/v1/sessions")
        .await
        .expect("r")
        .json()
        .await
        .expect("j");
    assert_eq!(list["count"], 1);
    let analytics: Value = get("/api/v1/analytics?days=7")
        .await
        .expect("r")
        .json()
        .await
        .expect("j");
    assert_eq!(analytics["sessions"]["total"], 1);
    assert_eq!(
        get("/api/v1/analytics?days=0").await.expect("r").status(),
        400
    );
    assert_eq!(
        app.http
            .get(app.url("/api/v1/sessions/api-session"))
            .send()
            .await
            .expect("r")
            .status(),
        401
    );
}

#[tokio::test]
async fn a_failed_group_commit_stores_and_counts_nothing_and_leaves_the_store_usable() {
    let receiver = TestReceiver::start().await;
    let (relay, _clock, dir) = manual(&receiver, &[("ENABLE_WEBHOOK", "false")]).await;
    // The daily usage row is written last, just before COMMIT: make it fail.
    execute_sql(
        dir.path(),
        "CREATE TRIGGER injected BEFORE INSERT ON usage_daily BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        "CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER injected BEFORE INSERT ON usage_daily FOR EACH ROW EXECUTE FUNCTION injected();",
    )
    .await;
    assert!(relay.track_usage(call("s", "m", 1, 1, true)).await.is_err());
    assert_eq!(
        relay.counts().await.expect("counts").pending,
        0,
        "nothing of the failed group is stored"
    );
    assert!(relay.session_stats("s").await.expect("stats").is_none());

    execute_sql(
        dir.path(),
        "DROP TRIGGER injected",
        "DROP TRIGGER injected ON usage_daily; DROP FUNCTION injected();",
    )
    .await;
    relay
        .track_usage(call("s", "m", 1, 1, true))
        .await
        .expect("the store works again");
    assert_eq!(relay.counts().await.expect("counts").pending, 1);
    assert_eq!(
        relay
            .session_stats("s")
            .await
            .expect("stats")
            .expect("session")
            .queries,
        1
    );
}

#[tokio::test]
async fn a_bad_query_parameter_is_named() {
    let receiver = TestReceiver::start().await;
    let app = TestApp::spawn(&receiver.url(), &[]).await;
    for (path, parameter) in [
        ("/api/v1/analytics?days=abc", "days"),
        ("/api/v1/sessions?limit=-3", "limit"),
        ("/api/v1/dlq?limit=lots", "limit"),
    ] {
        let response = app.http.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["code"], "invalid_query", "{path}");
        assert!(
            error["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{parameter}: "))),
            "{path}: {error}"
        );
    }
}

#[tokio::test]
async fn restore_takes_a_backups_write_ahead_log_and_keeps_the_replaced_database_whole() {
    if sqlite_only("restore works on SQLite files") {
        return;
    }
    // A database whose last commits are still in its write-ahead log, copied file by file
    // (as a kept `.replaced-…` pair is): restoring it must bring those commits.
    let source = tempfile::tempdir().expect("dir");
    // Held open meanwhile, so closing the relay does not checkpoint the log away.
    let store = hookrelay::store::SqliteStore::open(
        &source.path().join("hookrelay.db"),
        hookrelay::config::SqliteSync::Full,
    )
    .await
    .expect("open");
    let relay_dir = tempfile::tempdir().expect("dir");
    let backup = relay_dir.path().join("pair.db");
    {
        let relay = Relay::open(config(source.path(), &[])).await.expect("open");
        for n in 0..20 {
            relay
                .track_usage(call(&format!("wal-{n}"), "m", 10, 1, true))
                .await
                .expect("track");
        }
        for (from, to) in [
            ("hookrelay.db", "pair.db"),
            ("hookrelay.db-wal", "pair.db-wal"),
        ] {
            std::fs::copy(source.path().join(from), relay_dir.path().join(to)).expect("copy");
        }
    }
    drop(store);
    let target_dir = tempfile::tempdir().expect("dir");
    let target = target_dir.path().join("hookrelay.db");
    let first = hookrelay::store::restore(&backup, &target).expect("restore into a new place");
    assert_eq!(first, None, "nothing was replaced");
    // Restored again over itself: the replaced database is kept, whole.
    let kept = hookrelay::store::restore(&backup, &target)
        .expect("restore")
        .expect("the replaced database is kept");
    let count = |path: &std::path::Path| -> i64 {
        rusqlite::Connection::open(path)
            .expect("open")
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(count(&target), 20, "the backup's log came along");
    assert_eq!(count(&kept), 20, "the replaced database is kept whole");
}

#[tokio::test]
async fn a_running_server_applies_retention_by_itself() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let url = receiver.url();
    let clock = ManualClock::new(START_MS);
    let vars = [
        ("ZAPIER_WEBHOOK_URL", url.as_str()),
        // The monitor looks at its schedule every 0.1 s of real time.
        ("HOOKRELAY_ALERT_INTERVAL_SECONDS", "0.1"),
    ];
    let app = TestApp::spawn_with(config(dir.path(), &vars), dir, Arc::new(clock.clone())).await;
    let accepted = app
        .post_json("/api/webhook/usage", &usage_event("hourly-old"))
        .await;
    assert_eq!(accepted.status(), 202);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    crate::helpers::eventually(Duration::from_secs(10), "delivered", || async {
        app.relay.counts().await.expect("counts").pending == 0
    })
    .await;
    assert!(
        app.relay
            .session_stats("hourly-old")
            .await
            .expect("stats")
            .is_some()
    );

    // Past the retention period and the first pass (a minute after start): no cleanup call.
    clock.advance(DAY * 31 + Duration::from_secs(61));
    crate::helpers::eventually(Duration::from_secs(10), "retention ran", || async {
        let left = app.relay.cleanup(30, true).await.expect("dry run");
        left.events == 0
            && app
                .relay
                .session_stats("hourly-old")
                .await
                .expect("stats")
                .is_none()
    })
    .await;
}
