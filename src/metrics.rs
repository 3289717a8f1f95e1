//! Prometheus metrics: counters and histograms recorded as things happen, gauges set by the
//! monitor loop, rendered in the text exposition format at `GET /metrics`.
//!
//! Names follow Prometheus conventions (`hookrelay_` prefix, `_total` counters, `_seconds`
//! histograms in base units). Labels are bounded: `endpoint` takes one value per configured
//! endpoint, `outcome` and `status_class` a handful each; event types and sessions, which
//! clients choose, are never labels.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::BUCKETS_MS;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle. `None` when
/// another recorder was installed first (an embedding program's own).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets: Vec<f64> = BUCKETS_MS.iter().map(|ms| ms / 1000.0).collect();
            // Acceptance-to-delivery spans retries, which take minutes to hours.
            let latency = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0,
                3600.0, 21600.0, 86400.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("hookrelay_delivery_latency_seconds".into()),
                    &latency,
                )
                .ok()?
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "hookrelay_events_ingested_total",
        "Events accepted and stored, by kind (usage or event)."
    );
    describe_counter!(
        "hookrelay_ingest_duplicates_total",
        "Ingested events answered as duplicates of an idempotency key."
    );
    describe_counter!(
        "hookrelay_ingest_rejected_total",
        "Ingest requests refused, by HTTP status."
    );
    describe_counter!(
        "hookrelay_delivery_attempts_total",
        "Delivery attempts by endpoint, outcome (delivered, retry, dead, throttled) and status class."
    );
    describe_counter!(
        "hookrelay_deliveries_taken_total",
        "Deliveries the worker took up, by how: claimed from the database (claim) or handed over by ingest in memory, leased when stored (handoff)."
    );
    describe_counter!(
        "hookrelay_dead_letters_total",
        "Deliveries moved to the dead-letter queue, by endpoint."
    );
    describe_histogram!(
        "hookrelay_delivery_attempt_duration_seconds",
        "Duration of delivery attempts, by endpoint."
    );
    describe_histogram!(
        "hookrelay_delivery_latency_seconds",
        "Time from acceptance to successful delivery."
    );
    describe_gauge!(
        "hookrelay_backlog_deliveries",
        "Deliveries waiting for an attempt."
    );
    describe_gauge!(
        "hookrelay_dead_letter_queue_deliveries",
        "Deliveries in the dead-letter queue."
    );
    describe_gauge!(
        "hookrelay_oldest_pending_age_seconds",
        "Age of the oldest undelivered event."
    );
    describe_gauge!(
        "hookrelay_endpoint_circuit_open",
        "1 while an endpoint's circuit is open or half-open."
    );
    describe_gauge!(
        "hookrelay_endpoint_consecutive_failures",
        "Failed attempts in a row, by endpoint."
    );
    describe_gauge!(
        "hookrelay_endpoint_enabled",
        "1 while an endpoint is enabled."
    );
    describe_gauge!("hookrelay_alerts_active", "Active alerts, by level.");
}

/// The metrics in the Prometheus text format (empty without a recorder).
pub fn render() -> String {
    install()
        .map(|handle| {
            handle.run_upkeep();
            handle.render()
        })
        .unwrap_or_default()
}

/// Records accepted events.
pub fn ingested(kind: &'static str, stored: u64, duplicates: u64) {
    if stored > 0 {
        counter!("hookrelay_events_ingested_total", "kind" => kind).increment(stored);
    }
    if duplicates > 0 {
        counter!("hookrelay_ingest_duplicates_total").increment(duplicates);
    }
}

/// Records deliveries the worker took up: `via` is `claim` or `handoff`.
pub fn taken(via: &'static str, count: usize) {
    if count > 0 {
        counter!("hookrelay_deliveries_taken_total", "via" => via).increment(count as u64);
    }
}

/// Records a refused ingest request.
pub fn rejected(status: u16) {
    counter!("hookrelay_ingest_rejected_total", "status" => status.to_string()).increment(1);
}

/// Records one delivery attempt.
pub fn attempt(
    endpoint: &str,
    outcome: &'static str,
    status: Option<u16>,
    duration_ms: i64,
    latency_ms: Option<i64>,
) {
    let status_class = match status {
        Some(code) => match code / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
        None => "none",
    };
    let endpoint = endpoint.to_owned();
    counter!(
        "hookrelay_delivery_attempts_total",
        "endpoint" => endpoint.clone(), "outcome" => outcome, "status_class" => status_class
    )
    .increment(1);
    histogram!("hookrelay_delivery_attempt_duration_seconds", "endpoint" => endpoint.clone())
        .record(duration_ms as f64 / 1000.0);
    if outcome == "dead" {
        counter!("hookrelay_dead_letters_total", "endpoint" => endpoint).increment(1);
    }
    if let Some(latency) = latency_ms {
        histogram!("hookrelay_delivery_latency_seconds").record(latency.max(0) as f64 / 1000.0);
    }
}

/// Sets the queue gauges.
pub fn queue(pending: u64, dead: u64, oldest_pending_age_s: Option<f64>) {
    gauge!("hookrelay_backlog_deliveries").set(pending as f64);
    gauge!("hookrelay_dead_letter_queue_deliveries").set(dead as f64);
    gauge!("hookrelay_oldest_pending_age_seconds").set(oldest_pending_age_s.unwrap_or(0.0));
}

/// Sets one endpoint's gauges.
pub fn endpoint(endpoint: &str, enabled: bool, circuit_open: bool, consecutive_failures: u32) {
    let endpoint = endpoint.to_owned();
    gauge!("hookrelay_endpoint_enabled", "endpoint" => endpoint.clone())
        .set(f64::from(u8::from(enabled)));
    gauge!("hookrelay_endpoint_circuit_open", "endpoint" => endpoint.clone())
        .set(f64::from(u8::from(circuit_open)));
    gauge!("hookrelay_endpoint_consecutive_failures", "endpoint" => endpoint)
        .set(f64::from(consecutive_failures));
}

/// Sets the active alert gauges.
pub fn alerts(warning: usize, critical: usize) {
    gauge!("hookrelay_alerts_active", "level" => "warning").set(warning as f64);
    gauge!("hookrelay_alerts_active", "level" => "critical").set(critical as f64);
}
