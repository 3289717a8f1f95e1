//! `hookrelay dlq …`: inspect, replay and purge dead letters.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{
    output::{confirm, cut, json, table, time},
    progress::ProgressLine,
};
use crate::{domain::DeliveryId, relay::Relay, store::Selection};

/// Dead-letter queue commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery with its payload and every attempt.
    Show {
        /// The delivery id (`dlv_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue with a fresh retry budget (same webhook-id).
    Replay(Target),
    /// Delete dead letters and their attempt logs.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

/// One dead letter or all of them.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
pub struct Target {
    /// The delivery id (`dlv_…`).
    id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn selection(&self) -> anyhow::Result<Selection> {
        match &self.id {
            Some(id) => Ok(Selection::One(DeliveryId::parse(id)?)),
            None => Ok(Selection::All),
        }
    }
}

pub async fn run(relay: Relay, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            limit,
            json: as_json,
        } => {
            let dead = relay
                .dead_letters(limit)
                .await
                .context("reading the dead-letter queue")?;
            // `count` is what this page holds; `total` is the whole queue, so a limited list
            // is never read as all of it.
            let total = relay
                .counts()
                .await
                .context("counting the dead-letter queue")?
                .dead;
            if as_json {
                json(&json!({ "count": dead.len(), "total": total, "dead_letters": dead }));
            } else if dead.is_empty() {
                println!("The dead-letter queue is empty.");
            } else {
                let rows: Vec<Vec<String>> = dead
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.event_id.to_string(),
                            d.event_type.clone(),
                            d.total_attempts.to_string(),
                            time(d.finished_at_ms),
                            cut(d.last_error.as_deref().unwrap_or("-"), 60),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "DELIVERY",
                        "EVENT",
                        "TYPE",
                        "ATTEMPTS",
                        "DEAD SINCE",
                        "LAST ERROR",
                    ],
                    &rows,
                );
                if total > dead.len() as u64 {
                    println!(
                        "{} of {total} dead letters shown, newest first (--limit shows more).",
                        dead.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, json: as_json } => {
            let id = DeliveryId::parse(&id)?;
            let Some(detail) = relay.delivery(id.clone()).await? else {
                eprintln!("error: no delivery {id}");
                return Ok(ExitCode::FAILURE);
            };
            if as_json {
                json(&detail);
                return Ok(ExitCode::SUCCESS);
            }
            let s = &detail.summary;
            println!("delivery     {}", s.id);
            println!("event        {} ({})", s.event_id, s.event_type);
            println!("endpoint     {}", s.endpoint_id);
            if let Some(session) = &s.session_id {
                println!("session      {session}");
            }
            println!("status       {:?}", s.status);
            println!("accepted     {}", time(Some(s.created_at_ms)));
            println!(
                "attempts     {} ({} in the current budget)",
                s.total_attempts, s.attempts
            );
            if let Some(error) = &s.last_error {
                println!("last error   {error}");
            }
            println!(
                "payload      {}",
                serde_json::to_string(&detail.payload).unwrap_or_default()
            );
            println!();
            let rows: Vec<Vec<String>> = detail
                .attempts_log
                .iter()
                .map(|a| {
                    vec![
                        a.attempt_no.to_string(),
                        time(Some(a.started_at_ms)),
                        format!("{} ms", a.duration_ms),
                        a.status_code.map_or_else(|| "-".into(), |c| c.to_string()),
                        a.outcome.clone(),
                        cut(
                            a.error_detail
                                .as_deref()
                                .or(a.response_snippet.as_deref())
                                .unwrap_or("-"),
                            60,
                        ),
                    ]
                })
                .collect();
            table(
                &["#", "STARTED", "DURATION", "STATUS", "OUTCOME", "DETAIL"],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay(target) => {
            let replayed = match target.selection()? {
                // Many, in batches, with a progress line.
                Selection::All => {
                    let progress = ProgressLine::start(target.json);
                    let replayed = relay
                        .replay_all_with_progress(progress.on_progress())
                        .await?;
                    progress.finish();
                    replayed
                }
                one => relay.replay(one).await?,
            };
            let why_not = if replayed == 0 {
                why_not(&relay, &target).await?
            } else {
                None
            };
            if target.json {
                json(&json!({ "replayed": replayed, "reason": why_not }));
            } else {
                println!(
                    "Replayed {replayed} dead letter(s); a running server delivers them within its poll interval."
                );
            }
            Ok(done_or_why(why_not))
        }
        DlqCommand::Purge { target, yes } => {
            let selection = target.selection()?;
            let what = match &selection {
                Selection::One(id) => format!("dead letter {id}"),
                Selection::All => "EVERY dead letter".to_owned(),
                Selection::Ids(ids) => format!("{} dead letter(s)", ids.len()),
                Selection::Matching(_) => "every matching dead letter".to_owned(),
            };
            if !yes
                && !confirm(&format!(
                    "Delete {what} and its attempt log? This cannot be undone."
                ))
            {
                eprintln!("Nothing deleted.");
                return Ok(ExitCode::FAILURE);
            }
            let purged = relay.purge(selection).await?;
            let why_not = if purged == 0 {
                why_not(&relay, &target).await?
            } else {
                None
            };
            if target.json {
                json(&json!({ "purged": purged, "reason": why_not }));
            } else {
                println!("Purged {purged} dead letter(s).");
            }
            Ok(done_or_why(why_not))
        }
    }
}

/// Why nothing happened to the one delivery named: it is not found, or not dead-lettered.
/// `None` for `--all` (an empty queue is not a failure).
async fn why_not(relay: &Relay, target: &Target) -> anyhow::Result<Option<String>> {
    let Some(id) = &target.id else {
        return Ok(None);
    };
    let id = DeliveryId::parse(id)?;
    Ok(Some(match relay.delivery(id.clone()).await? {
        None => format!("{id} not found (purged, removed by retention, or never existed)"),
        Some(detail) => format!(
            "{id} is not dead-lettered (it is {})",
            detail.summary.status.as_str()
        ),
    }))
}

/// Success, or the reason on stderr and exit code 1.
fn done_or_why(why_not: Option<String>) -> ExitCode {
    match why_not {
        Some(reason) => {
            eprintln!("error: {reason}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
