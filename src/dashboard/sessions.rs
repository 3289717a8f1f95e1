//! Sessions and analytics: the 7-day summary (the guide's `get_analytics_summary`), tokens and
//! calls by model and by day, and the most recently active sessions.

use axum::{Extension, extract::State};
use maud::{Markup, html};

use super::{
    Refusal, Viewer,
    chart::bars,
    layout::{self, Section, millis, percent},
};
use crate::relay::Relay;

/// Sessions listed, most recently active first.
const RECENT: usize = 25;

pub async fn page(
    State(relay): State<Relay>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Markup, Refusal> {
    let analytics = relay.analytics(7).await?;
    let sessions = relay.sessions(analytics.since_ms, i64::MAX, RECENT).await?;
    let chrome = viewer.chrome("Sessions and analytics", Section::Sessions, None);
    let count = |v: f64| format!("{v:.0}");
    let tokens_by_model: Vec<(String, f64)> = analytics
        .models
        .iter()
        .map(|m| (m.model.clone(), m.tokens as f64))
        .collect();
    let queries_by_model: Vec<(String, f64)> = analytics
        .models
        .iter()
        .map(|m| (m.model.clone(), m.queries as f64))
        .collect();
    let day = |ms: i64| layout::time(ms)[..10].to_owned();
    let tokens_by_day: Vec<(String, f64)> = analytics
        .daily
        .iter()
        .map(|d| (day(d.day_start_ms), d.tokens as f64))
        .collect();
    let queries_by_day: Vec<(String, f64)> = analytics
        .daily
        .iter()
        .map(|d| (day(d.day_start_ms), d.queries as f64))
        .collect();
    Ok(layout::page(
        &chrome,
        html! {
            p.muted { "Since " (layout::time(analytics.since_ms)) " (the last " (analytics.days) " UTC days, today included)." }
            div.cards {
                div.card { div.label { "Sessions" } div.value #sessions-total { (analytics.sessions.total) } }
                div.card { div.label { "LLM calls" } div.value #queries-total { (analytics.queries.total) } }
                div.card { div.label { "Calls that succeeded" } div.value { (percent(analytics.queries.success_rate)) } }
                div.card { div.label { "Avg. model response" } div.value { (millis(analytics.queries.avg_response_time_ms)) } }
                div.card { div.label { "Estimated tokens" } div.value { (analytics.queries.tokens) } }
                div.card { div.label { "Webhooks delivered" } div.value { (percent(analytics.webhooks.success_rate)) }
                    div.label { (analytics.webhooks.delivered) " delivered, " (analytics.webhooks.dead_lettered) " dead-lettered" } }
            }
            div.charts {
                div { h2 { "Tokens by model" } @if tokens_by_model.is_empty() { p.muted { "No calls in this period." } } @else { (bars("Tokens by model", &tokens_by_model, count)) } }
                div { h2 { "Calls by model" } @if queries_by_model.is_empty() { p.muted { "No calls in this period." } } @else { (bars("Calls by model", &queries_by_model, count)) } }
                div { h2 { "Tokens by day" } (bars("Tokens by day", &tokens_by_day, count)) }
                div { h2 { "Calls by day" } (bars("Calls by day", &queries_by_day, count)) }
            }
            h2 { "Recently active sessions" }
            @if sessions.is_empty() {
                p.muted { "None in this period." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Session" } th.num { "Calls" } th.num { "Failed" } th.num { "Tokens" } th { "Models" } th { "Last seen" } th { "Webhooks" } } }
                    tbody { @for s in &sessions {
                        tr {
                            td { a href=(format!("/dashboard/events?session={}", form_urlencoded::byte_serialize(s.session_id.as_bytes()).collect::<String>())) { (s.session_id) } }
                            td.num { (s.queries) }
                            td.num { (s.failures) }
                            td.num { (s.estimated_tokens) }
                            td { (s.models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (layout::time(s.last_seen_ms)) }
                            td { (s.webhooks.delivered) " delivered"
                                @if s.webhooks.pending > 0 { ", " (s.webhooks.pending) " pending" }
                                @if s.webhooks.dead > 0 { ", " strong { (s.webhooks.dead) " dead" } } }
                        }
                    } }
                } }
            }
        },
    ))
}
