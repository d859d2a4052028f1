-- The outbox: every event for every callback, written before delivery is tried and kept after
-- it ('pending' → 'delivered' | 'failed'). A node leases a due row (lease_node, lease_until_ms)
-- while it attempts it, so in a fleet one node sends each event at a time.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    domain TEXT NOT NULL,
    app TEXT NOT NULL,
    stream TEXT NOT NULL,
    task_id TEXT,
    created_ms BIGINT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT NOT NULL,
    body_base64 BIGINT NOT NULL DEFAULT 0,
    timeout_ms BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    lease_node TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    last_status BIGINT,
    finished_ms BIGINT,
    node_id TEXT NOT NULL
);
CREATE INDEX events_due ON events (status, next_ms);
CREATE INDEX events_by_url ON events (url, status);
CREATE INDEX events_by_created ON events (created_ms, id);
