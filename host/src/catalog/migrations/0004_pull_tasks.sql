-- Pull tasks: a record task with a source URL Reel plays (RTMP) or reads (HTTP-FLV). One node
-- pulls a task at a time: the one holding its lease (lease_node until lease_until_ms).
ALTER TABLE record_tasks ADD COLUMN source_url TEXT;
ALTER TABLE record_tasks ADD COLUMN lease_node TEXT;
ALTER TABLE record_tasks ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;
