-- The age of the oldest undelivered event is read every few seconds (gauges, health): an
-- index keeps that a single lookup whatever the backlog.
CREATE INDEX deliveries_pending_created ON deliveries (created_at) WHERE status = 'pending';
