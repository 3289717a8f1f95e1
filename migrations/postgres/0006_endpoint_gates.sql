-- What every instance on this database agrees about an endpoint, so that several instances
-- send to it as one: the shared GCRA schedule of its rate limit, a receiver's Retry-After
-- pause, and its circuit (open until when; which instance holds the probe round). Claims read
-- it; a claim for a rate-limited endpoint (or a probe round) locks its row for one short
-- transaction per batch, never per delivery; attempt results update it only when something
-- changes.
CREATE TABLE endpoint_gates (
    endpoint_id     TEXT PRIMARY KEY REFERENCES endpoints (id) ON DELETE CASCADE,
    tat_ms          DOUBLE PRECISION NOT NULL DEFAULT 0,
    paused_until_ms BIGINT NOT NULL DEFAULT 0,
    circuit         TEXT NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open', 'half_open')),
    open_until_ms   BIGINT NOT NULL DEFAULT 0,
    probe_holder    TEXT,
    probe_until_ms  BIGINT NOT NULL DEFAULT 0,
    changed_at_ms   BIGINT NOT NULL DEFAULT 0
);

-- Every endpoint has its gate from the moment it exists.
INSERT INTO endpoint_gates (endpoint_id) SELECT id FROM endpoints ON CONFLICT DO NOTHING;

CREATE FUNCTION endpoint_gate_for_new_endpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO endpoint_gates (endpoint_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NEW;
END
$$;
CREATE TRIGGER endpoint_gate_created AFTER INSERT ON endpoints
    FOR EACH ROW EXECUTE FUNCTION endpoint_gate_for_new_endpoint();
