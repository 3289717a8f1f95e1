-- Per-minute roll-ups behind the windowed figures (last hour, last day, all time): written in
-- the same transactions as ingest and attempts, read by summing at most a day of rows.
CREATE TABLE rollups (
    minute          INTEGER PRIMARY KEY,  -- unix minute
    ingested        INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,  -- excluding throttled ones
    successes       INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    throttled       INTEGER NOT NULL DEFAULT 0,
    retries         INTEGER NOT NULL DEFAULT 0,
    delivered       INTEGER NOT NULL DEFAULT 0,
    dead_lettered   INTEGER NOT NULL DEFAULT 0,
    duration_sum_ms INTEGER NOT NULL DEFAULT 0,
    latency_sum_ms  INTEGER NOT NULL DEFAULT 0,  -- ingest to delivery, delivered ones
    -- attempt durations by bucket: <=10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000 ms, more
    d0 INTEGER NOT NULL DEFAULT 0, d1 INTEGER NOT NULL DEFAULT 0, d2 INTEGER NOT NULL DEFAULT 0,
    d3 INTEGER NOT NULL DEFAULT 0, d4 INTEGER NOT NULL DEFAULT 0, d5 INTEGER NOT NULL DEFAULT 0,
    d6 INTEGER NOT NULL DEFAULT 0, d7 INTEGER NOT NULL DEFAULT 0, d8 INTEGER NOT NULL DEFAULT 0,
    d9 INTEGER NOT NULL DEFAULT 0, d10 INTEGER NOT NULL DEFAULT 0, d11 INTEGER NOT NULL DEFAULT 0
);

-- Alerts fire and resolve as state transitions: one row per firing.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    rule        TEXT NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('warning', 'critical')),
    message     TEXT NOT NULL,
    value       REAL,
    threshold   REAL,
    fired_at    INTEGER NOT NULL,
    resolved_at INTEGER,
    notified_at INTEGER
);
CREATE UNIQUE INDEX alerts_active ON alerts (rule) WHERE resolved_at IS NULL;
CREATE INDEX alerts_fired_at ON alerts (fired_at);

-- Delivery workers report in, so `hookrelay health` can tell a stalled queue from the CLI.
CREATE TABLE heartbeats (
    instance   TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    beat_at    INTEGER NOT NULL
);
