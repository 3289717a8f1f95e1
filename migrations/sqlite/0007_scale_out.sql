-- Which instance last claimed a delivery: after a crash, its leases are the in-flight work
-- the survivors take over (and `dlq show` tells who tried last).
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;

-- Singleton tasks (alert evaluation, retention) run on one instance at a time: the holder of
-- an unexpired lease here. Holders renew well before expiry; a crashed holder's lease lapses.
CREATE TABLE leader_leases (
    task       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Bumped by every change that alters fan-out (an endpoint added, removed, enabled, disabled or
-- refiltered), whichever process makes it: ingest re-reads the endpoint list only when it moved.
CREATE TABLE endpoint_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO endpoint_generation (id, n) VALUES (1, 0);
CREATE TRIGGER endpoints_fanout_insert AFTER INSERT ON endpoints
BEGIN
    UPDATE endpoint_generation SET n = n + 1;
END;
CREATE TRIGGER endpoints_fanout_delete AFTER DELETE ON endpoints
BEGIN
    UPDATE endpoint_generation SET n = n + 1;
END;
CREATE TRIGGER endpoints_fanout_update AFTER UPDATE ON endpoints
WHEN OLD.enabled IS NOT NEW.enabled OR OLD.disabled_reason IS NOT NEW.disabled_reason
     OR OLD.event_types IS NOT NEW.event_types
BEGIN
    UPDATE endpoint_generation SET n = n + 1;
END;
