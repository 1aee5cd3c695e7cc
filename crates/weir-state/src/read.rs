//! Queries for the CLI: list, find by id prefix, task runs, states and logs of a run.

use rusqlite::{OptionalExtension, Row, params};
use weir_types::{CacheStatus, FlowRunId, FlowRunRecord, LogRecord, State, StateRecord, TaskRunId, TaskRunRecord};

use crate::db::{StateDb, StateError};

/// Which flow runs to list.
#[derive(Clone, Debug, Default)]
pub struct FlowRunFilter {
    pub state: Option<State>,
    pub flow_name: Option<String>,
    pub limit: usize,
}

/// Why a run id did not name exactly one run.
#[derive(Debug, thiserror::Error)]
pub enum RunLookupError {
    #[error("'{0}' is not a run id (expected hex digits and dashes, e.g. 0193a5c2)")]
    Invalid(String),
    #[error("no flow run matches '{0}' (list runs with `weir runs ls`)")]
    NotFound(String),
    #[error("'{prefix}' matches several flow runs: {}; give more digits", candidates.join(", "))]
    Ambiguous { prefix: String, candidates: Vec<String> },
    #[error(transparent)]
    Db(#[from] StateError),
}

const FLOW_COLS: &str = "id, flow_name, flow_path, parent_flow_run_id, parent_task_run_id, state, parameters,
    created_at, started_at, ended_at, error, hostname, pid, tags";
const TASK_COLS: &str = "id, flow_run_id, task_name, task_path, state, attempt, cache_status, cache_key,
    created_at, started_at, ended_at, error, history";

fn bad(what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(what.to_string().into())
}

fn parse_state(s: String) -> rusqlite::Result<State> {
    s.parse().map_err(bad)
}

fn parse_opt_id<T: std::str::FromStr>(s: Option<String>) -> rusqlite::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    s.map(|s| s.parse().map_err(bad)).transpose()
}

fn flow_run(row: &Row<'_>) -> rusqlite::Result<FlowRunRecord> {
    let params: String = row.get(6)?;
    Ok(FlowRunRecord {
        id: row.get::<_, String>(0)?.parse().map_err(bad)?,
        flow_name: row.get(1)?,
        flow_path: row.get(2)?,
        parent_flow_run_id: parse_opt_id(row.get(3)?)?,
        parent_task_run_id: parse_opt_id(row.get(4)?)?,
        state: parse_state(row.get(5)?)?,
        parameters: serde_json::from_str(&params).unwrap_or(serde_json::Value::String(params)),
        created_at: row.get(7)?,
        started_at: row.get(8)?,
        ended_at: row.get(9)?,
        error: row.get(10)?,
        hostname: row.get(11)?,
        pid: row.get(12)?,
        tags: serde_json::from_str(&row.get::<_, String>(13)?).unwrap_or_default(),
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    })
}

fn task_run(row: &Row<'_>) -> rusqlite::Result<TaskRunRecord> {
    Ok(TaskRunRecord {
        id: row.get::<_, String>(0)?.parse().map_err(bad)?,
        flow_run_id: parse_opt_id(row.get(1)?)?,
        task_name: row.get(2)?,
        task_path: row.get(3)?,
        state: parse_state(row.get(4)?)?,
        attempt: row.get(5)?,
        cache_status: CacheStatus::parse(&row.get::<_, String>(6)?),
        cache_key: row.get(7)?,
        created_at: row.get(8)?,
        started_at: row.get(9)?,
        ended_at: row.get(10)?,
        error: row.get(11)?,
        history: serde_json::from_str(&row.get::<_, String>(12)?).map_err(bad)?,
    })
}

impl StateDb {
    /// The newest flow runs first.
    pub fn list_flow_runs(&self, filter: &FlowRunFilter) -> Result<Vec<FlowRunRecord>, StateError> {
        let sql = format!(
            "SELECT {FLOW_COLS} FROM flow_runs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR flow_name = ?2)
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            filter.limit as i64
        };
        let rows = stmt.query_map(
            params![filter.state.map(|s| s.as_str()), filter.flow_name, limit],
            flow_run,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Finds one flow run by its id, or a unique prefix or suffix of it (dashes optional).
    /// Tables show the last eight digits, so those work.
    pub fn find_flow_run(&self, prefix: &str) -> Result<FlowRunRecord, RunLookupError> {
        let wanted: String = prefix
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if wanted.is_empty() || wanted.len() > 32 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(RunLookupError::Invalid(prefix.to_string()));
        }
        // Compare on the id without dashes; `wanted` is hex only, so LIKE needs no escaping.
        let sql = format!(
            "SELECT {FLOW_COLS} FROM flow_runs
             WHERE replace(id, '-', '') LIKE ?1 || '%' OR replace(id, '-', '') LIKE '%' || ?1
             ORDER BY created_at DESC LIMIT 6"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(StateError::from)?;
        let found: Vec<FlowRunRecord> = stmt
            .query_map([&wanted], flow_run)
            .map_err(StateError::from)?
            .collect::<Result<_, _>>()
            .map_err(StateError::from)?;
        match found.len() {
            0 => Err(RunLookupError::NotFound(prefix.to_string())),
            1 => Ok(found
                .into_iter()
                .next()
                .ok_or_else(|| RunLookupError::NotFound(prefix.to_string()))?),
            _ => Err(RunLookupError::Ambiguous {
                prefix: prefix.to_string(),
                candidates: found.iter().map(|r| format!("{} ({})", r.id, r.flow_name)).collect(),
            }),
        }
    }

    /// One flow run by its full id.
    pub fn flow_run(&self, id: FlowRunId) -> Result<Option<FlowRunRecord>, StateError> {
        let sql = format!("SELECT {FLOW_COLS} FROM flow_runs WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], flow_run).optional()?)
    }

    /// The task runs of a flow run, in the order they were created.
    pub fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRecord>, StateError> {
        let sql = format!("SELECT {TASK_COLS} FROM task_runs WHERE flow_run_id = ?1 ORDER BY created_at, id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([flow_run.to_string()], task_run)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One task run by its full id.
    pub fn task_run(&self, id: TaskRunId) -> Result<Option<TaskRunRecord>, StateError> {
        let sql = format!("SELECT {TASK_COLS} FROM task_runs WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], task_run).optional()?)
    }

    /// Flow runs started from inside `parent`.
    pub fn subflow_runs(&self, parent: FlowRunId) -> Result<Vec<FlowRunRecord>, StateError> {
        let sql = format!("SELECT {FLOW_COLS} FROM flow_runs WHERE parent_flow_run_id = ?1 ORDER BY created_at, id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([parent.to_string()], flow_run)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The state history of a flow run and its task runs, oldest first.
    pub fn states(&self, flow_run: FlowRunId) -> Result<Vec<StateRecord>, StateError> {
        let mut all = self.flow_states(flow_run)?;
        for task in self.task_runs(flow_run)? {
            all.extend(task.history.into_iter().map(|h| StateRecord {
                flow_run_id: Some(flow_run),
                task_run_id: Some(task.id),
                state: h.state,
                at: h.at,
                message: h.message,
            }));
        }
        // Stable: entries with equal times keep their recorded order.
        all.sort_by_key(|s| s.at);
        Ok(all)
    }

    fn flow_states(&self, flow_run: FlowRunId) -> Result<Vec<StateRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT s.flow_run_id, s.task_run_id, s.state, s.at, s.message FROM states s
             WHERE s.flow_run_id = ?1 ORDER BY s.seq",
        )?;
        let rows = stmt.query_map([flow_run.to_string()], |row| {
            Ok(StateRecord {
                flow_run_id: parse_opt_id(row.get(0)?)?,
                task_run_id: parse_opt_id(row.get(1)?)?,
                state: parse_state(row.get(2)?)?,
                at: row.get(3)?,
                message: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The logs of a flow run (including its task runs), oldest first.
    pub fn logs(&self, flow_run: FlowRunId) -> Result<Vec<LogRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT flow_run_id, task_run_id, at, level, target, message FROM logs
             WHERE flow_run_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([flow_run.to_string()], |row| {
            Ok(LogRecord {
                flow_run_id: parse_opt_id(row.get(0)?)?,
                task_run_id: parse_opt_id(row.get(1)?)?,
                at: row.get(2)?,
                level: row.get(3)?,
                target: row.get(4)?,
                message: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl StateDb {
    /// How many task runs hit, missed or refreshed the cache (all time).
    pub fn cache_counts(&self) -> Result<Vec<(CacheStatus, u64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT cache_status, count(*) FROM task_runs GROUP BY cache_status ORDER BY cache_status")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                CacheStatus::parse(&row.get::<_, String>(0)?),
                row.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
