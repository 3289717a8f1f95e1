//! The overview: the health verdict and why, active alerts, the queue, and delivery over the
//! last hour, day or week as charts.

use std::sync::Arc;

use axum::{
    Extension,
    extract::{RawQuery, State},
};
use maud::{Markup, html};

use super::{
    Dashboard, Refusal, Viewer,
    chart::{LineChart, Series, count},
    forms::Form,
    layout::{self, Section, age, millis, percent},
};
use crate::{domain::percentile, monitor::WindowTotals, relay::Relay};

/// A period the charts cover, and the width of each point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
}

impl Range {
    const ALL: [Self; 3] = [Self::Hour, Self::Day, Self::Week];

    fn parse(value: Option<&str>) -> Self {
        match value {
            Some("24h") => Self::Day,
            Some("7d") => Self::Week,
            _ => Self::Hour,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Hour => "Last hour",
            Self::Day => "Last 24 hours",
            Self::Week => "Last 7 days",
        }
    }

    /// (span, step) in ms: 60 points of a minute, 96 of 15 minutes, 168 of an hour.
    pub fn span_and_step(self) -> (i64, i64) {
        const MINUTE: i64 = 60_000;
        match self {
            Self::Hour => (60 * MINUTE, MINUTE),
            Self::Day => (24 * 60 * MINUTE, 15 * MINUTE),
            Self::Week => (7 * 24 * 60 * MINUTE, 60 * MINUTE),
        }
    }
}

/// The points of a chart: one per step from `start_ms`, holding the totals of that step.
pub fn points(
    start_ms: i64,
    step_ms: i64,
    count: usize,
    rows: &[(i64, WindowTotals)],
) -> Vec<Option<WindowTotals>> {
    let mut points = vec![None; count];
    for (bucket_ms, totals) in rows {
        let index = (bucket_ms - start_ms).div_euclid(step_ms);
        if let Some(point) = usize::try_from(index).ok().and_then(|i| points.get_mut(i)) {
            *point = Some(*totals);
        }
    }
    points
}

fn rate(totals: &WindowTotals) -> Option<f64> {
    (totals.attempts > 0).then(|| totals.successes as f64 / totals.attempts as f64)
}

fn quantile(totals: &WindowTotals, p: f64) -> Option<f64> {
    let max = (totals.duration_max_ms > 0 || totals.duration_sum_ms == 0)
        .then_some(totals.duration_max_ms);
    percentile(&totals.buckets, p, max)
}

pub async fn page(
    State(relay): State<Relay>,
    Extension(_dashboard): Extension<Arc<Dashboard>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(query): RawQuery,
) -> Result<Markup, Refusal> {
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    let range = Range::parse(query.get("range"));
    let report = relay.report_here().await;
    let this_worker_stopped = relay.config().server.role.delivers() && !relay.worker().is_alive();
    let now_ms = relay.clock().now_ms();
    let (span_ms, step_ms) = range.span_and_step();
    let steps = (span_ms / step_ms) as usize;
    // The first step starts on a step boundary, so points line up with the roll-ups.
    let start_ms = (now_ms - span_ms).div_euclid(step_ms) * step_ms + step_ms;
    let rows = relay.series(start_ms, step_ms).await?;
    let points = points(start_ms, step_ms, steps, &rows);
    let labels: Vec<String> = (0..steps)
        .map(|i| {
            let at = start_ms + i as i64 * step_ms;
            let text = layout::time(at);
            match range {
                Range::Week => text[5..10].to_owned(),
                _ => text[11..16].to_owned(),
            }
        })
        .collect();
    let totals: WindowTotals = points
        .iter()
        .flatten()
        .fold(WindowTotals::default(), |sum, t| sum.merged(t));
    let chrome = viewer.chrome("Overview", Section::Overview, None);
    let status = format!("{:?}", report.health.status).to_lowercase();

    let success = LineChart {
        title: "Delivery success rate",
        labels: labels.clone(),
        series: vec![Series {
            name: "attempts that succeeded",
            class: "ok",
            values: points.iter().map(|p| p.as_ref().and_then(rate)).collect(),
        }],
        format: |v| format!("{:.0}%", v * 100.0),
        min_top: 1.0,
    };
    let latency = LineChart {
        title: "Attempt latency",
        labels: labels.clone(),
        series: vec![
            Series {
                name: "p50",
                class: "p50",
                values: points
                    .iter()
                    .map(|p| p.as_ref().and_then(|t| quantile(t, 0.5)))
                    .collect(),
            },
            Series {
                name: "p99",
                class: "p99",
                values: points
                    .iter()
                    .map(|p| p.as_ref().and_then(|t| quantile(t, 0.99)))
                    .collect(),
            },
        ],
        format: |v| {
            if v < 10.0 && v.fract() != 0.0 {
                format!("{v:.1} ms")
            } else {
                millis(Some(v))
            }
        },
        min_top: 10.0,
    };
    let per = match range {
        Range::Hour => "per minute",
        Range::Day => "per 15 minutes",
        Range::Week => "per hour",
    };
    let volume = LineChart {
        title: "Throughput",
        labels,
        series: vec![
            Series {
                name: "events accepted",
                class: "volume",
                values: points
                    .iter()
                    .map(|p| Some(p.map_or(0, |t| t.ingested) as f64))
                    .collect(),
            },
            Series {
                name: "delivered",
                class: "ok",
                values: points
                    .iter()
                    .map(|p| Some(p.map_or(0, |t| t.delivered) as f64))
                    .collect(),
            },
            Series {
                name: "dead-lettered",
                class: "bad",
                values: points
                    .iter()
                    .map(|p| Some(p.map_or(0, |t| t.dead_lettered) as f64))
                    .collect(),
            },
        ],
        format: count,
        min_top: 1.0,
    };

    Ok(layout::page(
        &chrome,
        html! {
            section aria-labelledby="verdict" {
                h2 #verdict { "Health: " span class=(format!("status {status}")) data-health=(status) { (status) } }
                @if report.health.reasons.is_empty() {
                    p { "Events are being accepted and delivered." }
                } @else {
                    ul.reasons { @for reason in &report.health.reasons { li { (reason) } } }
                }
                @if this_worker_stopped {
                    p.error { "This instance's delivery worker is not running." }
                } @else if !report.worker_alive {
                    p.error { "No delivery worker has reported in recently." }
                }
            }
            div.cards {
                div.card { div.label { "Success rate (" (range.label().to_lowercase()) ")" } div.value #success-rate { (percent(rate(&totals))) } }
                div.card { div.label { "p50 / p99 attempt" } div.value { (millis(quantile(&totals, 0.5))) " / " (millis(quantile(&totals, 0.99))) } }
                div.card { div.label { "Accepted / delivered" } div.value #throughput { (totals.ingested) " / " (totals.delivered) } }
                div.card { div.label { "Backlog" } div.value #backlog { (report.queue.pending) }
                    div.label { "oldest " (report.queue.oldest_pending_age_seconds.map_or_else(|| "–".to_owned(), age)) } }
                div.card { div.label { "Dead letters" } div.value #dead-letters { a href="/dashboard/dlq" { (report.queue.dead_letters) } } }
                div.card { div.label { "Avg. acceptance to arrival" } div.value { (millis((totals.delivered > 0).then(|| totals.latency_sum_ms as f64 / totals.delivered as f64))) } }
            }
            h2 { "Delivery" }
            nav.tabs aria-label="Period" {
                @for option in Range::ALL {
                    a href=(format!("/dashboard?range={}", option.key())) aria-current=[(option == range).then_some("true")] { (option.label()) }
                }
            }
            div.charts {
                div { h3 { "Success rate" } (success.render()) }
                div { h3 { "Attempt latency" } (latency.render()) }
                div { h3 { "Throughput, " (per) } (volume.render()) }
            }
            h2 { "Active alerts" }
            @if report.alerts.active_alerts.is_empty() {
                p.muted { "None." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Level" } th { "Rule" } th { "What" } } }
                    tbody { @for alert in &report.alerts.active_alerts {
                        tr { td { span class=(format!("status {}", if format!("{:?}", alert.level).eq_ignore_ascii_case("critical") { "unhealthy" } else { "degraded" })) { (format!("{:?}", alert.level).to_lowercase()) } } td { code { (alert.rule) } } td { (alert.message) } }
                    } }
                } }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(attempts: u64, successes: u64) -> WindowTotals {
        WindowTotals {
            attempts,
            successes,
            ..WindowTotals::default()
        }
    }

    #[test]
    fn rows_land_on_their_step_and_missing_steps_stay_empty() {
        let rows = [
            (60_000, totals(4, 3)),
            (180_000, totals(2, 2)),
            (9_999_999, totals(1, 1)),
        ];
        let points = points(60_000, 60_000, 4, &rows);
        assert_eq!(points[0].map(|t| t.attempts), Some(4));
        assert_eq!(points[1], None);
        assert_eq!(points[2].map(|t| t.attempts), Some(2));
        assert_eq!(points[3], None, "a row outside the period is dropped");
        assert_eq!(rate(&totals(4, 3)), Some(0.75));
        assert_eq!(rate(&totals(0, 0)), None);
    }

    #[test]
    fn each_period_has_a_sensible_number_of_points() {
        for range in Range::ALL {
            let (span, step) = range.span_and_step();
            assert!((48..=200).contains(&(span / step)), "{range:?}");
            assert_eq!(span % step, 0);
        }
        assert_eq!(Range::parse(Some("7d")), Range::Week);
        assert_eq!(Range::parse(Some("nonsense")), Range::Hour);
    }
}
