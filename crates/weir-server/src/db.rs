//! Run metadata in SQLite or PostgreSQL, through one set of queries.
//!
//! sqlx's `Any` driver runs the same SQL on both: `$n` parameters (SQLite reads them as
//! numbered parameters as long as each first appears in order), `ON CONFLICT` upserts,
//! BIGINT microsecond times, ids and JSON as TEXT. Only the migrations differ per database.

use std::str::FromStr;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use weir_types::{
    CacheStatus, FlowRunId, FlowRunRecord, LogRecord, State, StateEntry, StateRecord, TaskRunId, TaskRunRecord,
};

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub kind: Kind,
}

/// What happened to a proposed run snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// The run is in a final state and stays there.
    Rejected {
        current: State,
    },
}

const FINAL: &str = "('Completed','Cached','Failed','TimedOut','Cancelled','Crashed')";

fn bad_row(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

fn parse<T: FromStr>(s: String) -> Result<T, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(bad_row)
}

fn opt<T: FromStr>(s: Option<String>) -> Result<Option<T>, sqlx::Error>
where
    T::Err: std::fmt::Display,
{
    s.map(parse).transpose()
}

const FLOW_COLS: &str = "id, flow_name, flow_path, parent_flow_run_id, parent_task_run_id, state, parameters, \
     created_at, started_at, ended_at, error, hostname, pid";
const TASK_COLS: &str = "id, flow_run_id, task_name, task_path, state, attempt, cache_status, cache_key, \
     created_at, started_at, ended_at, error, history";

fn flow_run(row: &AnyRow) -> Result<FlowRunRecord, sqlx::Error> {
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
    })
}

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

/// A page cursor: the sort key of the last item, `created_at:id`.
fn cursor_of(created_at: i64, id: &str) -> String {
    format!("{created_at}:{id}")
}

fn parse_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::invalid(
            format!("'{c}' is not a cursor from a previous page"),
            Some("cursor".into()),
        )
    };
    let (t, id) = c.split_once(':').ok_or_else(bad)?;
    let t: i64 = t.parse().map_err(|_| bad())?;
    uuid_like(id).then_some((t, id.to_string())).ok_or_else(bad)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
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

/// A list query under construction: conditions with `$n` parameters in order.
struct Query {
    conds: Vec<String>,
    args: Vec<Arg>,
}

enum Arg {
    Text(String),
    Int(i64),
}

impl Query {
    fn new() -> Query {
        Query {
            conds: Vec::new(),
            args: Vec::new(),
        }
    }
    fn next(&self) -> usize {
        self.args.len() + 1
    }
    fn text(&mut self, cond: impl FnOnce(usize) -> String, v: String) {
        let n = self.next();
        self.conds.push(cond(n));
        self.args.push(Arg::Text(v));
    }
    fn int(&mut self, cond: impl FnOnce(usize) -> String, v: i64) {
        let n = self.next();
        self.conds.push(cond(n));
        self.args.push(Arg::Int(v));
    }
    fn cursor(&mut self, c: (i64, String)) {
        let n = self.next();
        self.conds.push(format!(
            "(created_at < ${n} OR (created_at = ${n} AND id < ${}))",
            n + 1
        ));
        self.args.push(Arg::Int(c.0));
        self.args.push(Arg::Text(c.1));
    }
    fn where_clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }
    async fn fetch(self, pool: &AnyPool, sql: String) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in self.args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(pool).await
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path` or `postgres://…`) and migrates the schema.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Kind::Postgres
        } else if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL '{url}' (expected sqlite://PATH or postgres://…)").into(),
            ));
        };
        let url = match kind {
            // Create the file if it does not exist.
            Kind::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == Kind::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == Kind::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: a commit survives a
                        // killed server (the WAL is written before the commit returns).
                        sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous=NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout=10000").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = Db { pool, kind };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let sequence_key = match self.kind {
            Kind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Kind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let migrations: [(i64, String); 1] = [(
            1,
            include_str!("../migrations/0001_init.sql").replace("{{SEQUENCE_KEY}}", sequence_key),
        )];
        sqlx::query("CREATE TABLE IF NOT EXISTS weir_migrations (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        if self.kind == Kind::Postgres {
            // One migrating server at a time.
            sqlx::query("LOCK TABLE weir_migrations IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let done: Vec<i64> = sqlx::query("SELECT version FROM weir_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for (version, sql) in &migrations {
            if done.contains(version) {
                continue;
            }
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // Our own migration text with a fixed substitution: no outside input.
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO weir_migrations (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Proposes a flow run snapshot: created, or updated unless it is final.
    pub async fn apply_flow_run(&self, r: &FlowRunRecord) -> Result<Applied, ApiError> {
        let sql = format!(
            "INSERT INTO flow_runs ({FLOW_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, started_at = excluded.started_at,
                 ended_at = excluded.ended_at, error = excluded.error
             WHERE flow_runs.state NOT IN {FINAL} OR flow_runs.state = excluded.state"
        );
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.id.to_string())
            .bind(r.flow_name.clone())
            .bind(r.flow_path.clone())
            .bind(r.parent_flow_run_id.map(|i| i.to_string()))
            .bind(r.parent_task_run_id.map(|i| i.to_string()))
            .bind(r.state.as_str())
            .bind(r.parameters.to_string())
            .bind(r.created_at)
            .bind(r.started_at)
            .bind(r.ended_at)
            .bind(r.error.clone())
            .bind(r.hostname.clone())
            .bind(r.pid as i64)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            let current: String = sqlx::query("SELECT state FROM flow_runs WHERE id = $1")
                .bind(r.id.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            tx.rollback().await?;
            return Ok(Applied::Rejected {
                current: current.parse().map_err(|e| ApiError::Internal(format!("{e}")))?,
            });
        }
        sqlx::query("INSERT INTO flows (name, path, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(r.flow_name.clone())
            .bind(r.flow_path.clone())
            .bind(r.created_at)
            .execute(&mut *tx)
            .await?;
        for tag in &r.tags {
            sqlx::query("INSERT INTO flow_run_tags (flow_run_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(r.id.to_string())
                .bind(tag.clone())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(r.state.as_str())
        .bind(r.ended_at.or(r.started_at).unwrap_or(r.created_at))
        .bind(r.error.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Applied::Accepted)
    }

    /// Proposes a task run snapshot, with the same rule as flow runs.
    pub async fn apply_task_run(&self, r: &TaskRunRecord) -> Result<Applied, ApiError> {
        let sql = format!(
            "INSERT INTO task_runs ({TASK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
                 cache_status = excluded.cache_status, cache_key = excluded.cache_key,
                 started_at = excluded.started_at, ended_at = excluded.ended_at, error = excluded.error,
                 history = excluded.history
             WHERE task_runs.state NOT IN {FINAL} OR task_runs.state = excluded.state"
        );
        let history = serde_json::to_string(&r.history).map_err(|e| ApiError::Internal(e.to_string()))?;
        let res = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.id.to_string())
            .bind(r.flow_run_id.map(|i| i.to_string()))
            .bind(r.task_name.clone())
            .bind(r.task_path.clone())
            .bind(r.state.as_str())
            .bind(r.attempt as i64)
            .bind(r.cache_status.as_str())
            .bind(r.cache_key.clone())
            .bind(r.created_at)
            .bind(r.started_at)
            .bind(r.ended_at)
            .bind(r.error.clone())
            .bind(history)
            .execute(&self.pool)
            .await?;
        if res.rows_affected() == 0 {
            let current: String = sqlx::query("SELECT state FROM task_runs WHERE id = $1")
                .bind(r.id.to_string())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            return Ok(Applied::Rejected {
                current: current.parse().map_err(|e| ApiError::Internal(format!("{e}")))?,
            });
        }
        Ok(Applied::Accepted)
    }

    pub async fn insert_state(&self, s: &StateRecord) -> Result<(), ApiError> {
        let Some(flow) = s.flow_run_id else { return Ok(()) };
        if s.task_run_id.is_some() {
            // Task run states travel inside task run snapshots.
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(flow.to_string())
        .bind(s.state.as_str())
        .bind(s.at)
        .bind(s.message.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts a log line once: a client retrying a batch does not duplicate it.
    pub async fn insert_log(&self, l: &LogRecord) -> Result<(), ApiError> {
        let dedupe = blake3::hash(
            serde_json::to_string(l)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .as_bytes(),
        )
        .to_hex()
        .to_string();
        sqlx::query(
            "INSERT INTO logs (dedupe, flow_run_id, task_run_id, at, level, target, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedupe) DO NOTHING",
        )
        .bind(dedupe)
        .bind(l.flow_run_id.map(|i| i.to_string()))
        .bind(l.task_run_id.map(|i| i.to_string()))
        .bind(l.at)
        .bind(l.level.clone())
        .bind(l.target.clone())
        .bind(l.message.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tags of a page of runs in one query, not one per run.
    async fn fill_tags(&self, runs: &mut [FlowRunRecord]) -> Result<(), sqlx::Error> {
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

    pub async fn list_flow_runs(&self, f: FlowRunFilter) -> Result<(Vec<FlowRunRecord>, Option<String>), ApiError> {
        let mut q = Query::new();
        if let Some(s) = f.state {
            q.text(|n| format!("state = ${n}"), s.as_str().to_string());
        }
        if let Some(flow) = f.flow {
            q.text(|n| format!("flow_name = ${n}"), flow);
        }
        if let Some(tag) = f.tag {
            q.text(
                |n| format!("id IN (SELECT flow_run_id FROM flow_run_tags WHERE tag = ${n})"),
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

    pub async fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRecord, ApiError> {
        let sql = format!("SELECT {FLOW_COLS} FROM flow_runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no flow run {id}")))?;
        let mut r = flow_run(&row)?;
        r.tags = self.tags_of(&r.id.to_string()).await?;
        Ok(r)
    }

    pub async fn flow_run_states(&self, id: FlowRunId) -> Result<Vec<StateRecord>, ApiError> {
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

    pub async fn list_task_runs(
        &self,
        flow_run: Option<FlowRunId>,
        state: Option<State>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<TaskRunRecord>, Option<String>), ApiError> {
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

    pub async fn task_run(&self, id: TaskRunId) -> Result<TaskRunRecord, ApiError> {
        let sql = format!("SELECT {TASK_COLS} FROM task_runs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no task run {id}")))?;
        Ok(task_run(&row)?)
    }

    /// Log lines of a flow run after sequence number `after`, oldest first.
    pub async fn logs(&self, flow_run: FlowRunId, after: i64, limit: usize) -> Result<Vec<(i64, LogRecord)>, ApiError> {
        let rows = sqlx::query(
            "SELECT seq, flow_run_id, task_run_id, at, level, target, message FROM logs
             WHERE flow_run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(flow_run.to_string())
        .bind(after)
        .bind(limit.clamp(1, 5000) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("seq")?,
                    LogRecord {
                        flow_run_id: opt(r.try_get("flow_run_id")?)?,
                        task_run_id: opt(r.try_get("task_run_id")?)?,
                        at: r.try_get("at")?,
                        level: r.try_get("level")?,
                        target: r.try_get("target")?,
                        message: r.try_get("message")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Flows by name, `limit` after `after` (a name).
    pub async fn flows(&self, after: &str, limit: usize) -> Result<Vec<(String, String, i64)>, ApiError> {
        let rows = sqlx::query("SELECT name, path, created_at FROM flows WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("path")?, r.try_get("created_at")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn put_variable(&self, name: &str, value: &serde_json::Value, now: i64) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO variables (name, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(value.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn variable(&self, name: &str) -> Result<(serde_json::Value, i64), ApiError> {
        let row = sqlx::query("SELECT value, updated_at FROM variables WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no variable '{name}'")))?;
        let raw: String = row.try_get("value")?;
        Ok((
            serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
            row.try_get("updated_at")?,
        ))
    }

    /// Variables by name, `limit` after `after` (a name).
    pub async fn variables(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value, i64)>, ApiError> {
        let rows = sqlx::query("SELECT name, value, updated_at FROM variables WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let raw: String = r.try_get("value")?;
                Ok((
                    r.try_get("name")?,
                    serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
                    r.try_get("updated_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn delete_variable(&self, name: &str) -> Result<bool, ApiError> {
        let r = sqlx::query("DELETE FROM variables WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
