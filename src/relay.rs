//! [`Relay`]: the facade a Rust program embeds to record usage events and manage delivery.
//!
//! ```no_run
//! use hookrelay::{Config, Relay, domain::UsageEvent};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let (config, _warnings) = Config::from_env()?;
//! let relay = Relay::open(config).await?;
//! // Deliver in the background of this process.
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(relay.clone().run_worker(shutdown.clone()));
//!
//! let id = relay
//!     .track_usage(UsageEvent {
//!         session_id: "session_123".into(),
//!         query: "Test query".into(),
//!         model_name: "gpt-4o-mini".into(),
//!         response_time_ms: 1000,
//!         estimated_tokens: 100,
//!         success: true,
//!         user_agent: None,
//!     })
//!     .await?; // returns once the event is on disk
//! println!("stored {id}");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    config::{Config, DatabaseLocation},
    delivery::{HttpSender, Worker, WorkerSettings},
    domain::{
        DeliveryId, EndpointId, EventId, GenericEvent, IdempotencyKey, SigningSecret, UsageEvent,
        WindowTotals,
    },
    endpoints::{
        Endpoint, EndpointChanges, EndpointError, EndpointSpec, generate_secret, validate_secret,
    },
    ingest::{IngestError, Ingestor},
    store::{
        DeliveryDetail, DeliveryFilter, DeliveryPage, DeliverySummary, EndpointActivity,
        InboundMessage, Ingested, OnProgress, Progress, QueueCounts, Selection, Store, StoreError,
    },
};

/// Opening the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

struct Inner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ingestor: Ingestor,
    worker: Arc<Worker>,
    wake: Arc<Notify>,
    instance: String,
}

/// An open hookrelay: its store, ingest and delivery worker. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// Opens the configured database (creating and migrating it as needed) for a process that
    /// ingests and delivers: `ep_default` is made to mirror `ZAPIER_WEBHOOK_URL`.
    pub async fn open(config: Config) -> Result<Self, RelayError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Opens the database for management commands (`endpoints`, `dlq`, `send`): unlike
    /// [`Relay::open`] it leaves an existing `ep_default` as the serving process configured it,
    /// so a command run from a shell without `ZAPIER_WEBHOOK_URL` cannot disable it.
    pub async fn open_for_management(config: Config) -> Result<Self, RelayError> {
        Self::build(config, Arc::new(SystemClock), false).await
    }

    /// Like [`Relay::open`], with a clock of the caller's choosing (tests use a manual one).
    pub async fn open_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RelayError> {
        Self::build(config, clock, true).await
    }

    async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        sync_default: bool,
    ) -> Result<Self, RelayError> {
        let store =
            crate::store::open(&config.database.location, config.database.sqlite_sync).await?;
        // ep_default mirrors ZAPIER_WEBHOOK_URL; events queued for it while it is unset wait.
        // A management command only creates it on a fresh database, never changes it.
        let first_use = config.delivery.webhook_url.is_some()
            && store
                .endpoint(EndpointId::default_endpoint())
                .await?
                .is_none();
        // On a shared database, an instance without the URL (an API-only one, say) must not
        // disable ep_default for the whole cluster: only one that has it sets it.
        let shared = matches!(config.database.location, DatabaseLocation::Postgres(_));
        if first_use || (sync_default && (config.delivery.webhook_url.is_some() || !shared)) {
            if shared
                && let (Some(url), Some(stored)) = (
                    &config.delivery.webhook_url,
                    store.endpoint(EndpointId::default_endpoint()).await?,
                )
                && stored.url.as_str() != url.as_str()
            {
                tracing::warn!(
                    "ZAPIER_WEBHOOK_URL differs from the one stored by another instance; this instance's replaces it for all of them"
                );
            }
            store
                .sync_default_endpoint(config.delivery.webhook_url.clone(), clock.now_ms())
                .await?;
            store
                .record_default_signing(
                    config
                        .signing
                        .secret
                        .as_ref()
                        .map(SigningSecret::fingerprint),
                )
                .await?;
        }
        let wake = Arc::new(Notify::new());
        let policy = config.delivery.targets.clone();
        let sender = HttpSender::new(config.delivery.endpoint_concurrency, policy)
            .map_err(|e| RelayError::Client(e.to_string()))?;
        let ingestor = Ingestor::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&wake),
            config.ingest.query_mode,
        );
        // Names this process in claims, heartbeats and leader leases.
        let instance = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let settings = WorkerSettings {
            concurrency: config.delivery.concurrency,
            endpoint_concurrency: config.delivery.endpoint_concurrency,
            poll_interval: config.delivery.poll_interval,
            shutdown_grace: config.server.shutdown_grace,
            instance: instance.clone(),
        };
        let config = Arc::new(config);
        let worker = Arc::new(Worker::new(
            Arc::clone(&store),
            sender,
            Arc::clone(&clock),
            Arc::clone(&config),
            Arc::clone(&wake),
            settings,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                clock,
                ingestor,
                worker,
                wake,
                instance,
            }),
        })
    }

    /// This process's instance id (in claims, heartbeats and leader leases).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The clock this relay runs on.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.inner.clock)
    }

    /// The configuration this relay runs with.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The delivery worker (tests drive [`Worker::run_once`] directly).
    pub fn worker(&self) -> &Arc<Worker> {
        &self.inner.worker
    }

    /// Runs the delivery worker until `shutdown` is cancelled.
    pub async fn run_worker(self, shutdown: CancellationToken) {
        // Work queued by other instances sharing the database wakes this worker too.
        self.inner
            .store
            .watch_work(Arc::clone(&self.inner.wake))
            .await;
        Arc::clone(&self.inner.worker).run(shutdown).await;
    }

    /// Records one usage event; returns its id once it is durably stored.
    pub async fn track_usage(&self, event: UsageEvent) -> Result<EventId, IngestError> {
        let stored = self.inner.ingestor.usage(vec![event], None, None).await?;
        stored
            .into_iter()
            .next()
            .map(|s| s.id)
            .ok_or_else(|| IngestError::Store(StoreError::database("no result for a stored event")))
    }

    /// Records usage events all or nothing, deduplicated by `key` when given.
    pub async fn track_usage_batch(
        &self,
        events: Vec<UsageEvent>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<Ingested>, IngestError> {
        self.inner.ingestor.usage(events, key, None).await
    }

    /// [`Relay::track_usage_batch`] for a request carrying a sender's message id (a verified
    /// `webhook-id`): refused with [`IngestError::Replayed`] if that id was accepted before.
    pub async fn track_usage_message(
        &self,
        events: Vec<UsageEvent>,
        key: Option<IdempotencyKey>,
        message: Option<InboundMessage>,
    ) -> Result<Vec<Ingested>, IngestError> {
        self.inner.ingestor.usage(events, key, message).await
    }

    /// Records an event of any type.
    pub async fn publish(&self, event: GenericEvent) -> Result<Ingested, IngestError> {
        self.inner.ingestor.generic(event, None).await
    }

    /// [`Relay::publish`] for a request carrying a sender's message id: refused with
    /// [`IngestError::Replayed`] if that id was accepted before.
    pub async fn publish_message(
        &self,
        event: GenericEvent,
        message: Option<InboundMessage>,
    ) -> Result<Ingested, IngestError> {
        self.inner.ingestor.generic(event, message).await
    }

    /// Dead letters, newest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeliverySummary>, StoreError> {
        self.inner.store.dead_letters(limit).await
    }

    /// One delivery with its payload and attempts.
    pub async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError> {
        self.inner.store.delivery(id).await
    }

    /// Returns dead letters to the queue with a fresh retry budget (same `webhook-id`).
    pub async fn replay(&self, which: Selection) -> Result<u64, StoreError> {
        let replayed = self
            .inner
            .store
            .replay(which, self.inner.clock.now_ms())
            .await?;
        if replayed > 0 {
            self.inner.wake.notify_one();
        }
        Ok(replayed)
    }

    /// Returns every dead letter to the queue as [`Relay::replay`] does, in transactions of a
    /// thousand, so ingest and delivery go on meanwhile (one statement would hold the write
    /// lock for the whole queue); reports the count replayed against the queue's size, counted
    /// first when `progress` is watched. Returns how many.
    pub async fn replay_all_with_progress(&self, progress: OnProgress) -> Result<u64, StoreError> {
        const PHASE: &str = "replaying dead letters";
        const BATCH: usize = 1000;
        let total = if progress.is_watched() {
            Some(self.counts().await?.dead)
        } else {
            None
        };
        let report = |done: u64| {
            progress.report(Progress {
                phase: PHASE,
                done,
                // Letters that die meanwhile are replayed too: the end moves out.
                total: total.map(|t| t.max(done)),
            });
        };
        report(0);
        let mut replayed = 0;
        let mut after = None;
        loop {
            let (count, last) = self
                .inner
                .store
                .replay_batch(after, BATCH, self.inner.clock.now_ms())
                .await?;
            if count == 0 {
                break;
            }
            replayed += count;
            self.inner.wake.notify_one();
            report(replayed);
            after = last;
        }
        Ok(replayed)
    }

    /// Deletes dead letters and their attempt logs.
    pub async fn purge(&self, which: Selection) -> Result<u64, StoreError> {
        self.inner.store.purge(which).await
    }

    /// One page of the deliveries that match `filter`, newest first, older than `before` (the
    /// previous page's `next_before`); `limit` is at least 1 and at most
    /// [`MAX_PAGE`](crate::store::MAX_PAGE).
    pub async fn search_deliveries(
        &self,
        filter: DeliveryFilter,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        self.inner
            .store
            .search_deliveries(filter, before, limit)
            .await
    }

    /// How many deliveries match `filter`.
    pub async fn count_deliveries(&self, filter: DeliveryFilter) -> Result<u64, StoreError> {
        self.inner.store.count_deliveries(filter).await
    }

    /// The roll-ups from `since_ms` in buckets of `step_ms`, oldest first (see
    /// [`Store::series`](crate::store::Store::series)).
    pub async fn series(
        &self,
        since_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, WindowTotals)>, StoreError> {
        self.inner.store.series(since_ms, step_ms).await
    }

    /// Each endpoint's attempts since `since_ms`, with its `errors` latest failures.
    pub async fn endpoint_activity(
        &self,
        since_ms: i64,
        errors: usize,
    ) -> Result<Vec<EndpointActivity>, StoreError> {
        self.inner.store.endpoint_activity(since_ms, errors).await
    }

    /// Queue sizes.
    pub async fn counts(&self) -> Result<QueueCounts, StoreError> {
        self.inner.store.counts().await
    }

    /// Every endpoint, `ep_default` first.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.inner.store.endpoints().await
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: &EndpointId) -> Result<Endpoint, EndpointError> {
        self.inner
            .store
            .endpoint(id.clone())
            .await?
            .ok_or_else(|| EndpointError::NotFound(id.clone()))
    }

    /// Adds an endpoint; returns it with its signing secret, which is shown only this once.
    pub async fn create_endpoint(
        &self,
        spec: EndpointSpec,
    ) -> Result<(Endpoint, String), EndpointError> {
        let (endpoint, secret) = spec.build(&self.inner.config, self.inner.clock.now_ms())?;
        self.inner.store.create_endpoint(endpoint.clone()).await?;
        self.inner.worker.endpoints_changed();
        Ok((endpoint, secret))
    }

    /// Changes an endpoint's settings.
    pub async fn update_endpoint(
        &self,
        id: &EndpointId,
        changes: EndpointChanges,
    ) -> Result<Endpoint, EndpointError> {
        let current = self.endpoint(id).await?;
        if current.managed_by_config && changes.url.is_some() {
            return Err(EndpointError::ManagedByConfig(
                "ep_default follows ZAPIER_WEBHOOK_URL; change the variable instead",
            ));
        }
        let updated = changes.apply(current, &self.inner.config, self.inner.clock.now_ms())?;
        self.save(updated).await
    }

    /// Enables an endpoint (closing its circuit and forgetting past failures) or disables it
    /// with a reason. Disabled endpoints get no new events; their queued deliveries wait.
    pub async fn set_endpoint_enabled(
        &self,
        id: &EndpointId,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<Endpoint, EndpointError> {
        let reason = (!enabled).then(|| reason.unwrap_or_else(|| "disabled by an operator".into()));
        if !self
            .inner
            .store
            .set_endpoint_state(id.clone(), enabled, reason, self.inner.clock.now_ms())
            .await?
        {
            return Err(EndpointError::NotFound(id.clone()));
        }
        self.inner.worker.endpoints_changed();
        self.endpoint(id).await
    }

    /// Starts using a new signing secret (given, or generated); the old one keeps signing
    /// beside it for `overlap` (default `HOOKRELAY_SECRET_ROTATION_OVERLAP_HOURS`). Returns
    /// the endpoint and the new secret, shown only this once.
    pub async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: Option<String>,
        overlap: Option<std::time::Duration>,
    ) -> Result<(Endpoint, String), EndpointError> {
        let mut endpoint = self.endpoint(id).await?;
        if endpoint.managed_by_config {
            return Err(EndpointError::ManagedByConfig(
                "ep_default signs with WEBHOOK_SECRET; change the variable instead",
            ));
        }
        let secret = match secret {
            Some(secret) => {
                validate_secret(&secret)?;
                secret
            }
            None => generate_secret(),
        };
        let now = self.inner.clock.now_ms();
        let overlap = overlap.unwrap_or(self.inner.config.signing.rotation_overlap);
        endpoint.previous_secret = endpoint.secret.replace(secret.clone());
        endpoint.previous_secret_until_ms = Some(now + crate::clock::millis(overlap));
        endpoint.updated_at_ms = now;
        let endpoint = self.save(endpoint).await?;
        Ok((endpoint, secret))
    }

    /// Removes an endpoint with its undelivered and dead-lettered deliveries.
    pub async fn remove_endpoint(&self, id: &EndpointId) -> Result<(), EndpointError> {
        if !self.inner.store.delete_endpoint(id.clone()).await? {
            return Err(EndpointError::NotFound(id.clone()));
        }
        self.inner.worker.endpoints_changed();
        Ok(())
    }

    async fn save(&self, endpoint: Endpoint) -> Result<Endpoint, EndpointError> {
        if !self.inner.store.update_endpoint(endpoint.clone()).await? {
            return Err(EndpointError::NotFound(endpoint.id));
        }
        self.inner.worker.endpoints_changed();
        Ok(endpoint)
    }

    /// The status report: health verdict, windowed figures, alerts, queue, endpoints.
    /// `worker_alive` is known by a process that runs the worker; `None` judges by heartbeats.
    pub async fn report(&self, worker_alive: Option<bool>) -> crate::monitor::StatusReport {
        crate::monitor::report(
            self.inner.store.as_ref(),
            &self.inner.config,
            self.inner.clock.now_ms(),
            worker_alive,
        )
        .await
    }

    /// The status report as this serving process sees it: its own worker's liveness where it
    /// runs one; an API-only instance judges the workers by their heartbeats.
    pub async fn report_here(&self) -> crate::monitor::StatusReport {
        let alive = self
            .inner
            .config
            .server
            .role
            .delivers()
            .then(|| self.inner.worker.is_alive());
        self.report(alive).await
    }

    /// The latest alerts (fired and resolved), newest first.
    pub async fn recent_alerts(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::monitor::Alert>, StoreError> {
        self.inner.store.recent_alerts(limit).await
    }

    /// One session's aggregate: queries, successes, response times, tokens, models, and how
    /// its webhooks are doing.
    pub async fn session_stats(
        &self,
        session_id: &str,
    ) -> Result<Option<crate::domain::SessionStats>, StoreError> {
        self.inner.store.session(session_id.to_owned()).await
    }

    /// Sessions last seen in `[since_ms, until_ms)`, most recent first.
    pub async fn sessions(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::domain::SessionStats>, StoreError> {
        self.inner.store.sessions(since_ms, until_ms, limit).await
    }

    /// The analytics summary of the last `days` days.
    pub async fn analytics(&self, days: u32) -> Result<crate::domain::Analytics, StoreError> {
        self.inner
            .store
            .analytics(self.inner.clock.now_ms(), days)
            .await
    }

    /// Removes delivered events (with their deliveries and attempts), idle sessions, resolved
    /// alerts and roll-ups older than `days`; undelivered work and dead letters stay.
    pub async fn cleanup(
        &self,
        days: u32,
        dry_run: bool,
    ) -> Result<crate::domain::CleanupReport, StoreError> {
        self.cleanup_with_progress(days, dry_run, OnProgress::none())
            .await
    }

    /// [`Relay::cleanup`], reporting each batch to `progress`.
    pub async fn cleanup_with_progress(
        &self,
        days: u32,
        dry_run: bool,
        progress: OnProgress,
    ) -> Result<crate::domain::CleanupReport, StoreError> {
        let cutoff = self.inner.clock.now_ms() - i64::from(days) * 86_400_000;
        self.inner.store.cleanup(cutoff, dry_run, progress).await
    }

    /// Database sizes and counts.
    pub async fn db_stats(&self) -> Result<crate::store::DbStats, StoreError> {
        self.inner.store.db_stats().await
    }

    /// Integrity check, `ANALYZE`, vacuum.
    pub async fn maintain(
        &self,
        full: bool,
    ) -> Result<crate::store::MaintenanceReport, StoreError> {
        self.maintain_with_progress(full, OnProgress::none()).await
    }

    /// [`Relay::maintain`], reporting each phase (and the steps of those that have steps) to
    /// `progress`.
    pub async fn maintain_with_progress(
        &self,
        full: bool,
        progress: OnProgress,
    ) -> Result<crate::store::MaintenanceReport, StoreError> {
        self.inner.store.maintain(full, progress).await
    }

    /// A consistent copy of the database at `path`, taken while it is in use.
    pub async fn backup(&self, path: std::path::PathBuf) -> Result<(), StoreError> {
        self.backup_with_progress(path, OnProgress::none()).await
    }

    /// [`Relay::backup`], reporting the pages copied to `progress`.
    pub async fn backup_with_progress(
        &self,
        path: std::path::PathBuf,
        progress: OnProgress,
    ) -> Result<(), StoreError> {
        self.inner.store.backup(path, progress).await
    }

    /// Clears this instance's worker heartbeat after a clean stop.
    pub async fn sign_off(&self) -> Result<(), StoreError> {
        self.inner.store.sign_off(self.inner.instance.clone()).await
    }

    /// The monitor loop of a serving process (alerts, gauges, heartbeat).
    pub fn monitor(&self) -> Result<crate::monitor::Monitor, RelayError> {
        let policy = self.inner.config.delivery.targets.clone();
        let sender = HttpSender::new(1, policy).map_err(|e| RelayError::Client(e.to_string()))?;
        Ok(crate::monitor::Monitor::new(
            Arc::clone(&self.inner.store),
            Arc::clone(&self.inner.config),
            Arc::clone(&self.inner.clock),
            sender,
            self.inner.instance.clone(),
        ))
    }

    /// Whether the database answers and (when running) the worker goes round.
    pub async fn ready(&self) -> Result<Readiness, String> {
        let started = std::time::Instant::now();
        self.inner.store.ping().await.map_err(|e| {
            tracing::error!(error = %e, "readiness check: the database does not answer");
            "the database does not answer".to_owned()
        })?;
        let database_ms = started.elapsed().as_secs_f64() * 1000.0;
        // An API-only instance has no worker of its own; other instances deliver.
        let delivers = self.inner.config.server.role.delivers();
        if delivers && !self.inner.worker.is_alive() {
            return Err("the delivery worker is not running".into());
        }
        Ok(Readiness {
            instance: self.inner.instance.clone(),
            database_ms,
            worker: delivers,
        })
    }
}

/// What [`Relay::ready`] found: this instance can do its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    /// This instance's id (`pid-random`), as the cluster's heartbeats and claims name it.
    pub instance: String,
    /// How long the database took to answer, ms.
    pub database_ms: f64,
    /// Whether this instance runs a delivery worker (and it is alive).
    pub worker: bool,
}
