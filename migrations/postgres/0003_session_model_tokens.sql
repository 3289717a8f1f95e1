-- A session's tokens per model (the session total was kept, the split by model was not).
-- Sessions recorded before this migration show 0 for their per-model tokens.
ALTER TABLE session_models ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0;
