//! Reads variables, remembering every problem instead of stopping at the first, so
//! `hookrelay config check` can list them all.

use std::{fmt, str::FromStr, time::Duration};

use ipnet::IpNet;

use super::{Problem, Severity};
use crate::domain::Redacted;

/// Reads variables, remembering every problem instead of stopping at the first.
pub(super) struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<Problem>,
    /// Every variable asked for (what hookrelay knows).
    names: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            problems: Vec::new(),
            names: Default::default(),
        }
    }

    pub(super) fn raw(&self, name: &str) -> Option<String> {
        self.names.borrow_mut().insert(name.to_owned());
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// The variables asked for so far.
    pub(super) fn names_read(self) -> std::collections::BTreeSet<String> {
        self.names.into_inner()
    }

    pub(super) fn error(
        &mut self,
        variable: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity: Severity::Error,
            variable: variable.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub(super) fn warn(
        &mut self,
        variable: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            variable: variable.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub(super) fn parsed<T: FromStr>(&mut self, name: &'static str, default: T, expected: &str) -> T
    where
        T::Err: fmt::Display,
    {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().parse() {
            Ok(value) => value,
            Err(e) => {
                self.error(
                    name,
                    format!("`{}` is not valid: {e}", raw.trim()),
                    format!("set it to {expected}"),
                );
                default
            }
        }
    }

    pub(super) fn bool(&mut self, name: &'static str, default: bool) -> bool {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.error(
                    name,
                    format!("`{}` is not a boolean", raw.trim()),
                    "set it to true or false",
                );
                default
            }
        }
    }

    /// Parses `name` as a `T`, or says in plain words that it is not `what` (the parser's own
    /// message, "invalid digit found in string", says nothing to an operator).
    fn plain<T: FromStr>(&mut self, name: &'static str, default: T, what: &str) -> T {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().parse() {
            Ok(value) => value,
            Err(_) => {
                self.error(
                    name,
                    format!("`{}` is not {what}", raw.trim()),
                    format!("set it to {what}"),
                );
                default
            }
        }
    }

    pub(super) fn number(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let value: u64 = self.plain(
            name,
            default,
            &format!("a whole number from {min} to {max}"),
        );
        if !(min..=max).contains(&value) {
            self.error(
                name,
                format!("{value} is out of range"),
                format!("set it to a whole number from {min} to {max}"),
            );
            return default;
        }
        value
    }

    /// Seconds, fractions allowed (`0.25`), at millisecond precision.
    pub(super) fn seconds(
        &mut self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Duration {
        self.duration(name, [default, min, max], "seconds", 1.0)
    }

    /// Hours, fractions allowed (`0.5`), at millisecond precision.
    pub(super) fn hours(
        &mut self,
        name: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> Duration {
        self.duration(name, [default, min, max], "hours", 3600.0)
    }

    /// A duration written in `unit`s of `unit_seconds` each; `[default, min, max]` in that unit.
    fn duration(
        &mut self,
        name: &'static str,
        [default, min, max]: [f64; 3],
        unit: &str,
        unit_seconds: f64,
    ) -> Duration {
        let range = format!("a number of {unit} from {min} to {max}");
        let value: f64 = self.plain(name, default, &range);
        if !value.is_finite() || value < min || value > max {
            self.error(
                name,
                format!("{value} {unit} is out of range"),
                format!("set it to {range}"),
            );
            return Duration::from_secs_f64(default * unit_seconds);
        }
        Duration::from_millis((value * unit_seconds * 1000.0).round() as u64)
    }

    /// A fraction from 0 to 1; `90%` and `0.9` both mean 0.9.
    pub(super) fn fraction(&mut self, name: &'static str, default: f64) -> f64 {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        let raw = raw.trim();
        let parsed = match raw.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
            None => raw.parse::<f64>(),
        };
        match parsed {
            Ok(value) if (0.0..=1.0).contains(&value) => value,
            _ => {
                self.error(
                    name,
                    format!("`{raw}` is not a fraction"),
                    "use a number from 0 to 1, or a percentage like 90%",
                );
                default
            }
        }
    }

    pub(super) fn cidrs(&mut self, name: &'static str) -> Vec<IpNet> {
        let Some(raw) = self.raw(name) else {
            return Vec::new();
        };
        let mut nets = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .parse::<IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => self.error(
                    name,
                    format!("`{part}` is not an IP address or CIDR"),
                    "list CIDRs separated by commas, e.g. 192.168.1.0/24,10.0.0.0/8,2001:db8::/32",
                ),
            }
        }
        nets
    }

    pub(super) fn secret(&mut self, name: &'static str) -> Option<Redacted<String>> {
        let value = self.raw(name)?;
        Some(Redacted::new(value.trim().to_owned()))
    }
}
