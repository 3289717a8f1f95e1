//! Windowed delivery figures from the per-minute roll-ups.

use serde::Serialize;

/// Upper bounds of the attempt-duration buckets, in ms; a last bucket holds the rest.
pub const BUCKETS_MS: [f64; 11] = [
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// The bucket an attempt of `duration_ms` falls in.
pub fn bucket(duration_ms: i64) -> usize {
    BUCKETS_MS
        .iter()
        .position(|bound| duration_ms as f64 <= *bound)
        .unwrap_or(BUCKETS_MS.len())
}

/// Sums over a window of roll-ups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowTotals {
    /// Events accepted.
    pub ingested: u64,
    /// Requests answered as duplicates.
    pub duplicates: u64,
    /// Attempts, excluding throttled ones.
    pub attempts: u64,
    /// Successful attempts.
    pub successes: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Attempts answered 429 or sent back by a circuit probe.
    pub throttled: u64,
    /// Failed attempts that were rescheduled.
    pub retries: u64,
    /// Deliveries that ended delivered.
    pub delivered: u64,
    /// Deliveries that ended in the dead-letter queue.
    pub dead_lettered: u64,
    /// Total attempt time.
    pub duration_sum_ms: u64,
    /// Total ingest-to-delivery time of delivered ones.
    pub latency_sum_ms: u64,
    /// Attempts per duration bucket.
    pub buckets: [u64; 12],
    /// The slowest attempt.
    pub duration_max_ms: u64,
}

/// The figures people and alert rules read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowStats {
    /// Attempts (excluding throttled).
    pub attempts: u64,
    /// Share of attempts that succeeded, if there were any.
    pub success_rate: Option<f64>,
    /// Share of finished deliveries that were dead-lettered.
    pub error_rate: Option<f64>,
    /// Mean attempt duration.
    pub avg_response_time_ms: Option<f64>,
    /// 95th percentile of attempt duration, estimated from the duration buckets: linear within
    /// the bucket it falls in, and never above the slowest attempt.
    pub p95_response_time_ms: Option<f64>,
    /// Mean ingest-to-delivery time.
    pub avg_delivery_latency_ms: Option<f64>,
    /// Share of ingest requests that were duplicates.
    pub duplicate_rate: Option<f64>,
    /// Raw sums.
    pub totals: WindowTotals,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// A percentile from bucket counts, interpolated linearly inside the bucket, and at most
/// `max` (the slowest observation) when it is known.
pub fn percentile(buckets: &[u64; 12], p: f64, max: Option<u64>) -> Option<f64> {
    let estimate = bucket_percentile(buckets, p)?;
    Some(max.map_or(estimate, |max| estimate.min(max as f64)))
}

fn bucket_percentile(buckets: &[u64; 12], p: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = p * total as f64;
    let mut seen = 0u64;
    for (index, count) in buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let low = if index == 0 {
                0.0
            } else {
                BUCKETS_MS[index - 1]
            };
            let high = BUCKETS_MS.get(index).copied().unwrap_or(low * 2.0);
            let within = ((rank - seen as f64) / *count as f64).clamp(0.0, 1.0);
            return Some(low + (high - low) * within);
        }
        seen += count;
    }
    Some(BUCKETS_MS[BUCKETS_MS.len() - 1] * 2.0)
}

impl WindowTotals {
    /// The totals of two periods together.
    pub fn merged(mut self, other: &Self) -> Self {
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
        for (sum, add) in self.buckets.iter_mut().zip(other.buckets) {
            *sum += add;
        }
        self.duration_max_ms = self.duration_max_ms.max(other.duration_max_ms);
        self
    }

    /// The derived figures.
    pub fn stats(self) -> WindowStats {
        WindowStats {
            attempts: self.attempts,
            success_rate: ratio(self.successes, self.attempts),
            error_rate: ratio(self.dead_lettered, self.delivered + self.dead_lettered),
            avg_response_time_ms: (self.attempts > 0)
                .then(|| self.duration_sum_ms as f64 / self.attempts as f64),
            // Roll-ups written before the slowest attempt was kept read 0: then only a zero
            // total says the slowest took 0 ms.
            p95_response_time_ms: percentile(
                &self.buckets,
                0.95,
                (self.duration_max_ms > 0 || self.duration_sum_ms == 0)
                    .then_some(self.duration_max_ms),
            ),
            avg_delivery_latency_ms: (self.delivered > 0)
                .then(|| self.latency_sum_ms as f64 / self.delivered as f64),
            duplicate_rate: ratio(self.duplicates, self.ingested + self.duplicates),
            totals: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_totals_add_up_and_keep_the_slowest() {
        let a = WindowTotals {
            attempts: 3,
            successes: 2,
            buckets: [1; 12],
            duration_max_ms: 40,
            ..WindowTotals::default()
        };
        let b = WindowTotals {
            attempts: 5,
            delivered: 4,
            buckets: [2; 12],
            duration_max_ms: 25,
            ..WindowTotals::default()
        };
        let sum = a.merged(&b);
        assert_eq!((sum.attempts, sum.successes, sum.delivered), (8, 2, 4));
        assert_eq!(sum.buckets, [3; 12]);
        assert_eq!(sum.duration_max_ms, 40);
    }

    #[test]
    fn durations_fall_in_the_right_bucket() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(10), 0);
        assert_eq!(bucket(11), 1);
        assert_eq!(bucket(1000), 6);
        assert_eq!(bucket(30_000), 10);
        assert_eq!(bucket(30_001), 11);
    }

    #[test]
    fn p95_is_interpolated_within_its_bucket() {
        let mut buckets = [0u64; 12];
        buckets[bucket(40)] = 90; // 25-50 ms
        buckets[bucket(800)] = 10; // 500-1000 ms
        let p95 = percentile(&buckets, 0.95, None).unwrap_or_default();
        assert!((500.0..=1000.0).contains(&p95), "{p95}");
        assert!((p95 - 750.0).abs() < 1.0, "half-way into the bucket: {p95}");
        assert_eq!(percentile(&[0; 12], 0.95, None), None);
        // Bounded by the slowest attempt seen.
        assert_eq!(percentile(&buckets, 0.95, Some(620)), Some(620.0));
    }

    #[test]
    fn attempts_of_a_few_ms_report_a_p95_of_a_few_ms() {
        // Every attempt took 0-2 ms: the first bucket spans 0-10 ms, and its bound was shown.
        let totals = WindowTotals {
            attempts: 100,
            successes: 100,
            duration_sum_ms: 110,
            duration_max_ms: 2,
            buckets: {
                let mut b = [0; 12];
                b[0] = 100;
                b
            },
            ..WindowTotals::default()
        };
        assert_eq!(totals.stats().p95_response_time_ms, Some(2.0));
        let instant = WindowTotals {
            duration_sum_ms: 0,
            duration_max_ms: 0,
            ..totals
        };
        assert_eq!(instant.stats().p95_response_time_ms, Some(0.0));
        // Roll-ups from before the slowest attempt was kept: the bucket estimate alone.
        let older = WindowTotals {
            duration_max_ms: 0,
            ..totals
        };
        assert_eq!(older.stats().p95_response_time_ms, Some(9.5));
    }

    #[test]
    fn rates_need_data() {
        let empty = WindowTotals::default().stats();
        assert_eq!(
            (
                empty.success_rate,
                empty.error_rate,
                empty.avg_response_time_ms
            ),
            (None, None, None)
        );
        let totals = WindowTotals {
            attempts: 10,
            successes: 8,
            failures: 2,
            delivered: 8,
            dead_lettered: 2,
            duration_sum_ms: 1000,
            ingested: 9,
            duplicates: 1,
            ..WindowTotals::default()
        };
        let stats = totals.stats();
        assert_eq!(stats.success_rate, Some(0.8));
        assert_eq!(stats.error_rate, Some(0.2));
        assert_eq!(stats.avg_response_time_ms, Some(100.0));
        assert_eq!(stats.duplicate_rate, Some(0.1));
    }
}
