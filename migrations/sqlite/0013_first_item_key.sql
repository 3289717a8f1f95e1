-- The first event of a request sent with an idempotency key is now stored under the key
-- itself, whether the request held one event or a batch (item i > 0 stays under `key #i`), so
-- the same key resent with a request of another shape meets the first request's fingerprint
-- and is refused as reused. Batches (only usage events come in batches) stored before kept
-- their first item under `usage.tracked key #0`: it takes the plain key, unless a single event
-- already holds it (the two were different requests; that batch keeps its old key, and a
-- resend of it now meets the single event's fingerprint and is refused as reused). The
-- pattern needs a space before `#0` besides the one after the type, so a client's key `#0`
-- (`usage.tracked #0`) is never touched.
UPDATE OR IGNORE events
SET idempotency_key = substr(idempotency_key, 1, length(idempotency_key) - 3)
WHERE idempotency_key LIKE 'usage.tracked % #0';
