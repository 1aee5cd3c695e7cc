-- Flow run tags (JSON array of strings).
ALTER TABLE flow_runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
