//! Observability: windowed figures from per-minute roll-ups, Prometheus metrics, alert rules
//! and their lifecycle (stored transitions, coalesced notifications), the health verdict, and
//! the status report the CLI and `GET /api/v1/health` show.
//!
//! Everything a report needs is in the database, so `hookrelay status` and `hookrelay health`
//! answer from the CLI while the server is down.

mod alerts;
mod health;
mod notify;

use std::{path::Path, sync::Arc, time::Duration};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::{
    alerts::{FAILING_CONTINUOUSLY_MS, Snapshot, evaluate, transitions},
    health::{Health, HealthStatus, Observations, STALLED_AFTER_MS, verdict},
    notify::{Changes, payload as alert_payload},
};
pub use crate::domain::{
    Alert, AlertLevel, BUCKETS_MS, Condition, WindowStats, WindowTotals, bucket, percentile,
};
use crate::{
    clock::Clock,
    config::Config,
    delivery::HttpSender,
    domain::{CircuitState, EndpointView},
    store::{OnProgress, QueueCounts, Store, StoreError},
};

/// Windowed figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Windows {
    /// The last hour.
    pub last_hour: WindowStats,
    /// The last 24 hours.
    pub last_day: WindowStats,
    /// Since the data began (or the last retention pass).
    pub all_time: WindowStats,
}

/// The guide's `metrics` block, with its field names.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GuideMetrics {
    /// Attempt success rate over the last hour (null without attempts).
    pub success_rate_1hour: Option<f64>,
    /// All-time attempt success rate.
    pub success_rate: Option<f64>,
    /// All-time attempts.
    pub total_sent: u64,
    /// Average attempt duration over the last hour.
    pub avg_response_time_ms: Option<f64>,
    /// 95th percentile attempt duration over the last hour.
    pub p95_response_time_ms: Option<f64>,
}

/// Active and recent alerts, with the guide's field names.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AlertsBlock {
    /// Counts of active alerts.
    pub alert_counts: AlertCounts,
    /// Active alerts: the conditions holding now.
    pub active_alerts: Vec<Condition>,
}

/// Counts of active alerts.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct AlertCounts {
    /// All of them.
    pub total: usize,
    /// Warnings.
    pub warning: usize,
    /// Critical ones.
    pub critical: usize,
}

/// The queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueBlock {
    /// Deliveries waiting for an attempt.
    pub pending: u64,
    /// Deliveries in the dead-letter queue.
    pub dead_letters: u64,
    /// Age of the oldest undelivered event, seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// How long the earliest due delivery has waited past its due time, seconds.
    pub overdue_seconds: Option<f64>,
}

/// Everything `status`, `health`, `metrics` and `GET /api/v1/health` show. Its JSON shape is
/// documented in the README.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// The verdict.
    pub health: Health,
    /// The guide's figures.
    pub metrics: GuideMetrics,
    /// Alerts.
    pub alerts: AlertsBlock,
    /// Windowed figures.
    pub windows: Windows,
    /// The queue.
    pub queue: QueueBlock,
    /// Endpoints.
    pub endpoints: Vec<EndpointView>,
    /// Whether a delivery worker reported in recently.
    pub worker_alive: bool,
    /// When the report was made, unix ms.
    pub generated_at_ms: i64,
}

/// Free disk space at `path`, percent.
pub fn disk_free_percent(path: &Path) -> Option<f64> {
    let probe = if path.exists() { path } else { path.parent()? };
    let stats = rustix::fs::statvfs(probe).ok()?;
    (stats.f_blocks > 0).then(|| stats.f_bavail as f64 / stats.f_blocks as f64 * 100.0)
}

/// A worker that has not reported for this long is taken for dead.
pub fn heartbeat_stale_after(config: &Config) -> Duration {
    config.monitor.alert_interval.min(Duration::from_secs(5)) * 3 + Duration::from_secs(10)
}

async fn gather(
    store: &dyn Store,
    now: i64,
) -> Result<
    (
        Windows,
        QueueCounts,
        Vec<crate::domain::Endpoint>,
        Option<i64>,
    ),
    StoreError,
> {
    let last_hour = store.window_totals(Some(now - 3_600_000)).await?.stats();
    let last_day = store.window_totals(Some(now - 86_400_000)).await?.stats();
    let all_time = store.window_totals(None).await?.stats();
    let counts = store.counts().await?;
    let endpoints = store.endpoints().await?;
    let enabled: Vec<_> = endpoints
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.id.clone())
        .collect();
    let earliest_due = store
        .next_due(enabled)
        .await?
        .into_iter()
        .map(|(_, at)| at)
        .min();
    Ok((
        Windows {
            last_hour,
            last_day,
            all_time,
        },
        counts,
        endpoints,
        earliest_due,
    ))
}

/// Builds the report from the database. `worker_alive` overrides the heartbeat check when the
/// caller runs the worker itself.
pub async fn report(
    store: &dyn Store,
    config: &Config,
    now: i64,
    worker_alive: Option<bool>,
) -> StatusReport {
    // With PostgreSQL the database's disk is the server's to watch; ours holds the logs.
    let data_path = match &config.database.location {
        crate::config::DatabaseLocation::Sqlite(path) => path.clone(),
        crate::config::DatabaseLocation::Postgres(_) => config.database.data_dir.clone(),
    };
    let disk_free = disk_free_percent(&data_path);
    let observations = Observations {
        disk_free_percent: disk_free,
        disk_warning_percent: config.monitor.disk_warning_percent,
        disk_critical_percent: config.monitor.disk_critical_percent,
        ..Observations::default()
    };
    let gathered = gather(store, now).await;
    let heartbeat = store.latest_heartbeat().await.ok().flatten();
    let worker_alive = worker_alive.unwrap_or_else(|| {
        heartbeat
            .is_some_and(|beat| now - beat < crate::clock::millis(heartbeat_stale_after(config)))
    });
    match gathered {
        Ok((windows, counts, endpoints, earliest_due)) => {
            let snapshot = Snapshot {
                hour: windows.last_hour,
                dead_letters: counts.dead,
                endpoints: endpoints
                    .iter()
                    .filter(|e| e.enabled)
                    .map(|e| (e.id.clone(), e.health))
                    .collect(),
                now_ms: now,
            };
            let conditions = evaluate(&snapshot, &config.monitor.thresholds);
            let overdue_ms = earliest_due.map(|due| now - due).filter(|ms| *ms > 0);
            let health = verdict(&Observations {
                conditions: conditions.clone(),
                overdue_ms,
                worker_alive,
                ..observations
            });
            let warning = conditions
                .iter()
                .filter(|c| c.level == AlertLevel::Warning)
                .count();
            StatusReport {
                health,
                metrics: GuideMetrics {
                    success_rate_1hour: windows.last_hour.success_rate,
                    success_rate: windows.all_time.success_rate,
                    total_sent: windows.all_time.attempts,
                    avg_response_time_ms: windows.last_hour.avg_response_time_ms,
                    p95_response_time_ms: windows.last_hour.p95_response_time_ms,
                },
                alerts: AlertsBlock {
                    alert_counts: AlertCounts {
                        total: conditions.len(),
                        warning,
                        critical: conditions.len() - warning,
                    },
                    active_alerts: conditions,
                },
                windows,
                queue: QueueBlock {
                    pending: counts.pending,
                    dead_letters: counts.dead,
                    oldest_pending_age_seconds: counts
                        .oldest_pending_ms
                        .map(|at| (now - at).max(0) as f64 / 1000.0),
                    overdue_seconds: overdue_ms.map(|ms| ms as f64 / 1000.0),
                },
                endpoints: endpoints.iter().map(|e| e.view()).collect(),
                worker_alive,
                generated_at_ms: now,
            }
        }
        Err(error) => {
            let empty = WindowTotals::default().stats();
            StatusReport {
                health: verdict(&Observations {
                    database_error: Some(error.to_string()),
                    worker_alive,
                    ..observations
                }),
                metrics: GuideMetrics {
                    success_rate_1hour: None,
                    success_rate: None,
                    total_sent: 0,
                    avg_response_time_ms: None,
                    p95_response_time_ms: None,
                },
                alerts: AlertsBlock {
                    alert_counts: AlertCounts {
                        total: 0,
                        warning: 0,
                        critical: 0,
                    },
                    active_alerts: Vec::new(),
                },
                windows: Windows {
                    last_hour: empty,
                    last_day: empty,
                    all_time: empty,
                },
                queue: QueueBlock {
                    pending: 0,
                    dead_letters: 0,
                    oldest_pending_age_seconds: None,
                    overdue_seconds: None,
                },
                endpoints: Vec::new(),
                worker_alive,
                generated_at_ms: now,
            }
        }
    }
}

async fn run_retention(
    store: &dyn Store,
    config: &Config,
    clock: &dyn Clock,
) -> Result<crate::domain::CleanupReport, StoreError> {
    let cutoff = clock.now_ms() - i64::from(config.database.retention_days) * 86_400_000;
    let report = store.cleanup(cutoff, false, OnProgress::none()).await?;
    info!(
        events = report.events,
        attempts = report.attempts,
        sessions = report.sessions,
        alerts = report.alerts,
        days = config.database.retention_days,
        "retention pass finished"
    );
    Ok(report)
}

/// The lease that makes one instance evaluate alerts and run retention.
const LEADER_TASK: &str = "monitor";
/// The lease lasts this many ticks: a leader renews every tick, so only a dead (or badly
/// stalled) one loses it; with the default 5 s tick another instance takes over within 30 s.
const LEADER_LEASE_TICKS: i64 = 6;

/// The background loop of a serving process: keeps gauges fresh, reports the worker alive,
/// evaluates alert rules and sends their transitions.
pub struct Monitor {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    sender: HttpSender,
    instance: String,
    started_at_ms: i64,
}

impl Monitor {
    /// A monitor for one serving process.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        sender: HttpSender,
        instance: String,
    ) -> Self {
        let started_at_ms = clock.now_ms();
        Self {
            instance,
            store,
            config,
            clock,
            sender,
            started_at_ms,
        }
    }

    /// Sets the gauges from the database.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let counts = self.store.counts().await?;
        crate::metrics::queue(
            counts.pending,
            counts.dead,
            counts
                .oldest_pending_ms
                .map(|at| (now - at).max(0) as f64 / 1000.0),
        );
        for endpoint in self.store.endpoints().await? {
            crate::metrics::endpoint(
                endpoint.id.as_str(),
                endpoint.enabled,
                endpoint.health.circuit != CircuitState::Closed,
                endpoint.health.consecutive_failures,
            );
        }
        Ok(())
    }

    /// One alert evaluation: fires and resolves, and sends what changed (one message).
    pub async fn evaluate_alerts(&self) -> Result<Changes, StoreError> {
        let now = self.clock.now_ms();
        let hour = self
            .store
            .window_totals(Some(now - 3_600_000))
            .await?
            .stats();
        let counts = self.store.counts().await?;
        let endpoints = self.store.endpoints().await?;
        let snapshot = Snapshot {
            hour,
            dead_letters: counts.dead,
            endpoints: endpoints
                .iter()
                .filter(|e| e.enabled)
                .map(|e| (e.id.clone(), e.health))
                .collect(),
            now_ms: now,
        };
        let desired = evaluate(&snapshot, &self.config.monitor.thresholds);
        let active = self.store.active_alerts().await?;
        let (fire, resolve) = transitions(&active, &desired);
        if fire.is_empty() && resolve.is_empty() {
            crate::metrics::alerts(
                active
                    .iter()
                    .filter(|a| a.level == AlertLevel::Warning)
                    .count(),
                active
                    .iter()
                    .filter(|a| a.level == AlertLevel::Critical)
                    .count(),
            );
            self.notify_unsent().await;
            return Ok(Changes::default());
        }
        let (fired, resolved) = self.store.apply_alerts(fire, resolve, now).await?;
        for alert in &fired {
            warn!(rule = alert.rule, level = %alert.level, "alert fired: {}", alert.message);
        }
        for alert in &resolved {
            info!(rule = alert.rule, "alert resolved: {}", alert.message);
        }
        let still = self.store.active_alerts().await?;
        crate::metrics::alerts(
            still
                .iter()
                .filter(|a| a.level == AlertLevel::Warning)
                .count(),
            still
                .iter()
                .filter(|a| a.level == AlertLevel::Critical)
                .count(),
        );
        let changes = Changes { fired, resolved };
        self.notify_unsent().await;
        Ok(changes)
    }

    /// Sends every firing and resolution no notification has carried yet, as one message; a
    /// failed send is retried at the next evaluation, so a transition is not lost to a passing
    /// outage of the alert webhook (the last day's keep being tried).
    async fn notify_unsent(&self) {
        let Some(url) = &self.config.monitor.alert_webhook_url else {
            return;
        };
        let now = self.clock.now_ms();
        let (fired, resolved) = match self.store.unsent_alerts(now - 86_400_000).await {
            Ok(unsent) => unsent,
            Err(e) => {
                warn!(error = %e, "could not read unsent alerts");
                return;
            }
        };
        let changes = Changes { fired, resolved };
        if changes.is_empty() {
            return;
        }
        match notify::send(&self.sender, url, &changes).await {
            Ok(()) => {
                info!(
                    fired = changes.fired.len(),
                    resolved = changes.resolved.len(),
                    "alert notification sent"
                );
                let fired = changes.fired.iter().map(|a| a.id).collect();
                let resolved = changes.resolved.iter().map(|a| a.id).collect();
                if let Err(e) = self.store.mark_alerts_sent(fired, resolved, now).await {
                    warn!(error = %e, "could not record the alert notification; it may be sent again");
                }
            }
            Err(e) => {
                warn!(error = %e, "alert notification failed; retrying at the next evaluation")
            }
        }
    }

    /// One retention pass with `HOOKRELAY_RETENTION_DAYS`.
    pub async fn retention(&self) -> Result<crate::domain::CleanupReport, StoreError> {
        run_retention(self.store.as_ref(), &self.config, self.clock.as_ref()).await
    }

    /// Runs until `shutdown`: gauges and heartbeat every few seconds, alerts every interval,
    /// retention every hour (the first a minute after start).
    pub async fn run(
        self,
        worker_alive: impl Fn() -> bool + Send + 'static,
        shutdown: CancellationToken,
    ) {
        let tick = self
            .config
            .monitor
            .alert_interval
            .min(Duration::from_secs(5));
        let mut next_evaluation = self.clock.now_ms();
        let mut next_retention = self.clock.now_ms() + 60_000;
        let mut retention: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            // Alerts and retention are the cluster's, not this process's: with several
            // instances on one database only the holder of the lease runs them. A holder that
            // dies stops renewing, and another takes over once the lease lapses.
            let leading = match self
                .store
                .try_lead(
                    LEADER_TASK.into(),
                    self.instance.clone(),
                    self.clock.now_ms(),
                    crate::clock::millis(tick) * LEADER_LEASE_TICKS,
                )
                .await
            {
                Ok(leading) => leading,
                Err(e) => {
                    warn!(error = %e, "could not renew the monitor lease; skipping alerts and retention this round");
                    false
                }
            };
            // Retention runs in its own task: a long pass must not stop the heartbeat (which
            // `restore` relies on) or the alerts.
            if leading
                && self.clock.now_ms() >= next_retention
                && retention.as_ref().is_none_or(|task| task.is_finished())
            {
                let (store, config, clock) = (
                    Arc::clone(&self.store),
                    Arc::clone(&self.config),
                    Arc::clone(&self.clock),
                );
                retention = Some(tokio::spawn(async move {
                    if let Err(e) = run_retention(store.as_ref(), &config, clock.as_ref()).await {
                        warn!(error = %e, "retention pass failed");
                    }
                }));
                next_retention = self.clock.now_ms() + 3_600_000;
            }
            if worker_alive()
                && let Err(e) = self
                    .store
                    .heartbeat(
                        self.instance.clone(),
                        self.started_at_ms,
                        self.clock.now_ms(),
                    )
                    .await
            {
                warn!(error = %e, "could not record the worker heartbeat");
            }
            if let Err(e) = self.refresh_gauges().await {
                warn!(error = %e, "could not refresh the metrics gauges");
            }
            if leading && self.clock.now_ms() >= next_evaluation {
                if let Err(e) = self.evaluate_alerts().await {
                    warn!(error = %e, "alert evaluation failed");
                }
                next_evaluation =
                    self.clock.now_ms() + crate::clock::millis(self.config.monitor.alert_interval);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
        // A rolling restart should not leave alerts unwatched until the lease lapses.
        if let Err(e) = self
            .store
            .resign(LEADER_TASK.into(), self.instance.clone())
            .await
        {
            warn!(error = %e, "could not give up the monitor lease; another instance takes it when it lapses");
        }
    }
}
