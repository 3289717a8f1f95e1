//! Ingest on SQLite: events and their deliveries, stored in the writer's group commit, with
//! the fan-out list cached on the writer thread.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, aggregates::aggregate, connections::Isolation};
use crate::{
    domain::{DeliveryId, EndpointId, EventFilter, EventId},
    store::{
        InboundMessage, Ingested, MESSAGE_SWEEP, NewEvent, StoreError,
        handoff::{self, Handed},
        rows, shared,
        tally::Rollup,
    },
};

impl SqliteStore {
    /// Backs `Store::ingest`.
    pub(super) async fn store_events(
        &self,
        message: Option<(InboundMessage, i64)>,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Ingested>, StoreError> {
        let handoff = Arc::clone(&self.handoff);
        // Only a message id or an idempotency key can refuse a job after it has written
        // something; without them everything that could refuse it is checked first.
        let isolation = if message.is_some() || events.iter().any(|e| e.idempotency_key.is_some()) {
            Isolation::Savepoint
        } else {
            Isolation::Bare
        };
        let stored = self.write_isolated(isolation, move |conn| {
            if isolation == Isolation::Bare {
                let mut ids = std::collections::HashSet::with_capacity(events.len());
                if !events.iter().all(|e| ids.insert(e.id.as_str())) {
                    return Err(StoreError::database("two events of one request share an id"));
                }
            }
            if let Some((message, now_ms)) = &message {
                // Refused before anything is written; the job's savepoint undoes nothing else.
                record_message(conn, message, *now_ms)?;
            }
            let mut find = conn.prepare_cached(
                "SELECT id, request_fingerprint FROM events WHERE idempotency_key = ?1",
            )?;
            let mut insert_event = conn.prepare_cached(
                "INSERT INTO events (id, event_type, session_id, idempotency_key, payload, created_at,
                     request_fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // A delivery handed to the worker is stored leased to it (due again when the
            // lease ends); any other is due at once.
            let mut insert_delivery = conn.prepare_cached(
                "INSERT INTO deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at,
                     updated_at, lease_token, claimed_by)
                 VALUES (?1, ?2, ?3, 'pending', ?5, ?4, ?4, ?6, ?7)",
            )?;
            let mut handed = Handed::new(Arc::clone(&handoff));
            let token = handoff::token();
            // Fan-out is decided inside the transaction, so an event goes to exactly the
            // endpoints enabled when it was stored.
            let destinations = destinations(conn)?;
            let minute = events.first().map_or(0, |e| e.created_at_ms.div_euclid(60_000));
            let mut outcomes = Vec::with_capacity(events.len());
            let mut usages = Vec::new();
            for event in events {
                if let Some(key) = &event.idempotency_key {
                    let existing: Option<(String, Option<String>)> = find
                        .query_row([key.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()?;
                    if let Some((existing, fingerprint)) = existing {
                        if shared::reuses_key(fingerprint.as_deref(), &event) {
                            return Err(StoreError::KeyReused(shared::client_key(key)));
                        }
                        outcomes.push(Ingested {
                            id: EventId::from_trusted(existing),
                            duplicate: true,
                        });
                        continue;
                    }
                }
                insert_event.execute(params![
                    event.id.as_str(),
                    event.event_type.as_str(),
                    event.session_id,
                    event.idempotency_key,
                    &event.payload[..],
                    event.created_at_ms,
                    event.request_fingerprint,
                ])?;
                let matching = destinations
                    .iter()
                    .filter(|(_, filter)| filter.matches(event.event_type.as_str()))
                    .map(|(endpoint, _)| endpoint);
                // Each id carries the event's acceptance time (`DeliveryId::generate_at`), so a time
                // range of deliveries is a range of the primary key.
                for endpoint in matching {
                    let id = DeliveryId::generate_at(event.created_at_ms);
                    let lease = handoff.reserve(endpoint, event.created_at_ms);
                    let (due_at, claimant) = match &lease {
                        Some(lease) => (lease.until_ms, Some(lease.claimant.clone())),
                        None => (event.created_at_ms, None),
                    };
                    // Held before the row is written, so that a failure below (the job's
                    // error drops `handed`) gives the reservation back.
                    if let Some(lease) = lease {
                        handed.push_new(&event, id.clone(), endpoint, token, &lease);
                    }
                    insert_delivery.execute(params![
                        id.as_str(),
                        event.id.as_str(),
                        endpoint.as_str(),
                        event.created_at_ms,
                        due_at,
                        claimant.as_ref().map(|_| token.0),
                        claimant,
                    ])?;
                }
                if let Some(usage) = event.usage {
                    usages.push((usage, event.created_at_ms));
                }
                outcomes.push(Ingested {
                    id: event.id,
                    duplicate: false,
                });
            }
            let duplicates = outcomes.iter().filter(|o| o.duplicate).count() as i64;
            let rollup = Rollup {
                ingested: outcomes.len() as i64 - duplicates,
                duplicates,
                ..Rollup::default()
            };
            // Counted once per group commit, just before it commits.
            aggregate(|a| {
                a.add_rollup(minute, &rollup);
                for (usage, at_ms) in &usages {
                    a.add_usage(usage, *at_ms);
                }
            });
            Ok((outcomes, Some(handed)))
        }, |(_, handed)| {
            // Durable now: the worker may send them, whether or not the caller still waits.
            if let Some(handed) = handed.take() {
                handed.commit();
            }
        })
        .await?;
        Ok(stored.0)
    }
}

/// Records a message id, refusing one recorded before that has not expired at `now_ms`; sweeps
/// a few expired ids.
fn record_message(
    conn: &Connection,
    message: &InboundMessage,
    now_ms: i64,
) -> Result<(), StoreError> {
    let recorded = conn
        .prepare_cached(
            "INSERT INTO inbound_messages (id, expires_at) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
             WHERE inbound_messages.expires_at <= ?3",
        )?
        .execute(params![message.id, message.expires_at_ms, now_ms])?;
    if recorded == 0 {
        return Err(StoreError::Replayed);
    }
    conn.prepare_cached(
        "DELETE FROM inbound_messages WHERE expires_at <= ?1 AND id IN
         (SELECT id FROM inbound_messages WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
    )?
    .execute(params![now_ms, MESSAGE_SWEEP])?;
    Ok(())
}

/// The enabled endpoints and their filters.
type Destinations = Arc<Vec<(EndpointId, EventFilter)>>;

thread_local! {
    /// The fan-out list, cached on the writer thread (where every ingest runs) with the
    /// endpoint generation it was read at: reading and parsing it for every event cost more
    /// than storing the event. Any process's change to fan-out bumps the generation (a trigger),
    /// so one cheap read per ingest tells whether the list is still right.
    static DESTINATIONS: std::cell::RefCell<Option<(i64, Destinations)>> =
        const { std::cell::RefCell::new(None) };
}

/// Drops the writer thread's cached fan-out list: the next ingest reads it afresh.
pub(super) fn forget_destinations() {
    DESTINATIONS.with(|cached| cached.borrow_mut().take());
}

/// The enabled endpoints and their filters, from the cache while no endpoint has changed.
fn destinations(conn: &Connection) -> Result<Destinations, StoreError> {
    let generation: i64 = conn
        .prepare_cached("SELECT n FROM endpoint_generation")?
        .query_row([], |row| row.get(0))?;
    let fresh = DESTINATIONS.with(|cached| {
        cached
            .borrow()
            .as_ref()
            .filter(|(at, _)| *at == generation)
            .map(|(_, list)| Arc::clone(list))
    });
    if let Some(list) = fresh {
        return Ok(list);
    }
    let list = Arc::new(enabled_filters(conn)?);
    DESTINATIONS.with(|cached| *cached.borrow_mut() = Some((generation, Arc::clone(&list))));
    Ok(list)
}

fn enabled_filters(conn: &Connection) -> Result<Vec<(EndpointId, EventFilter)>, StoreError> {
    // An endpoint disabled automatically (failing for too long) keeps queuing, so nothing is
    // lost when it is enabled again; one disabled by an operator or unconfigured does not.
    let mut select = conn.prepare_cached(
        "SELECT id, event_types FROM endpoints
         WHERE enabled = 1 OR disabled_reason LIKE 'failing continuously%'",
    )?;
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut list = Vec::with_capacity(rows.len());
    for (id, event_types) in rows {
        list.push((
            EndpointId::from_trusted(id),
            rows::event_filter(&event_types)?,
        ));
    }
    Ok(list)
}
