//! The storage conformance suite: every storage behaviour, run against SQLite and against
//! PostgreSQL (each test on a fresh database file or a fresh schema).
//!
//! A behaviour is an `async fn(Backend)`; `conformance!` makes one test per backend of it.

mod backends;
mod support;

mod alerts;
mod attempts;
mod dlq;
mod endpoints;
mod ingest;
mod leases;
mod maintenance;
mod metrics;
mod queue;
mod retention;
mod search;
mod sessions;

/// `conformance!(module::behaviour, …)`: a `sqlite` and a `postgres` test for each.
macro_rules! conformance {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    crate::$module::$name(crate::backends::sqlite().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(backend) = crate::backends::postgres().await {
                        crate::$module::$name(backend).await;
                    }
                }
            }
        )*
    };
}

conformance!(
    // ingest
    ingest::an_event_gets_a_pending_delivery_for_every_enabled_matching_endpoint,
    ingest::an_endpoint_whose_filter_excludes_the_type_gets_no_delivery,
    ingest::an_event_with_no_endpoint_is_stored_without_deliveries,
    ingest::a_disabled_endpoint_gets_no_new_deliveries,
    ingest::a_repeated_idempotency_key_returns_the_original_id_and_stores_nothing,
    ingest::duplicates_within_one_ingest_call_are_stored_once_and_answered_in_order,
    ingest::events_without_a_key_are_never_duplicates,
    ingest::a_key_seen_by_another_instance_is_a_duplicate,
    ingest::two_instances_storing_the_same_key_at_once_store_it_once,
    ingest::a_failed_ingest_stores_none_of_its_events,
    ingest::a_failed_ingest_does_not_disturb_concurrent_ones,
    ingest::a_message_id_is_accepted_once_until_it_expires,
    ingest::a_message_id_seen_by_another_instance_is_a_replay,
    ingest::replays_racing_each_other_store_one_and_leave_the_others_alone,
    ingest::expired_message_ids_are_swept_as_new_ones_arrive,
    ingest::a_key_reused_for_a_different_request_is_refused_and_stores_nothing,
    ingest::a_request_refused_for_its_key_does_not_use_up_its_message_id,
    // claims, leases, release, next_due, counts
    queue::a_claim_carries_the_event_intact,
    queue::a_release_waits_for_ingest_already_under_way,
    queue::a_claimed_delivery_is_not_claimed_again_while_leased,
    queue::a_retried_claim_takes_only_due_deliveries_attempted_before,
    queue::an_expired_lease_makes_the_delivery_claimable_again,
    queue::the_claim_limit_applies_to_each_endpoint,
    queue::the_longest_waiting_deliveries_are_claimed_first,
    queue::a_delivery_is_not_claimed_before_its_retry_time,
    queue::two_instances_claiming_at_once_never_share_a_delivery,
    queue::released_deliveries_are_due_at_once_without_spending_an_attempt,
    queue::a_release_under_a_stale_lease_does_nothing,
    queue::next_due_reports_the_earliest_due_time_per_endpoint,
    queue::counts_are_empty_on_a_new_store,
    queue::counts_report_pending_dead_and_the_oldest_pending_event,
    // recording attempts
    attempts::a_delivered_attempt_ends_the_delivery,
    attempts::a_retry_is_due_at_its_time_and_spends_the_retry_budget,
    attempts::a_throttled_attempt_does_not_spend_the_retry_budget,
    attempts::a_dead_letter_moves_the_delivery_to_the_dlq,
    attempts::a_stale_lease_cannot_overwrite_the_new_claim,
    attempts::a_stale_lease_cannot_overwrite_a_result_already_recorded,
    attempts::one_call_records_several_attempts,
    attempts::health_recorded_with_an_attempt_is_visible_on_the_endpoint,
    attempts::a_health_update_can_disable_the_endpoint,
    attempts::recording_an_attempt_for_a_removed_delivery_is_harmless,
    // dead-letter queue
    dlq::dead_letters_are_listed_newest_first_up_to_the_limit,
    dlq::replaying_one_dead_letter_requeues_it_with_a_fresh_budget,
    dlq::a_replayed_delivery_gets_a_fresh_allowance_of_429s,
    dlq::replaying_all_requeues_every_dead_letter,
    dlq::replaying_in_batches_walks_every_dead_letter_once_in_id_order,
    dlq::purging_one_dead_letter_deletes_only_it,
    dlq::purging_all_deletes_every_dead_letter,
    dlq::replaying_or_purging_work_that_is_not_dead_does_nothing,
    // the dashboard's reads: search, count, chosen replays and purges, series, endpoint activity
    search::each_filter_alone_narrows_the_search_and_the_count,
    search::filters_combine,
    search::paging_returns_every_delivery_once_newest_first,
    search::since_is_inclusive_and_until_exclusive,
    search::replaying_or_purging_ids_acts_only_on_dead_letters,
    search::replaying_or_purging_matching_acts_only_on_matching_dead_letters,
    search::matching_works_through_more_dead_letters_than_one_batch,
    search::series_buckets_sum_to_the_window_totals,
    search::endpoint_activity_counts_attempts_and_lists_the_latest_errors,
    // sessions and analytics
    sessions::usage_events_aggregate_per_session,
    sessions::events_without_usage_facts_aggregate_nothing,
    sessions::a_duplicate_usage_event_is_not_counted_again,
    sessions::a_sessions_webhook_counts_follow_its_deliveries,
    sessions::sessions_are_listed_most_recent_first_within_the_window,
    sessions::analytics_sums_usage_by_model_over_whole_days,
    sessions::analytics_of_an_empty_period_has_no_rates,
    sessions::concurrent_usage_from_two_instances_adds_up,
    // retention
    retention::a_dry_run_counts_without_deleting,
    retention::cleanup_removes_old_finished_work_and_reports_it,
    retention::cleanup_never_removes_pending_dead_or_newer_work,
    retention::cleanup_works_through_more_than_one_batch,
    // windowed metrics
    metrics::window_totals_count_ingests_and_duplicates_at_their_minute,
    metrics::window_totals_count_attempt_outcomes_and_durations,
    metrics::a_window_starting_after_older_activity_excludes_it,
    metrics::an_attempt_under_a_stale_lease_is_not_counted,
    metrics::attempts_recorded_by_two_instances_at_once_are_all_counted,
    // endpoints
    endpoints::an_endpoint_round_trips_every_setting,
    endpoints::creating_an_endpoint_twice_is_refused,
    endpoints::updating_settings_keeps_enabled_state_and_health,
    endpoints::enabling_an_endpoint_clears_what_its_gate_holds,
    endpoints::an_update_never_moves_updated_at_backwards,
    endpoints::disabling_and_enabling_an_endpoint,
    endpoints::an_endpoint_disabled_for_failing_continuously_keeps_queuing,
    endpoints::deleting_an_endpoint_removes_its_queue_but_keeps_delivered_history,
    endpoints::sync_default_endpoint_follows_the_configured_url,
    endpoints::restoring_the_default_url_does_not_enable_an_endpoint_an_operator_disabled,
    endpoints::endpoints_are_listed_with_ep_default_first,
    // alerts
    alerts::firing_a_rule_stores_an_active_alert,
    alerts::a_rule_already_active_is_not_fired_again,
    alerts::two_instances_firing_the_same_rule_at_once_store_one_alert,
    alerts::resolving_an_alert_ends_it,
    alerts::a_resolved_rule_can_fire_again,
    alerts::an_alert_escalates_by_resolving_and_firing_in_one_call,
    alerts::unsent_alerts_are_owed_until_marked_sent,
    alerts::unsent_alerts_older_than_the_horizon_are_not_owed,
    // heartbeats and leader leases
    leases::the_latest_heartbeat_is_the_most_recent_of_any_instance,
    leases::a_signed_off_instance_leaves_only_the_others_heartbeats,
    leases::the_first_holder_gets_the_lease_and_others_wait_for_it_to_expire,
    leases::leases_of_different_tasks_are_independent,
    leases::two_instances_racing_for_a_free_lease_get_one_holder,
);

conformance!(
    leases::a_resigned_lease_is_free_at_once_and_only_its_holder_can_resign,
    maintenance::stats_count_the_rows_of_each_table,
    maintenance::maintenance_checks_vacuums_and_keeps_every_row,
    endpoints::an_endpoint_deleted_by_another_instance_gets_no_new_deliveries,
    endpoints::an_endpoint_created_by_another_instance_gets_the_next_event,
);
