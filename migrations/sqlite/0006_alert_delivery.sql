-- Alert notifications are retried until sent: fired ones until `notified_at`, resolutions
-- until `resolve_notified_at`.
ALTER TABLE alerts ADD COLUMN resolve_notified_at INTEGER;
