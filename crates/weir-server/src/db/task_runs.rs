//! The `task_runs` table (a task run's state history travels inside its row).

use sqlx::Row;
use sqlx::any::AnyRow;
use weir_types::{CacheStatus, FlowRunId, State, StateEntry, TaskRunId, TaskRunRecord};

use super::query::{Query, bad_row, cursor_of, opt, parse, parse_cursor};
use super::{Db, DbError};

const TASK_COLS: &str = "id, flow_run_id, task_name, task_path, state, attempt, cache_status, cache_key, \
     created_at, started_at, ended_at, error, history";

fn task_run(row: &AnyRow) -> Result<TaskRunRecord, sqlx::Error> {
    let history: String = row.try_get("history")?;
    Ok(TaskRunRecord {
        id: parse(row.try_get("id")?)?,
        flow_run_id: opt(row.try_get("flow_run_id")?)?,
        task_name: row.try_get("task_name")?,
        task_path: row.try_get("task_path")?,
        state: parse(row.try_get("state")?)?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        cache_status: CacheStatus::parse(&row.try_get::<String, _>("cache_status")?),
        cache_key: row.try_get("cache_key")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        error: row.try_get("error")?,
        history: serde_json::from_str::<Vec<StateEntry>>(&history).map_err(bad_row)?,
    })
}

impl Db {
    pub async fn list_task_runs(
        &self,
        flow_run: Option<FlowRunId>,
        state: Option<State>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<TaskRunRecord>, Option<String>), DbError> {
        let (q, sql, limit) = list_task_runs_query(flow_run, state, limit, cursor)?;
        let rows = q.fetch(&self.pool, sql).await?;
        let mut runs = rows.iter().map(task_run).collect::<Result<Vec<_>, _>>()?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| cursor_of(r.created_at, &r.id.to_string()))
        } else {
            None
        };
        Ok((runs, next))
    }
}

/// The list query and its page size (apart, so `plans` can check how it runs).
pub(super) fn list_task_runs_query(
    flow_run: Option<FlowRunId>,
    state: Option<State>,
    limit: usize,
    cursor: Option<String>,
) -> Result<(Query, String, usize), DbError> {
    let mut q = Query::new();
    if let Some(f) = flow_run {
        q.text(|n| format!("flow_run_id = ${n}"), f.to_string());
    }
    if let Some(s) = state {
        q.text(|n| format!("state = ${n}"), s.as_str().to_string());
    }
    if let Some(c) = &cursor {
        q.cursor(parse_cursor(c)?);
    }
    let limit = limit.clamp(1, 1000);
    let sql = format!(
        "SELECT {TASK_COLS} FROM task_runs {} ORDER BY created_at DESC, id DESC LIMIT {}",
        q.where_clause(),
        limit + 1
    );
    Ok((q, sql, limit))
}

impl Db {
    pub async fn task_run(&self, id: TaskRunId) -> Result<TaskRunRecord, DbError> {
        let sql = format!("SELECT {TASK_COLS} FROM task_runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("no task run {id}")))?;
        Ok(task_run(&row)?)
    }

    /// How many task runs hit, missed, refreshed… the cache (`cache_status`, count).
    pub async fn cache_counts(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows =
            sqlx::query("SELECT cache_status, count(*) FROM task_runs GROUP BY cache_status ORDER BY cache_status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
