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
//!
//! This file connects (with migrations) and implements `Store` (through `delegate_store!`).
//! Group commit and retries are in `commit`, the cross-instance wake-ups in `notify`, and each
//! concern's SQL in a file of its own: `ingest`, `queue` (claims and attempt results), `dlq`,
//! `search` (deliveries by filter, endpoint activity), `endpoints`, `alerts` (with heartbeats
//! and leader leases), `aggregates` (roll-ups, series, sessions, analytics) and `maintenance`
//! (retention, statistics, vacuum).

mod aggregates;
mod alerts;
mod commit;
mod dlq;
mod endpoints;
mod gates;
mod ingest;
mod maintenance;
mod notify;
mod queue;
mod search;

use std::{sync::Arc, time::Duration};

use sqlx::{
    Executor, Row,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
};
use tokio::sync::{Notify, mpsc};

use self::{commit::Job, notify::announce_work, queue::Results};
use super::{
    Ingested, StoreError,
    shared::{Migration, pending_migrations},
};
use crate::config::PostgresSettings;

/// Versioned schema migrations, applied in order, each once.
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "schema",
        include_str!("../../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "inbound_messages",
        include_str!("../../../migrations/postgres/0002_inbound_messages.sql"),
    ),
    (
        3,
        "session_model_tokens",
        include_str!("../../../migrations/postgres/0003_session_model_tokens.sql"),
    ),
    (
        4,
        "duration_max",
        include_str!("../../../migrations/postgres/0004_duration_max.sql"),
    ),
    (
        5,
        "request_fingerprint",
        include_str!("../../../migrations/postgres/0005_request_fingerprint.sql"),
    ),
    (
        6,
        "endpoint_gates",
        include_str!("../../../migrations/postgres/0006_endpoint_gates.sql"),
    ),
    (
        7,
        "first_item_key",
        include_str!("../../../migrations/postgres/0007_first_item_key.sql"),
    ),
];

/// Serializes migrations across instances starting at once (any schema of the database).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;

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

/// hookrelay's data in a PostgreSQL schema.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    ingests: mpsc::Sender<Job<ingest::IngestJob, Result<Vec<Ingested>, StoreError>>>,
    results: mpsc::Sender<Job<Results, ()>>,
    handoff: Arc<crate::store::Handoff>,
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

/// Creates the schema if needed and applies the migrations it lacks, refusing one written by a
/// newer hookrelay.
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
    let pending = pending_migrations(MIGRATIONS, current)?;
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    for (version, name, sql) in pending {
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

/// A `COUNT` or `SUM` column as the count it is.
fn count(row: &PgRow, column: usize) -> Result<u64, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)?.unsigned_abs())
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
        let work_queued = Arc::new(Notify::new());
        tokio::spawn(announce_work(
            pool.clone(),
            settings.schema.clone(),
            Arc::clone(&work_queued),
        ));
        let handoff = crate::store::Handoff::new();
        let ingests = ingest::start_committers(&pool, &work_queued, &handoff);
        let results = queue::start_committers(&pool);
        Ok(Self {
            pool,
            schema: settings.schema.clone(),
            ingests,
            results,
            handoff,
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
}

// Rust allows one `impl Store` per type, and it cannot be spread over files: it only delegates
// to the inherent methods each concern's file defines (see `delegate_store!`).
super::delegate::delegate_store!(PgStore {
    fn handoff(&self) -> Option<Arc<crate::store::Handoff>> {
        Some(Arc::clone(&self.handoff))
    }

    async fn watch_work(&self, wake: Arc<Notify>) {
        self.forward_work_to(wake).await
    }

    async fn claim_gated(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wants: Vec<crate::store::GatedWant>,
    ) -> Result<crate::store::GatedClaim, StoreError> {
        self.claim_through_gates(now_ms, lease_ms, claimant, wants).await
    }

    async fn gates(&self) -> Result<Vec<(EndpointId, crate::domain::Gate)>, StoreError> {
        self.read_gates().await
    }

    async fn live_workers(
        &self,
        since_ms: i64,
        instance: String,
    ) -> Result<(usize, usize), StoreError> {
        self.count_live_workers(since_ms, instance).await
    }
});
