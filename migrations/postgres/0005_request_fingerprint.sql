-- A fingerprint of what the client sent with an idempotency key, so a key reused for a
-- different request is refused instead of silently answered with the first event.
ALTER TABLE events ADD COLUMN request_fingerprint TEXT;
