//! Waking workers on every instance: `LISTEN`/`NOTIFY` on one channel, the payload naming the
//! schema, so that an idle worker starts as soon as any instance queues work.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;

use super::PgStore;

/// Shortest gap between two announcements of queued work to the other instances.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(20);

/// The notification channel that tells workers on every instance that work was queued; the
/// payload is the schema, so deployments sharing a database do not wake each other.
pub(super) const WORK_CHANNEL: &str = "hookrelay_work";

impl PgStore {
    /// Backs `Store::watch_work`.
    pub(super) async fn forward_work_to(&self, wake: Arc<Notify>) {
        tokio::spawn(forward_notifications(
            self.pool.clone(),
            self.schema.clone(),
            wake,
        ));
    }
}

/// Tells every instance's worker that work was queued, at most once per `ANNOUNCE_EVERY`.
/// Outside the ingest transactions: a transaction that notifies holds a server-wide lock
/// through its commit, which would serialize every instance's ingest commits.
pub(super) async fn announce_work(pool: PgPool, schema: String, work_queued: Arc<Notify>) {
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
