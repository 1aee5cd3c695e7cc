//! Applying a batch of events (run snapshots, states, log lines) in one transaction, with
//! multi-row statements; and reading log lines back.
//!
//! The batch is walked in order against the runs' stored states ([`super::rules`]) to give
//! every event its verdict; then each run's last accepted snapshot is upserted (one row per
//! run, many runs per statement), guarded by the same rule in SQL.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyArguments;
use sqlx::{Any, Row};
use weir_types::{Event, FlowRunId, FlowRunRecord, LogRecord, State, TaskRunId, TaskRunRecord};

use super::query::{bad_row, opt, parse};
use super::rules::{Decision, decide_flow, decide_state, decide_task, flow_guard, task_guard};
use super::{Db, DbError, Kind};

/// An event the rules refused, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    /// `conflict` (contradicts a final state), `stale` (behind the stored state), `not_found`.
    pub code: &'static str,
    pub message: String,
}

/// Flow and deployment names of runs of a deployment, by run.
type DeploymentFlows = HashMap<FlowRunId, (String, String)>;

/// Bound parameters per statement: under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMS: usize = 8000;

const FLOW_COLS: &[&str] = &[
    "id",
    "flow_name",
    "flow_path",
    "parent_flow_run_id",
    "parent_task_run_id",
    "state",
    "parameters",
    "created_at",
    "started_at",
    "ended_at",
    "error",
    "hostname",
    "pid",
];
const TASK_COLS: &[&str] = &[
    "id",
    "flow_run_id",
    "task_name",
    "task_path",
    "state",
    "attempt",
    "cache_status",
    "cache_key",
    "created_at",
    "started_at",
    "ended_at",
    "error",
    "history",
];

/// `($1, $2), ($3, $4), …`: `rows` tuples of `cols` placeholders. On SQLite, `(?, ?), (?, ?)`
/// instead: SQLite finds a numbered parameter's name by walking a list of all of them, and
/// sqlx asks for every parameter's name when it binds, so binding `$n`s costs the square of
/// their number (half the time of a 1,000-event batch went there); plain `?`s have no names
/// and bind in order.
fn placeholders(kind: Kind, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match kind {
                Kind::Sqlite => s.push('?'),
                Kind::Postgres => {
                    s.push('$');
                    s.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

type Q<'q> = sqlx::query::Query<'q, Any, AnyArguments>;

/// One history line of a flow run.
struct HistoryRow<'a> {
    flow_run_id: FlowRunId,
    state: State,
    at: i64,
    message: Option<&'a str>,
}

/// What a batch will write, gathered by walking it.
#[derive(Default)]
struct Plan<'a> {
    /// The last accepted snapshot of each run, in first-seen order.
    flows: Vec<&'a FlowRunRecord>,
    tasks: Vec<&'a TaskRunRecord>,
    history: Vec<HistoryRow<'a>>,
    logs: Vec<&'a LogRecord>,
    /// Events accepted on the assumption that a run's snapshot lands (undone if it does not).
    flow_events: HashMap<FlowRunId, Vec<usize>>,
    task_events: HashMap<TaskRunId, Vec<usize>>,
}

impl Db {
    /// Applies a batch: every event gets a verdict; the accepted ones are written in one
    /// transaction. Returns the refused events.
    pub async fn apply_events(&self, events: &[Event]) -> Result<Vec<Refusal>, DbError> {
        let (mut flows, deployment_flows) = self.flow_states(events).await?;
        let mut tasks = self.task_states(events).await?;
        let mut refused = Vec::new();
        let mut plan = Plan::default();
        let mut flow_slot: HashMap<FlowRunId, usize> = HashMap::new();
        let mut task_slot: HashMap<TaskRunId, usize> = HashMap::new();
        let mut refuse = |index, d: Decision| {
            if let Decision::Reject { code, message } = d {
                refused.push(Refusal { index, code, message });
            }
        };
        for (i, e) in events.iter().enumerate() {
            match e {
                // A run of a deployment is made by the server for one flow: a snapshot naming
                // another flow is someone else's run id.
                Event::FlowRun(r)
                    if deployment_flows
                        .get(&r.id)
                        .is_some_and(|(flow, _)| flow != &r.flow_name) =>
                {
                    let (flow, dep) = &deployment_flows[&r.id];
                    refuse(
                        i,
                        Decision::Reject {
                            code: "conflict",
                            message: format!(
                                "run {} is a run of flow '{flow}' (deployment '{dep}'); this snapshot names flow '{}'",
                                r.id, r.flow_name
                            ),
                        },
                    )
                }
                Event::FlowRun(r) => match decide_flow(flows.get(&r.id).copied(), r.state) {
                    Decision::Write => {
                        flows.insert(r.id, r.state);
                        match flow_slot.get(&r.id) {
                            Some(&s) => plan.flows[s] = r,
                            None => {
                                flow_slot.insert(r.id, plan.flows.len());
                                plan.flows.push(r);
                            }
                        }
                        plan.history.push(HistoryRow {
                            flow_run_id: r.id,
                            state: r.state,
                            at: r.ended_at.or(r.started_at).unwrap_or(r.created_at),
                            message: r.error.as_deref(),
                        });
                        plan.flow_events.entry(r.id).or_default().push(i);
                    }
                    Decision::NoOp => {}
                    d => refuse(i, d),
                },
                Event::TaskRun(r) => match decide_task(tasks.get(&r.id).copied(), (r.state, r.attempt)) {
                    Decision::Write => {
                        tasks.insert(r.id, (r.state, r.attempt));
                        match task_slot.get(&r.id) {
                            Some(&s) => plan.tasks[s] = r,
                            None => {
                                task_slot.insert(r.id, plan.tasks.len());
                                plan.tasks.push(r);
                            }
                        }
                        plan.task_events.entry(r.id).or_default().push(i);
                    }
                    Decision::NoOp => {}
                    d => refuse(i, d),
                },
                Event::State(s) => match (s.flow_run_id, s.task_run_id) {
                    // Task run states travel inside task run snapshots: only judge the
                    // state (nothing is written for it).
                    (_, Some(t)) => refuse(i, decide_state(tasks.get(&t).map(|(state, _)| *state), s.state)),
                    (Some(f), None) => match decide_state(flows.get(&f).copied(), s.state) {
                        Decision::Write => plan.history.push(HistoryRow {
                            flow_run_id: f,
                            state: s.state,
                            at: s.at,
                            message: s.message.as_deref(),
                        }),
                        Decision::NoOp => {}
                        d => refuse(i, d),
                    },
                    (None, None) => refuse(
                        i,
                        Decision::Reject {
                            code: "not_found",
                            message: "a state event names no run".into(),
                        },
                    ),
                },
                // A line belongs to a known run: its flow run, its task run (a task called
                // outside any flow has only that), or both.
                Event::Log(l) => match (l.flow_run_id, l.task_run_id) {
                    (Some(f), _) if !flows.contains_key(&f) => refuse(
                        i,
                        Decision::Reject {
                            code: "not_found",
                            message: format!("no flow run {f} (send its snapshot first)"),
                        },
                    ),
                    (_, Some(t)) if !tasks.contains_key(&t) => refuse(
                        i,
                        Decision::Reject {
                            code: "not_found",
                            message: format!("no task run {t} (send its snapshot first)"),
                        },
                    ),
                    (None, None) => refuse(
                        i,
                        Decision::Reject {
                            code: "not_found",
                            message: "a log line names no run".into(),
                        },
                    ),
                    _ => plan.logs.push(l),
                },
            }
        }
        self.write(plan, &mut refused).await?;
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }

    /// The stored state of every flow run the batch names.
    /// The stored state of every flow run the batch names; and the flow and deployment of
    /// those that are runs of a deployment.
    async fn flow_states(&self, events: &[Event]) -> Result<(HashMap<FlowRunId, State>, DeploymentFlows), sqlx::Error> {
        let ids: HashSet<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::FlowRun(r) => Some(r.id),
                Event::State(s) if s.task_run_id.is_none() => s.flow_run_id,
                Event::Log(l) => l.flow_run_id,
                _ => None,
            })
            .map(|id| id.to_string())
            .collect();
        let mut out = HashMap::new();
        let mut deployed = HashMap::new();
        for row in self
            .select_in(
                "SELECT id, state, flow_name, deployment FROM flow_runs WHERE id IN",
                ids,
            )
            .await?
        {
            let id: FlowRunId = parse(row.try_get(0)?)?;
            out.insert(id, parse(row.try_get(1)?)?);
            if let Some(dep) = row.try_get::<Option<String>, _>(3)? {
                deployed.insert(id, (row.try_get(2)?, dep));
            }
        }
        Ok((out, deployed))
    }

    async fn task_states(&self, events: &[Event]) -> Result<HashMap<TaskRunId, (State, u32)>, sqlx::Error> {
        let ids: HashSet<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::TaskRun(r) => Some(r.id),
                Event::State(s) => s.task_run_id,
                Event::Log(l) => l.task_run_id,
                _ => None,
            })
            .map(|id| id.to_string())
            .collect();
        let mut out = HashMap::new();
        for row in self
            .select_in("SELECT id, state, attempt FROM task_runs WHERE id IN", ids)
            .await?
        {
            let attempt: i64 = row.try_get(2)?;
            out.insert(
                parse(row.try_get(0)?)?,
                (parse(row.try_get(1)?)?, attempt.clamp(0, u32::MAX as i64) as u32),
            );
        }
        Ok(out)
    }

    /// `sql (…ids…)`, in chunks.
    async fn select_in(&self, sql: &str, ids: HashSet<String>) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let ids: Vec<String> = ids.into_iter().collect();
        let mut rows = Vec::new();
        for chunk in ids.chunks(MAX_PARAMS) {
            // One tuple of the whole list, `($1, $2, …)`: a row of `chunk.len()` columns.
            let list = placeholders(self.kind, 1, chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("{sql} {list}")));
            for id in chunk {
                q = q.bind(id.as_str());
            }
            rows.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    async fn write(&self, plan: Plan<'_>, refused: &mut Vec<Refusal>) -> Result<(), DbError> {
        let _one_writer = match self.kind {
            super::Kind::Sqlite => Some(self.write_lock.lock().await),
            super::Kind::Postgres => None,
        };
        let mut tx = self.pool.begin().await?;
        let mut landed_flows: HashSet<String> = HashSet::new();
        let per = MAX_PARAMS / FLOW_COLS.len();
        for chunk in plan.flows.chunks(per) {
            let sql = format!(
                "INSERT INTO flow_runs ({}) VALUES {} ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 started_at = excluded.started_at, ended_at = excluded.ended_at, error = excluded.error, \
                 flow_path = excluded.flow_path, hostname = excluded.hostname, pid = excluded.pid \
                 WHERE {} RETURNING id",
                FLOW_COLS.join(", "),
                placeholders(self.kind, chunk.len(), FLOW_COLS.len()),
                flow_guard()
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.id.to_string())
                    .bind(r.flow_name.as_str())
                    .bind(r.flow_path.as_str())
                    .bind(r.parent_flow_run_id.map(|i| i.to_string()))
                    .bind(r.parent_task_run_id.map(|i| i.to_string()))
                    .bind(r.state.as_str())
                    .bind(r.parameters.to_string())
                    .bind(r.created_at)
                    .bind(r.started_at)
                    .bind(r.ended_at)
                    .bind(r.error.as_deref())
                    .bind(r.hostname.as_str())
                    .bind(r.pid as i64);
            }
            for row in q.fetch_all(&mut *tx).await? {
                landed_flows.insert(row.try_get(0)?);
            }
        }
        // A snapshot the SQL guard refused lost a race with another request: say so.
        let lost = |id: String, events: Option<&Vec<usize>>, refused: &mut Vec<Refusal>| {
            for &index in events.into_iter().flatten() {
                refused.push(Refusal {
                    index,
                    code: "conflict",
                    message: format!("run {id} was changed by another request at the same time; send it again"),
                });
            }
        };
        let mut lost_flows = HashSet::new();
        for r in &plan.flows {
            let id = r.id.to_string();
            if !landed_flows.contains(&id) {
                lost_flows.insert(r.id);
                lost(id, plan.flow_events.get(&r.id), refused);
            }
        }
        let landed: Vec<&FlowRunRecord> = plan
            .flows
            .iter()
            .copied()
            .filter(|r| !lost_flows.contains(&r.id))
            .collect();

        let mut names: Vec<(&str, &str, i64)> = Vec::new();
        let mut seen = HashSet::new();
        for r in &landed {
            if seen.insert(r.flow_name.as_str()) {
                names.push((&r.flow_name, &r.flow_path, r.created_at));
            }
        }
        for chunk in names.chunks(MAX_PARAMS / 3) {
            let sql = format!(
                "INSERT INTO flows (name, path, created_at) VALUES {} ON CONFLICT (name) DO NOTHING",
                placeholders(self.kind, chunk.len(), 3)
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (n, p, c) in chunk {
                q = q.bind(*n).bind(*p).bind(*c);
            }
            q.execute(&mut *tx).await?;
        }
        let tags: Vec<(String, &str)> = landed
            .iter()
            .flat_map(|r| r.tags.iter().map(|t| (r.id.to_string(), t.as_str())))
            .collect();
        for chunk in tags.chunks(MAX_PARAMS / 2) {
            let sql = format!(
                "INSERT INTO flow_run_tags (flow_run_id, tag) VALUES {} ON CONFLICT DO NOTHING",
                placeholders(self.kind, chunk.len(), 2)
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, t) in chunk {
                q = q.bind(id.as_str()).bind(*t);
            }
            q.execute(&mut *tx).await?;
        }
        let history: Vec<&HistoryRow> = plan
            .history
            .iter()
            .filter(|h| !lost_flows.contains(&h.flow_run_id))
            .collect();
        for chunk in history.chunks(MAX_PARAMS / 4) {
            let sql = format!(
                "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES {} ON CONFLICT DO NOTHING",
                placeholders(self.kind, chunk.len(), 4)
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for h in chunk {
                q = q
                    .bind(h.flow_run_id.to_string())
                    .bind(h.state.as_str())
                    .bind(h.at)
                    .bind(h.message);
            }
            q.execute(&mut *tx).await?;
        }

        let per = MAX_PARAMS / TASK_COLS.len();
        let mut landed_tasks: HashSet<String> = HashSet::new();
        for chunk in plan.tasks.chunks(per) {
            let sql = format!(
                "INSERT INTO task_runs ({}) VALUES {} ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 attempt = excluded.attempt, cache_status = excluded.cache_status, cache_key = excluded.cache_key, \
                 started_at = excluded.started_at, ended_at = excluded.ended_at, error = excluded.error, \
                 history = excluded.history WHERE {} RETURNING id",
                TASK_COLS.join(", "),
                placeholders(self.kind, chunk.len(), TASK_COLS.len()),
                task_guard()
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.id.to_string())
                    .bind(r.flow_run_id.map(|i| i.to_string()))
                    .bind(r.task_name.as_str())
                    .bind(r.task_path.as_str())
                    .bind(r.state.as_str())
                    .bind(r.attempt as i64)
                    .bind(r.cache_status.as_str())
                    .bind(r.cache_key.as_deref())
                    .bind(r.created_at)
                    .bind(r.started_at)
                    .bind(r.ended_at)
                    .bind(r.error.as_deref())
                    .bind(serde_json::to_string(&r.history).map_err(bad_row)?);
            }
            for row in q.fetch_all(&mut *tx).await? {
                landed_tasks.insert(row.try_get(0)?);
            }
        }
        for r in &plan.tasks {
            let id = r.id.to_string();
            if !landed_tasks.contains(&id) {
                lost(id, plan.task_events.get(&r.id), refused);
            }
        }

        for chunk in plan.logs.chunks(MAX_PARAMS / 7) {
            let sql = format!(
                "INSERT INTO logs (dedupe, flow_run_id, task_run_id, at, level, target, message) VALUES {} \
                 ON CONFLICT (dedupe) DO NOTHING",
                placeholders(self.kind, chunk.len(), 7)
            );
            let mut q: Q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for l in chunk {
                // The same line sent twice (a retried batch) is stored once.
                let dedupe = blake3::hash(serde_json::to_string(l).map_err(bad_row)?.as_bytes())
                    .to_hex()
                    .to_string();
                q = q
                    .bind(dedupe)
                    .bind(l.flow_run_id.map(|i| i.to_string()))
                    .bind(l.task_run_id.map(|i| i.to_string()))
                    .bind(l.at)
                    .bind(l.level.as_str())
                    .bind(l.target.as_str())
                    .bind(l.message.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Log lines of a flow run after sequence number `after`, oldest first.
    pub async fn logs(&self, flow_run: FlowRunId, after: i64, limit: usize) -> Result<Vec<(i64, LogRecord)>, DbError> {
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
}
