-- Per-session usage aggregates, updated in the same transaction as each usage event.
CREATE TABLE sessions (
    session_id           TEXT PRIMARY KEY,
    first_seen           INTEGER NOT NULL,
    last_seen            INTEGER NOT NULL,
    queries              INTEGER NOT NULL DEFAULT 0,
    successes            INTEGER NOT NULL DEFAULT 0,
    failures             INTEGER NOT NULL DEFAULT 0,
    response_time_sum_ms INTEGER NOT NULL DEFAULT 0,
    tokens               INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_last_seen ON sessions (last_seen);

CREATE TABLE session_models (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    model      TEXT NOT NULL,
    queries    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, model)
) WITHOUT ROWID;

-- Daily usage per model, so analytics over N days sums N × models rows, not millions of events.
CREATE TABLE usage_daily (
    day                  INTEGER NOT NULL,  -- unix day
    model                TEXT NOT NULL,
    queries              INTEGER NOT NULL DEFAULT 0,
    successes            INTEGER NOT NULL DEFAULT 0,
    tokens               INTEGER NOT NULL DEFAULT 0,
    response_time_sum_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model)
) WITHOUT ROWID;
