//! Counts gathered while a transaction runs and written once before it commits: the per-minute
//! roll-ups and the per-session, per-model and per-day usage aggregates. Shared by both stores.

use std::collections::BTreeMap;

use super::{AttemptRecord, NextState};
use crate::domain::{UsageFacts, bucket};

/// One minute's worth of counts, added to `rollups` in the same transaction as what it counts.
#[derive(Debug, Default)]
pub(super) struct Rollup {
    pub(super) ingested: i64,
    pub(super) duplicates: i64,
    pub(super) attempts: i64,
    pub(super) successes: i64,
    pub(super) failures: i64,
    pub(super) throttled: i64,
    pub(super) retries: i64,
    pub(super) delivered: i64,
    pub(super) dead_lettered: i64,
    pub(super) duration_sum_ms: i64,
    pub(super) latency_sum_ms: i64,
    pub(super) buckets: [i64; 12],
    /// The slowest attempt.
    pub(super) duration_max_ms: i64,
}

impl Rollup {
    pub(super) fn merge(&mut self, other: &Rollup) {
        self.ingested += other.ingested;
        self.duplicates += other.duplicates;
        self.attempts += other.attempts;
        self.successes += other.successes;
        self.failures += other.failures;
        self.throttled += other.throttled;
        self.retries += other.retries;
        self.delivered += other.delivered;
        self.dead_lettered += other.dead_lettered;
        self.duration_sum_ms += other.duration_sum_ms;
        self.latency_sum_ms += other.latency_sum_ms;
        self.duration_max_ms = self.duration_max_ms.max(other.duration_max_ms);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }

    pub(super) fn count(&mut self, record: &AttemptRecord) {
        match record.next {
            NextState::Throttled(_) => {
                self.throttled += 1;
                return;
            }
            NextState::Delivered => {
                self.successes += 1;
                self.delivered += 1;
                self.latency_sum_ms += record.latency_ms.max(0);
            }
            NextState::RetryAt(_) => {
                self.failures += 1;
                self.retries += 1;
            }
            NextState::DeadLetter => {
                self.failures += 1;
                self.dead_lettered += 1;
            }
        }
        self.attempts += 1;
        self.duration_sum_ms += record.duration_ms.max(0);
        self.duration_max_ms = self.duration_max_ms.max(record.duration_ms);
        self.buckets[bucket(record.duration_ms)] += 1;
    }
}

/// One session's counts within a group commit.
#[derive(Debug, Default)]
pub(super) struct SessionDelta {
    pub(super) first_seen: i64,
    pub(super) last_seen: i64,
    pub(super) queries: i64,
    pub(super) successes: i64,
    pub(super) failures: i64,
    pub(super) response_time_sum_ms: i64,
    pub(super) tokens: i64,
}

/// One model's counts for one day within a group commit.
#[derive(Debug, Default)]
pub(super) struct DailyDelta {
    pub(super) queries: i64,
    pub(super) successes: i64,
    pub(super) tokens: i64,
    pub(super) response_time_sum_ms: i64,
}

/// Counts gathered from every job of one group commit and written once, just before its
/// COMMIT: one upsert per session, model, day and minute, instead of four per event. Jobs add
/// to it only when all their statements succeeded; a failed group discards it.
#[derive(Debug, Default)]
pub(super) struct Aggregates {
    pub(super) rollups: BTreeMap<i64, Rollup>,
    pub(super) sessions: BTreeMap<String, SessionDelta>,
    /// (queries, tokens) per session and model.
    pub(super) session_models: BTreeMap<(String, String), (i64, i64)>,
    pub(super) daily: BTreeMap<(i64, String), DailyDelta>,
}

impl Aggregates {
    pub(super) fn add_rollup(&mut self, minute: i64, rollup: &Rollup) {
        self.rollups.entry(minute).or_default().merge(rollup);
    }

    pub(super) fn add_usage(&mut self, usage: &UsageFacts, at_ms: i64) {
        let (ok, failed) = if usage.success { (1, 0) } else { (0, 1) };
        let session = self
            .sessions
            .entry(usage.session_id.clone())
            .or_insert_with(|| SessionDelta {
                first_seen: at_ms,
                last_seen: at_ms,
                ..SessionDelta::default()
            });
        session.first_seen = session.first_seen.min(at_ms);
        session.last_seen = session.last_seen.max(at_ms);
        session.queries += 1;
        session.successes += ok;
        session.failures += failed;
        session.response_time_sum_ms += usage.response_time_ms as i64;
        session.tokens += usage.tokens as i64;
        let model = self
            .session_models
            .entry((usage.session_id.clone(), usage.model.clone()))
            .or_default();
        model.0 += 1;
        model.1 += usage.tokens as i64;
        let day = self
            .daily
            .entry((at_ms.div_euclid(86_400_000), usage.model.clone()))
            .or_default();
        day.queries += 1;
        day.successes += ok;
        day.tokens += usage.tokens as i64;
        day.response_time_sum_ms += usage.response_time_ms as i64;
    }
}
