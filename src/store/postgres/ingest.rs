//! Ingest on PostgreSQL: events and their deliveries, group-committed in multi-row statements,
//! with the fan-out list cached across groups.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use sqlx::{PgConnection, Row, postgres::PgPool};
use tokio::sync::{Notify, mpsc};

use super::{
    PgStore,
    aggregates::write_aggregates,
    commit::{self, COMMITTERS, Job, group_commit, retrying},
};
use crate::{
    domain::{DeliveryId, EndpointId, EventFilter, EventId},
    store::{
        Handoff, InboundMessage, Ingested, MESSAGE_SWEEP, NewEvent, StoreError,
        handoff::{self, Handed},
        rows, shared,
        tally::{Aggregates, Rollup},
    },
};

/// One caller's ingest: its events, and the message id (with the time now) it records.
pub(super) type IngestJob = (Option<(InboundMessage, i64)>, Vec<NewEvent>);

/// One caller's answer: a replayed message fails its own job only, not the group.
type IngestAnswer = Result<Vec<Ingested>, StoreError>;

impl PgStore {
    /// Backs `Store::ingest` and `Store::ingest_message`: hands the events to a group committer.
    pub(super) async fn store_events(
        &self,
        message: Option<(InboundMessage, i64)>,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Ingested>, StoreError> {
        if events.is_empty() && message.is_none() {
            return Ok(Vec::new());
        }
        commit::submit(&self.ingests, (message, events)).await?
    }

    /// Returns once every ingest queued before it has committed (and handed its deliveries
    /// over): one committer takes the queue in order, so an empty job behind them settles
    /// after they do.
    pub(super) async fn settle_ingest(&self) -> Result<(), StoreError> {
        const _: () = assert!(
            COMMITTERS == 1,
            "settle_ingest relies on one ingest committer"
        );
        commit::submit(&self.ingests, (None, Vec::new()))
            .await?
            .map(drop)
    }
}

/// Starts the group committers of ingests; returns where [`PgStore::store_events`] queues.
pub(super) fn start_committers(
    pool: &PgPool,
    work_queued: &Arc<Notify>,
    handoff: &Arc<Handoff>,
) -> mpsc::Sender<Job<IngestJob, IngestAnswer>> {
    let destinations = Arc::new(DestinationCache::default());
    let (ingests, queue) = commit::queue();
    for _ in 0..COMMITTERS {
        let committer = Committer {
            pool: pool.clone(),
            work_queued: Arc::clone(work_queued),
            cache: Arc::clone(&destinations),
            handoff: Arc::clone(handoff),
        };
        tokio::spawn(group_commit(
            Arc::clone(&queue),
            |(_, events): &IngestJob| events.len().max(1),
            async move |jobs: &[&IngestJob]| retrying(|| ingest_tx(&committer, jobs)).await,
        ));
    }
    ingests
}

/// What a group committer of ingests works with.
struct Committer {
    pool: PgPool,
    /// Notified when deliveries were stored due, for every instance's worker to claim.
    work_queued: Arc<Notify>,
    cache: Arc<DestinationCache>,
    /// This process's worker, which takes deliveries leased in the ingest transaction.
    handoff: Arc<Handoff>,
}

/// The enabled endpoints and their filters.
type Destinations = Arc<Vec<(EndpointId, EventFilter)>>;

/// The fan-out list with the endpoint generation it was read at: reading and parsing it for
/// every ingest would cost more than storing the events. Any instance's change to fan-out
/// bumps the generation (a trigger), so one single-row read per group tells whether it holds.
#[derive(Default)]
struct DestinationCache(Mutex<Option<(i64, Destinations)>>);

impl DestinationCache {
    fn at(&self, generation: i64) -> Option<Destinations> {
        let cached = self.0.lock().ok()?;
        cached
            .as_ref()
            .filter(|(at, _)| *at == generation)
            .map(|(_, list)| Arc::clone(list))
    }

    fn put(&self, generation: i64, list: Destinations) {
        if let Ok(mut cached) = self.0.lock() {
            *cached = Some((generation, list));
        }
    }
}

async fn destinations(
    conn: &mut PgConnection,
    cache: &DestinationCache,
) -> Result<Destinations, sqlx::Error> {
    let generation: i64 = sqlx::query_scalar("SELECT n FROM endpoint_generation")
        .fetch_one(&mut *conn)
        .await?;
    if let Some(list) = cache.at(generation) {
        return Ok(list);
    }
    // An endpoint disabled automatically (failing for too long) keeps queuing, so nothing is
    // lost when it is enabled again; one disabled by an operator or unconfigured does not.
    let rows = sqlx::query(
        "SELECT id, event_types FROM endpoints
         WHERE enabled OR disabled_reason LIKE 'failing continuously%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut list = Vec::with_capacity(rows.len());
    for row in rows {
        let filter =
            rows::event_filter(row.try_get(1)?).map_err(|e| sqlx::Error::Decode(e.into()))?;
        list.push((EndpointId::from_trusted(row.try_get(0)?), filter));
    }
    let list = Arc::new(list);
    cache.put(generation, Arc::clone(&list));
    Ok(list)
}

/// Records the group's message ids; returns which jobs are replays (an id recorded before and
/// not expired, or one an earlier job of the group carries), and sweeps a few expired ids.
async fn record_messages(
    tx: &mut PgConnection,
    jobs: &[&IngestJob],
    reused: &[Option<String>],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut replayed = vec![false; jobs.len()];
    let mut ids = Vec::new();
    let mut expiries = Vec::new();
    let mut now_ms = i64::MIN;
    for (n, (message, _)) in jobs.iter().enumerate() {
        let Some((message, now)) = message.as_ref().filter(|_| reused[n].is_none()) else {
            continue;
        };
        now_ms = now_ms.max(*now);
        // One statement cannot touch a row twice: within a group, the first job has the id.
        if ids.contains(&message.id) {
            replayed[n] = true;
        } else {
            ids.push(message.id.clone());
            expiries.push(message.expires_at_ms);
        }
    }
    if ids.is_empty() {
        return Ok(replayed);
    }
    let recorded: std::collections::HashSet<String> = sqlx::query_scalar(
        "INSERT INTO inbound_messages AS m (id, expires_at)
         SELECT * FROM UNNEST($1::text[], $2::int8[])
         ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
         WHERE m.expires_at <= $3
         RETURNING id",
    )
    .bind(&ids)
    .bind(&expiries)
    .bind(now_ms)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for (n, (message, _)) in jobs.iter().enumerate() {
        if let Some((message, _)) = message
            && reused[n].is_none()
            && !recorded.contains(&message.id)
        {
            replayed[n] = true;
        }
    }
    sqlx::query(
        // Checked again outside the subquery: another committer may have recorded one of
        // these ids afresh meanwhile.
        "DELETE FROM inbound_messages WHERE expires_at <= $1 AND id IN
         (SELECT id FROM inbound_messages WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
    )
    .bind(now_ms)
    .bind(MESSAGE_SWEEP)
    .execute(&mut *tx)
    .await?;
    Ok(replayed)
}

/// The endpoints among `destinations` whose gate holds every instance at `now_ms` (a
/// receiver's pause or a circuit not closed, as another instance may have seen): their
/// deliveries are stored due, for a claim to skip until the gate opens, never handed over.
async fn held_by_gates(
    tx: &mut PgConnection,
    destinations: &[(EndpointId, EventFilter)],
    now_ms: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let ids: Vec<&str> = destinations.iter().map(|(id, _)| id.as_str()).collect();
    sqlx::query_scalar(
        "SELECT endpoint_id FROM endpoint_gates WHERE endpoint_id = ANY($1)
             AND (paused_until_ms > $2 OR circuit <> 'closed')",
    )
    .bind(&ids)
    .bind(now_ms)
    .fetch_all(&mut *tx)
    .await
    .map(|held: Vec<String>| held.into_iter().collect())
}

async fn ingest_tx(
    committer: &Committer,
    jobs: &[&IngestJob],
) -> Result<Vec<IngestAnswer>, sqlx::Error> {
    let Committer {
        pool,
        work_queued,
        cache,
        handoff,
    } = committer;
    let mut tx = pool.begin().await?;
    // Keys first: a job refused for reusing one must not use up its message id (its sender
    // may send it again with a new key), as on SQLite, where its savepoint undoes both.
    let reused = reused_keys(&mut tx, jobs).await?;
    let replayed = record_messages(&mut tx, jobs, &reused).await?;
    let refused: Vec<Option<StoreError>> = replayed
        .iter()
        .zip(reused)
        .map(|(replayed, reused)| match (replayed, reused) {
            (true, _) => Some(StoreError::Replayed),
            (false, Some(key)) => Some(StoreError::KeyReused(key)),
            (false, None) => None,
        })
        .collect();
    let events: Vec<&NewEvent> = jobs
        .iter()
        .zip(&refused)
        .filter(|(_, refused)| refused.is_none())
        .flat_map(|((_, events), _)| events.iter())
        .collect();
    let events = &events[..];
    // Fan-out is decided in the transaction that stores the events, so an event goes to
    // exactly the endpoints enabled when it was stored.
    let destinations = destinations(&mut tx, cache).await?;
    // Decided once for the group: the gates are read only when the worker has room for
    // something (the common case under load; one statement per group, never per event), and
    // without that read nothing may be leased, however the room changes meanwhile.
    let may_lease = !events.is_empty() && handoff.offering();
    let held = if may_lease {
        let now_ms = events.iter().map(|e| e.created_at_ms).max().unwrap_or(0);
        held_by_gates(&mut tx, &destinations, now_ms).await?
    } else {
        HashSet::new()
    };
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut sessions = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut fingerprints = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.id.as_str().to_owned());
        types.push(event.event_type.as_str().to_owned());
        sessions.push(event.session_id.clone());
        keys.push(event.idempotency_key.clone());
        payloads.push(event.payload.to_vec());
        created.push(event.created_at_ms);
        fingerprints.push(event.request_fingerprint.clone());
    }
    // In array order, so of two events with one key in the same group the first is stored.
    let stored: Vec<String> = sqlx::query_scalar(
        "INSERT INTO events (id, event_type, session_id, idempotency_key, payload, created_at,
             request_fingerprint)
         SELECT id, event_type, session_id, idempotency_key, payload, created_at, request_fingerprint
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::text[])
              WITH ORDINALITY AS e(id, event_type, session_id, idempotency_key, payload, created_at,
                  request_fingerprint, n)
         ORDER BY n
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&sessions)
    .bind(&keys)
    .bind(&payloads)
    .bind(&created)
    .bind(&fingerprints)
    .fetch_all(&mut *tx)
    .await?;
    let stored: HashSet<String> = stored.into_iter().collect();
    let skipped_keys: Vec<String> = events
        .iter()
        .filter(|e| !stored.contains(e.id.as_str()))
        .filter_map(|e| e.idempotency_key.clone())
        .collect();
    let originals: HashMap<String, String> = if skipped_keys.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as("SELECT idempotency_key, id FROM events WHERE idempotency_key = ANY($1)")
            .bind(&skipped_keys)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };

    let mut delivery_ids = Vec::new();
    let mut delivery_events = Vec::new();
    let mut delivery_endpoints = Vec::new();
    let mut delivery_times = Vec::new();
    // A delivery handed to this process's worker is stored leased to it (due again when the
    // lease ends, then claimed like any other); any other is due at once.
    let mut delivery_due = Vec::new();
    let mut delivery_tokens: Vec<Option<i64>> = Vec::new();
    let mut delivery_claimants: Vec<Option<String>> = Vec::new();
    let mut handed = Handed::new(Arc::clone(handoff));
    let token = handoff::token();
    let mut stored_due = false;
    let mut outcomes = Vec::with_capacity(events.len());
    let mut aggregates = Aggregates::default();
    for event in events {
        let minute = event.created_at_ms.div_euclid(60_000);
        if !stored.contains(event.id.as_str()) {
            let original = event
                .idempotency_key
                .as_ref()
                .and_then(|key| originals.get(key))
                .ok_or_else(|| {
                    sqlx::Error::Protocol("an event was neither stored nor a duplicate".into())
                })?;
            outcomes.push(Ingested {
                id: EventId::from_trusted(original.clone()),
                duplicate: true,
            });
            aggregates.add_rollup(
                minute,
                &Rollup {
                    duplicates: 1,
                    ..Rollup::default()
                },
            );
            continue;
        }
        let matching = destinations
            .iter()
            .filter(|(_, filter)| filter.matches(event.event_type.as_str()));
        // Each id carries the event's acceptance time (`DeliveryId::generate_at`), so a time
        // range of deliveries is a range of the primary key.
        for (endpoint, _) in matching {
            let id = DeliveryId::generate_at(event.created_at_ms);
            let lease = if may_lease && !held.contains(endpoint.as_str()) {
                handoff.reserve(endpoint, event.created_at_ms)
            } else {
                handoff.stored_due();
                None
            };
            delivery_ids.push(id.as_str().to_owned());
            delivery_events.push(event.id.as_str().to_owned());
            delivery_endpoints.push(endpoint.as_str().to_owned());
            delivery_times.push(event.created_at_ms);
            match lease {
                // Held before the row is written, so that a failure below (the try's error
                // drops `handed`) gives the reservation back.
                Some(lease) => {
                    delivery_due.push(lease.until_ms);
                    delivery_tokens.push(Some(token.0));
                    handed.push_new(event, id, endpoint, token, &lease);
                    delivery_claimants.push(Some(lease.claimant));
                }
                None => {
                    stored_due = true;
                    delivery_due.push(event.created_at_ms);
                    delivery_tokens.push(None);
                    delivery_claimants.push(None);
                }
            }
        }
        aggregates.add_rollup(
            minute,
            &Rollup {
                ingested: 1,
                ..Rollup::default()
            },
        );
        if let Some(usage) = &event.usage {
            aggregates.add_usage(usage, event.created_at_ms);
        }
        outcomes.push(Ingested {
            id: event.id.clone(),
            duplicate: false,
        });
    }
    if !delivery_ids.is_empty() {
        sqlx::query(
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at,
                 updated_at, lease_token, claimed_by)
             SELECT id, event_id, endpoint_id, 'pending', due, at, at, token, claimant
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                 $7::text[]) AS d(id, event_id, endpoint_id, at, due, token, claimant)",
        )
        .bind(&delivery_ids)
        .bind(&delivery_events)
        .bind(&delivery_endpoints)
        .bind(&delivery_times)
        .bind(&delivery_due)
        .bind(&delivery_tokens)
        .bind(&delivery_claimants)
        .execute(&mut *tx)
        .await?;
    }
    write_aggregates(&mut tx, aggregates).await?;
    tx.commit().await?;
    handed.commit();
    // Leased deliveries are this worker's; only those stored due are every instance's news.
    if stored_due {
        work_queued.notify_one();
    }
    // Each job's share of the outcomes, in order; replays get their refusal.
    let mut outcomes = outcomes.into_iter();
    Ok(jobs
        .iter()
        .zip(refused)
        .map(|((_, events), refused)| match refused {
            Some(error) => Err(error),
            None => Ok(outcomes.by_ref().take(events.len()).collect()),
        })
        .collect())
}

/// For each job, the first of its idempotency keys stored before with another request's
/// fingerprint (the client's spelling), if any. Read before the insert: two first uses of one
/// key racing each other with different requests are answered as duplicates.
async fn reused_keys(
    tx: &mut PgConnection,
    jobs: &[&IngestJob],
) -> Result<Vec<Option<String>>, sqlx::Error> {
    let keys: Vec<String> = jobs
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter(|event| event.request_fingerprint.is_some())
        .filter_map(|event| event.idempotency_key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(vec![None; jobs.len()]);
    }
    let stored: HashMap<String, Option<String>> = sqlx::query_as(
        "SELECT idempotency_key, request_fingerprint FROM events WHERE idempotency_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(jobs
        .iter()
        .map(|(_, events)| {
            events.iter().find_map(|event| {
                let key = event.idempotency_key.as_ref()?;
                let fingerprint = stored.get(key)?;
                shared::reuses_key(fingerprint.as_deref(), event).then(|| shared::client_key(key))
            })
        })
        .collect())
}
