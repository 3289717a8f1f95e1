-- hookrelay's schema on PostgreSQL: the same tables and meanings as the SQLite migrations
-- 0001-0007, in PostgreSQL types. Times are unix milliseconds (BIGINT), as on SQLite. Where
-- many instances write one row, the row is sharded (rollups, usage_daily).

CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    event_type      TEXT NOT NULL,
    session_id      TEXT,
    idempotency_key TEXT UNIQUE,
    payload         BYTEA NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX events_created_at ON events (created_at);
CREATE INDEX events_session ON events (session_id, created_at) WHERE session_id IS NOT NULL;

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    total_attempts  BIGINT NOT NULL DEFAULT 0,
    throttled       BIGINT NOT NULL DEFAULT 0,
    -- due time; a claim moves it forward by the lease, so an abandoned claim falls due again
    next_attempt_at BIGINT NOT NULL,
    lease_token     BIGINT,
    -- the instance that last claimed it
    claimed_by      TEXT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON deliveries (finished_at) WHERE status = 'dead';
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_pending_created ON deliveries (created_at) WHERE status = 'pending';

CREATE TABLE attempts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt_no       BIGINT NOT NULL,
    started_at       BIGINT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    status_code      BIGINT,
    error_kind       TEXT,
    error_detail     TEXT,
    response_snippet TEXT,
    outcome          TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'throttled'))
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
CREATE INDEX attempts_started_at ON attempts (started_at);

CREATE TABLE endpoints (
    id                    TEXT PRIMARY KEY,
    url                   TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    event_types           TEXT NOT NULL DEFAULT '[]',
    secret                TEXT,
    previous_secret       TEXT,
    previous_secret_until BIGINT,
    headers               TEXT NOT NULL DEFAULT '{}',
    timeout_ms            BIGINT,
    max_retries           BIGINT,
    rate_limit            DOUBLE PRECISION,
    rate_burst            BIGINT,
    circuit_threshold     BIGINT,
    enabled               BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason       TEXT,
    managed_by_config     BOOLEAN NOT NULL DEFAULT FALSE,
    circuit_state         TEXT NOT NULL DEFAULT 'closed' CHECK (circuit_state IN ('closed', 'open', 'half_open')),
    circuit_changed_at    BIGINT,
    consecutive_failures  BIGINT NOT NULL DEFAULT 0,
    failing_since         BIGINT,
    last_attempt_at       BIGINT,
    last_success_at       BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

-- Every ingest and every recorded attempt adds to the current minute's counts. One row per
-- minute would be a lock every transaction of every instance queues for, so each minute has
-- up to 16 rows (a transaction picks one at random); readers sum them, as they sum minutes.
CREATE TABLE rollups (
    minute          BIGINT NOT NULL,
    shard           SMALLINT NOT NULL DEFAULT 0,
    ingested        BIGINT NOT NULL DEFAULT 0,
    duplicates      BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    successes       BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0,
    throttled       BIGINT NOT NULL DEFAULT 0,
    retries         BIGINT NOT NULL DEFAULT 0,
    delivered       BIGINT NOT NULL DEFAULT 0,
    dead_lettered   BIGINT NOT NULL DEFAULT 0,
    duration_sum_ms BIGINT NOT NULL DEFAULT 0,
    latency_sum_ms  BIGINT NOT NULL DEFAULT 0,
    d0 BIGINT NOT NULL DEFAULT 0, d1 BIGINT NOT NULL DEFAULT 0, d2 BIGINT NOT NULL DEFAULT 0,
    d3 BIGINT NOT NULL DEFAULT 0, d4 BIGINT NOT NULL DEFAULT 0, d5 BIGINT NOT NULL DEFAULT 0,
    d6 BIGINT NOT NULL DEFAULT 0, d7 BIGINT NOT NULL DEFAULT 0, d8 BIGINT NOT NULL DEFAULT 0,
    d9 BIGINT NOT NULL DEFAULT 0, d10 BIGINT NOT NULL DEFAULT 0, d11 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, shard)
);

CREATE TABLE alerts (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule                TEXT NOT NULL,
    level               TEXT NOT NULL CHECK (level IN ('warning', 'critical')),
    message             TEXT NOT NULL,
    value               DOUBLE PRECISION,
    threshold           DOUBLE PRECISION,
    fired_at            BIGINT NOT NULL,
    resolved_at         BIGINT,
    notified_at         BIGINT,
    resolve_notified_at BIGINT
);
CREATE UNIQUE INDEX alerts_active ON alerts (rule) WHERE resolved_at IS NULL;
CREATE INDEX alerts_fired_at ON alerts (fired_at);

CREATE TABLE heartbeats (
    instance   TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    beat_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    session_id           TEXT PRIMARY KEY,
    first_seen           BIGINT NOT NULL,
    last_seen            BIGINT NOT NULL,
    queries              BIGINT NOT NULL DEFAULT 0,
    successes            BIGINT NOT NULL DEFAULT 0,
    failures             BIGINT NOT NULL DEFAULT 0,
    response_time_sum_ms BIGINT NOT NULL DEFAULT 0,
    tokens               BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_last_seen ON sessions (last_seen);

CREATE TABLE session_models (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    model      TEXT NOT NULL,
    queries    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, model)
);

-- Sharded like rollups: every usage event of a model adds to today's row.
CREATE TABLE usage_daily (
    day                  BIGINT NOT NULL,
    model                TEXT NOT NULL,
    shard                SMALLINT NOT NULL DEFAULT 0,
    queries              BIGINT NOT NULL DEFAULT 0,
    successes            BIGINT NOT NULL DEFAULT 0,
    tokens               BIGINT NOT NULL DEFAULT 0,
    response_time_sum_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, shard)
);

CREATE TABLE leader_leases (
    task       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Bumped by every change that alters fan-out (an endpoint added, removed, enabled, disabled or
-- refiltered), whichever instance makes it: ingest re-reads the endpoint list only when it moved.
CREATE TABLE endpoint_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO endpoint_generation (id, n) VALUES (1, 0);
CREATE FUNCTION bump_endpoint_generation() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE endpoint_generation SET n = n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER endpoints_fanout_insert_delete AFTER INSERT OR DELETE ON endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION bump_endpoint_generation();
CREATE TRIGGER endpoints_fanout_update AFTER UPDATE ON endpoints FOR EACH ROW
    WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled OR OLD.disabled_reason IS DISTINCT FROM NEW.disabled_reason
          OR OLD.event_types IS DISTINCT FROM NEW.event_types)
    EXECUTE FUNCTION bump_endpoint_generation();
