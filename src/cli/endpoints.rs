//! `hookrelay endpoints …`: manage destinations.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{confirm, cut, json, table, time};
use crate::{
    domain::EndpointId,
    endpoints::{Endpoint, EndpointChanges, EndpointSpec, parse_header},
    relay::Relay,
};

/// Endpoint commands.
#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Add an endpoint; prints its signing secret once.
    Add {
        /// Where to deliver.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        settings: Settings,
        /// Signing secret (default: a generated `whsec_…` secret).
        #[arg(long, env = "HOOKRELAY_NEW_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List endpoints with their state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint: settings, circuit and health.
    Show {
        /// The endpoint id (`ep_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint's settings.
    Update {
        /// The endpoint id.
        id: String,
        /// New URL.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        settings: Settings,
        /// Go back to the default timeout, retries, rate limit and circuit threshold.
        #[arg(long)]
        reset_limits: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to an endpoint (its queued deliveries wait; new events skip it).
    Disable {
        /// The endpoint id.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// Print the endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume an endpoint (closes its circuit and forgets past failures).
    Enable {
        /// The endpoint id.
        id: String,
        /// Print the endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a new signing secret; the old one keeps signing beside it for the overlap.
    RotateSecret {
        /// The endpoint id.
        id: String,
        /// The new secret (default: generated).
        #[arg(long, env = "HOOKRELAY_NEW_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Hours the old secret keeps signing (default: HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS).
        #[arg(long)]
        overlap_hours: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint with its undelivered and dead-lettered deliveries.
    Remove {
        /// The endpoint id.
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Settings shared by `add` and `update`.
#[derive(Debug, Args)]
pub struct Settings {
    /// Free text.
    #[arg(long)]
    description: Option<String>,
    /// Event types to receive (`usage.tracked`, `alert.*`, `*`); repeat for several.
    #[arg(long = "event-type")]
    event_types: Vec<String>,
    /// Extra request header `Name: value`; repeat for several.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Per-request timeout in seconds.
    #[arg(long)]
    timeout_seconds: Option<f64>,
    /// Retry budget.
    #[arg(long)]
    max_retries: Option<u32>,
    /// Requests per second.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Requests allowed back to back.
    #[arg(long)]
    rate_burst: Option<u32>,
    /// Consecutive failures that open the circuit (0: never).
    #[arg(long)]
    circuit_threshold: Option<u32>,
}

impl Settings {
    fn headers(&self) -> anyhow::Result<Option<BTreeMap<String, String>>> {
        if self.headers.is_empty() {
            return Ok(None);
        }
        let mut headers = BTreeMap::new();
        for raw in &self.headers {
            let (name, value) = parse_header(raw)?;
            headers.insert(name, value);
        }
        Ok(Some(headers))
    }
}

fn print_endpoint(endpoint: &Endpoint) {
    let view = endpoint.view();
    let h = &view.health;
    println!("endpoint       {}", view.id);
    println!("url            {}", view.url);
    if !view.description.is_empty() {
        println!("description    {}", view.description);
    }
    println!(
        "state          {}{}",
        if view.enabled { "enabled" } else { "DISABLED" },
        view.disabled_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "event types    {}",
        if view.event_types.is_empty() {
            "all".to_owned()
        } else {
            view.event_types.join(", ")
        }
    );
    let signing = match (view.managed_by_config, &endpoint.secret) {
        (true, Some(fingerprint)) => {
            format!("signed with the serving process's WEBHOOK_SECRET (fingerprint {fingerprint})")
        }
        (true, None) => "UNSIGNED (the serving process has no WEBHOOK_SECRET)".to_owned(),
        (false, Some(_)) => "signed".to_owned(),
        (false, None) => "UNSIGNED".to_owned(),
    };
    println!(
        "signing        {signing}{}",
        view.previous_secret_until_ms
            .map(|until| format!("; previous secret also signs until {}", time(Some(until))))
            .unwrap_or_default()
    );
    if !view.header_names.is_empty() {
        println!("headers        {}", view.header_names.join(", "));
    }
    let or_default = |value: Option<String>| value.unwrap_or_else(|| "default".into());
    println!(
        "timeout        {}",
        or_default(view.timeout_seconds.map(|s| format!("{s} s")))
    );
    println!(
        "max retries    {}",
        or_default(view.max_retries.map(|n| n.to_string()))
    );
    println!(
        "rate limit     {}",
        or_default(
            view.rate_limit
                .map(|r| format!("{}/s, burst {}", r.per_second, r.burst))
        )
    );
    println!(
        "circuit        {} since {}",
        h.circuit,
        time(h.circuit_changed_at_ms)
    );
    println!(
        "failures       {} in a row{}",
        h.consecutive_failures,
        h.failing_since_ms
            .map(|t| format!(", failing since {}", time(Some(t))))
            .unwrap_or_default()
    );
    println!("last attempt   {}", time(h.last_attempt_at_ms));
    println!("last success   {}", time(h.last_success_at_ms));
}

pub async fn run(relay: Relay, command: EndpointsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EndpointsCommand::Add {
            url,
            settings,
            secret,
            json: as_json,
        } => {
            let spec = EndpointSpec {
                url,
                description: settings.description.clone().unwrap_or_default(),
                event_types: settings.event_types.clone(),
                secret,
                headers: settings.headers()?.unwrap_or_default(),
                timeout_seconds: settings.timeout_seconds,
                max_retries: settings.max_retries,
                rate_limit: settings.rate_limit,
                rate_burst: settings.rate_burst,
                circuit_threshold: settings.circuit_threshold,
            };
            let (endpoint, secret) = relay.create_endpoint(spec).await?;
            if as_json {
                json(&json!({ "endpoint": endpoint.view(), "secret": secret }));
            } else {
                print_endpoint(&endpoint);
                println!(
                    "\nSigning secret (shown only now; give it to the receiver to verify deliveries):\n{secret}"
                );
            }
        }
        EndpointsCommand::List { json: as_json } => {
            let endpoints = relay.endpoints().await?;
            if as_json {
                let views: Vec<_> = endpoints.iter().map(Endpoint::view).collect();
                json(&json!({ "count": views.len(), "endpoints": views }));
            } else if endpoints.is_empty() {
                println!(
                    "No endpoints. Set ZAPIER_WEBHOOK_URL or run `hookrelay endpoints add --url …`."
                );
            } else {
                let rows: Vec<Vec<String>> = endpoints
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.to_string(),
                            if e.enabled {
                                "enabled".into()
                            } else {
                                "disabled".into()
                            },
                            e.health.circuit.to_string(),
                            if e.filter.patterns().is_empty() {
                                "all".into()
                            } else {
                                e.filter.patterns().join(",")
                            },
                            e.url.redacted(),
                            cut(&e.description, 30),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ENDPOINT",
                        "STATE",
                        "CIRCUIT",
                        "EVENT TYPES",
                        "URL",
                        "DESCRIPTION",
                    ],
                    &rows,
                );
            }
        }
        EndpointsCommand::Show { id, json: as_json } => {
            let endpoint = relay.endpoint(&EndpointId::parse(&id)?).await?;
            if as_json {
                json(&endpoint.view());
            } else {
                print_endpoint(&endpoint);
            }
        }
        EndpointsCommand::Update {
            id,
            url,
            settings,
            reset_limits,
            json: as_json,
        } => {
            fn reset<T>(reset_limits: bool, value: Option<T>) -> Option<Option<T>> {
                if reset_limits {
                    Some(None)
                } else {
                    value.map(Some)
                }
            }
            let changes = EndpointChanges {
                url,
                description: settings.description.clone(),
                event_types: (!settings.event_types.is_empty())
                    .then(|| settings.event_types.clone()),
                headers: settings.headers()?,
                timeout_seconds: reset(reset_limits, settings.timeout_seconds),
                max_retries: reset(reset_limits, settings.max_retries),
                rate_limit: reset(reset_limits, settings.rate_limit),
                rate_burst: reset(reset_limits, settings.rate_burst),
                circuit_threshold: reset(reset_limits, settings.circuit_threshold),
            };
            let endpoint = relay
                .update_endpoint(&EndpointId::parse(&id)?, changes)
                .await?;
            if as_json {
                json(&endpoint.view());
            } else {
                print_endpoint(&endpoint);
            }
        }
        EndpointsCommand::Disable {
            id,
            reason,
            json: as_json,
        } => {
            let endpoint = relay
                .set_endpoint_enabled(&EndpointId::parse(&id)?, false, reason)
                .await?;
            if as_json {
                json(&endpoint.view());
            } else {
                println!("Disabled {}.", endpoint.id);
            }
        }
        EndpointsCommand::Enable { id, json: as_json } => {
            let endpoint = relay
                .set_endpoint_enabled(&EndpointId::parse(&id)?, true, None)
                .await?;
            if as_json {
                json(&endpoint.view());
            } else {
                println!("Enabled {}; its circuit is closed.", endpoint.id);
            }
        }
        EndpointsCommand::RotateSecret {
            id,
            secret,
            overlap_hours,
            json: as_json,
        } => {
            let overlap = match overlap_hours {
                Some(hours) if hours.is_finite() && (0.0..=8760.0).contains(&hours) => {
                    Some(Duration::from_secs_f64(hours * 3600.0))
                }
                Some(_) => anyhow::bail!("--overlap-hours must be between 0 and 8760"),
                None => None,
            };
            let (endpoint, secret) = relay
                .rotate_secret(&EndpointId::parse(&id)?, secret, overlap)
                .await?;
            if as_json {
                json(&json!({ "endpoint": endpoint.view(), "secret": secret }));
            } else {
                println!(
                    "New signing secret for {} (shown only now); the previous one also signs until {}:\n{secret}",
                    endpoint.id,
                    time(endpoint.previous_secret_until_ms)
                );
            }
        }
        EndpointsCommand::Remove {
            id,
            yes,
            json: as_json,
        } => {
            let id = EndpointId::parse(&id)?;
            if !yes
                && !confirm(&format!(
                    "Remove {id} with its undelivered and dead-lettered deliveries?"
                ))
            {
                eprintln!("Nothing removed.");
                return Ok(ExitCode::FAILURE);
            }
            relay.remove_endpoint(&id).await?;
            if as_json {
                json(&serde_json::json!({ "removed": id }));
            } else {
                println!("Removed {id}.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
