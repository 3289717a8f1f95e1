//! Sessions and analytics: per-session usage aggregates kept with every usage event, and
//! summaries over a period computed from daily and per-minute roll-ups, so they stay fast at
//! millions of events.

use serde::Serialize;

/// The facts of one usage event that aggregates need (never the prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFacts {
    /// The session.
    pub session_id: String,
    /// The model that answered.
    pub model: String,
    /// The model's response time.
    pub response_time_ms: u64,
    /// Estimated tokens.
    pub tokens: u64,
    /// Whether the call succeeded.
    pub success: bool,
}

/// A model's share of a session or period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Calls answered by it.
    pub queries: u64,
    /// Tokens (periods only; 0 in sessions).
    pub tokens: u64,
}

/// How a session's webhooks are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookCounts {
    /// Deliveries that arrived.
    pub delivered: u64,
    /// Deliveries still to go.
    pub pending: u64,
    /// Deliveries in the dead-letter queue.
    pub dead: u64,
}

/// One session's aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SessionStats {
    /// The gateway's session id.
    pub session_id: String,
    /// First event, unix ms.
    pub first_seen_ms: i64,
    /// Last event, unix ms.
    pub last_seen_ms: i64,
    /// LLM calls recorded.
    pub queries: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed.
    pub failures: u64,
    /// Sum of response times.
    pub total_response_time_ms: u64,
    /// Mean response time.
    pub avg_response_time_ms: Option<f64>,
    /// Estimated tokens.
    pub estimated_tokens: u64,
    /// Models used, most used first.
    pub models: Vec<ModelUsage>,
    /// Its webhooks.
    pub webhooks: WebhookCounts,
}

/// The guide's `get_analytics_summary` and more, over a period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Analytics {
    /// Start of the period, unix ms.
    pub since_ms: i64,
    /// Days covered.
    pub days: u32,
    /// Sessions.
    pub sessions: SessionsSummary,
    /// Tracked LLM calls.
    pub queries: QueriesSummary,
    /// Tokens by model, most first.
    pub models: Vec<ModelUsage>,
    /// Calls and tokens by UTC day, oldest first, every day of the period (zeros included).
    pub daily: Vec<DayUsage>,
    /// Webhook deliveries.
    pub webhooks: WebhooksSummary,
}

/// One UTC day's tracked calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DayUsage {
    /// Start of the day, unix ms.
    pub day_start_ms: i64,
    /// Calls.
    pub queries: u64,
    /// Successful calls.
    pub successes: u64,
    /// Estimated tokens.
    pub tokens: u64,
}

/// Sessions in a period (the guide's `sessions` block).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SessionsSummary {
    /// Sessions active in the period.
    pub total: u64,
    /// Calls in the period.
    pub total_queries: u64,
}

/// Tracked calls in a period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueriesSummary {
    /// Calls.
    pub total: u64,
    /// Successful calls.
    pub successes: u64,
    /// Share of calls that succeeded.
    pub success_rate: Option<f64>,
    /// Mean model response time.
    pub avg_response_time_ms: Option<f64>,
    /// Estimated tokens.
    pub tokens: u64,
}

/// Webhook deliveries finished in a period (the guide's `webhooks` block).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhooksSummary {
    /// Deliveries that arrived.
    pub delivered: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Delivery attempts.
    pub attempts: u64,
    /// Share of finished deliveries that arrived.
    pub success_rate: Option<f64>,
}

/// What a retention pass removed (or would remove, in a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CleanupReport {
    /// Events whose every delivery had arrived (or that had none).
    pub events: u64,
    /// Their deliveries.
    pub deliveries: u64,
    /// Their attempts.
    pub attempts: u64,
    /// Sessions idle since before the cut-off.
    pub sessions: u64,
    /// Alerts resolved before the cut-off.
    pub alerts: u64,
    /// Per-minute roll-ups before the cut-off.
    pub rollups: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}
