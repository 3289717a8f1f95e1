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
