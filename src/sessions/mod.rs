//! Sessions and analytics values, now in [`crate::domain`]; this path stays until the stores
//! import them from there.

pub use crate::domain::{
    Analytics, CleanupReport, ModelUsage, QueriesSummary, SessionStats, SessionsSummary,
    UsageFacts, WebhookCounts, WebhooksSummary,
};
