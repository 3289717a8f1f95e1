//! Time formatting: timestamps travel as unix milliseconds and are shown as RFC 3339.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
