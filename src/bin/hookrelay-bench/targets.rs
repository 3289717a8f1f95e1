//! The performance targets (issue 19; BENCHMARKS.md, "Against the targets"), judged from what
//! a run measured. A run is judged only against the targets whose conditions it meets: SQLite
//! with the defaults, one instance, one endpoint per event, a receiver without a limit, and
//! the target's own load (64 clients flat out, 1,000 events/s steady, a million pending).

use std::fmt::Write as _;

use crate::{Args, Database, Scenario};

/// What one HTTP run measured, as `report` printed it.
pub(crate) struct Measured {
    pub ingest_per_s: f64,
    pub delivered_per_s: f64,
    pub p99_ms: f64,
    pub cpu_ms_per_delivery: f64,
    pub peak_mib: f64,
    /// Requests the receiver saw more than once for one event.
    pub repeats: u32,
}

/// What a run with `--ingest-only` measured.
pub(crate) struct Accepted {
    pub per_s: f64,
    pub cpu_ms_per_event: f64,
}

/// One target and how the run fared against it.
pub(crate) struct Verdict {
    target: &'static str,
    measured: String,
    met: bool,
}

impl Verdict {
    fn new(target: &'static str, measured: String, met: bool) -> Self {
        Self {
            target,
            measured,
            met,
        }
    }

    fn line(&self) -> String {
        let outcome = if self.met { "met" } else { "NOT MET" };
        format!(
            "target:    {:<52} {:>22}  {outcome}",
            self.target, self.measured
        )
    }
}

/// Prints the verdicts under a run's figures and hands them on for a summary.
fn print(verdicts: Vec<Verdict>) -> Vec<Verdict> {
    for verdict in &verdicts {
        println!("{}", verdict.line());
    }
    verdicts
}

/// Whether a run's setup is the one the targets are stated for.
fn target_setup(args: &Args, database: &Database) -> bool {
    matches!(database, Database::Sqlite)
        && args.instances == 1
        && args.fanout <= 1
        && args.receiver_limit.is_none()
        && args.endpoint_concurrency.is_none()
}

fn per_second(rate: f64) -> String {
    let rounded = rate.round() as u64;
    let mut digits = rounded.to_string();
    let mut grouped = String::new();
    while digits.len() > 3 {
        let tail = digits.split_off(digits.len() - 3);
        grouped = format!(",{tail}{grouped}");
    }
    let _ = write!(digits, "{grouped}/s");
    digits
}

/// The targets an HTTP run of `scenario` speaks to.
pub(crate) fn judge_http(
    args: &Args,
    scenario: Scenario,
    database: &Database,
    measured: &Measured,
) -> Vec<Verdict> {
    if !target_setup(args, database) {
        return Vec::new();
    }
    let mut verdicts = Vec::new();
    match scenario {
        Scenario::Flat if args.concurrency == 64 => {
            verdicts.push(Verdict::new(
                "≥ 20,000 events/s accepted over HTTP, 64 clients",
                per_second(measured.ingest_per_s),
                measured.ingest_per_s >= 20_000.0,
            ));
            verdicts.push(Verdict::new(
                "≥ 10,000 events/s delivered flat out, each once",
                format!(
                    "{}, {} repeats",
                    per_second(measured.delivered_per_s),
                    measured.repeats
                ),
                measured.delivered_per_s >= 10_000.0 && measured.repeats == 0,
            ));
            verdicts.push(Verdict::new(
                "≤ 0.10 ms server CPU per delivered event",
                format!("{:.3} ms", measured.cpu_ms_per_delivery),
                measured.cpu_ms_per_delivery <= 0.10,
            ));
        }
        Scenario::Steady if args.rate == 1000 => verdicts.push(Verdict::new(
            "p99 acceptance to arrival ≤ 5 ms at 1,000 events/s",
            format!("{:.1} ms", measured.p99_ms),
            measured.p99_ms <= 5.0,
        )),
        Scenario::Backlog if args.backlog >= 1_000_000 => verdicts.push(Verdict::new(
            "peak RSS < 100 MiB with 1,000,000 pending",
            format!("{:.1} MiB", measured.peak_mib),
            measured.peak_mib < 100.0,
        )),
        _ => {}
    }
    print(verdicts)
}

/// The acceptance target, for ingest with the machine to itself (nothing delivered beside it).
pub(crate) fn judge_ingest_only(
    args: &Args,
    database: &Database,
    accepted: &Accepted,
) -> Vec<Verdict> {
    if !target_setup(args, database) || args.concurrency != 64 {
        return Vec::new();
    }
    print(vec![Verdict::new(
        "≥ 20,000 events/s accepted, 64 clients, nothing delivered",
        per_second(accepted.per_s),
        accepted.per_s >= 20_000.0,
    )])
}

/// The target `Relay::track_usage` speaks to.
pub(crate) fn judge_library(args: &Args, database: &Database, rate: f64) -> Vec<Verdict> {
    if !target_setup(args, database) {
        return Vec::new();
    }
    print(vec![Verdict::new(
        "≥ 100,000 events/s through Relay::track_usage",
        per_second(rate),
        rate >= 100_000.0,
    )])
}

/// The runs `--scenario targets` makes, each with the load its targets are stated for.
pub(crate) fn target_runs(args: &Args) -> Vec<Args> {
    let base = Args {
        instances: 1,
        fanout: 1,
        receiver_limit: None,
        endpoint_concurrency: None,
        database_url: None,
        ingest_only: false,
        ..args.clone()
    };
    vec![
        Args {
            scenario: Scenario::Flat,
            events: 40_000,
            concurrency: 64,
            ..base.clone()
        },
        Args {
            scenario: Scenario::Flat,
            events: 40_000,
            concurrency: 64,
            ingest_only: true,
            ..base.clone()
        },
        Args {
            scenario: Scenario::Steady,
            rate: 1000,
            duration: 30,
            ..base.clone()
        },
        Args {
            scenario: Scenario::Library,
            events: 200_000,
            concurrency: 64,
            ..base.clone()
        },
        Args {
            scenario: Scenario::Backlog,
            backlog: 1_000_000,
            events: 40_000,
            concurrency: 64,
            ..base
        },
    ]
}

/// The verdicts of every run, together at the end.
pub(crate) fn summary(verdicts: &[Verdict]) {
    let met = verdicts.iter().filter(|v| v.met).count();
    println!("== targets: {met} of {} met", verdicts.len());
    for verdict in verdicts {
        println!("{}", verdict.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_grouped_by_thousands() {
        assert_eq!(per_second(16_581.4), "16,581/s");
        assert_eq!(per_second(999.6), "1,000/s");
        assert_eq!(per_second(1_234_567.0), "1,234,567/s");
        assert_eq!(per_second(12.0), "12/s");
    }
}
