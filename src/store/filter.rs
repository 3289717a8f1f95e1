//! A [`DeliveryFilter`] as SQL predicates, written once for both stores (they differ only in
//! how a parameter is spelled).
//!
//! Which index each filter uses (see the migrations):
//! - session: `events_session (session_id, created_at)`, through a subquery on `events`, then
//!   `deliveries_event (event_id)`;
//! - event: `deliveries_event (event_id)`;
//! - status: written as a literal (never a parameter), so the partial indexes
//!   `deliveries_pending_created` and `deliveries_dead` (and, with an endpoint,
//!   `deliveries_due`) can serve it;
//! - since/until: a range of the primary key, see [`id_floor`];
//! - endpoint (not pending): no index of its own. A search walks the primary key newest first
//!   and stops after one page, which is quick because each endpoint takes a sizeable share of
//!   the deliveries; a count reads every delivery in the time range (all of them without one).

use super::{DeliveryFilter, DeliveryStatus};
use crate::domain::DeliveryId;

/// How a store spells its parameters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dialect {
    /// `?1`, `?2`, …
    Sqlite,
    /// `$1`, `$2`, …
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause (on `deliveries d`) and the values of its placeholders, in order.
#[derive(Debug)]
pub(super) struct Predicates {
    dialect: Dialect,
    clauses: Vec<String>,
    pub(super) args: Vec<Arg>,
}

/// How long after its event's acceptance a delivery stored by an older hookrelay may have been
/// given its id. Ids made before [`DeliveryId::generate_at`] carry the time the write committed:
/// never earlier than the acceptance (so `since` needs no allowance), but a little later (the
/// group commit's wait). The upper id bound allows this much, and the `created_at` predicate
/// beside it trims the result to the exact boundary.
const LEGACY_ID_LAG_MS: i64 = 60_000;

/// The smallest delivery id whose UUIDv7 timestamp is `ms` or later: `dlv_` and the 48-bit
/// millisecond timestamp as 12 lowercase hex digits, which is how every id made by
/// [`DeliveryId::generate_at`] begins (ids are the same length and lowercase hex, so they compare
/// as text the way their timestamps compare as numbers).
pub(super) fn id_floor(ms: i64) -> String {
    format!("{}_{:012x}", DeliveryId::PREFIX, ms.clamp(0, (1 << 48) - 1))
}

impl Predicates {
    /// The predicates for `filter`, for deliveries older than `before` when given. With
    /// `dead_only`, the filter's status is replaced by `dead` (replay and purge).
    pub(super) fn new(
        dialect: Dialect,
        filter: &DeliveryFilter,
        before: Option<&DeliveryId>,
        dead_only: bool,
    ) -> Self {
        let mut p = Self {
            dialect,
            clauses: Vec::new(),
            args: Vec::new(),
        };
        let status = if dead_only {
            Some(DeliveryStatus::Dead)
        } else {
            filter.status
        };
        if let Some(status) = status {
            // A literal: a partial index (`WHERE status = 'pending'`) is only used when the
            // query names the same constant.
            p.clauses.push(format!("d.status = '{}'", status.as_str()));
        }
        if let Some(event) = &filter.event_id {
            let at = p.arg(Arg::Text(event.as_str().to_owned()));
            p.clauses.push(format!("d.event_id = {at}"));
        }
        if let Some(endpoint) = &filter.endpoint_id {
            let at = p.arg(Arg::Text(endpoint.as_str().to_owned()));
            p.clauses.push(format!("d.endpoint_id = {at}"));
        }
        if let Some(session) = &filter.session_id {
            // A subquery, so the planner starts from the session's events (`events_session`,
            // narrowed by the time range too) rather than walking every delivery.
            let mut inner = format!(
                "SELECT id FROM events WHERE session_id = {}",
                p.arg(Arg::Text(session.clone()))
            );
            if let Some(since) = filter.since_ms {
                inner.push_str(&format!(" AND created_at >= {}", p.arg(Arg::Int(since))));
            }
            if let Some(until) = filter.until_ms {
                inner.push_str(&format!(" AND created_at < {}", p.arg(Arg::Int(until))));
            }
            p.clauses.push(format!("d.event_id IN ({inner})"));
        }
        // The time range, twice: as a range of the primary key (a delivery's id begins with
        // its created_at, `DeliveryId::generate_at`), which bounds what is read to that range
        // without an index on created_at; and on created_at itself, which makes the boundaries
        // exact even for ids made by older versions (`LEGACY_ID_LAG_MS`).
        if let Some(since) = filter.since_ms {
            let id = p.arg(Arg::Text(id_floor(since)));
            let at = p.arg(Arg::Int(since));
            p.clauses
                .push(format!("d.id >= {id} AND d.created_at >= {at}"));
        }
        if let Some(until) = filter.until_ms {
            let id = p.arg(Arg::Text(id_floor(until.saturating_add(LEGACY_ID_LAG_MS))));
            let at = p.arg(Arg::Int(until));
            p.clauses
                .push(format!("d.id < {id} AND d.created_at < {at}"));
        }
        if let Some(finished) = filter.finished_until_ms {
            // `deliveries_dead (finished_at)` serves it for dead letters.
            let at = p.arg(Arg::Int(finished));
            p.clauses.push(format!("d.finished_at <= {at}"));
        }
        if let Some(before) = before {
            let at = p.arg(Arg::Text(before.as_str().to_owned()));
            p.clauses.push(format!("d.id < {at}"));
        }
        p
    }

    /// Adds a value; returns its placeholder.
    pub(super) fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.args.len()),
            Dialect::Postgres => format!("${}", self.args.len()),
        }
    }

    /// `WHERE …` (or nothing, when nothing narrows).
    pub(super) fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EndpointId;

    #[test]
    fn the_id_floor_is_the_prefix_of_every_id_made_at_that_time() {
        let at = 1_800_000_000_123;
        let id = DeliveryId::generate_at(at);
        assert!(id.as_str().starts_with(&id_floor(at)));
        assert!(id.as_str() >= id_floor(at).as_str());
        assert!(id.as_str() < id_floor(at + 1).as_str());
        assert!(id.as_str() > id_floor(at - 1).as_str());
        assert_eq!(id_floor(-5), "dlv_000000000000");
    }

    #[test]
    fn placeholders_are_numbered_in_the_order_of_their_values() {
        let filter = DeliveryFilter {
            endpoint_id: Some(EndpointId::default_endpoint()),
            status: Some(DeliveryStatus::Pending),
            since_ms: Some(10),
            ..DeliveryFilter::default()
        };
        let p = Predicates::new(Dialect::Postgres, &filter, None, false);
        assert_eq!(
            p.where_clause(),
            "WHERE d.status = 'pending' AND d.endpoint_id = $1 AND d.id >= $2 AND d.created_at >= $3"
        );
        assert_eq!(
            p.args,
            [
                Arg::Text("ep_default".into()),
                Arg::Text(id_floor(10)),
                Arg::Int(10)
            ]
        );
        let dead = Predicates::new(Dialect::Sqlite, &filter, None, true);
        assert!(
            dead.where_clause()
                .starts_with("WHERE d.status = 'dead' AND d.endpoint_id = ?1")
        );
        assert_eq!(
            Predicates::new(Dialect::Sqlite, &DeliveryFilter::default(), None, false)
                .where_clause(),
            ""
        );
    }
}
