//! Endpoints: each one's state (enabled, circuit, rate limit, disabled and why), its success
//! rate and last errors over the last day; enable, disable, send a test event, rotate the
//! secret (shown once).

use std::sync::Arc;

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use super::{
    Dashboard, Refusal, Viewer,
    forms::Form,
    layout::{self, Section, csrf_field, millis, percent},
};
use crate::{
    delivery::{HttpSender, Target, probe},
    domain::EndpointId,
    relay::Relay,
    store::EndpointActivity,
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What an action left to say, by key: the page shows fixed sentences, never text from the URL.
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "enabled" => Some("Endpoint enabled."),
        "disabled" => Some("Endpoint disabled: its events wait until it is enabled again."),
        _ => None,
    }
}

pub async fn page(
    State(relay): State<Relay>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Refusal> {
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    let now_ms = relay.clock().now_ms();
    let endpoints = relay.endpoints().await?;
    let activity = relay.endpoint_activity(now_ms - DAY_MS, 3).await?;
    let chrome = viewer.chrome("Endpoints", Section::Endpoints, notice(query.get("done")));
    Ok(layout::page(
        &chrome,
        html! {
            @if endpoints.is_empty() {
                p { "No endpoints yet. Set ZAPIER_WEBHOOK_URL, or add one with " code { "hookrelay endpoints add" } "." }
            }
            @for endpoint in &endpoints {
                @let view = endpoint.view();
                @let figures = activity.iter().find(|a| a.endpoint_id == endpoint.id);
                @let circuit = format!("{:?}", view.health.circuit).to_lowercase();
                section.card id=(view.id.as_str()) aria-labelledby=(format!("{}-title", view.id)) {
                    h2 id=(format!("{}-title", view.id)) { code { (view.id) } " " span.muted { (view.description) } }
                    p { code title="The path, which can work as a credential, is hidden" { (endpoint.url.redacted()) } }
                    p {
                        @if view.enabled {
                            span.status.enabled { "enabled" }
                        } @else {
                            span.status.disabled { "disabled" }
                            @if let Some(reason) = &view.disabled_reason { " — " (reason) }
                        }
                        " · circuit " span class=(format!("status {circuit}")) { (circuit) }
                        @if let Some(limit) = view.rate_limit {
                            " · limited to " (format!("{}", limit.per_second)) "/s (burst " (limit.burst) ")"
                        }
                        @if view.health.consecutive_failures > 0 {
                            " · " (view.health.consecutive_failures) " failures in a row"
                        }
                        @if view.managed_by_config { " · follows ZAPIER_WEBHOOK_URL" }
                    }
                    (activity_figures(figures))
                    div.actions {
                        @if view.enabled {
                            form method="post" action=(format!("/dashboard/endpoints/{}/disable", view.id)) {
                                (csrf_field(&viewer.csrf))
                                button type="submit" { "Disable" }
                            }
                        } @else {
                            form method="post" action=(format!("/dashboard/endpoints/{}/enable", view.id)) {
                                (csrf_field(&viewer.csrf))
                                button type="submit" { "Enable" }
                            }
                        }
                        form method="post" action=(format!("/dashboard/endpoints/{}/test", view.id)) {
                            (csrf_field(&viewer.csrf))
                            button type="submit" { "Send a test event" }
                        }
                        @if !view.managed_by_config {
                            form method="post" action=(format!("/dashboard/endpoints/{}/rotate-secret", view.id)) {
                                (csrf_field(&viewer.csrf))
                                button.danger type="submit" { "Rotate secret" }
                            }
                        }
                    }
                }
            }
        },
    ))
}

fn activity_figures(figures: Option<&EndpointActivity>) -> Markup {
    let Some(figures) = figures else {
        return html! { p.muted { "No attempts in the last 24 hours." } };
    };
    let rate = (figures.attempts > 0).then(|| figures.successes as f64 / figures.attempts as f64);
    html! {
        p { "Last 24 hours: " strong { (percent(rate)) } " of " (figures.attempts) " attempts succeeded." }
        @if !figures.last_errors.is_empty() {
            div.table-wrap { table {
                caption.muted { "Last errors" }
                thead { tr { th { "When" } th { "Status" } th { "Error" } th { "Delivery" } } }
                tbody { @for error in &figures.last_errors {
                    tr {
                        td { (layout::time(error.at_ms)) }
                        td { (error.status_code.map_or_else(|| "–".to_owned(), |s| s.to_string())) }
                        td { (error.error_kind.as_deref().unwrap_or("")) " " span.muted { (error.error_detail.as_deref().unwrap_or("")) } }
                        td { a href=(format!("/dashboard/deliveries/{}", error.delivery_id)) { code { (error.delivery_id) } } }
                    }
                } }
            } }
        }
    }
}

pub async fn act(
    State(relay): State<Relay>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    Extension(viewer): Extension<Viewer>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let form = Form::parse(&body);
    viewer.check(&dashboard, &form)?;
    let id =
        EndpointId::parse(&id).map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
    match action.as_str() {
        "enable" => {
            relay.set_endpoint_enabled(&id, true, None).await?;
            Ok(Redirect::to("/dashboard/endpoints?done=enabled").into_response())
        }
        "disable" => {
            relay
                .set_endpoint_enabled(&id, false, Some("disabled from the dashboard".into()))
                .await?;
            Ok(Redirect::to("/dashboard/endpoints?done=disabled").into_response())
        }
        "test" => {
            let endpoint = relay.endpoint(&id).await?;
            let config = relay.config();
            let target = Target::from_endpoint(&endpoint, config);
            let policy = config.delivery.targets.clone();
            let sender = HttpSender::new(1, policy.clone()).map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
            let report = probe(
                &target,
                config.delivery.require_https,
                &policy,
                &sender,
                relay.clock().now_ms(),
            )
            .await;
            let chrome = viewer.chrome("Test event", Section::Endpoints, None);
            Ok(layout::page(
                &chrome,
                html! {
                    p { "Testing " code { (report.endpoint) } ": " @if report.ok { span.status.delivered { "passed" } } @else { span.status.dead { "failed" } } }
                    div.table-wrap { table {
                        thead { tr { th { "Step" } th { "Result" } th { "What was found" } th.num { "Time" } } }
                        tbody { @for step in &report.steps {
                            tr { td { (step.step) } td { @if step.ok { "ok" } @else { strong { "FAILED" } } } td { (step.detail) } td.num { (millis(Some(step.duration_ms as f64))) } }
                        } }
                    } }
                    p { a href="/dashboard/endpoints" { "Back to endpoints" } }
                },
            )
            .into_response())
        }
        "rotate-secret" => {
            let (endpoint, secret) = relay.rotate_secret(&id, None, None).await?;
            let chrome = viewer.chrome("New signing secret", Section::Endpoints, None);
            let overlap = endpoint.previous_secret_until_ms.map(layout::time);
            Ok(layout::page(
                &chrome,
                html! {
                    p { "The new secret of " code { (endpoint.id) } ". It is shown this once: copy it to the receiver now." }
                    p.secret #new-secret { code { (secret) } }
                    @if let Some(until) = overlap {
                        p { "Until " (until) " deliveries carry signatures with both the old and the new secret, so the receiver can switch without losing events." }
                    }
                    p { a href="/dashboard/endpoints" { "Back to endpoints" } }
                },
            )
            .into_response())
        }
        _ => Err(Refusal::new(StatusCode::NOT_FOUND, "No such action.")),
    }
}
