//! The partial-failure scenarios (`flaky-first`, `poison`, `outage`): a steady load against a
//! misbehaving receiver with the circuit breaker at its defaults (issue 12).

use super::*;

/// The number of dead letters, once it reaches `expected` or `limit` has passed (it is read
/// again after that, so a count above `expected` is seen too).
async fn dead_letters_when(
    binary: &Path,
    server: &Server,
    receiver_url: &str,
    database: &Database,
    expected: u64,
    limit: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let count = dead_letters(binary, server, receiver_url, database);
        if count.is_some_and(|n| n >= expected) || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A steady load against a misbehaving receiver with the breaker on: how long until every
/// healthy event has arrived, what the receiver had to take, and what was dead-lettered.
pub(crate) async fn fault_run(
    args: &Args,
    scenario: Scenario,
    database: &Database,
) -> anyhow::Result<()> {
    let binary = server_binary(args)?;
    let dir = tempfile::tempdir()?;
    let fault = match scenario {
        Scenario::FlakyFirst => Fault::FirstAttempt,
        Scenario::Poison => Fault::Poison,
        _ => Fault::OutageUntil(Mutex::new(None)),
    };
    let (receiver, receiver_url) = start_receiver(Receiver {
        fault,
        ..Receiver::default()
    })
    .await?;
    let servers = start_servers(args, &binary, dir.path(), &receiver_url, database, scenario)?;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/api/webhook/usage", s.address))
        .collect();
    let usage = || instances_usage(&pids);
    let total = args.rate * args.duration;
    let poison = scenario == Scenario::Poison;
    let poisoned = if poison {
        (0..total).filter(|n| is_poison(*n)).count() as u64
    } else {
        0
    };
    let healthy = total - poisoned;

    let cpu_before = usage().0;
    let started = Instant::now();
    let outage_ends = started + Duration::from_secs(args.outage);
    if let Fault::OutageUntil(until) = &receiver.fault
        && let Ok(mut until) = until.lock()
    {
        *until = Some(outage_ends);
    }
    let ingest = load::drive(&urls, total, args.concurrency, Some(args.rate), poison).await?;
    let last_sent = started + ingest;
    let delivered_at = wait_delivered(&receiver, healthy, Duration::from_secs(1800)).await?;
    let (cpu_after, peak_mib) = usage();
    let title = match scenario {
        Scenario::FlakyFirst => format!(
            "flaky-first: {} events/s for {} s, every first attempt answered 503",
            args.rate, args.duration
        ),
        Scenario::Poison => format!(
            "poison: {} events/s for {} s, 1 in 20 always answered 500",
            args.rate, args.duration
        ),
        _ => format!(
            "outage: {} events/s for {} s, the receiver answers 503 for the first {} s",
            args.rate, args.duration, args.outage
        ),
    };
    report(
        &title,
        total,
        healthy,
        ingest,
        delivered_at - started,
        &receiver,
        cpu_after - cpu_before,
        peak_mib,
    );
    let requests = receiver.requests.load(Ordering::SeqCst);
    println!(
        "healthy:   all {healthy} arrived {:.2} s after the first send, {:.2} s after the last",
        (delivered_at - started).as_secs_f64(),
        delivered_at
            .saturating_duration_since(last_sent)
            .as_secs_f64(),
    );
    if scenario == Scenario::Outage {
        println!(
            "outage:    {} requests during the {} s outage; every healthy event arrived {:.2} s after it ended",
            receiver.outage_requests.load(Ordering::SeqCst),
            args.outage,
            delivered_at
                .saturating_duration_since(outage_ends)
                .as_secs_f64(),
        );
    }
    println!(
        "receiver:  {requests} requests for {total} events ({:.2} per event)",
        requests as f64 / total as f64
    );
    // A poison event is dead-lettered after its 3 retries (1 + 2 + 4 s, with jitter).
    let dead = dead_letters_when(
        &binary,
        &servers[0],
        &receiver_url,
        database,
        poisoned,
        Duration::from_secs(if poison { 120 } else { 0 }),
    )
    .await;
    println!(
        "dead letters: {} (poison events: {poisoned})",
        dead.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
    );
    if dead != Some(poisoned) {
        bail!("dead letters must be exactly the {poisoned} poison events, found {dead:?}");
    }
    Ok(())
}
