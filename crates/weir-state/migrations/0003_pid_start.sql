-- The start time of the process that ran a flow run (field 22 of /proc/PID/stat, in clock
-- ticks since boot), so a reused pid is not mistaken for the run's process. NULL: unknown.
ALTER TABLE flow_runs ADD COLUMN pid_start INTEGER;
