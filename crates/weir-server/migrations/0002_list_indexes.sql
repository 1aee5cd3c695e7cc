-- Indexes for every list the API serves, so each page is an index range scan.
-- Tags of a page of runs (fill_tags looks them up by run).
CREATE INDEX flow_run_tags_by_run ON flow_run_tags (flow_run_id);
-- Task runs, newest first: unfiltered and by state.
CREATE INDEX task_runs_by_created ON task_runs (created_at DESC, id DESC);
CREATE INDEX task_runs_by_state ON task_runs (state, created_at DESC, id DESC)
