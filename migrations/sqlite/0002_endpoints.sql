-- Endpoints as first-class destinations, with their own secrets, filters, limits and health.
-- `ep_default` (ZAPIER_WEBHOOK_URL) is kept in sync from the configuration at start-up.

CREATE TABLE endpoints (
    id                   TEXT PRIMARY KEY,
    url                  TEXT NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    -- JSON array of event-type patterns (`usage.tracked`, `alert.*`, `*`); empty: every type
    event_types          TEXT NOT NULL DEFAULT '[]',
    secret               TEXT,
    previous_secret      TEXT,
    previous_secret_until INTEGER,
    -- JSON object of extra request headers
    headers              TEXT NOT NULL DEFAULT '{}',
    timeout_ms           INTEGER,
    max_retries          INTEGER,
    rate_limit           REAL,
    rate_burst           INTEGER,
    circuit_threshold    INTEGER,
    enabled              INTEGER NOT NULL DEFAULT 1,
    disabled_reason      TEXT,
    managed_by_config    INTEGER NOT NULL DEFAULT 0,
    -- health, written by the worker with each attempt
    circuit_state        TEXT NOT NULL DEFAULT 'closed' CHECK (circuit_state IN ('closed', 'open', 'half_open')),
    circuit_changed_at   INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        INTEGER,
    last_attempt_at      INTEGER,
    last_success_at      INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
