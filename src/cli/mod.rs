//! The `hookrelay` command line. Each command parses its flags and calls library functions.
//!
//! Exit codes: 0 success; 1 the operation failed (an endpoint test failed, an id was not
//! found, a confirmation was declined); 2 the configuration or the command line is invalid.

mod data;
mod dlq;
mod endpoints;
mod monitor;
mod output;
mod progress;

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    config::{Config, Problem, Severity},
    delivery::{HttpSender, Target, probe},
    domain::{
        EndpointId, EndpointUrl, IdempotencyKey, SignatureAlgorithm, SigningSecret, UsageEvent,
    },
    relay::Relay,
    sink::{self, SinkOptions},
};

/// hookrelay: durable, signed webhook delivery for LLM gateway usage events.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and the delivery worker.
    Serve {
        /// Address to listen on (overrides HOOKRELAY_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// What to run: `all` (default), `api` (accept events; others deliver) or `worker`
        /// (deliver; no HTTP listener). Overrides HOOKRELAY_ROLE.
        #[arg(long)]
        role: Option<crate::config::Role>,
    },
    /// Record one usage event (a running server delivers it within its poll interval).
    Send {
        /// The gateway session.
        #[arg(long)]
        session_id: String,
        /// The prompt.
        #[arg(long)]
        query: String,
        /// The model that answered.
        #[arg(long, default_value = "gpt-4o-mini")]
        model: String,
        /// The model's response time in milliseconds.
        #[arg(long, default_value_t = 0)]
        response_time_ms: u64,
        /// Estimated tokens.
        #[arg(long, default_value_t = 0)]
        tokens: u64,
        /// Record the call as failed.
        #[arg(long)]
        failed: bool,
        /// The client's user agent.
        #[arg(long)]
        user_agent: Option<String>,
        /// Deduplicate on this key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check an endpoint: URL, DNS, address policy, connect, then a signed test event.
    Test {
        /// Test this URL instead of ZAPIER_WEBHOOK_URL.
        #[arg(long, conflicts_with = "endpoint")]
        url: Option<String>,
        /// Test this endpoint (`ep_…`), with its own secret and headers.
        #[arg(long)]
        endpoint: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, replay and purge dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// One screen: health, throughput, backlog, dead letters, alerts, endpoints.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delivery figures over the last hour, day and all time.
    Metrics {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The health verdict; exit code 0 healthy, 1 degraded, 2 unhealthy.
    Health {
        /// This instance only (its listener, database and worker), for an orchestrator's
        /// liveness probe: asks the running server's `GET /ready`. Without it: the cluster's
        /// verdict, from the database.
        #[arg(long = "self")]
        this_instance: bool,
        /// With `--self`: the server to ask (default: `HOOKRELAY_LISTEN`).
        #[arg(long, requires = "this_instance")]
        server: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Active and recent alerts.
    Alerts {
        /// How many recent alerts to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per-session usage.
    Sessions {
        #[command(subcommand)]
        command: data::SessionsCommand,
    },
    /// Sessions, queries, tokens by model, response times and webhook success over a period.
    Analytics {
        /// Days to cover.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove delivered events, their attempts, idle sessions and resolved alerts older than N
    /// days (undelivered work and dead letters are kept).
    Cleanup {
        /// Age in days (default: HOOKRELAY_RETENTION_DAYS).
        #[arg(long)]
        days: Option<u32>,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Database statistics, maintenance and migrations.
    Db {
        #[command(subcommand)]
        command: data::DbCommand,
    },
    /// Write a consistent copy of the database, while the server runs.
    Backup {
        /// The file to write (must not exist).
        path: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the database with a backup (refused while a server uses it); the replaced one
    /// is kept beside it.
    Restore {
        /// The backup file.
        path: std::path::PathBuf,
        /// Restore even though a server reported in recently.
        #[arg(long)]
        force: bool,
        /// Do not ask before replacing an existing database.
        #[arg(long, short)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rate-limit state of ingest clients, from the running server.
    Ratelimit {
        #[command(subcommand)]
        command: RatelimitCommand,
    },
    /// Manage endpoints: where events are delivered.
    Endpoints {
        #[command(subcommand)]
        command: endpoints::EndpointsCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a local receiver that prints deliveries and verifies their signatures.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Secret to verify signatures with (default: WEBHOOK_SECRET).
        #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Header of the guide's signature.
        #[arg(
            long,
            env = "WEBHOOK_SIGNATURE_HEADER",
            default_value = "X-Webhook-Signature"
        )]
        signature_header: String,
        /// Algorithm of that header.
        #[arg(long, env = "WEBHOOK_SIGNATURE_ALGORITHM", default_value = "sha256")]
        signature_algorithm: SignatureAlgorithm,
        /// Status to answer with.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// Answer 500 to the first N requests (to watch retries).
        #[arg(long, default_value_t = 0)]
        fail_first: u64,
        /// One line per request, without the body.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RatelimitCommand {
    /// Show where clients stand (all limited clients, or one: an IP or `key:N`).
    Status {
        /// The client: an IP address, or `key:N` for ingest secret N.
        client: Option<String>,
        /// The server's base URL (default: from HOOKRELAY_LISTEN).
        #[arg(long)]
        server: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate every setting and print each problem with how to fix it.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A `.env` line that could not be read, kept for `config check` and `serve` to report.
static DOTENV_PROBLEM: std::sync::OnceLock<Problem> = std::sync::OnceLock::new();

/// Loads `.env` from this directory (or a parent); variables already in the environment win.
/// Call before any thread starts. A line that does not parse stops the loading: it is kept
/// as a warning naming its line number, never its text (it may hold a secret).
pub fn load_dotenv() {
    let Err(dotenvy::Error::LineParse(line, index)) = dotenvy::dotenv() else {
        return;
    };
    let number = std::fs::read_to_string(".env")
        .ok()
        .and_then(|text| text.lines().position(|l| l == line))
        .map_or_else(|| "a line".to_owned(), |n| format!("line {}", n + 1));
    let _ = DOTENV_PROBLEM.set(Problem {
        severity: Severity::Warning,
        variable: ".env".into(),
        message: format!(
            "{number} cannot be read (at character {}): it and the lines after it were not loaded",
            index + 1
        ),
        fix: "write each line as NAME=value (quote a value holding spaces or #)".to_owned(),
    });
}

/// Problems found in the configuration, with the `.env` one if any.
fn with_dotenv_problem(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.extend(DOTENV_PROBLEM.get().cloned());
    problems
}

fn print_problems(problems: &[Problem]) {
    for problem in problems {
        eprintln!("{problem}");
    }
}

/// Loads the configuration or explains why it cannot be used.
/// Warnings are logged only by `serve`: management commands stay quiet (`config check`
/// lists them).
fn load_config(log_warnings: bool) -> Result<Config, ExitCode> {
    match Config::from_env() {
        Ok((config, warnings)) => {
            let warnings = with_dotenv_problem(warnings);
            for warning in warnings.iter().filter(|_| log_warnings) {
                tracing::warn!(variable = %warning.variable, fix = %warning.fix, "{}", warning.message);
            }
            Ok(config)
        }
        Err(e) => {
            print_problems(&with_dotenv_problem(e.0));
            eprintln!(
                "hookrelay cannot start: fix the errors above (`hookrelay config check` lists them)."
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Opens the database for every command but `serve`, `db migrate` and `restore`, refusing to
/// create one: a command pointed at the wrong place must say so, not answer from a fresh,
/// empty database (and leave it behind for the next command to trust).
async fn open_existing(config: Config) -> anyhow::Result<Relay> {
    match &config.database.location {
        crate::config::DatabaseLocation::Sqlite(path) => {
            if !path.exists() {
                anyhow::bail!(
                    "there is no database at {} (check HOOKRELAY_DATA_DIR or DATABASE_URL, or start `hookrelay serve` once)",
                    path.display()
                );
            }
        }
        crate::config::DatabaseLocation::Postgres(settings) => {
            if !crate::store::PgStore::is_initialised(settings)
                .await
                .context("connecting to PostgreSQL")?
            {
                anyhow::bail!(
                    "schema `{}` of the PostgreSQL database holds no hookrelay data (check DATABASE_URL and \
                     HOOKRELAY_DB_SCHEMA, or start `hookrelay serve` once)",
                    settings.schema
                );
            }
        }
    }
    Relay::open_for_management(config)
        .await
        .context("opening the database")
}

/// Cancels the token on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(signal) => signal,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = interrupt.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

impl Cli {
    /// Parses the command line, taking the original Python CLI's flags (`--status`,
    /// `--metrics`, `--health`, `--test`, `--cleanup [DAYS]`) as the commands they were, so
    /// scripts written for it keep working.
    pub fn parse_args() -> Self {
        Self::parse_from(translate_legacy(std::env::args_os().collect()))
    }

    /// Whether this is `serve` (which logs to a file when configured).
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

/// The async runtime's threads (`HOOKRELAY_WORKER_THREADS`), for the startup log.
fn runtime_threads() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// `hookrelay --status …` → `hookrelay status …`; `--cleanup 30` → `cleanup --days 30`.
fn translate_legacy(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let command = match first {
        "--status" => "status",
        "--metrics" => "metrics",
        "--health" => "health",
        "--test" => "test",
        "--cleanup" => "cleanup",
        _ => return args,
    };
    eprintln!(
        "note: `{first}` is the original CLI's spelling; the command is `hookrelay {command}`"
    );
    args[1] = command.into();
    if command == "cleanup"
        && let Some(days) = args.get(2).and_then(|a| a.to_str())
        && days.parse::<u32>().is_ok()
    {
        args.insert(2, "--days".into());
    }
    args
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            let message = describe(&e);
            eprintln!("error: {message}");
            crate::telemetry::report_failure(&message);
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, each said once: an error whose message already
/// ends with its cause's (a store error names the driver's) does not repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { json: as_json },
        } => Ok(config_check(as_json).await),
        Command::Sink {
            listen,
            secret,
            signature_header,
            signature_algorithm,
            status,
            fail_first,
            quiet,
        } => {
            let secret = secret
                .filter(|s| !s.trim().is_empty())
                .map(|s| SigningSecret::parse(s.trim()))
                .transpose()
                .context("the signing secret is not usable")?;
            let status = axum::http::StatusCode::from_u16(status)
                .context("--status must be an HTTP status")?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let address = listener.local_addr()?;
            println!(
                "hookrelay sink listening on http://{address}/ ({})",
                if secret.is_some() {
                    "verifying signatures"
                } else {
                    "no secret: signatures not checked"
                }
            );
            println!("Point hookrelay at it with ZAPIER_WEBHOOK_URL=http://{address}/hook");
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone());
            let options = SinkOptions {
                secret,
                signature_header,
                signature_algorithm,
                status,
                fail_first,
                quiet,
            };
            sink::run(listener, options, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let config = match load_config(matches!(command, Command::Serve { .. })) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            with_config(config, command).await
        }
    }
}

async fn with_config(mut config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { listen, role } => {
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(role) = role {
                config.server.role = role;
            }
            let address = config.server.listen;
            let role = config.server.role;
            if role.serves_api()
                && config.server.admin_token.is_none()
                && !config.server.allow_no_admin_token
                && !crate::api::management_without_token(&config)
            {
                let why = if address.ip().to_canonical().is_loopback() {
                    "with HOOKRELAY_TRUSTED_PROXIES set".to_owned()
                } else {
                    format!("on the non-loopback address {address}")
                };
                eprintln!(
                    "error: refusing to serve {why} without HOOKRELAY_ADMIN_TOKEN.\n\
                     Set HOOKRELAY_ADMIN_TOKEN (e.g. $(openssl rand -hex 32)), or HOOKRELAY_ALLOW_NO_ADMIN_TOKEN=true \
                     to serve with the management routes closed."
                );
                return Ok(ExitCode::from(2));
            }
            let relay = Relay::open(config).await.context("opening the database")?;
            let listener = if role.serves_api() {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address}"))?;
                let bound = listener.local_addr()?;
                // On stdout, so scripts (and tests) that asked for port 0 learn the real one.
                println!("hookrelay listening on http://{bound}");
                tracing::info!(address = %bound, ?role, runtime_threads = runtime_threads(), "listening");
                Some(listener)
            } else {
                println!("hookrelay delivering (worker role, no HTTP listener)");
                tracing::info!(
                    ?role,
                    runtime_threads = runtime_threads(),
                    "delivering without an HTTP listener"
                );
                None
            };
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone());
            crate::app::serve(relay, listener, shutdown).await?;
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            session_id,
            query,
            model,
            response_time_ms,
            tokens,
            failed,
            user_agent,
            idempotency_key,
            json: as_json,
        } => {
            let key = idempotency_key
                .as_deref()
                .map(IdempotencyKey::parse)
                .transpose()?;
            let relay = open_existing(config).await?;
            let event = UsageEvent {
                session_id,
                query,
                model_name: model,
                response_time_ms,
                estimated_tokens: tokens,
                success: !failed,
                user_agent,
            };
            let stored = relay.track_usage_batch(vec![event], key).await?;
            let Some(stored) = stored.into_iter().next() else {
                anyhow::bail!("the event was not stored");
            };
            if as_json {
                output::json(&stored);
            } else if stored.duplicate {
                println!(
                    "{} (duplicate: already recorded under this idempotency key)",
                    stored.id
                );
            } else {
                println!("{}", stored.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            url,
            endpoint,
            json: as_json,
        } => {
            let target = match (url, endpoint) {
                (Some(url), _) => Target::for_url(EndpointUrl::parse(&url)?, &config),
                (None, Some(id)) => {
                    let id = EndpointId::parse(&id)?;
                    let relay = open_existing(config.clone()).await?;
                    Target::from_endpoint(&relay.endpoint(&id).await?, &config)
                }
                (None, None) => match &config.delivery.webhook_url {
                    Some(url) => Target::for_url(url.clone(), &config),
                    None => {
                        eprintln!(
                            "error: no endpoint to test: set ZAPIER_WEBHOOK_URL, or pass --url or --endpoint"
                        );
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            let require_https = config.delivery.require_https;
            let policy = config.delivery.targets.clone();
            let sender = HttpSender::new(1, policy.clone())?;
            let report = probe(
                &target,
                require_https,
                &policy,
                &sender,
                SystemClock.now_ms(),
            )
            .await;
            if as_json {
                output::json(&report);
            } else {
                println!("Testing {}", report.endpoint);
                for step in &report.steps {
                    let mark = if step.ok { "ok  " } else { "FAIL" };
                    println!(
                        "  {mark} {:<8} {} ({} ms)",
                        step.step, step.detail, step.duration_ms
                    );
                }
                println!(
                    "{}",
                    if report.ok {
                        "Endpoint OK."
                    } else {
                        "Endpoint check FAILED."
                    }
                );
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ratelimit {
            command:
                RatelimitCommand::Status {
                    client,
                    server,
                    json: as_json,
                },
        } => ratelimit_status(&config, client, server, as_json).await,
        Command::Status { json: as_json } => {
            monitor::status(open_existing(config).await?, as_json).await
        }
        Command::Metrics { json: as_json } => {
            monitor::metrics(open_existing(config).await?, as_json).await
        }
        Command::Health {
            this_instance: true,
            server,
            json: as_json,
        } => monitor::health_of_this_instance(&config, server, as_json).await,
        Command::Health { json: as_json, .. } => match open_existing(config).await {
            Ok(relay) => monitor::health(relay, as_json).await,
            Err(e) => {
                // The database cannot even be opened: that is the verdict.
                if as_json {
                    output::json(&json!({
                        "health": { "status": "unhealthy", "reasons": [format!("the database cannot be opened: {e}")] },
                        "worker_alive": false
                    }));
                } else {
                    println!(
                        "health       Unhealthy\n             - the database cannot be opened: {e}"
                    );
                }
                Ok(ExitCode::from(2))
            }
        },
        Command::Alerts {
            limit,
            json: as_json,
        } => monitor::alerts(open_existing(config).await?, limit, as_json).await,
        Command::Sessions { command } => {
            data::sessions(open_existing(config).await?, command).await
        }
        Command::Analytics {
            days,
            json: as_json,
        } => {
            if !(1..=3650).contains(&days) {
                anyhow::bail!("--days must be between 1 and 3650");
            }
            data::analytics(open_existing(config).await?, days, as_json).await
        }
        Command::Cleanup {
            days,
            dry_run,
            json: as_json,
        } => {
            let days = days.unwrap_or(config.database.retention_days);
            data::cleanup(open_existing(config).await?, days, dry_run, as_json).await
        }
        Command::Db { command } => {
            // Only `db migrate` may create the database; the others report a missing one.
            let relay = if matches!(command, data::DbCommand::Migrate { .. }) {
                Relay::open_for_management(config)
                    .await
                    .context("opening the database")?
            } else {
                open_existing(config).await?
            };
            data::db(relay, command).await
        }
        Command::Backup { path, json } => {
            data::backup(open_existing(config).await?, path, json).await
        }
        Command::Restore {
            path,
            force,
            yes,
            json,
        } => data::restore(config, path, force, yes, json).await,
        Command::Endpoints { command } => {
            let relay = open_existing(config).await?;
            endpoints::run(relay, command).await
        }
        Command::Dlq { command } => {
            let relay = open_existing(config).await?;
            dlq::run(relay, command).await
        }
        Command::Config { .. } | Command::Sink { .. } => {
            unreachable!("handled before loading the configuration")
        }
    }
}

/// Asks the running server, which holds the limiter's state in memory.
async fn ratelimit_status(
    config: &Config,
    client: Option<String>,
    server: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let base = server.unwrap_or_else(|| {
        let mut address = config.server.listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{address}")
    });
    let mut request =
        reqwest::Client::new().get(format!("{}/api/v1/ratelimit", base.trim_end_matches('/')));
    if let Some(client) = &client {
        request = request.query(&[("client", client)]);
    }
    if let Some(token) = &config.server.admin_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request.send().await.with_context(|| {
        format!("cannot reach the server at {base}; is `hookrelay serve` running?")
    })?;
    let status = response.status();
    let body: serde_json::Value = serde_json::from_str(&response.text().await?).unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "error: the server answered {status}: {}",
            body["detail"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    if as_json {
        output::json(&body);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "limit: {} requests, refilling at {:.4} per second ({} s window)",
        body["limit"],
        body["requests_per_second"].as_f64().unwrap_or_default(),
        body["window_seconds"]
    );
    let clients = body["clients"].as_array().cloned().unwrap_or_default();
    if clients.is_empty() {
        println!("No client is below its full allowance.");
    } else {
        let rows: Vec<Vec<String>> = clients
            .iter()
            .map(|c| {
                vec![
                    c["client"].as_str().unwrap_or("").to_owned(),
                    c["remaining"].to_string(),
                    format!("{} s", c["retry_after_seconds"]),
                    format!("{} s", c["reset_seconds"]),
                ]
            })
            .collect();
        output::table(&["CLIENT", "REMAINING", "NEXT IN", "FULL IN"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the configured database can be reached (never echoing `DATABASE_URL`): an error
/// when PostgreSQL does not answer, a note when there is no database yet.
async fn database_reachable(config: &Config) -> Option<Problem> {
    let (severity, message, fix) = match &config.database.location {
        crate::config::DatabaseLocation::Sqlite(path) => {
            if path.exists() {
                return None;
            }
            (
                Severity::Warning,
                format!("there is no database at {} yet", path.display()),
                "`hookrelay serve` (or `hookrelay db migrate`) creates it".to_owned(),
            )
        }
        crate::config::DatabaseLocation::Postgres(settings) => {
            match tokio::time::timeout(
                std::time::Duration::from_secs(15),
                crate::store::PgStore::is_initialised(settings),
            )
            .await
            {
                Ok(Ok(true)) => return None,
                Ok(Ok(false)) => (
                    Severity::Warning,
                    format!("schema `{}` holds no hookrelay data yet", settings.schema),
                    "`hookrelay serve` (or `hookrelay db migrate`) creates the tables".to_owned(),
                ),
                Ok(Err(e)) => (
                    Severity::Error,
                    format!("PostgreSQL cannot be reached: {e}"),
                    "check the host, port, credentials and sslmode in DATABASE_URL".to_owned(),
                ),
                Err(_) => (
                    Severity::Error,
                    "PostgreSQL did not answer within 15 s".to_owned(),
                    "check the host and port in DATABASE_URL, and the network".to_owned(),
                ),
            }
        }
    };
    Some(Problem {
        severity,
        variable: "DATABASE_URL".into(),
        message,
        fix,
    })
}

async fn config_check(as_json: bool) -> ExitCode {
    let (mut problems, valid) = match Config::from_env() {
        Ok((config, mut warnings)) => {
            warnings.extend(database_reachable(&config).await);
            (with_dotenv_problem(warnings), true)
        }
        Err(e) => (with_dotenv_problem(e.0), false),
    };
    let valid = valid && !problems.iter().any(|p| p.severity == Severity::Error);
    problems.sort_by_key(|p| p.severity != Severity::Error);
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    if as_json {
        output::json(
            &json!({ "valid": valid, "errors": errors, "warnings": warnings, "problems": problems }),
        );
    } else {
        for problem in &problems {
            println!("{problem}");
        }
        if valid {
            println!("Configuration OK ({warnings} warning(s)).");
        } else {
            println!("Configuration INVALID: {errors} error(s), {warnings} warning(s).");
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_clis_flags_are_its_commands() {
        let translate = |args: &[&str]| -> Vec<String> {
            translate_legacy(args.iter().map(std::ffi::OsString::from).collect())
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            translate(&["hookrelay", "--status"]),
            ["hookrelay", "status"]
        );
        assert_eq!(
            translate(&["hookrelay", "--cleanup", "30", "--dry-run"]),
            ["hookrelay", "cleanup", "--days", "30", "--dry-run"]
        );
        assert_eq!(
            translate(&["hookrelay", "--cleanup"]),
            ["hookrelay", "cleanup"]
        );
        assert_eq!(
            translate(&["hookrelay", "--health", "--json"]),
            ["hookrelay", "health", "--json"]
        );
        assert_eq!(translate(&["hookrelay", "status"]), ["hookrelay", "status"]);
        let parsed = Cli::parse_from(translate(&["hookrelay", "--metrics"]));
        assert!(matches!(parsed.command, Command::Metrics { .. }));
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let store = crate::store::StoreError::caused("cannot create /proc/hookrelay", io);
        let error = anyhow::Error::new(store).context("opening the database");
        assert_eq!(
            describe(&error),
            "opening the database: database error: cannot create /proc/hookrelay: No such file or directory"
        );
    }
}
