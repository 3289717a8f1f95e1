-- The first event of a request sent with an idempotency key is now stored under the key
-- itself, whether the request held one event or a batch (item i > 0 stays under `key #i`), so
-- the same key resent with a request of another shape meets the first request's fingerprint
-- and is refused as reused. Batches stored before kept their first item under `key #0`: it
-- takes the plain key, unless a single event already holds it (the two were different
-- requests; that batch keeps its old key, and its resends are recognised item by item from
-- the second on).
UPDATE OR IGNORE events
SET idempotency_key = substr(idempotency_key, 1, length(idempotency_key) - 3)
WHERE idempotency_key LIKE '% #0';
