//! The health verdict: a pure function from what was observed to healthy, degraded or
//! unhealthy, with the reasons.

use serde::Serialize;

use crate::domain::{AlertLevel, Condition};

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// All is well.
    Healthy,
    /// Working, but someone should look.
    Degraded,
    /// Data is not flowing.
    Unhealthy,
}

impl HealthStatus {
    /// The exit code of `hookrelay health`: 0, 1, 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Degraded => 1,
            Self::Unhealthy => 2,
        }
    }
}

/// What the verdict is made from.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// The database's error, if it does not answer.
    pub database_error: Option<String>,
    /// The conditions the alert rules see now.
    pub conditions: Vec<Condition>,
    /// How long the oldest due delivery has been waiting, ms.
    pub overdue_ms: Option<i64>,
    /// Whether a delivery worker reported in recently.
    pub worker_alive: bool,
    /// Free disk space where the data lives, percent.
    pub disk_free_percent: Option<f64>,
    /// Thresholds for the disk, percent.
    pub disk_warning_percent: f64,
    /// …
    pub disk_critical_percent: f64,
}

/// The verdict and its reasons.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Healthy, degraded or unhealthy.
    pub status: HealthStatus,
    /// Why, most serious first; empty when healthy.
    pub reasons: Vec<String>,
}

/// Deliveries due longer than this with no worker reporting in mean the queue is stalled.
pub const STALLED_AFTER_MS: i64 = 60_000;

/// Judges.
pub fn verdict(o: &Observations) -> Health {
    let mut found: Vec<(HealthStatus, String)> = Vec::new();
    if let Some(error) = &o.database_error {
        found.push((
            HealthStatus::Unhealthy,
            format!("the database does not answer: {error}"),
        ));
    }
    for condition in &o.conditions {
        let status = match condition.level {
            AlertLevel::Critical => HealthStatus::Unhealthy,
            AlertLevel::Warning => HealthStatus::Degraded,
        };
        found.push((
            status,
            format!("{} alert: {}", condition.level, condition.message),
        ));
    }
    if let Some(overdue) = o.overdue_ms.filter(|ms| *ms > STALLED_AFTER_MS) {
        if o.worker_alive {
            found.push((
                HealthStatus::Degraded,
                format!("the oldest due delivery has waited {} s: the worker is not keeping up or an endpoint is held back", overdue / 1000),
            ));
        } else {
            found.push((
                HealthStatus::Unhealthy,
                format!(
                    "deliveries have been due for {} s and no delivery worker is running",
                    overdue / 1000
                ),
            ));
        }
    }
    if let Some(free) = o.disk_free_percent {
        if free < o.disk_critical_percent {
            found.push((
                HealthStatus::Unhealthy,
                format!("only {free:.1}% of the disk is free"),
            ));
        } else if free < o.disk_warning_percent {
            found.push((
                HealthStatus::Degraded,
                format!("only {free:.1}% of the disk is free"),
            ));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Health {
        status: found.first().map_or(HealthStatus::Healthy, |f| f.0),
        reasons: found.into_iter().map(|f| f.1).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Observations {
        Observations {
            worker_alive: true,
            disk_free_percent: Some(50.0),
            disk_warning_percent: 10.0,
            disk_critical_percent: 2.0,
            ..Observations::default()
        }
    }

    fn condition(level: AlertLevel) -> Condition {
        Condition {
            rule: "r".into(),
            level,
            message: "m".into(),
            value: None,
            threshold: None,
        }
    }

    #[test]
    fn each_situation_gets_its_verdict() {
        let table: Vec<(&str, Observations, HealthStatus)> = vec![
            ("all well", base(), HealthStatus::Healthy),
            (
                "warning alert",
                Observations {
                    conditions: vec![condition(AlertLevel::Warning)],
                    ..base()
                },
                HealthStatus::Degraded,
            ),
            (
                "critical alert",
                Observations {
                    conditions: vec![condition(AlertLevel::Critical)],
                    ..base()
                },
                HealthStatus::Unhealthy,
            ),
            (
                "database down",
                Observations {
                    database_error: Some("locked".into()),
                    ..base()
                },
                HealthStatus::Unhealthy,
            ),
            (
                "stalled, no worker",
                Observations {
                    overdue_ms: Some(120_000),
                    worker_alive: false,
                    ..base()
                },
                HealthStatus::Unhealthy,
            ),
            (
                "slow worker",
                Observations {
                    overdue_ms: Some(120_000),
                    ..base()
                },
                HealthStatus::Degraded,
            ),
            (
                "briefly due, no worker",
                Observations {
                    overdue_ms: Some(5_000),
                    worker_alive: false,
                    ..base()
                },
                HealthStatus::Healthy,
            ),
            (
                "disk low",
                Observations {
                    disk_free_percent: Some(5.0),
                    ..base()
                },
                HealthStatus::Degraded,
            ),
            (
                "disk full",
                Observations {
                    disk_free_percent: Some(1.0),
                    ..base()
                },
                HealthStatus::Unhealthy,
            ),
        ];
        for (name, observations, expected) in table {
            let health = verdict(&observations);
            assert_eq!(health.status, expected, "{name}");
            assert_eq!(
                health.reasons.is_empty(),
                expected == HealthStatus::Healthy,
                "{name}: {:?}",
                health.reasons
            );
        }
    }

    #[test]
    fn the_worst_reason_comes_first_and_exit_codes_follow() {
        let health = verdict(&Observations {
            conditions: vec![
                condition(AlertLevel::Warning),
                condition(AlertLevel::Critical),
            ],
            ..base()
        });
        assert!(health.reasons[0].starts_with("critical"));
        assert_eq!(HealthStatus::Healthy.exit_code(), 0);
        assert_eq!(HealthStatus::Degraded.exit_code(), 1);
        assert_eq!(HealthStatus::Unhealthy.exit_code(), 2);
    }
}
