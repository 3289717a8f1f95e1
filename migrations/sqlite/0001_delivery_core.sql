-- Events, their deliveries (the queue and the dead-letter queue) and every attempt.
-- Times are unix milliseconds.

CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    event_type      TEXT NOT NULL,
    session_id      TEXT,
    idempotency_key TEXT UNIQUE,
    payload         BLOB NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX events_created_at ON events (created_at);
CREATE INDEX events_session ON events (session_id, created_at) WHERE session_id IS NOT NULL;

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    -- attempts spent from the current retry budget (a replay resets it); total_attempts never resets
    attempts        INTEGER NOT NULL DEFAULT 0,
    total_attempts  INTEGER NOT NULL DEFAULT 0,
    -- attempts answered 429, or held back by our rate limit: rescheduled without spending budget
    throttled       INTEGER NOT NULL DEFAULT 0,
    -- due time; a claim moves it forward by the lease, so an abandoned claim falls due again
    next_attempt_at INTEGER NOT NULL,
    lease_token     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON deliveries (finished_at) WHERE status = 'dead';
CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt_no       INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    status_code      INTEGER,
    error_kind       TEXT,
    error_detail     TEXT,
    response_snippet TEXT,
    outcome          TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'throttled'))
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
CREATE INDEX attempts_started_at ON attempts (started_at);
