-- Standard Webhooks `webhook-id`s of accepted ingest requests, until they can no longer be
-- replayed (their timestamp is out of tolerance by then). Written in the transaction that
-- stores the request's events, so a replay is refused after a restart and by every process
-- on this database. Expired rows are swept a few at a time as new ones arrive.
CREATE TABLE inbound_messages (
    id         TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX inbound_messages_expiry ON inbound_messages (expires_at);
