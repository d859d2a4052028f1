-- Written once for SQLite and PostgreSQL alike: TEXT and BIGINT only, times in Unix ms.
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY,
    domain      TEXT NOT NULL,
    app         TEXT NOT NULL,
    stream      TEXT NOT NULL,
    format      TEXT NOT NULL,
    storage     TEXT NOT NULL,
    object_key  TEXT NOT NULL,
    size        BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    first_ts_ms BIGINT NOT NULL,
    last_ts_ms  BIGINT NOT NULL,
    start_ms    BIGINT NOT NULL,
    end_ms      BIGINT NOT NULL,
    session_id  TEXT NOT NULL,
    task_id     TEXT,
    template    TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    video_codec TEXT,
    audio_codec TEXT,
    failed      BIGINT NOT NULL
);
-- One stream's recordings by time, newest first (the listing every player page makes).
CREATE INDEX recordings_by_stream ON recordings (app, stream, domain, start_ms, id);
-- Everything by time, and a task's files.
CREATE INDEX recordings_by_time ON recordings (start_ms, id);
CREATE INDEX recordings_by_task ON recordings (task_id, start_ms);

CREATE TABLE record_tasks (
    id         TEXT PRIMARY KEY,
    domain     TEXT NOT NULL,
    app        TEXT NOT NULL,
    stream     TEXT NOT NULL,
    start_ms   BIGINT NOT NULL,
    end_ms     BIGINT NOT NULL,
    template   TEXT NOT NULL,
    note       TEXT,
    status     TEXT NOT NULL,
    reason     TEXT,
    node_id    TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX record_tasks_by_status ON record_tasks (status, end_ms);
CREATE INDEX record_tasks_by_stream ON record_tasks (app, stream, created_ms);
