//! The one `impl Store` of each backend, written once. Rust allows a single `impl Store` per
//! type, and it cannot be spread over files; so it only delegates, each method to the inherent
//! method that backs it in the backend's file for that concern (`sqlite/queue.rs`,
//! `postgres/queue.rs`, …). Both backends name those methods alike: this list is where the
//! names are kept, and the compiler holds both backends to it.

/// `delegate_store!(Backend)` implements [`Store`](crate::store::Store) for `Backend` by
/// delegation. Items in braces after the type (`delegate_store!(Backend { async fn watch_work
/// … })`) go into the impl too, for methods whose default a backend replaces.
macro_rules! delegate_store {
    ($backend:ty $({ $($extra:tt)* })?) => {
        // A block of its own, so these imports stay out of the backend's module.
        const _: () = {
            use std::path::PathBuf;

            use $crate::{
                domain::{
                    Alert, Analytics, CleanupReport, Condition, DeliveryId, Endpoint, EndpointId,
                    EndpointUrl, SessionStats, WindowTotals,
                },
                store::{
                    AttemptRecord, ClaimedDelivery, DbStats, DeliveryDetail, DeliveryFilter, DeliveryPage,
                    DeliverySummary, EndpointActivity, HealthUpdate, InboundMessage, Ingested, LeaseToken,
                    MaintenanceReport, NewEvent, OnProgress, QueueCounts, Selection, Store, StoreError,
                },
            };

            #[async_trait::async_trait]
            impl Store for $backend {
                async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Ingested>, StoreError> {
                    self.store_events(None, events).await
                }

                async fn ingest_message(
                    &self,
                    message: InboundMessage,
                    now_ms: i64,
                    events: Vec<NewEvent>,
                ) -> Result<Vec<Ingested>, StoreError> {
                    self.store_events(Some((message, now_ms)), events).await
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
                    self.store_attempts(records, health, now_ms).await
                }

                async fn release(
                    &self,
                    leases: Vec<(DeliveryId, LeaseToken)>,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    self.release_leases(leases, now_ms).await
                }

                async fn next_due(
                    &self,
                    endpoints: Vec<EndpointId>,
                ) -> Result<Vec<(EndpointId, i64)>, StoreError> {
                    self.earliest_due(endpoints).await
                }

                async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
                    self.all_endpoints().await
                }

                async fn endpoint(&self, id: EndpointId) -> Result<Option<Endpoint>, StoreError> {
                    self.find_endpoint(id).await
                }

                async fn create_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
                    self.insert_endpoint(endpoint).await
                }

                async fn update_endpoint(&self, endpoint: Endpoint) -> Result<bool, StoreError> {
                    self.update_endpoint_settings(endpoint).await
                }

                async fn set_endpoint_state(
                    &self,
                    id: EndpointId,
                    enabled: bool,
                    reason: Option<String>,
                    now_ms: i64,
                ) -> Result<bool, StoreError> {
                    self.update_endpoint_state(id, enabled, reason, now_ms)
                        .await
                }

                async fn delete_endpoint(&self, id: EndpointId) -> Result<bool, StoreError> {
                    self.remove_endpoint(id).await
                }

                async fn record_default_signing(
                    &self,
                    fingerprint: Option<String>,
                ) -> Result<(), StoreError> {
                    self.set_default_signing(fingerprint).await
                }

                async fn sync_default_endpoint(
                    &self,
                    url: Option<EndpointUrl>,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    self.mirror_default_endpoint(url, now_ms).await
                }

                async fn dead_letters(&self, limit: usize) -> Result<Vec<DeliverySummary>, StoreError> {
                    self.list_dead_letters(limit).await
                }

                async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError> {
                    self.find_delivery(id).await
                }

                async fn replay(&self, which: Selection, now_ms: i64) -> Result<u64, StoreError> {
                    self.requeue_dead(which, now_ms).await
                }

                async fn replay_batch(
                    &self,
                    after: Option<DeliveryId>,
                    limit: usize,
                    now_ms: i64,
                ) -> Result<(u64, Option<DeliveryId>), StoreError> {
                    self.requeue_dead_batch(after, limit, now_ms).await
                }

                async fn purge(&self, which: Selection) -> Result<u64, StoreError> {
                    self.delete_dead(which).await
                }

                async fn search_deliveries(
                    &self,
                    filter: DeliveryFilter,
                    before: Option<DeliveryId>,
                    limit: usize,
                ) -> Result<DeliveryPage, StoreError> {
                    self.find_deliveries(filter, before, limit).await
                }

                async fn count_deliveries(&self, filter: DeliveryFilter) -> Result<u64, StoreError> {
                    self.count_matching(filter).await
                }

                async fn series(
                    &self,
                    since_ms: i64,
                    step_ms: i64,
                ) -> Result<Vec<(i64, WindowTotals)>, StoreError> {
                    self.rollup_series(since_ms, step_ms).await
                }

                async fn endpoint_activity(
                    &self,
                    since_ms: i64,
                    errors: usize,
                ) -> Result<Vec<EndpointActivity>, StoreError> {
                    self.activity_by_endpoint(since_ms, errors).await
                }

                async fn counts(&self) -> Result<QueueCounts, StoreError> {
                    self.queue_counts().await
                }

                async fn ping(&self) -> Result<(), StoreError> {
                    self.ping_database().await
                }

                async fn window_totals(&self, since_ms: Option<i64>) -> Result<WindowTotals, StoreError> {
                    self.sum_rollups(since_ms).await
                }

                async fn active_alerts(&self) -> Result<Vec<Alert>, StoreError> {
                    self.unresolved_alerts().await
                }

                async fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
                    self.latest_alerts(limit).await
                }

                async fn apply_alerts(
                    &self,
                    fire: Vec<Condition>,
                    resolve: Vec<i64>,
                    now_ms: i64,
                ) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
                    self.fire_and_resolve(fire, resolve, now_ms).await
                }

                async fn unsent_alerts(&self, since_ms: i64) -> Result<(Vec<Alert>, Vec<Alert>), StoreError> {
                    self.alerts_owed(since_ms).await
                }

                async fn mark_alerts_sent(
                    &self,
                    fired: Vec<i64>,
                    resolved: Vec<i64>,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    self.mark_notified(fired, resolved, now_ms).await
                }

                async fn heartbeat(
                    &self,
                    instance: String,
                    started_at_ms: i64,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    self.beat(instance, started_at_ms, now_ms).await
                }

                async fn sign_off(&self, instance: String) -> Result<(), StoreError> {
                    self.forget_heartbeat(instance).await
                }

                async fn try_lead(
                    &self,
                    task: String,
                    holder: String,
                    now_ms: i64,
                    ttl_ms: i64,
                ) -> Result<bool, StoreError> {
                    self.take_lease(task, holder, now_ms, ttl_ms).await
                }

                async fn resign(&self, task: String, holder: String) -> Result<(), StoreError> {
                    self.give_up_lease(task, holder).await
                }

                async fn latest_heartbeat(&self) -> Result<Option<i64>, StoreError> {
                    self.last_beat().await
                }

                async fn session(&self, session_id: String) -> Result<Option<SessionStats>, StoreError> {
                    self.find_session(session_id).await
                }

                async fn sessions(
                    &self,
                    since_ms: i64,
                    until_ms: i64,
                    limit: usize,
                ) -> Result<Vec<SessionStats>, StoreError> {
                    self.sessions_seen(since_ms, until_ms, limit).await
                }

                async fn analytics(&self, now_ms: i64, days: u32) -> Result<Analytics, StoreError> {
                    self.usage_summary(now_ms, days).await
                }

                async fn cleanup(
                    &self,
                    cutoff_ms: i64,
                    dry_run: bool,
                    progress: OnProgress,
                ) -> Result<CleanupReport, StoreError> {
                    self.remove_expired(cutoff_ms, dry_run, progress).await
                }

                async fn db_stats(&self) -> Result<DbStats, StoreError> {
                    self.stats().await
                }

                async fn maintain(
                    &self,
                    full: bool,
                    progress: OnProgress,
                ) -> Result<MaintenanceReport, StoreError> {
                    self.maintain_database(full, progress).await
                }

                async fn backup(&self, target: PathBuf, progress: OnProgress) -> Result<(), StoreError> {
                    self.copy_database(target, progress).await
                }

                $($($extra)*)?
            }
        };
    };
}

pub(super) use delegate_store;
