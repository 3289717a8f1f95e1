//! What a PostgreSQL run cost the database server: CPU seconds of every PostgreSQL process
//! (exited backends included: the postmaster accumulates its reaped children's time), WAL bytes
//! and records, transactions, rows written and, when `pg_stat_statements` is loaded, statements.

use std::{collections::HashMap, time::Duration};

use sqlx::{Row, postgres::PgPoolOptions};

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    cpu_s: f64,
    wal_bytes: f64,
    wal_records: f64,
    commits: f64,
    rows_written: f64,
    statements: Option<f64>,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// CPU seconds of every `postgres` process, plus what the postmaster's reaped children used.
fn postgres_cpu_s() -> f64 {
    let mut procs: HashMap<u32, (u32, String, f64, f64)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
        let f: Vec<&str> = tail.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let ppid = f.get(1).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        procs.insert(pid, (ppid, comm, num(11) + num(12), num(13) + num(14)));
    }
    let ticks: f64 = procs
        .values()
        .filter(|(_, comm, _, _)| comm == "postgres")
        .map(|(ppid, _, own, children)| {
            let postmaster = procs
                .get(ppid)
                .is_none_or(|(_, parent, _, _)| parent != "postgres");
            own + if postmaster { *children } else { 0.0 }
        })
        .sum();
    ticks / clock_ticks()
}

/// The counters now, read through `url` (the database the run uses).
pub async fn counters(url: &str) -> anyhow::Result<Counters> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let wal = sqlx::query("SELECT wal_bytes::float8, wal_records::float8 FROM pg_stat_wal")
        .fetch_one(&pool)
        .await?;
    let db = sqlx::query(
        "SELECT xact_commit::float8, (tup_inserted + tup_updated + tup_deleted)::float8
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    let statements =
        sqlx::query_scalar::<_, f64>("SELECT SUM(calls)::float8 FROM pg_stat_statements")
            .fetch_one(&pool)
            .await
            .ok();
    pool.close().await;
    Ok(Counters {
        cpu_s: postgres_cpu_s(),
        wal_bytes: wal.try_get(0)?,
        wal_records: wal.try_get(1)?,
        commits: db.try_get(0)?,
        rows_written: db.try_get(1)?,
        statements,
    })
}

/// Waits until no client of the database but this one is connected (the servers' backends
/// have exited and flushed their statistics), for at most `within`.
pub async fn wait_for_backends_to_exit(url: &str, within: Duration) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let deadline = std::time::Instant::now() + within;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(&pool)
        .await?;
        if others == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Statistics are flushed when a backend exits; the cumulative view shows them a moment later.
    let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&pool)
        .await;
    pool.close().await;
    Ok(())
}

/// Prints the cost per delivered event between two readings.
pub fn report(before: &Counters, after: &Counters, events: u64) {
    let per = |a: f64, b: f64| (b - a) / events as f64;
    let statements = match (before.statements, after.statements) {
        (Some(a), Some(b)) => format!("{:.2} statements/event", per(a, b)),
        _ => "statements: n/a (pg_stat_statements not loaded)".to_owned(),
    };
    println!(
        "postgres:  {:.3} CPU-s per 1,000 events; {:.0} WAL bytes and {:.1} WAL records/event; {:.2} commits/event; {:.1} rows written/event; {statements}",
        per(before.cpu_s, after.cpu_s) * 1000.0,
        per(before.wal_bytes, after.wal_bytes),
        per(before.wal_records, after.wal_records),
        per(before.commits, after.commits),
        per(before.rows_written, after.rows_written),
    );
}
