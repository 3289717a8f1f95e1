//! Alert values: how bad, what condition, and an alert's life from firing to resolving.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    /// Someone should look soon.
    Warning,
    /// Data is not flowing as it should.
    Critical,
}

impl AlertLevel {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Parses the database spelling.
    pub fn parse(value: &str) -> Self {
        if value == "critical" {
            Self::Critical
        } else {
            Self::Warning
        }
    }
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition that holds now and should have an active alert.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Condition {
    /// Stable rule key: `success_rate`, `response_time`, `error_rate`, `dlq_size`,
    /// `endpoint:<id>`.
    pub rule: String,
    /// How bad.
    pub level: AlertLevel,
    /// What a person reads.
    pub message: String,
    /// The measured value.
    pub value: Option<f64>,
    /// The threshold crossed.
    pub threshold: Option<f64>,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// Its id.
    pub id: i64,
    /// The rule key.
    pub rule: String,
    /// How bad.
    pub level: AlertLevel,
    /// What a person reads.
    pub message: String,
    /// The measured value when it fired.
    pub value: Option<f64>,
    /// The threshold crossed.
    pub threshold: Option<f64>,
    /// When it fired, unix ms.
    pub fired_at_ms: i64,
    /// When it resolved, unix ms.
    pub resolved_at_ms: Option<i64>,
}
