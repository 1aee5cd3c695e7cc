-- Times are microseconds since the Unix epoch; ids are hyphenated UUIDv7 text.
CREATE TABLE flow_runs (
    id                  TEXT PRIMARY KEY,
    flow_name           TEXT NOT NULL,
    flow_path           TEXT NOT NULL,
    parent_flow_run_id  TEXT,
    parent_task_run_id  TEXT,
    state               TEXT NOT NULL,
    parameters          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    ended_at            INTEGER,
    error               TEXT,
    hostname            TEXT NOT NULL,
    pid                 INTEGER NOT NULL
);
CREATE INDEX flow_runs_by_created ON flow_runs (created_at);
CREATE INDEX flow_runs_by_parent ON flow_runs (parent_flow_run_id);

CREATE TABLE task_runs (
    id            TEXT PRIMARY KEY,
    flow_run_id   TEXT,
    task_name     TEXT NOT NULL,
    task_path     TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    cache_status  TEXT NOT NULL,
    cache_key     TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    ended_at      INTEGER,
    error         TEXT,
    -- JSON array of {state, at, message}: the task run's state history.
    history       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX task_runs_by_flow_run ON task_runs (flow_run_id, created_at);

-- State history of flow runs (task runs keep theirs in task_runs.history).
CREATE TABLE states (
    seq          INTEGER PRIMARY KEY,
    flow_run_id  TEXT,
    task_run_id  TEXT,
    state        TEXT NOT NULL,
    at           INTEGER NOT NULL,
    message      TEXT
);
CREATE INDEX states_by_flow_run ON states (flow_run_id);

CREATE TABLE logs (
    seq          INTEGER PRIMARY KEY,
    flow_run_id  TEXT,
    task_run_id  TEXT,
    at           INTEGER NOT NULL,
    level        TEXT NOT NULL,
    target       TEXT NOT NULL,
    message      TEXT NOT NULL
);
CREATE INDEX logs_by_flow_run ON logs (flow_run_id, seq);
