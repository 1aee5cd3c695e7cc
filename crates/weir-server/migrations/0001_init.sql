-- One schema for SQLite and PostgreSQL. The one dialect difference, an auto-incrementing
-- primary key, is the SEQUENCE_KEY placeholder below, filled in by Db::migrate. No semicolons in comments: statements are split on them.
CREATE TABLE flows (
    name        TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE flow_runs (
    id                  TEXT PRIMARY KEY,
    flow_name           TEXT NOT NULL,
    flow_path           TEXT NOT NULL,
    parent_flow_run_id  TEXT,
    parent_task_run_id  TEXT,
    state               TEXT NOT NULL,
    parameters          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    ended_at            BIGINT,
    error               TEXT,
    hostname            TEXT NOT NULL,
    pid                 BIGINT NOT NULL
);
CREATE INDEX flow_runs_by_created ON flow_runs (created_at DESC, id DESC);
CREATE INDEX flow_runs_by_state ON flow_runs (state, created_at DESC, id DESC);
CREATE INDEX flow_runs_by_flow ON flow_runs (flow_name, created_at DESC, id DESC);
CREATE INDEX flow_runs_by_parent ON flow_runs (parent_flow_run_id);
CREATE TABLE flow_run_tags (
    flow_run_id  TEXT NOT NULL,
    tag          TEXT NOT NULL,
    PRIMARY KEY (tag, flow_run_id)
);
CREATE TABLE flow_run_states (
    flow_run_id  TEXT NOT NULL,
    state        TEXT NOT NULL,
    at           BIGINT NOT NULL,
    message      TEXT,
    PRIMARY KEY (flow_run_id, at, state)
);
CREATE TABLE task_runs (
    id            TEXT PRIMARY KEY,
    flow_run_id   TEXT,
    task_name     TEXT NOT NULL,
    task_path     TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    cache_status  TEXT NOT NULL,
    cache_key     TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    ended_at      BIGINT,
    error         TEXT,
    history       TEXT NOT NULL
);
CREATE INDEX task_runs_by_flow_run ON task_runs (flow_run_id, created_at, id);
CREATE TABLE logs (
    seq          {{SEQUENCE_KEY}},
    dedupe       TEXT NOT NULL UNIQUE,
    flow_run_id  TEXT,
    task_run_id  TEXT,
    at           BIGINT NOT NULL,
    level        TEXT NOT NULL,
    target       TEXT NOT NULL,
    message      TEXT NOT NULL
);
CREATE INDEX logs_by_flow_run ON logs (flow_run_id, seq);
CREATE TABLE variables (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
