//! `hookrelay sessions | analytics | cleanup | db | backup | restore`.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{
    output::{confirm, json, table, time},
    progress::ProgressLine,
};
use crate::{
    clock::{Clock, SystemClock},
    config::{Config, DatabaseLocation},
    domain::SessionStats,
    relay::Relay,
};

/// Session commands.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// One session: queries, successes, response times, tokens, models, webhooks.
    Show {
        /// The gateway's session id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sessions seen recently, most recent first.
    List {
        /// Only sessions seen in the last N hours.
        #[arg(long)]
        since_hours: Option<f64>,
        /// Only sessions last seen more than N hours ago.
        #[arg(long)]
        until_hours: Option<f64>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Database commands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Size per table, rows, free pages.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Integrity check, ANALYZE, and an incremental vacuum (`--full`: a complete VACUUM,
    /// which rewrites the file and holds the write lock while it runs).
    Maintain {
        /// Rewrite the whole file.
        #[arg(long)]
        full: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending migrations (`serve` applies them on start too) and print the version.
    Migrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"))
}

fn print_session(s: &SessionStats) {
    println!("session        {}", s.session_id);
    println!("first seen     {}", time(Some(s.first_seen_ms)));
    println!("last seen      {}", time(Some(s.last_seen_ms)));
    println!(
        "queries        {} ({} succeeded, {} failed)",
        s.queries, s.successes, s.failures
    );
    println!(
        "response time  {} average, {} ms in total",
        ms(s.avg_response_time_ms),
        s.total_response_time_ms
    );
    println!("tokens         {}", s.estimated_tokens);
    let models: Vec<String> = s
        .models
        .iter()
        .map(|m| format!("{} ×{}", m.model, m.queries))
        .collect();
    println!("models         {}", models.join(", "));
    println!(
        "webhooks       {} delivered, {} pending, {} dead",
        s.webhooks.delivered, s.webhooks.pending, s.webhooks.dead
    );
}

fn hours_ago(hours: Option<f64>, default: i64) -> i64 {
    hours.map_or(default, |h| SystemClock.now_ms() - (h * 3_600_000.0) as i64)
}

pub async fn sessions(relay: Relay, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionsCommand::Show { id, json: as_json } => {
            let Some(session) = relay.session_stats(&id).await? else {
                eprintln!("error: no session {id}");
                return Ok(ExitCode::FAILURE);
            };
            if as_json {
                json(&session);
            } else {
                print_session(&session);
            }
        }
        SessionsCommand::List {
            since_hours,
            until_hours,
            limit,
            json: as_json,
        } => {
            let sessions = relay
                .sessions(
                    hours_ago(since_hours, i64::MIN),
                    hours_ago(until_hours, i64::MAX),
                    limit,
                )
                .await?;
            if as_json {
                json(&json!({ "count": sessions.len(), "sessions": sessions }));
            } else if sessions.is_empty() {
                println!("No sessions in that period.");
            } else {
                let rows: Vec<Vec<String>> = sessions
                    .iter()
                    .map(|s| {
                        vec![
                            s.session_id.clone(),
                            time(Some(s.last_seen_ms)),
                            s.queries.to_string(),
                            format!("{}/{}", s.successes, s.queries),
                            ms(s.avg_response_time_ms),
                            s.estimated_tokens.to_string(),
                            format!(
                                "{}/{}/{}",
                                s.webhooks.delivered, s.webhooks.pending, s.webhooks.dead
                            ),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SESSION",
                        "LAST SEEN",
                        "QUERIES",
                        "OK",
                        "AVG",
                        "TOKENS",
                        "WEBHOOKS OK/PENDING/DEAD",
                    ],
                    &rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn analytics(relay: Relay, days: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let summary = relay.analytics(days).await?;
    if as_json {
        json(&summary);
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0));
    println!("last {days} day(s), since {}", time(Some(summary.since_ms)));
    println!("sessions            {}", summary.sessions.total);
    println!(
        "queries             {} ({} succeeded, {})",
        summary.queries.total,
        summary.queries.successes,
        pct(summary.queries.success_rate)
    );
    println!(
        "avg response time   {}",
        ms(summary.queries.avg_response_time_ms)
    );
    println!("tokens              {}", summary.queries.tokens);
    println!(
        "webhooks            {} delivered, {} dead-lettered, success {}",
        summary.webhooks.delivered,
        summary.webhooks.dead_lettered,
        pct(summary.webhooks.success_rate)
    );
    if !summary.models.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = summary
            .models
            .iter()
            .map(|m| vec![m.model.clone(), m.queries.to_string(), m.tokens.to_string()])
            .collect();
        table(&["MODEL", "QUERIES", "TOKENS"], &rows);
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "analytics computed"
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn cleanup(
    relay: Relay,
    days: u32,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let progress = ProgressLine::start(as_json);
    let report = relay
        .cleanup_with_progress(days, dry_run, progress.on_progress())
        .await?;
    progress.finish();
    if as_json {
        json(&report);
    } else {
        let verb = if dry_run { "Would remove" } else { "Removed" };
        println!(
            "{verb} {} delivered event(s) older than {days} day(s) with {} deliveries and {} attempts, {} idle session(s), \
             {} resolved alert(s), {} roll-up minute(s) in {:.1} s. Undelivered and dead-lettered events are kept.",
            report.events,
            report.deliveries,
            report.attempts,
            report.sessions,
            report.alerts,
            report.rollups,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn db(relay: Relay, command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Stats { json: as_json } => {
            let stats = relay.db_stats().await?;
            if as_json {
                json(&stats);
            } else {
                if stats.backend == "postgres" {
                    println!(
                        "PostgreSQL schema {:.1} MiB (tables and indexes), schema version {}",
                        stats.file_bytes as f64 / 1_048_576.0,
                        stats.schema_version
                    );
                } else {
                    println!(
                        "file {:.1} MiB, write-ahead log {:.1} MiB, {} pages of {} bytes, {} free, schema version {}",
                        stats.file_bytes as f64 / 1_048_576.0,
                        stats.wal_bytes as f64 / 1_048_576.0,
                        stats.page_count,
                        stats.page_size,
                        stats.free_pages,
                        stats.schema_version
                    );
                }
                let rows: Vec<Vec<String>> = stats
                    .tables
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.rows.to_string(),
                            format!("{:.1} MiB", t.bytes as f64 / 1_048_576.0),
                        ]
                    })
                    .collect();
                table(&["TABLE", "ROWS", "SIZE (WITH INDEXES)"], &rows);
            }
        }
        DbCommand::Maintain {
            full,
            json: as_json,
        } => {
            let progress = ProgressLine::start(as_json);
            let report = relay
                .maintain_with_progress(full, progress.on_progress())
                .await?;
            progress.finish();
            let ok = report.integrity == ["ok"];
            if as_json {
                json(&report);
            } else {
                println!(
                    "integrity check  {}",
                    if ok {
                        "ok".to_owned()
                    } else {
                        report.integrity.join("; ")
                    }
                );
                println!("ANALYZE          done");
                println!(
                    "vacuum           {} ({} free pages before, {} after)",
                    report.vacuum, report.free_pages_before, report.free_pages_after
                );
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        DbCommand::Migrate { json: as_json } => {
            // Opening the database applied every pending migration.
            let stats = relay.db_stats().await?;
            if as_json {
                json(&serde_json::json!({ "schema_version": stats.schema_version }));
            } else {
                println!("Database schema at version {}.", stats.schema_version);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn backup(relay: Relay, path: PathBuf, as_json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let progress = ProgressLine::start(as_json);
    relay
        .backup_with_progress(path.clone(), progress.on_progress())
        .await
        .context("taking the backup")?;
    progress.finish();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    if as_json {
        json(&serde_json::json!({
            "path": path,
            "bytes": size,
            "seconds": started.elapsed().as_secs_f64(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Backup written to {} ({:.1} MiB) in {:.1} s; it is a complete database: `hookrelay restore {}` puts it back.",
        path.display(),
        size as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Restores a backup over the configured database, refusing while a server uses it and
/// asking before it replaces one (kept beside it).
pub async fn restore(
    config: Config,
    backup: PathBuf,
    force: bool,
    yes: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let DatabaseLocation::Sqlite(target) = &config.database.location else {
        anyhow::bail!(
            "`hookrelay restore` restores an SQLite backup; restore a PostgreSQL database with pg_restore"
        );
    };
    if !backup.is_file() {
        anyhow::bail!("there is no backup file at {}", backup.display());
    }
    if target.exists() && !force {
        let relay = Relay::open_for_management(config.clone())
            .await
            .context("opening the current database")?;
        if relay.report(None).await.worker_alive {
            eprintln!(
                "error: a hookrelay server is using {} (it reported in moments ago). Stop it first, or pass --force \
                 if you are sure it is gone.",
                target.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if target.exists()
        && !yes
        && !confirm(&format!(
            "Replace the database at {} with the backup {}? (The current one is kept beside it.)",
            target.display(),
            backup.display()
        ))
    {
        eprintln!("Nothing restored.");
        return Ok(ExitCode::FAILURE);
    }
    let target = target.clone();
    let restored = target.clone();
    let progress = ProgressLine::start(as_json);
    let on_progress = progress.on_progress();
    let kept = tokio::task::spawn_blocking(move || {
        crate::store::restore_with_progress(&backup, &restored, &on_progress)
    })
    .await
    .context("restoring")??;
    progress.finish();
    if as_json {
        json(&serde_json::json!({ "restored": target, "replaced_kept_at": kept }));
    } else {
        if let Some(kept) = &kept {
            println!("The replaced database is kept at {}.", kept.display());
        }
        println!("Restored. Start `hookrelay serve` to resume from the backup's state.");
    }
    Ok(ExitCode::SUCCESS)
}
