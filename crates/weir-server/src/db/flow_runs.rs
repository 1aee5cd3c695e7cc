//! The `flow_runs`, `flow_run_tags` and `flow_run_states` tables.

use sqlx::Row;
use sqlx::any::AnyRow;
use weir_types::{FlowRunId, FlowRunRecord, State, StateRecord};

use super::query::{Query, cursor_of, opt, parse, parse_cursor};
use super::{Db, DbError};

pub(super) const FLOW_COLS: &str = "id, flow_name, flow_path, parent_flow_run_id, parent_task_run_id, state, parameters, \
     created_at, started_at, ended_at, error, hostname, pid, deployment, scheduled_at, work_pool, worker, retry_of, \
     cancel_requested";

pub(super) fn flow_run(row: &AnyRow) -> Result<FlowRunRecord, sqlx::Error> {
    let params: String = row.try_get("parameters")?;
    Ok(FlowRunRecord {
        id: parse(row.try_get("id")?)?,
        flow_name: row.try_get("flow_name")?,
        flow_path: row.try_get("flow_path")?,
        parent_flow_run_id: opt(row.try_get("parent_flow_run_id")?)?,
        parent_task_run_id: opt(row.try_get("parent_task_run_id")?)?,
        state: parse(row.try_get("state")?)?,
        parameters: serde_json::from_str(&params).unwrap_or(serde_json::Value::String(params)),
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        error: row.try_get("error")?,
        hostname: row.try_get("hostname")?,
        pid: row.try_get::<i64, _>("pid")? as u32,
        tags: Vec::new(),
        deployment: row.try_get("deployment")?,
        scheduled_at: row.try_get("scheduled_at")?,
        work_pool: row.try_get("work_pool")?,
        worker: row.try_get("worker")?,
        retry_of: opt(row.try_get("retry_of")?)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
    })
}

/// Filters for listing flow runs.
#[derive(Debug, Default)]
pub struct FlowRunFilter {
    pub state: Option<State>,
    pub flow: Option<String>,
    pub tag: Option<String>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    pub parent: Option<FlowRunId>,
    pub limit: usize,
    pub cursor: Option<String>,
}

impl Db {
    /// Tags of a page of runs in one query, not one per run.
    pub(super) async fn fill_tags(&self, runs: &mut [FlowRunRecord]) -> Result<(), sqlx::Error> {
        if runs.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=runs.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT flow_run_id, tag FROM flow_run_tags WHERE flow_run_id IN ({}) ORDER BY tag",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in runs.iter() {
            q = q.bind(r.id.to_string());
        }
        for row in q.fetch_all(&self.pool).await? {
            let id: String = row.try_get(0)?;
            let tag: String = row.try_get(1)?;
            if let Some(r) = runs.iter_mut().find(|r| r.id.to_string() == id) {
                r.tags.push(tag);
            }
        }
        Ok(())
    }

    async fn tags_of(&self, id: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query("SELECT tag FROM flow_run_tags WHERE flow_run_id = $1 ORDER BY tag")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect()
    }

    pub async fn list_flow_runs(&self, f: FlowRunFilter) -> Result<(Vec<FlowRunRecord>, Option<String>), DbError> {
        let mut q = Query::new();
        if let Some(s) = f.state {
            q.text(|n| format!("state = ${n}"), s.as_str().to_string());
        }
        if let Some(flow) = f.flow {
            q.text(|n| format!("flow_name = ${n}"), flow);
        }
        if let Some(tag) = f.tag {
            q.text(
                // Walks the runs newest first and probes the (tag, run) key of each: a page
                // costs about as many probes as the tag is rare, not a sort of all its runs.
                |n| {
                    format!(
                        "EXISTS (SELECT 1 FROM flow_run_tags t WHERE t.tag = ${n} AND t.flow_run_id = flow_runs.id)"
                    )
                },
                tag,
            );
        }
        if let Some(parent) = f.parent {
            q.text(|n| format!("parent_flow_run_id = ${n}"), parent.to_string());
        }
        if let Some(t) = f.created_after {
            q.int(|n| format!("created_at >= ${n}"), t);
        }
        if let Some(t) = f.created_before {
            q.int(|n| format!("created_at < ${n}"), t);
        }
        if let Some(c) = &f.cursor {
            q.cursor(parse_cursor(c)?);
        }
        let limit = f.limit.clamp(1, 500);
        let sql = format!(
            "SELECT {FLOW_COLS} FROM flow_runs {} ORDER BY created_at DESC, id DESC LIMIT {}",
            q.where_clause(),
            limit + 1
        );
        let rows = q.fetch(&self.pool, sql).await?;
        let mut runs = rows.iter().map(flow_run).collect::<Result<Vec<_>, _>>()?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| cursor_of(r.created_at, &r.id.to_string()))
        } else {
            None
        };
        self.fill_tags(&mut runs).await?;
        Ok((runs, next))
    }

    pub async fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRecord, DbError> {
        let sql = format!("SELECT {FLOW_COLS} FROM flow_runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("no flow run {id}")))?;
        let mut r = flow_run(&row)?;
        r.tags = self.tags_of(&r.id.to_string()).await?;
        Ok(r)
    }

    pub async fn flow_run_states(&self, id: FlowRunId) -> Result<Vec<StateRecord>, DbError> {
        self.flow_run(id).await?;
        let rows =
            sqlx::query("SELECT state, at, message FROM flow_run_states WHERE flow_run_id = $1 ORDER BY at, state")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(StateRecord {
                    flow_run_id: Some(id),
                    task_run_id: None,
                    state: parse(r.try_get("state")?)?,
                    at: r.try_get("at")?,
                    message: r.try_get("message")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
