//! Alert rules: pure functions from a snapshot of the system to the alerts that should be
//! active, and the transitions (fire, resolve) from what is active now.

use crate::{
    config::AlertThresholds,
    domain::{Alert, AlertLevel, CircuitState, Condition, EndpointHealth, EndpointId, WindowStats},
};

/// What the rules look at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The last hour's figures.
    pub hour: WindowStats,
    /// Dead letters now.
    pub dead_letters: u64,
    /// Each enabled endpoint's health.
    pub endpoints: Vec<(EndpointId, EndpointHealth)>,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// How long an endpoint must fail without a success before it counts as failing continuously.
pub const FAILING_CONTINUOUSLY_MS: i64 = 5 * 60 * 1000;

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// The guide's rules, with configurable thresholds.
pub fn evaluate(snapshot: &Snapshot, t: &AlertThresholds) -> Vec<Condition> {
    let mut conditions = Vec::new();
    let hour = &snapshot.hour;
    let judged = hour.attempts >= t.min_attempts;

    if let (true, Some(rate)) = (judged, hour.success_rate) {
        let level = if rate < t.success_rate_critical {
            Some((AlertLevel::Critical, t.success_rate_critical))
        } else if rate < t.success_rate_warning {
            Some((AlertLevel::Warning, t.success_rate_warning))
        } else {
            None
        };
        if let Some((level, threshold)) = level {
            conditions.push(Condition {
                rule: "success_rate".into(),
                level,
                message: format!(
                    "delivery success rate over the last hour is {} (below {})",
                    percent(rate),
                    percent(threshold)
                ),
                value: Some(rate),
                threshold: Some(threshold),
            });
        }
    }
    if let (true, Some(avg)) = (judged, hour.avg_response_time_ms) {
        let level = if avg > t.response_time_critical_ms {
            Some((AlertLevel::Critical, t.response_time_critical_ms))
        } else if avg > t.response_time_warning_ms {
            Some((AlertLevel::Warning, t.response_time_warning_ms))
        } else {
            None
        };
        if let Some((level, threshold)) = level {
            conditions.push(Condition {
                rule: "response_time".into(),
                level,
                message: format!(
                    "average delivery response time over the last hour is {:.0} ms (above {threshold:.0} ms)",
                    avg
                ),
                value: Some(avg),
                threshold: Some(threshold),
            });
        }
    }
    let finished = hour.totals.delivered + hour.totals.dead_lettered;
    if let (true, Some(rate)) = (finished >= t.min_attempts, hour.error_rate)
        && rate > t.error_rate_critical
    {
        conditions.push(Condition {
            rule: "error_rate".into(),
            level: AlertLevel::Critical,
            message: format!(
                "{} of deliveries finished in the last hour were dead-lettered (above {})",
                percent(rate),
                percent(t.error_rate_critical)
            ),
            value: Some(rate),
            threshold: Some(t.error_rate_critical),
        });
    }
    let dlq = snapshot.dead_letters;
    let level = if dlq > t.dlq_critical {
        Some((AlertLevel::Critical, t.dlq_critical))
    } else if dlq > t.dlq_warning {
        Some((AlertLevel::Warning, t.dlq_warning))
    } else {
        None
    };
    if let Some((level, threshold)) = level {
        conditions.push(Condition {
            rule: "dlq_size".into(),
            level,
            message: format!("{dlq} deliveries are in the dead-letter queue (above {threshold})"),
            value: Some(dlq as f64),
            threshold: Some(threshold as f64),
        });
    }
    for (id, health) in &snapshot.endpoints {
        let failing_for = health.failing_since_ms.map(|since| snapshot.now_ms - since);
        let message = if health.circuit != CircuitState::Closed {
            Some(format!(
                "endpoint {id}: circuit {} after {} consecutive failures",
                health.circuit, health.consecutive_failures
            ))
        } else if failing_for.is_some_and(|ms| ms >= FAILING_CONTINUOUSLY_MS) {
            Some(format!(
                "endpoint {id} has been failing for {} min ({} consecutive failures)",
                failing_for.unwrap_or_default() / 60_000,
                health.consecutive_failures
            ))
        } else {
            None
        };
        if let Some(message) = message {
            conditions.push(Condition {
                rule: format!("endpoint:{id}"),
                level: AlertLevel::Warning,
                message,
                value: Some(f64::from(health.consecutive_failures)),
                threshold: None,
            });
        }
    }
    conditions
}

/// The transitions from `active` to `desired`: conditions to fire (new, or at a new level)
/// and active alerts to resolve. A condition that still holds at the same level changes
/// nothing, so an alert is not repeated while its condition lasts.
pub fn transitions(active: &[Alert], desired: &[Condition]) -> (Vec<Condition>, Vec<i64>) {
    let fire = desired
        .iter()
        .filter(|c| {
            !active
                .iter()
                .any(|a| a.rule == c.rule && a.level == c.level)
        })
        .cloned()
        .collect();
    let resolve = active
        .iter()
        .filter(|a| {
            !desired
                .iter()
                .any(|c| c.rule == a.rule && c.level == a.level)
        })
        .map(|a| a.id)
        .collect();
    (fire, resolve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WindowTotals;

    const T: AlertThresholds = AlertThresholds {
        success_rate_warning: 0.90,
        success_rate_critical: 0.80,
        response_time_warning_ms: 5000.0,
        response_time_critical_ms: 10000.0,
        error_rate_critical: 0.10,
        dlq_warning: 50,
        dlq_critical: 100,
        min_attempts: 10,
    };

    fn snapshot(attempts: u64, successes: u64, avg_ms: u64, dead: u64) -> Snapshot {
        let totals = WindowTotals {
            attempts,
            successes,
            failures: attempts - successes,
            delivered: successes,
            duration_sum_ms: avg_ms * attempts,
            ..WindowTotals::default()
        };
        Snapshot {
            hour: totals.stats(),
            dead_letters: dead,
            endpoints: Vec::new(),
            now_ms: 10_000_000,
        }
    }

    fn rules(conditions: &[Condition]) -> Vec<(String, AlertLevel)> {
        conditions
            .iter()
            .map(|c| (c.rule.clone(), c.level))
            .collect()
    }

    #[test]
    fn each_rule_fires_at_its_thresholds() {
        assert!(evaluate(&snapshot(100, 95, 100, 0), &T).is_empty());
        assert_eq!(
            rules(&evaluate(&snapshot(100, 85, 100, 0), &T)),
            [("success_rate".into(), AlertLevel::Warning)]
        );
        assert_eq!(
            rules(&evaluate(&snapshot(100, 79, 100, 0), &T)),
            [("success_rate".into(), AlertLevel::Critical)]
        );
        assert_eq!(
            rules(&evaluate(&snapshot(100, 100, 6000, 0), &T)),
            [("response_time".into(), AlertLevel::Warning)]
        );
        assert_eq!(
            rules(&evaluate(&snapshot(100, 100, 12000, 0), &T)),
            [("response_time".into(), AlertLevel::Critical)]
        );
        assert_eq!(
            rules(&evaluate(&snapshot(100, 100, 100, 51), &T)),
            [("dlq_size".into(), AlertLevel::Warning)]
        );
        assert_eq!(
            rules(&evaluate(&snapshot(100, 100, 100, 101), &T)),
            [("dlq_size".into(), AlertLevel::Critical)]
        );
        assert!(
            evaluate(&snapshot(100, 100, 100, 50), &T).is_empty(),
            "50 is not above 50"
        );
    }

    #[test]
    fn rate_rules_wait_for_enough_attempts() {
        assert!(evaluate(&snapshot(9, 0, 100, 0), &T).is_empty());
        assert!(!evaluate(&snapshot(10, 0, 100, 0), &T).is_empty());
    }

    #[test]
    fn the_error_rate_counts_dead_letters_among_finished_deliveries() {
        let mut s = snapshot(100, 100, 100, 0);
        s.hour.totals.delivered = 80;
        s.hour.totals.dead_lettered = 20;
        s.hour = s.hour.totals.stats();
        assert!(rules(&evaluate(&s, &T)).contains(&("error_rate".into(), AlertLevel::Critical)));
    }

    #[test]
    fn an_open_circuit_or_a_long_failure_warns_about_the_endpoint() {
        let mut s = snapshot(0, 0, 0, 0);
        let id = EndpointId::default_endpoint();
        let open = EndpointHealth {
            circuit: CircuitState::Open,
            consecutive_failures: 10,
            ..EndpointHealth::default()
        };
        let failing = EndpointHealth {
            failing_since_ms: Some(s.now_ms - FAILING_CONTINUOUSLY_MS),
            consecutive_failures: 3,
            ..EndpointHealth::default()
        };
        let recent = EndpointHealth {
            failing_since_ms: Some(s.now_ms - 1000),
            ..EndpointHealth::default()
        };
        for (health, expected) in [(open, 1), (failing, 1), (recent, 0)] {
            s.endpoints = vec![(id.clone(), health)];
            assert_eq!(evaluate(&s, &T).len(), expected, "{health:?}");
        }
    }

    #[test]
    fn transitions_fire_once_escalate_and_resolve() {
        let warning = Condition {
            rule: "success_rate".into(),
            level: AlertLevel::Warning,
            message: String::new(),
            value: None,
            threshold: None,
        };
        let (fire, resolve) = transitions(&[], std::slice::from_ref(&warning));
        assert_eq!((fire.len(), resolve.len()), (1, 0));
        let active = Alert {
            id: 7,
            rule: "success_rate".into(),
            level: AlertLevel::Warning,
            message: String::new(),
            value: None,
            threshold: None,
            fired_at_ms: 0,
            resolved_at_ms: None,
        };
        // Still holds: nothing happens (no repeats).
        assert_eq!(
            transitions(
                std::slice::from_ref(&active),
                std::slice::from_ref(&warning)
            ),
            (vec![], vec![])
        );
        // Escalates: the warning resolves, a critical fires.
        let critical = Condition {
            level: AlertLevel::Critical,
            ..warning.clone()
        };
        let (fire, resolve) = transitions(
            std::slice::from_ref(&active),
            std::slice::from_ref(&critical),
        );
        assert_eq!((fire[0].level, resolve), (AlertLevel::Critical, vec![7]));
        // Clears.
        assert_eq!(transitions(&[active], &[]), (vec![], vec![7]));
    }
}
