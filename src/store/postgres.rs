//! The PostgreSQL store, for several hookrelay instances sharing one queue.
//!
//! Claims pick due rows with `FOR UPDATE SKIP LOCKED`: concurrent claimants (on this instance
//! or another) skip each other's rows instead of waiting or taking them twice, and a crashed
//! instance's claims fall due again when their lease runs out, as on SQLite.
//!
//! Ingest is group-committed: concurrent `ingest` calls queue for one task, which stores all
//! that are waiting in one transaction of multi-row statements (arrays unnested server-side),
//! so a burst costs a few round trips and one commit instead of several per event. Attempt
//! results are written the same way, one transaction per batch the worker hands over.
//!
//! Every statement that touches shared counters (roll-ups, sessions, endpoint health) takes its
//! rows in key order and runs last in its transaction, which keeps lock waits short and
//! deadlocks rare; the rare deadlock or serialization failure is retried.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::{
    Executor, PgConnection, Row,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow},
};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    AttemptRecord, AttemptView, ClaimedDelivery, DbStats, DeliveryDetail, DeliverySummary,
    HealthUpdate, Ingested, LEAD_SQL, LeaseToken, MaintenanceReport, NewEvent, NextState,
    QueueCounts, Selection, Store, StoreError, TableStats,
    rows::{self, AlertRow, AttemptRow, EndpointRow, SessionRow, SummaryRow},
    shared::{
        self, ALERT_COLUMNS, ATTEMPT_COLUMNS, DEFAULT_DESCRIPTION, DefaultEndpointSync,
        ENDPOINT_COLUMNS, ModelSums, RETENTION_BATCH, SESSION_COLUMNS, SUMMARY_COLUMNS,
        UNSET_REASON, json_text,
    },
    tally::{Aggregates, Rollup},
};
use crate::{
    config::PostgresSettings,
    domain::{
        Alert, Analytics, CleanupReport, Condition, DeliveryId, Endpoint, EndpointId, EndpointUrl,
        EventFilter, EventId, EventType, ModelUsage, SessionStats, WindowTotals, bucket,
    },
};

/// Versioned schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "schema",
    include_str!("../../migrations/postgres/0001_schema.sql"),
)];

/// Serializes migrations across instances starting at once (any schema of the database).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;
/// Most events (or attempt results) committed in one group.
const MAX_GROUP: usize = 4096;
/// Shortest gap between two announcements of queued work to the other instances.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(20);
/// Group committers per kind of write (ingest, attempt results): transactions in flight at once.
const COMMITTERS: usize = 2;
/// Calls that may wait for a group committer; beyond this, callers wait (backpressure).
const WRITE_QUEUE: usize = 16_384;
/// The notification channel that tells workers on every instance that work was queued; the
/// payload is the schema, so deployments sharing a database do not wake each other.
const WORK_CHANNEL: &str = "hookrelay_work";

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        // 53100 disk_full; 53xxx is "insufficient resources".
        let disk_full = error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "53100");
        if disk_full {
            StoreError::Full(error.to_string())
        } else {
            StoreError::caused("PostgreSQL", error)
        }
    }
}

/// Deadlocks and serialization failures: the transaction did nothing and can simply run again.
fn is_transient(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Runs a transaction, again if it lost a deadlock or a serialization conflict.
async fn retrying<T, F, Fut>(mut run: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match run().await {
            Err(e) if is_transient(&e) && tries < 8 => {
                tries += 1;
                tracing::debug!(error = %e, tries, "transaction conflict; running it again");
                tokio::time::sleep(Duration::from_millis(2 << tries)).await;
            }
            result => return result.map_err(StoreError::from),
        }
    }
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

/// One caller's writes waiting for the next group commit, and where its answer goes.
struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Attempt results and endpoint health reported by one `record_attempts` call.
struct Results {
    records: Vec<AttemptRecord>,
    health: Vec<HealthUpdate>,
    now_ms: i64,
}

/// hookrelay's data in a PostgreSQL schema.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    ingests: mpsc::Sender<Job<Vec<NewEvent>, Vec<Ingested>>>,
    results: mpsc::Sender<Job<Results, ()>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// `"name"`, for identifiers that cannot be bound as parameters. Schema names are validated
/// (lowercase letters, digits, underscores) before they get here.
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn connect_options(settings: &PostgresSettings) -> Result<PgConnectOptions, StoreError> {
    // The parse error would not echo the URL, but say nothing of it anyway: it holds the password.
    let options: PgConnectOptions = settings
        .url
        .expose()
        .parse()
        .map_err(|_| StoreError::database("DATABASE_URL is not a valid PostgreSQL URL"))?;
    let timeout_ms = settings.statement_timeout.as_millis();
    Ok(options.application_name("hookrelay").options([
        ("search_path", settings.schema.clone()),
        ("statement_timeout", format!("{timeout_ms}")),
    ]))
}

async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // Three instances starting at once: one migrates, the others wait and find it done.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    tx.execute(&*format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(schema)))
        .await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(*name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tracing::info!(version, name, schema, "applied database migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Opens one connection first: a pool that cannot connect reports only that it timed out,
/// where a single connection says why (refused, authentication, TLS, unknown database).
async fn probe(options: &PgConnectOptions) -> Result<(), StoreError> {
    use sqlx::Connection;
    let conn = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(|e| StoreError::caused("cannot connect to PostgreSQL", e))?;
    conn.close().await?;
    Ok(())
}

impl PgStore {
    /// Connects, creates the schema if needed and applies pending migrations.
    pub async fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        probe(&connect_options(settings)?).await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            // A broken connection fails its statement (retried by the caller or the worker's
            // next round) instead of costing every transaction a ping first.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect_options(settings)?)
            .await?;
        migrate(&pool, &settings.schema).await?;
        let destinations = Arc::new(DestinationCache::default());
        let (ingests, queue) = mpsc::channel(WRITE_QUEUE);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let work_queued = Arc::new(Notify::new());
        tokio::spawn(announce_work(
            pool.clone(),
            settings.schema.clone(),
            Arc::clone(&work_queued),
        ));
        for _ in 0..COMMITTERS {
            let (pool, cache, work_queued) = (
                pool.clone(),
                Arc::clone(&destinations),
                Arc::clone(&work_queued),
            );
            tokio::spawn(group_commit(
                Arc::clone(&queue),
                Vec::len,
                async move |jobs: &[&Vec<NewEvent>]| {
                    let events: Vec<&NewEvent> =
                        jobs.iter().flat_map(|events| events.iter()).collect();
                    let mut outcomes =
                        retrying(|| ingest_tx(&pool, &work_queued, &cache, &events)).await?;
                    let mut answers = Vec::with_capacity(jobs.len());
                    for events in jobs {
                        let rest = outcomes.split_off(events.len());
                        answers.push(outcomes);
                        outcomes = rest;
                    }
                    Ok(answers)
                },
            ));
        }
        let (results, queue) = mpsc::channel(WRITE_QUEUE);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..COMMITTERS {
            let pool = pool.clone();
            tokio::spawn(group_commit(
                Arc::clone(&queue),
                |r: &Results| r.records.len() + r.health.len(),
                async move |jobs: &[&Results]| {
                    let mut records: Vec<AttemptRecord> = Vec::new();
                    // The latest report of each endpoint's health wins.
                    let mut health: BTreeMap<String, HealthUpdate> = BTreeMap::new();
                    let mut now_ms = i64::MIN;
                    for job in jobs {
                        records.extend(job.records.iter().cloned());
                        for update in &job.health {
                            health.insert(update.endpoint_id.as_str().to_owned(), update.clone());
                        }
                        now_ms = now_ms.max(job.now_ms);
                    }
                    // Key order, so concurrent transactions lock rows in the same order.
                    records.sort_by(|a, b| a.delivery_id.as_str().cmp(b.delivery_id.as_str()));
                    let health: Vec<HealthUpdate> = health.into_values().collect();
                    let columns = AttemptColumns::new(&records, now_ms);
                    retrying(|| record_tx(&pool, &records, &columns, &health, now_ms)).await?;
                    Ok(vec![(); jobs.len()])
                },
            ));
        }
        Ok(Self {
            pool,
            schema: settings.schema.clone(),
            ingests,
            results,
        })
    }

    /// Whether the configured schema holds a hookrelay database (never creates one).
    pub async fn is_initialised(settings: &PostgresSettings) -> Result<bool, StoreError> {
        probe(&connect_options(settings)?).await?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect_options(settings)?)
            .await?;
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = $1 AND table_name = 'schema_migrations')",
        )
        .bind(&settings.schema)
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        Ok(found)
    }

    /// Drops the configured schema and everything in it (tests clean up with this).
    pub async fn drop_schema(settings: &PostgresSettings) -> Result<(), StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options(settings)?)
            .await?;
        pool.execute(&*format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quoted(&settings.schema)
        ))
        .await?;
        pool.close().await;
        Ok(())
    }

    /// `claim_due`, or with `retried_only` only deliveries attempted before.
    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
        retried_only: bool,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let (endpoints, limits): (Vec<String>, Vec<i64>) = wanted
            .into_iter()
            .filter(|(_, limit)| *limit > 0)
            .map(|(endpoint, limit)| (endpoint.as_str().to_owned(), limit as i64))
            .unzip();
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let token = LeaseToken(rand::random::<i64>());
        // One statement for every endpoint: the rows another claimant holds are skipped, not
        // waited for, and the claim is atomic without an explicit transaction.
        let rows = retrying(|| {
            sqlx::query(
                "WITH picked AS (
                     SELECT due.id FROM UNNEST($4::text[], $5::int8[]) AS w(endpoint_id, wanted)
                     CROSS JOIN LATERAL (
                         SELECT id FROM deliveries
                         WHERE status = 'pending' AND endpoint_id = w.endpoint_id AND next_attempt_at <= $3
                             AND (NOT $7 OR total_attempts > 0)
                         ORDER BY next_attempt_at LIMIT w.wanted
                         FOR UPDATE SKIP LOCKED) AS due),
                 claimed AS (
                     UPDATE deliveries d SET lease_token = $1, next_attempt_at = $2, updated_at = $3,
                         claimed_by = $6
                     FROM picked WHERE d.id = picked.id
                     RETURNING d.id, d.event_id, d.endpoint_id, d.attempts, d.total_attempts, d.throttled,
                         d.next_attempt_at)
                 SELECT c.id, c.event_id, c.endpoint_id, c.attempts, c.total_attempts, c.throttled,
                     e.event_type, e.payload, e.created_at, e.session_id
                 FROM claimed c CROSS JOIN LATERAL (
                     SELECT event_type, payload, created_at, session_id FROM events WHERE id = c.event_id) e
                 ORDER BY c.endpoint_id, c.next_attempt_at",
            )
            .bind(token.0)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(&endpoints)
            .bind(&limits)
            .bind(&claimant)
            .bind(retried_only)
            .fetch_all(&self.pool)
        })
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            claimed.push((|| -> Result<ClaimedDelivery, sqlx::Error> {
                Ok(ClaimedDelivery {
                    id: DeliveryId::from_trusted(row.try_get("id")?),
                    event_id: EventId::from_trusted(row.try_get("event_id")?),
                    endpoint_id: EndpointId::from_trusted(row.try_get("endpoint_id")?),
                    event_type: EventType::from_trusted(row.try_get("event_type")?),
                    payload: Bytes::from(row.try_get::<Vec<u8>, _>("payload")?),
                    event_created_at_ms: row.try_get("created_at")?,
                    session_id: row.try_get("session_id")?,
                    attempts: small(&row, "attempts")?,
                    total_attempts: small(&row, "total_attempts")?,
                    throttled: small(&row, "throttled")?,
                    lease: token,
                })
            })()?);
        }
        Ok(claimed)
    }
}

/// Group commit: takes every job waiting in `queue` (up to `MAX_GROUP` of `weight`), commits
/// them together with `commit` (one answer per job), and answers each. `COMMITTERS` of these
/// share a queue: while one group commits (a few round trips to the server), the next gathers
/// and commits beside it, so a burst costs one transaction per group, not per caller.
async fn group_commit<I, O>(
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job<I, O>>>>,
    weight: impl Fn(&I) -> usize,
    commit: impl AsyncFn(&[&I]) -> Result<Vec<O>, StoreError>,
) {
    let mut batch: Vec<Job<I, O>> = Vec::new();
    loop {
        {
            // Gathering holds the queue; committing does not, so the other committer gathers
            // the next group meanwhile.
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut gathered = weight(&first.input);
            batch.push(first);
            while gathered < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => {
                        gathered += weight(&job.input);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let inputs: Vec<&I> = batch.iter().map(|job| &job.input).collect();
        match commit(&inputs).await {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            // One caller's bad input must not fail the others: each commits on its own.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, jobs = batch.len(), "group commit failed; committing each job alone");
                for job in batch.drain(..) {
                    let answer = commit(&[&job.input]).await.and_then(|mut answers| {
                        answers
                            .pop()
                            .ok_or_else(|| StoreError::database("no answer for a job"))
                    });
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "database commit failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
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

async fn ingest_tx(
    pool: &PgPool,
    work_queued: &Notify,
    cache: &DestinationCache,
    events: &[&NewEvent],
) -> Result<Vec<Ingested>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Fan-out is decided in the transaction that stores the events, so an event goes to
    // exactly the endpoints enabled when it was stored.
    let destinations = destinations(&mut tx, cache).await?;
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut sessions = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.id.as_str().to_owned());
        types.push(event.event_type.as_str().to_owned());
        sessions.push(event.session_id.clone());
        keys.push(event.idempotency_key.clone());
        payloads.push(event.payload.to_vec());
        created.push(event.created_at_ms);
    }
    // In array order, so of two events with one key in the same group the first is stored.
    let stored: Vec<String> = sqlx::query_scalar(
        "INSERT INTO events (id, event_type, session_id, idempotency_key, payload, created_at)
         SELECT id, event_type, session_id, idempotency_key, payload, created_at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[])
              WITH ORDINALITY AS e(id, event_type, session_id, idempotency_key, payload, created_at, n)
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
    .fetch_all(&mut *tx)
    .await?;
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
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
        for (endpoint, _) in matching {
            delivery_ids.push(DeliveryId::generate().as_str().to_owned());
            delivery_events.push(event.id.as_str().to_owned());
            delivery_endpoints.push(endpoint.as_str().to_owned());
            delivery_times.push(event.created_at_ms);
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
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, next_attempt_at, created_at, updated_at)
             SELECT id, event_id, endpoint_id, 'pending', at, at, at
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS d(id, event_id, endpoint_id, at)",
        )
        .bind(&delivery_ids)
        .bind(&delivery_events)
        .bind(&delivery_endpoints)
        .bind(&delivery_times)
        .execute(&mut *tx)
        .await?;
    }
    write_aggregates(&mut tx, aggregates).await?;
    tx.commit().await?;
    if !delivery_ids.is_empty() {
        work_queued.notify_one();
    }
    Ok(outcomes)
}

/// Rows per minute of `rollups` and per day and model of `usage_daily`.
const AGGREGATE_SHARDS: i16 = 16;

/// Adds a transaction's counts to the shared aggregate rows, each table in one statement and
/// in key order (so two instances' transactions take these row locks in the same order). The
/// hot rows (this minute, today) are sharded: a transaction adds to one shard picked at random,
/// so concurrent transactions rarely queue for the same row.
async fn write_aggregates(conn: &mut PgConnection, a: Aggregates) -> Result<(), sqlx::Error> {
    let shard: i16 = rand::random_range(0..AGGREGATE_SHARDS);
    if !a.sessions.is_empty() {
        let mut ids = Vec::new();
        let mut columns: [Vec<i64>; 7] = Default::default();
        for (id, d) in a.sessions {
            ids.push(id);
            for (column, value) in columns.iter_mut().zip([
                d.first_seen,
                d.last_seen,
                d.queries,
                d.successes,
                d.failures,
                d.response_time_sum_ms,
                d.tokens,
            ]) {
                column.push(value);
            }
        }
        let [first, last, queries, successes, failures, response, tokens] = columns;
        sqlx::query(
            "INSERT INTO sessions AS s (session_id, first_seen, last_seen, queries, successes, failures, response_time_sum_ms, tokens)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[])
             ON CONFLICT (session_id) DO UPDATE SET
                 first_seen = LEAST(s.first_seen, excluded.first_seen),
                 last_seen = GREATEST(s.last_seen, excluded.last_seen),
                 queries = s.queries + excluded.queries, successes = s.successes + excluded.successes,
                 failures = s.failures + excluded.failures,
                 response_time_sum_ms = s.response_time_sum_ms + excluded.response_time_sum_ms,
                 tokens = s.tokens + excluded.tokens",
        )
        .bind(ids)
        .bind(first)
        .bind(last)
        .bind(queries)
        .bind(successes)
        .bind(failures)
        .bind(response)
        .bind(tokens)
        .execute(&mut *conn)
        .await?;
    }
    if !a.session_models.is_empty() {
        let (mut sessions, mut models, mut queries) = (Vec::new(), Vec::new(), Vec::new());
        for ((session, model), n) in a.session_models {
            sessions.push(session);
            models.push(model);
            queries.push(n);
        }
        sqlx::query(
            "INSERT INTO session_models AS m (session_id, model, queries)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[])
             ON CONFLICT (session_id, model) DO UPDATE SET queries = m.queries + excluded.queries",
        )
        .bind(sessions)
        .bind(models)
        .bind(queries)
        .execute(&mut *conn)
        .await?;
    }
    if !a.daily.is_empty() {
        let (mut days, mut models) = (Vec::new(), Vec::new());
        let mut columns: [Vec<i64>; 4] = Default::default();
        for ((day, model), d) in a.daily {
            days.push(day);
            models.push(model);
            for (column, value) in
                columns
                    .iter_mut()
                    .zip([d.queries, d.successes, d.tokens, d.response_time_sum_ms])
            {
                column.push(value);
            }
        }
        let [queries, successes, tokens, response] = columns;
        sqlx::query(
            "INSERT INTO usage_daily AS u (day, model, shard, queries, successes, tokens, response_time_sum_ms)
             SELECT d.day, d.model, $7, d.queries, d.successes, d.tokens, d.response
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                  AS d(day, model, queries, successes, tokens, response)
             ON CONFLICT (day, model, shard) DO UPDATE SET queries = u.queries + excluded.queries,
                 successes = u.successes + excluded.successes, tokens = u.tokens + excluded.tokens,
                 response_time_sum_ms = u.response_time_sum_ms + excluded.response_time_sum_ms",
        )
        .bind(days)
        .bind(models)
        .bind(queries)
        .bind(successes)
        .bind(tokens)
        .bind(response)
        .bind(shard)
        .execute(&mut *conn)
        .await?;
    }
    for (minute, r) in a.rollups {
        let b = &r.buckets;
        sqlx::query(
            "INSERT INTO rollups AS r (minute, shard, ingested, duplicates, attempts, successes, failures, throttled, retries,
                 delivered, dead_lettered, duration_sum_ms, latency_sum_ms, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11)
             VALUES ($1, $25, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)
             ON CONFLICT (minute, shard) DO UPDATE SET
                 ingested = r.ingested + excluded.ingested, duplicates = r.duplicates + excluded.duplicates,
                 attempts = r.attempts + excluded.attempts, successes = r.successes + excluded.successes,
                 failures = r.failures + excluded.failures, throttled = r.throttled + excluded.throttled,
                 retries = r.retries + excluded.retries, delivered = r.delivered + excluded.delivered,
                 dead_lettered = r.dead_lettered + excluded.dead_lettered,
                 duration_sum_ms = r.duration_sum_ms + excluded.duration_sum_ms,
                 latency_sum_ms = r.latency_sum_ms + excluded.latency_sum_ms,
                 d0 = r.d0 + excluded.d0, d1 = r.d1 + excluded.d1, d2 = r.d2 + excluded.d2, d3 = r.d3 + excluded.d3,
                 d4 = r.d4 + excluded.d4, d5 = r.d5 + excluded.d5, d6 = r.d6 + excluded.d6, d7 = r.d7 + excluded.d7,
                 d8 = r.d8 + excluded.d8, d9 = r.d9 + excluded.d9, d10 = r.d10 + excluded.d10, d11 = r.d11 + excluded.d11",
        )
        .bind(minute)
        .bind(r.ingested)
        .bind(r.duplicates)
        .bind(r.attempts)
        .bind(r.successes)
        .bind(r.failures)
        .bind(r.throttled)
        .bind(r.retries)
        .bind(r.delivered)
        .bind(r.dead_lettered)
        .bind(r.duration_sum_ms)
        .bind(r.latency_sum_ms)
        .bind(b[0])
        .bind(b[1])
        .bind(b[2])
        .bind(b[3])
        .bind(b[4])
        .bind(b[5])
        .bind(b[6])
        .bind(b[7])
        .bind(b[8])
        .bind(b[9])
        .bind(b[10])
        .bind(b[11])
        .bind(shard)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn count(row: &PgRow, column: usize) -> Result<u64, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)?.unsigned_abs())
}

fn small(row: &PgRow, column: &str) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i64, _>(column)?.max(0)).unwrap_or(u32::MAX))
}

fn summary_row(row: &PgRow) -> Result<SummaryRow, sqlx::Error> {
    Ok(SummaryRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_type: row.try_get("event_type")?,
        session_id: row.try_get("session_id")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        total_attempts: row.try_get("total_attempts")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        finished_at: row.try_get("finished_at")?,
        throttled: row.try_get("throttled")?,
    })
}

fn alert_from_row(row: &PgRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert::from(AlertRow {
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        level: row.try_get("level")?,
        message: row.try_get("message")?,
        value: row.try_get("value")?,
        threshold: row.try_get("threshold")?,
        fired_at: row.try_get("fired_at")?,
        resolved_at: row.try_get("resolved_at")?,
    }))
}

fn session_from_row(row: &PgRow) -> Result<SessionStats, sqlx::Error> {
    Ok(SessionStats::from(SessionRow {
        session_id: row.try_get(0)?,
        first_seen: row.try_get(1)?,
        last_seen: row.try_get(2)?,
        queries: row.try_get(3)?,
        successes: row.try_get(4)?,
        failures: row.try_get(5)?,
        response_time_sum_ms: row.try_get(6)?,
        tokens: row.try_get(7)?,
    }))
}

/// Adds a session's models and webhook counts.
async fn complete_session(
    pool: &PgPool,
    mut session: SessionStats,
) -> Result<SessionStats, sqlx::Error> {
    let models = sqlx::query(
        "SELECT model, queries FROM session_models WHERE session_id = $1 ORDER BY queries DESC, model",
    )
    .bind(&session.session_id)
    .fetch_all(pool)
    .await?;
    for row in models {
        session.models.push(ModelUsage {
            model: row.try_get(0)?,
            queries: count(&row, 1)?,
            tokens: 0,
        });
    }
    let counts = sqlx::query(
        "SELECT d.status, COUNT(*) FROM events e JOIN deliveries d ON d.event_id = e.id
         WHERE e.session_id = $1 GROUP BY d.status",
    )
    .bind(&session.session_id)
    .fetch_all(pool)
    .await?;
    for row in counts {
        let n = count(&row, 1)?;
        match row.try_get::<&str, _>(0)? {
            "delivered" => session.webhooks.delivered = n,
            "dead" => session.webhooks.dead = n,
            _ => session.webhooks.pending = n,
        }
    }
    Ok(session)
}

fn endpoint_row(row: &PgRow) -> Result<EndpointRow, sqlx::Error> {
    Ok(EndpointRow {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: row.try_get("event_types")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        headers: row.try_get("headers")?,
        timeout_ms: row.try_get("timeout_ms")?,
        max_retries: row.try_get("max_retries")?,
        rate_limit: row.try_get("rate_limit")?,
        rate_burst: row.try_get("rate_burst")?,
        circuit_threshold: row.try_get("circuit_threshold")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        managed_by_config: row.try_get("managed_by_config")?,
        circuit_state: row.try_get("circuit_state")?,
        circuit_changed_at: row.try_get("circuit_changed_at")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        failing_since: row.try_get("failing_since")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        last_success_at: row.try_get("last_success_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// An `endpoints` row as an endpoint.
fn endpoint_from_row(row: &PgRow) -> Result<Endpoint, StoreError> {
    Ok(Endpoint::try_from(endpoint_row(row)?)?)
}

/// Binds `$1` the id and `$2`–`$13` the settings shared by the endpoint INSERT and UPDATE.
fn bind_endpoint<'a>(
    query: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
    endpoint: &'a Endpoint,
) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(endpoint.id.as_str())
        .bind(endpoint.url.as_str())
        .bind(&endpoint.description)
        .bind(json_text(&endpoint.filter))
        .bind(&endpoint.secret)
        .bind(&endpoint.previous_secret)
        .bind(endpoint.previous_secret_until_ms)
        .bind(json_text(&endpoint.headers))
        .bind(endpoint.timeout.map(|t| t.as_millis() as i64))
        .bind(endpoint.max_retries.map(i64::from))
        .bind(endpoint.rate_limit.map(|r| r.per_second))
        .bind(endpoint.rate_limit.map(|r| i64::from(r.burst)))
        .bind(endpoint.circuit_threshold.map(i64::from))
}

/// The columns an attempt writes, one array per column (rows sorted by delivery id).
#[derive(Default)]
struct AttemptColumns {
    ids: Vec<String>,
    leases: Vec<i64>,
    statuses: Vec<&'static str>,
    next_at: Vec<i64>,
    http_status: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
    finished: Vec<Option<i64>>,
    spent: Vec<i64>,
    throttled: Vec<i64>,
    attempt_no: Vec<i64>,
    started: Vec<i64>,
    duration: Vec<i64>,
    error_kind: Vec<Option<String>>,
    error_detail: Vec<Option<String>>,
    snippet: Vec<Option<String>>,
    outcome: Vec<&'static str>,
    /// The duration's histogram bucket ([`crate::domain::bucket`]).
    bucket: Vec<i64>,
    /// Acceptance to the end of this attempt, ms.
    latency: Vec<i64>,
}

impl AttemptColumns {
    fn new(records: &[AttemptRecord], now_ms: i64) -> Self {
        let mut c = Self::default();
        for record in records {
            let t = record.next.transition(now_ms);
            c.ids.push(record.delivery_id.as_str().to_owned());
            c.leases.push(record.lease.0);
            c.statuses.push(t.status.as_str());
            c.next_at.push(t.next_attempt_at);
            c.http_status.push(record.status_code.map(i64::from));
            c.last_error.push(match record.next {
                NextState::Delivered => None,
                _ => record.error_detail.clone(),
            });
            c.finished.push(t.finished_at);
            c.spent.push(t.spent);
            c.throttled.push(t.throttled);
            c.attempt_no.push(i64::from(record.attempt_no));
            c.started.push(record.started_at_ms);
            c.duration.push(record.duration_ms);
            c.error_kind.push(record.error_kind.clone());
            c.error_detail.push(record.error_detail.clone());
            c.snippet.push(record.response_snippet.clone());
            c.outcome.push(t.outcome);
            c.bucket.push(bucket(record.duration_ms) as i64);
            c.latency.push(record.latency_ms);
        }
        c
    }
}

async fn record_tx(
    pool: &PgPool,
    records: &[AttemptRecord],
    columns: &AttemptColumns,
    health: &[HealthUpdate],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let health = HealthColumns::new(health);
    // One statement, so one round trip and one commit: it moves the deliveries, logs the
    // attempts, writes endpoint health and counts what moved into the minute's roll-up. All
    // parts see the same snapshot; the roll-up reads what `moved` returns.
    //
    // - A result applies only while its claim holds: a worker whose lease expired (and whose
    //   delivery someone else claimed since) must not overwrite the newer claimant's result.
    //   `d.id = ANY($1)` beside the join makes the planner fetch rows by primary key; joined to
    //   an unnest alone, a young table's missing statistics led it to scan the whole table.
    // - Every attempt is logged, even one whose lease was lost; a delivery removed meanwhile
    //   (its endpoint deleted) has nothing to log against. (Locking the rows here would not
    //   do: `moved` has already updated them in this very statement, which hides them from a
    //   locking read. A delete racing this statement fails it, and the retry finds no row.)
    // - Every instance's every batch reports its endpoints' health; writing the rows each time
    //   would make them all queue for the locks. A change of state is written at once; the
    //   attempt and success times alone are refreshed at most once a second. A row the WHERE
    //   rejects is skipped without waiting for its lock.
    // - Only attempts that moved their delivery count, once; a throttled one counts only as
    //   throttled. The minute's row is sharded like every roll-up write.
    let moved: Vec<String> = sqlx::query_scalar(
        "WITH r AS (
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[],
                                  $7::int8[], $8::int8[], $9::int8[], $11::int8[], $12::int8[], $13::int8[],
                                  $14::text[], $15::text[], $16::text[], $17::text[], $18::int8[], $19::int8[])
                  AS r(id, lease, status, next_at, http_status, last_error, finished, spent, throttled,
                       attempt_no, started_at, duration_ms, error_kind, error_detail, snippet, outcome,
                       bucket, latency_ms)),
         moved AS (
             UPDATE deliveries AS d SET status = r.status, attempts = d.attempts + r.spent,
                 total_attempts = d.total_attempts + 1, throttled = d.throttled + r.throttled,
                 next_attempt_at = r.next_at, lease_token = NULL, last_status = r.http_status,
                 last_error = r.last_error, updated_at = $10, finished_at = r.finished
             FROM r WHERE d.id = ANY($1) AND d.id = r.id AND d.lease_token = r.lease
             RETURNING d.id, r.lease),
         logged AS (
             INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, status_code,
                 error_kind, error_detail, response_snippet, outcome)
             SELECT r.id, r.attempt_no, r.started_at, r.duration_ms, r.http_status, r.error_kind,
                 r.error_detail, r.snippet, r.outcome
             FROM r WHERE r.id IN (SELECT id FROM deliveries WHERE id = ANY($1))),
         health AS (
             UPDATE endpoints AS e SET circuit_state = h.circuit, circuit_changed_at = h.changed_at,
                 consecutive_failures = h.failures, failing_since = h.failing_since,
                 last_attempt_at = GREATEST(e.last_attempt_at, h.last_attempt),
                 last_success_at = GREATEST(e.last_success_at, h.last_success),
                 enabled = CASE WHEN h.disable IS NULL THEN e.enabled ELSE FALSE END,
                 disabled_reason = COALESCE(h.disable, e.disabled_reason)
             FROM UNNEST($20::text[], $21::text[], $22::int8[], $23::int8[], $24::int8[], $25::int8[],
                         $26::int8[], $27::text[])
                  AS h(id, circuit, changed_at, failures, failing_since, last_attempt, last_success, disable)
             WHERE e.id = h.id AND (
                 e.circuit_state IS DISTINCT FROM h.circuit OR e.circuit_changed_at IS DISTINCT FROM h.changed_at
                 OR e.consecutive_failures IS DISTINCT FROM h.failures
                 OR e.failing_since IS DISTINCT FROM h.failing_since OR h.disable IS NOT NULL
                 OR e.last_attempt_at IS NULL OR e.last_attempt_at < h.last_attempt - 1000
                 OR (e.last_success_at IS NULL AND h.last_success IS NOT NULL)
                 OR e.last_success_at < h.last_success - 1000)),
         counted AS (
             INSERT INTO rollups AS ru (minute, shard, attempts, successes, failures, throttled, retries,
                 delivered, dead_lettered, duration_sum_ms, latency_sum_ms,
                 d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11)
             SELECT $28, $29,
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled'),
                 COUNT(*) FILTER (WHERE r.outcome = 'delivered'),
                 COUNT(*) FILTER (WHERE r.outcome IN ('retry', 'dead')),
                 COUNT(*) FILTER (WHERE r.outcome = 'throttled'),
                 COUNT(*) FILTER (WHERE r.outcome = 'retry'),
                 COUNT(*) FILTER (WHERE r.outcome = 'delivered'),
                 COUNT(*) FILTER (WHERE r.outcome = 'dead'),
                 COALESCE(SUM(GREATEST(r.duration_ms, 0)) FILTER (WHERE r.outcome <> 'throttled'), 0),
                 COALESCE(SUM(GREATEST(r.latency_ms, 0)) FILTER (WHERE r.outcome = 'delivered'), 0),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 0),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 1),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 2),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 3),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 4),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 5),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 6),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 7),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 8),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 9),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 10),
                 COUNT(*) FILTER (WHERE r.outcome <> 'throttled' AND r.bucket = 11)
             FROM r JOIN moved ON moved.id = r.id AND moved.lease = r.lease
             HAVING COUNT(*) > 0
             ON CONFLICT (minute, shard) DO UPDATE SET
                 attempts = ru.attempts + excluded.attempts, successes = ru.successes + excluded.successes,
                 failures = ru.failures + excluded.failures, throttled = ru.throttled + excluded.throttled,
                 retries = ru.retries + excluded.retries, delivered = ru.delivered + excluded.delivered,
                 dead_lettered = ru.dead_lettered + excluded.dead_lettered,
                 duration_sum_ms = ru.duration_sum_ms + excluded.duration_sum_ms,
                 latency_sum_ms = ru.latency_sum_ms + excluded.latency_sum_ms,
                 d0 = ru.d0 + excluded.d0, d1 = ru.d1 + excluded.d1, d2 = ru.d2 + excluded.d2,
                 d3 = ru.d3 + excluded.d3, d4 = ru.d4 + excluded.d4, d5 = ru.d5 + excluded.d5,
                 d6 = ru.d6 + excluded.d6, d7 = ru.d7 + excluded.d7, d8 = ru.d8 + excluded.d8,
                 d9 = ru.d9 + excluded.d9, d10 = ru.d10 + excluded.d10, d11 = ru.d11 + excluded.d11)
         SELECT id FROM moved",
    )
    .bind(&columns.ids)
    .bind(&columns.leases)
    .bind(&columns.statuses)
    .bind(&columns.next_at)
    .bind(&columns.http_status)
    .bind(&columns.last_error)
    .bind(&columns.finished)
    .bind(&columns.spent)
    .bind(&columns.throttled)
    .bind(now_ms)
    .bind(&columns.attempt_no)
    .bind(&columns.started)
    .bind(&columns.duration)
    .bind(&columns.error_kind)
    .bind(&columns.error_detail)
    .bind(&columns.snippet)
    .bind(&columns.outcome)
    .bind(&columns.bucket)
    .bind(&columns.latency)
    .bind(&health.ids)
    .bind(&health.circuit)
    .bind(&health.changed_at)
    .bind(&health.failures)
    .bind(&health.failing_since)
    .bind(&health.last_attempt)
    .bind(&health.last_success)
    .bind(&health.disable)
    .bind(now_ms.div_euclid(60_000))
    .bind(rand::random_range(0..AGGREGATE_SHARDS))
    .fetch_all(pool)
    .await?;
    if moved.len() < records.len() {
        let moved: std::collections::HashSet<&str> = moved.iter().map(String::as_str).collect();
        for record in records {
            if !moved.contains(record.delivery_id.as_str()) {
                tracing::warn!(delivery_id = %record.delivery_id, "lease lost before the attempt was recorded; its result is kept in the attempt log only");
            }
        }
    }
    Ok(())
}

/// Endpoint health reports, one array per column.
#[derive(Default)]
struct HealthColumns {
    ids: Vec<String>,
    circuit: Vec<&'static str>,
    changed_at: Vec<Option<i64>>,
    failures: Vec<i64>,
    failing_since: Vec<Option<i64>>,
    last_attempt: Vec<Option<i64>>,
    last_success: Vec<Option<i64>>,
    disable: Vec<Option<String>>,
}

impl HealthColumns {
    fn new(updates: &[HealthUpdate]) -> Self {
        let mut c = Self::default();
        for update in updates {
            let h = &update.health;
            c.ids.push(update.endpoint_id.as_str().to_owned());
            c.circuit.push(h.circuit.as_str());
            c.changed_at.push(h.circuit_changed_at_ms);
            c.failures.push(i64::from(h.consecutive_failures));
            c.failing_since.push(h.failing_since_ms);
            c.last_attempt.push(h.last_attempt_at_ms);
            c.last_success.push(h.last_success_at_ms);
            c.disable.push(update.disable.clone());
        }
        c
    }
}

/// Deletes up to a batch of old, fully delivered events (with their deliveries and attempts,
/// by cascade) created in `[cursor, cutoff)`; returns the counts and the newest one removed.
async fn retention_batch(
    pool: &PgPool,
    cutoff_ms: i64,
    cursor: i64,
) -> Result<(u64, u64, u64, Option<i64>), sqlx::Error> {
    // Every part of one statement sees the same snapshot: the counts are of what is deleted.
    let row = sqlx::query(
        "WITH batch AS (
             SELECT id, created_at FROM events e WHERE created_at < $1 AND created_at >= $2
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')
             ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED),
         doomed AS (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM batch)),
         gone AS (DELETE FROM events WHERE id IN (SELECT id FROM batch) RETURNING created_at)
         SELECT (SELECT COUNT(*) FROM gone), (SELECT COUNT(*) FROM doomed),
                (SELECT COUNT(*) FROM attempts WHERE delivery_id IN (SELECT id FROM doomed)),
                (SELECT MAX(created_at) FROM gone)",
    )
    .bind(cutoff_ms)
    .bind(cursor)
    .bind(RETENTION_BATCH as i64)
    .fetch_one(pool)
    .await?;
    Ok((
        count(&row, 0)?,
        count(&row, 1)?,
        count(&row, 2)?,
        row.try_get(3)?,
    ))
}

/// Tells every instance's worker that work was queued, at most once per `ANNOUNCE_EVERY`.
/// Outside the ingest transactions: a transaction that notifies holds a server-wide lock
/// through its commit, which would serialize every instance's ingest commits.
async fn announce_work(pool: PgPool, schema: String, work_queued: Arc<Notify>) {
    loop {
        work_queued.notified().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(&schema)
            .execute(&pool)
            .await
        {
            // Workers still find the work at their next poll.
            tracing::debug!(error = %e, "could not announce queued work");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// Runs `verb` (a VACUUM) on each table, on one connection without the statement timeout: a
/// large table's VACUUM FULL may rightly take longer than any statement of the relay's own.
async fn vacuum(pool: &PgPool, verb: &str, tables: &[String]) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let mut vacuumed = Ok(());
    for table in tables {
        let statement = format!("{verb} {}", quoted(table));
        vacuumed = sqlx::query(&statement)
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map(|_| ());
        if vacuumed.is_err() {
            break;
        }
    }
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    vacuumed
}

/// Wakes `wake` whenever an instance queues work in `schema`, until the listener's pool closes.
async fn forward_notifications(pool: PgPool, schema: String, wake: Arc<Notify>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for queued work; polling until it can");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(WORK_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for queued work; polling until it can");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(notification) if notification.payload() == schema => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    // The listener reconnects by itself on the next recv; wake the worker in
                    // case a notification was lost meanwhile.
                    tracing::debug!(error = %e, "work notifications interrupted");
                    wake.notify_one();
                    if pool.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.ingests
            .send(Job {
                input: events,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wanted: Vec<(EndpointId, usize)>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claim(now_ms, lease_ms, claimant, wanted, false).await
    }

    async fn claim_retried(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        endpoint: EndpointId,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.claim(now_ms, lease_ms, claimant, vec![(endpoint, limit)], true)
            .await
    }

    async fn record_attempts(
        &self,
        records: Vec<AttemptRecord>,
        health: Vec<HealthUpdate>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if records.is_empty() && health.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.results
            .send(Job {
                input: Results {
                    records,
                    health,
                    now_ms,
                },
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn release(
        &self,
        leases: Vec<(DeliveryId, LeaseToken)>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (ids, tokens): (Vec<String>, Vec<i64>) = leases
            .into_iter()
            .map(|(id, lease)| (id.as_str().to_owned(), lease.0))
            .unzip();
        retrying(|| {
            sqlx::query(
                "UPDATE deliveries AS d SET lease_token = NULL, next_attempt_at = $1, updated_at = $1
                 FROM UNNEST($2::text[], $3::int8[]) AS r(id, lease)
                 WHERE d.id = ANY($2) AND d.id = r.id AND d.lease_token = r.lease AND d.status = 'pending'",
            )
            .bind(now_ms)
            .bind(&ids)
            .bind(&tokens)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn next_due(
        &self,
        endpoints: Vec<EndpointId>,
    ) -> Result<Vec<(EndpointId, i64)>, StoreError> {
        let ids: Vec<String> = endpoints.iter().map(|e| e.as_str().to_owned()).collect();
        // The index gives each endpoint's earliest pending delivery in one lookup.
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT w.endpoint_id, (SELECT MIN(next_attempt_at) FROM deliveries
                                    WHERE status = 'pending' AND endpoint_id = w.endpoint_id)
             FROM UNNEST($1::text[]) AS w(endpoint_id)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, at)| Some((EndpointId::from_trusted(id), at?)))
            .collect())
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY id = 'ep_default' DESC, created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn endpoint(&self, id: EndpointId) -> Result<Option<Endpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn create_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
        let inserted = bind_endpoint(
            sqlx::query(
                "INSERT INTO endpoints (id, url, description, event_types, secret, previous_secret,
                     previous_secret_until, headers, timeout_ms, max_retries, rate_limit, rate_burst,
                     circuit_threshold, enabled, disabled_reason, managed_by_config, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)
                 ON CONFLICT (id) DO NOTHING",
            ),
            &endpoint,
        )
        .bind(endpoint.enabled)
        .bind(&endpoint.disabled_reason)
        .bind(endpoint.managed_by_config)
        .bind(endpoint.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn update_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
        // Settings only: enabled state and health belong to `set_endpoint_state` and the
        // worker, so a settings change read earlier cannot undo what they wrote since.
        let updated = bind_endpoint(
            sqlx::query(
                "UPDATE endpoints SET url = $2, description = $3, event_types = $4, secret = $5,
                     previous_secret = $6, previous_secret_until = $7, headers = $8, timeout_ms = $9,
                     max_retries = $10, rate_limit = $11, rate_burst = $12, circuit_threshold = $13,
                     updated_at = GREATEST(updated_at + 1, $14)
                 WHERE id = $1",
            ),
            &endpoint,
        )
        .bind(endpoint.updated_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn set_endpoint_state(
        &self,
        id: EndpointId,
        enabled: bool,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // Enabling starts afresh: circuit closed, past failures forgotten. updated_at always
        // moves forward, so every worker notices the change.
        let updated = sqlx::query(
            "UPDATE endpoints SET enabled = $2, disabled_reason = $3, updated_at = GREATEST(updated_at + 1, $4),
                 circuit_state = CASE WHEN $2 THEN 'closed' ELSE circuit_state END,
                 circuit_changed_at = CASE WHEN $2 THEN NULL ELSE circuit_changed_at END,
                 consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END,
                 failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END
             WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(enabled)
        .bind(reason)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn delete_endpoint(&self, id: EndpointId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM deliveries WHERE endpoint_id = $1 AND status IN ('pending', 'dead')",
        )
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn sync_default_endpoint(
        &self,
        url: Option<EndpointUrl>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let id = EndpointId::default_endpoint();
        match DefaultEndpointSync::to_mirror(url) {
            DefaultEndpointSync::Mirror(url) => {
                sqlx::query(
                    "INSERT INTO endpoints AS p (id, url, description, managed_by_config, created_at, updated_at)
                     VALUES ($1, $2, $5, TRUE, $3, $3)
                     ON CONFLICT (id) DO UPDATE SET url = excluded.url, managed_by_config = TRUE,
                         updated_at = CASE WHEN p.url = excluded.url THEN p.updated_at ELSE excluded.updated_at END,
                         enabled = CASE WHEN p.disabled_reason = $4 THEN TRUE ELSE p.enabled END,
                         disabled_reason = CASE WHEN p.disabled_reason = $4 THEN NULL ELSE p.disabled_reason END",
                )
                .bind(id.as_str())
                .bind(url.as_str())
                .bind(now_ms)
                .bind(UNSET_REASON)
                .bind(DEFAULT_DESCRIPTION)
                .execute(&self.pool)
                .await?;
            }
            DefaultEndpointSync::Disable => {
                sqlx::query(
                    "UPDATE endpoints SET enabled = FALSE, disabled_reason = $2, updated_at = $3
                     WHERE id = $1 AND enabled",
                )
                .bind(id.as_str())
                .bind(UNSET_REASON)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeliverySummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' ORDER BY d.finished_at DESC, d.id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| summary_row(row).map(DeliverySummary::from))
            .collect::<Result<_, _>>()?)
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS}, e.payload FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let summary = summary_row(&row)?.into();
        let payload: &[u8] = row.try_get("payload")?;
        let payload = rows::payload_json(payload);
        let attempts = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = $1 ORDER BY id"
        ))
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut attempts_log = Vec::with_capacity(attempts.len());
        for row in attempts {
            attempts_log.push(AttemptView::from(AttemptRow {
                attempt_no: row.try_get("attempt_no")?,
                started_at: row.try_get("started_at")?,
                duration_ms: row.try_get("duration_ms")?,
                status_code: row.try_get("status_code")?,
                error_kind: row.try_get("error_kind")?,
                error_detail: row.try_get("error_detail")?,
                response_snippet: row.try_get("response_snippet")?,
                outcome: row.try_get("outcome")?,
            }));
        }
        Ok(Some(DeliveryDetail {
            summary,
            payload,
            attempts_log,
        }))
    }

    async fn replay(&self, which: Selection, now_ms: i64) -> Result<u64, StoreError> {
        let one = match &which {
            Selection::One(id) => Some(id.as_str().to_owned()),
            Selection::All => None,
        };
        let changed = sqlx::query(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,
                 lease_token = NULL, finished_at = NULL, updated_at = $1
             WHERE status = 'dead' AND ($2::text IS NULL OR id = $2)",
        )
        .bind(now_ms)
        .bind(one)
        .execute(&self.pool)
        .await?;
        if changed.rows_affected() > 0 {
            let _ = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WORK_CHANNEL)
                .bind(&self.schema)
                .execute(&self.pool)
                .await;
        }
        Ok(changed.rows_affected())
    }

    async fn purge(&self, which: Selection) -> Result<u64, StoreError> {
        let one = match &which {
            Selection::One(id) => Some(id.as_str().to_owned()),
            Selection::All => None,
        };
        let changed = sqlx::query(
            "DELETE FROM deliveries WHERE status = 'dead' AND ($1::text IS NULL OR id = $1)",
        )
        .bind(one)
        .execute(&self.pool)
        .await?;
        Ok(changed.rows_affected())
    }

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                    (SELECT COUNT(*) FROM deliveries WHERE status = 'dead'),
                    (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueCounts {
            pending: count(&row, 0)?,
            dead: count(&row, 1)?,
            oldest_pending_ms: row.try_get(2)?,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn window_totals(&self, since_ms: Option<i64>) -> Result<WindowTotals, StoreError> {
        let since = since_ms.map_or(i64::MIN, |ms| ms.div_euclid(60_000));
        let row = sqlx::query(
            "SELECT COALESCE(SUM(ingested), 0)::int8, COALESCE(SUM(duplicates), 0)::int8, COALESCE(SUM(attempts), 0)::int8,
                 COALESCE(SUM(successes), 0)::int8, COALESCE(SUM(failures), 0)::int8, COALESCE(SUM(throttled), 0)::int8,
                 COALESCE(SUM(retries), 0)::int8, COALESCE(SUM(delivered), 0)::int8, COALESCE(SUM(dead_lettered), 0)::int8,
                 COALESCE(SUM(duration_sum_ms), 0)::int8, COALESCE(SUM(latency_sum_ms), 0)::int8,
                 COALESCE(SUM(d0), 0)::int8, COALESCE(SUM(d1), 0)::int8, COALESCE(SUM(d2), 0)::int8, COALESCE(SUM(d3), 0)::int8,
                 COALESCE(SUM(d4), 0)::int8, COALESCE(SUM(d5), 0)::int8, COALESCE(SUM(d6), 0)::int8, COALESCE(SUM(d7), 0)::int8,
                 COALESCE(SUM(d8), 0)::int8, COALESCE(SUM(d9), 0)::int8, COALESCE(SUM(d10), 0)::int8, COALESCE(SUM(d11), 0)::int8
             FROM rollups WHERE minute >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let mut buckets = [0u64; 12];
        for (k, slot) in buckets.iter_mut().enumerate() {
            *slot = count(&row, 11 + k)?;
        }
        Ok(WindowTotals {
            ingested: count(&row, 0)?,
            duplicates: count(&row, 1)?,
            attempts: count(&row, 2)?,
            successes: count(&row, 3)?,
            failures: count(&row, 4)?,
            throttled: count(&row, 5)?,
            retries: count(&row, 6)?,
            delivered: count(&row, 7)?,
            dead_lettered: count(&row, 8)?,
            duration_sum_ms: count(&row, 9)?,
            latency_sum_ms: count(&row, 10)?,
            buckets,
        })
    }

    async fn active_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(alert_from_row).collect::<Result<_, _>>()?)
    }

    async fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY fired_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(alert_from_row).collect::<Result<_, _>>()?)
    }

    async fn apply_alerts(
        &self,
        fire: Vec<Condition>,
        resolve: Vec<i64>,
        now_ms: i64,
    ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let resolved = sqlx::query(&format!(
            "UPDATE alerts SET resolved_at = $2 WHERE id = ANY($1) AND resolved_at IS NULL
             RETURNING {ALERT_COLUMNS}"
        ))
        .bind(&resolve)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut fired = Vec::new();
        for condition in fire {
            // Another instance may have fired the same rule: the unique index keeps one.
            let alert = sqlx::query(&format!(
                "INSERT INTO alerts (rule, level, message, value, threshold, fired_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT DO NOTHING RETURNING {ALERT_COLUMNS}"
            ))
            .bind(&condition.rule)
            .bind(condition.level.as_str())
            .bind(&condition.message)
            .bind(condition.value)
            .bind(condition.threshold)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = alert {
                fired.push(alert_from_row(&row)?);
            }
        }
        tx.commit().await?;
        let mut resolved = resolved
            .iter()
            .map(alert_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        resolved.sort_by_key(|a| a.id);
        Ok((fired, resolved))
    }

    async fn unsent_alerts(&self, since_ms: i64) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
        let fired = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE notified_at IS NULL AND fired_at >= $1 ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let resolved = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts
             WHERE resolved_at IS NOT NULL AND resolve_notified_at IS NULL AND resolved_at >= $1 ORDER BY id"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            fired.iter().map(alert_from_row).collect::<Result<_, _>>()?,
            resolved
                .iter()
                .map(alert_from_row)
                .collect::<Result<_, _>>()?,
        ))
    }

    async fn mark_alerts_sent(
        &self,
        fired: Vec<i64>,
        resolved: Vec<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE alerts SET notified_at = $2 WHERE id = ANY($1)")
            .bind(&fired)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE alerts SET resolve_notified_at = $2 WHERE id = ANY($1)")
            .bind(&resolved)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        instance: String,
        started_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO heartbeats (instance, started_at, beat_at) VALUES ($1, $2, $3)
             ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at",
        )
        .bind(&instance)
        .bind(started_at_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        // Instances gone for a day are forgotten.
        sqlx::query("DELETE FROM heartbeats WHERE beat_at < $1")
            .bind(now_ms - 86_400_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_lead(
        &self,
        task: String,
        holder: String,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let held = retrying(|| {
            sqlx::query(LEAD_SQL)
                .bind(&task)
                .bind(&holder)
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .fetch_optional(&self.pool)
        })
        .await?;
        Ok(held.is_some())
    }

    async fn resign(&self, task: String, holder: String) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leader_leases WHERE task = $1 AND holder = $2")
            .bind(&task)
            .bind(&holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn latest_heartbeat(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT MAX(beat_at) FROM heartbeats")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn watch_work(&self, wake: Arc<Notify>) {
        tokio::spawn(forward_notifications(
            self.pool.clone(),
            self.schema.clone(),
            wake,
        ));
    }

    async fn session(&self, session_id: String) -> Result<Option<SessionStats>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
        ))
        .bind(&session_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(
                complete_session(&self.pool, session_from_row(&row)?).await?,
            )),
            None => Ok(None),
        }
    }

    async fn sessions(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionStats>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE last_seen >= $1 AND last_seen < $2
             ORDER BY last_seen DESC, session_id LIMIT $3"
        ))
        .bind(since_ms)
        .bind(until_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            sessions.push(complete_session(&self.pool, session_from_row(&row)?).await?);
        }
        Ok(sessions)
    }

    async fn analytics(&self, now_ms: i64, days: u32) -> Result<Analytics, StoreError> {
        // Whole UTC days, today included, as on SQLite: "7 days" is today and the six before.
        let first_day = now_ms.div_euclid(86_400_000) - i64::from(days) + 1;
        let since_ms = first_day * 86_400_000;
        let sessions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE last_seen >= $1")
                .bind(since_ms)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT model, SUM(queries)::int8, SUM(successes)::int8, SUM(tokens)::int8, SUM(response_time_sum_ms)::int8
             FROM usage_daily WHERE day >= $1 GROUP BY model ORDER BY SUM(tokens) DESC, model",
        )
        .bind(first_day)
        .fetch_all(&self.pool)
        .await?;
        let models = rows
            .iter()
            .map(|row| {
                Ok(ModelSums {
                    model: row.try_get(0)?,
                    queries: count(row, 1)?,
                    successes: count(row, 2)?,
                    tokens: count(row, 3)?,
                    response_time_sum_ms: count(row, 4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(delivered), 0)::int8, COALESCE(SUM(dead_lettered), 0)::int8,
                 COALESCE(SUM(attempts), 0)::int8
             FROM rollups WHERE minute >= $1",
        )
        .bind(since_ms.div_euclid(60_000))
        .fetch_one(&self.pool)
        .await?;
        Ok(shared::analytics(
            since_ms,
            days,
            sessions.unsigned_abs(),
            models,
            (count(&row, 0)?, count(&row, 1)?, count(&row, 2)?),
        ))
    }

    async fn cleanup(&self, cutoff_ms: i64, dry_run: bool) -> Result<CleanupReport, StoreError> {
        if dry_run {
            let row = sqlx::query(
                "WITH finished AS (
                     SELECT id FROM events e WHERE created_at < $1
                         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')),
                 doomed AS (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM finished))
                 SELECT (SELECT COUNT(*) FROM finished), (SELECT COUNT(*) FROM doomed),
                        (SELECT COUNT(*) FROM attempts WHERE delivery_id IN (SELECT id FROM doomed)),
                        (SELECT COUNT(*) FROM sessions WHERE last_seen < $1),
                        (SELECT COUNT(*) FROM alerts WHERE resolved_at < $1),
                        (SELECT COUNT(DISTINCT minute) FROM rollups WHERE minute < $2)",
            )
            .bind(cutoff_ms)
            .bind(cutoff_ms.div_euclid(60_000))
            .fetch_one(&self.pool)
            .await?;
            return Ok(CleanupReport {
                events: count(&row, 0)?,
                deliveries: count(&row, 1)?,
                attempts: count(&row, 2)?,
                sessions: count(&row, 3)?,
                alerts: count(&row, 4)?,
                rollups: count(&row, 5)?,
                dry_run: true,
            });
        }
        let mut report = CleanupReport::default();
        // Each batch starts where the last one stopped, so old events that must stay (pending,
        // dead-lettered) are walked past once per pass, not once per batch.
        let mut cursor = i64::MIN;
        loop {
            let (events, deliveries, attempts, last) =
                retrying(|| retention_batch(&self.pool, cutoff_ms, cursor)).await?;
            report.events += events;
            report.deliveries += deliveries;
            report.attempts += attempts;
            match last {
                Some(last) if events == RETENTION_BATCH => cursor = last,
                _ => break,
            }
        }
        loop {
            let removed = retrying(|| {
                sqlx::query(
                    "DELETE FROM sessions WHERE session_id IN
                     (SELECT session_id FROM sessions WHERE last_seen < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                )
                .bind(cutoff_ms)
                .bind(RETENTION_BATCH as i64)
                .execute(&self.pool)
            })
            .await?
            .rows_affected();
            report.sessions += removed;
            if removed < RETENTION_BATCH {
                break;
            }
        }
        // Deliveries whose endpoint is gone (an ingest that raced the endpoint's deletion):
        // nothing would ever claim them.
        report.deliveries += sqlx::query(
            "DELETE FROM deliveries d WHERE status IN ('pending', 'dead')
                 AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = d.endpoint_id)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        report.alerts = sqlx::query("DELETE FROM alerts WHERE resolved_at < $1")
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Minutes, as on SQLite, not the shards each minute is kept in.
        let removed: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM rollups WHERE minute < $1 RETURNING minute)
             SELECT COUNT(DISTINCT minute) FROM gone",
        )
        .bind(cutoff_ms.div_euclid(60_000))
        .fetch_one(&self.pool)
        .await?;
        report.rollups = removed.unsigned_abs();
        Ok(report)
    }

    async fn db_stats(&self) -> Result<DbStats, StoreError> {
        let page_size: i64 = sqlx::query_scalar("SELECT current_setting('block_size')::int8")
            .fetch_one(&self.pool)
            .await?;
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.relname::text, pg_total_relation_size(c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tables = Vec::with_capacity(sizes.len());
        for (name, bytes) in sizes {
            let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", quoted(&name)))
                .fetch_one(&self.pool)
                .await?;
            tables.push(TableStats {
                name,
                rows: rows.unsigned_abs(),
                bytes: bytes.unsigned_abs(),
            });
        }
        tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        let total: u64 = tables.iter().map(|t| t.bytes).sum();
        let schema_version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?;
        Ok(DbStats {
            backend: "postgres".into(),
            // The schema's share of the server's files; its log is the server's own business.
            file_bytes: total,
            wal_bytes: 0,
            page_size: page_size.unsigned_abs(),
            page_count: total / page_size.unsigned_abs().max(1),
            // PostgreSQL reuses freed space inside each table (VACUUM); nothing is "free" here.
            free_pages: 0,
            schema_version,
            tables,
        })
    }

    async fn maintain(&self, full: bool) -> Result<MaintenanceReport, StoreError> {
        // What the server knows of corrupt pages (counted when data checksums are on).
        let failures: Option<i64> = sqlx::query_scalar(
            "SELECT checksum_failures FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        let integrity = match failures.unwrap_or(0) {
            0 => vec!["ok".to_owned()],
            n => vec![format!("PostgreSQL has counted {n} page checksum failures")],
        };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        // VACUUM cannot run in a transaction; each table on its own keeps the locks short.
        // FULL rewrites each table under an exclusive lock: for quiet hours, as on SQLite.
        let verb = if full {
            "VACUUM (FULL, ANALYZE)"
        } else {
            "VACUUM (ANALYZE)"
        };
        vacuum(&self.pool, verb, &tables).await?;
        Ok(MaintenanceReport {
            integrity,
            free_pages_before: 0,
            free_pages_after: 0,
            vacuum: if full {
                "full".into()
            } else {
                "incremental".into()
            },
        })
    }

    async fn backup(&self, _path: std::path::PathBuf) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "`hookrelay backup` copies the SQLite file; back up a PostgreSQL database with pg_dump \
             (e.g. pg_dump --schema=SCHEMA DATABASE_URL)"
                .into(),
        ))
    }
}
