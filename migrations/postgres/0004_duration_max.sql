-- The slowest attempt of each minute: quantiles estimated from the duration buckets are
-- never reported above it (all attempts in 0-2 ms gave a p95 near the 10 ms bucket bound).
ALTER TABLE rollups ADD COLUMN duration_max_ms BIGINT NOT NULL DEFAULT 0;
