-- Deployments, work pools, workers, and what a run of a deployment carries (issue 9).
-- No semicolons in comments: statements are split on them.
CREATE TABLE deployments (
    name               TEXT PRIMARY KEY,
    flow_name          TEXT NOT NULL,
    work_pool          TEXT NOT NULL,
    spec               TEXT NOT NULL,
    paused             BIGINT NOT NULL DEFAULT 0,
    late_policy        TEXT NOT NULL,
    concurrency_limit  BIGINT,
    has_schedules      BIGINT NOT NULL DEFAULT 0,
    scheduled_through  BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX deployments_scheduled ON deployments (paused, has_schedules);
CREATE TABLE work_pools (
    name               TEXT PRIMARY KEY,
    concurrency_limit  BIGINT,
    created_at         BIGINT NOT NULL
);
CREATE TABLE workers (
    name            TEXT PRIMARY KEY,
    pool            TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    last_heartbeat  BIGINT NOT NULL,
    dead            BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_heartbeat ON workers (dead, last_heartbeat);
ALTER TABLE flow_runs ADD COLUMN deployment TEXT;
ALTER TABLE flow_runs ADD COLUMN scheduled_at BIGINT;
ALTER TABLE flow_runs ADD COLUMN work_pool TEXT;
ALTER TABLE flow_runs ADD COLUMN worker TEXT;
ALTER TABLE flow_runs ADD COLUMN retry_of TEXT;
ALTER TABLE flow_runs ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
-- The fence of the current claim: NULL when unclaimed or when the claim died.
ALTER TABLE flow_runs ADD COLUMN claim_token TEXT;
-- The slot a schedule made this run for (ms), NULL for runs made by hand or by retries.
ALTER TABLE flow_runs ADD COLUMN schedule_slot BIGINT;
-- How many retries came before this run (0 for the first).
ALTER TABLE flow_runs ADD COLUMN retry_count BIGINT NOT NULL DEFAULT 0;
-- 1 once a final Crashed or Failed deployment run was looked at for a retry.
ALTER TABLE flow_runs ADD COLUMN retry_checked BIGINT NOT NULL DEFAULT 0;
-- The scheduler's idempotency key: one run per (deployment name, slot), whoever makes it.
-- NULL slots (runs by hand) are distinct in a UNIQUE index on both databases.
CREATE UNIQUE INDEX flow_runs_schedule_key ON flow_runs (deployment, schedule_slot);
-- A run is retried at most once (the retry is retried in turn).
CREATE UNIQUE INDEX flow_runs_retry_of ON flow_runs (retry_of);
-- Claims: the claimable runs of a pool, oldest due first.
CREATE INDEX flow_runs_claimable ON flow_runs (work_pool, state, scheduled_at, id);
CREATE INDEX flow_runs_by_worker ON flow_runs (worker, state);
CREATE INDEX flow_runs_by_deployment ON flow_runs (deployment, state, scheduled_at);
CREATE INDEX flow_runs_to_retry ON flow_runs (retry_checked, state)
