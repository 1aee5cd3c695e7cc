//! The REST API under `/api/v1`, with its OpenAPI document generated from these handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::{FlowRunId, FlowRunRecord, LogRecord, State, StateRecord, TaskRunId, TaskRunRecord};

use crate::db::{Applied, Db, FlowRunFilter};
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Woken when log lines arrive, for `follow`.
    pub new_logs: Arc<Notify>,
}

pub use weir_types::Event;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Rejection {
    /// Position of the event in the batch.
    pub index: usize,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct BatchResult {
    pub accepted: usize,
    /// Proposals the orchestration rules refused (e.g. a Completed run cannot run again).
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateProposal {
    pub state: State,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct FlowRunPage {
    pub items: Vec<FlowRunRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskRunPage {
    pub items: Vec<TaskRunRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LogLine {
    pub seq: i64,
    #[serde(flatten)]
    pub record: LogRecord,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<LogLine>,
    /// Pass as `after` to get the lines that follow.
    pub last_seq: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Flow {
    pub name: String,
    pub path: String,
    pub created_at: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct FlowPage {
    pub items: Vec<Flow>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct VariablePage {
    pub items: Vec<Variable>,
    pub next_cursor: Option<String>,
}

/// Paging of name-ordered lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NamePageQuery {
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Variable {
    pub name: String,
    pub value: serde_json::Value,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableValue {
    pub value: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FlowRunQuery {
    /// Only runs in this state.
    pub state: Option<String>,
    /// Only runs of this flow.
    pub flow: Option<String>,
    /// Only runs with this tag.
    pub tag: Option<String>,
    /// Only runs created at or after this time (µs since the epoch).
    pub created_after: Option<i64>,
    /// Only runs created before this time (µs since the epoch).
    pub created_before: Option<i64>,
    /// Only subflow runs of this flow run.
    pub parent: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskRunQuery {
    pub flow_run_id: Option<String>,
    pub state: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Lines after this sequence number (default: from the start).
    pub after: Option<i64>,
    pub limit: Option<usize>,
    /// Wait up to this many seconds (max 60) for new lines when there are none yet.
    pub follow: Option<u64>,
}

fn state_param(s: Option<String>) -> Result<Option<State>, ApiError> {
    s.map(|s| {
        s.parse()
            .map_err(|e: weir_types::state::UnknownState| ApiError::invalid(e.to_string(), Some("state".into())))
    })
    .transpose()
}

fn id_param<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            format!("'{s}' is not a {what} id (a UUID)"),
            Some(what.replace(' ', "_")),
        )
    })
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(
            format!("{field} is longer than {max} bytes"),
            Some(field.to_string()),
        ));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid(
            format!("{field} contains a NUL character"),
            Some(field.to_string()),
        ));
    }
    Ok(())
}

fn validate(e: &Event, i: usize) -> Result<(), ApiError> {
    let at = |f: &str| format!("events[{i}].record.{f}");
    let check = |f: &str, v: &str, max: usize| check_text(&at(f), v, max);
    match e {
        Event::FlowRun(r) => {
            check("flow_name", &r.flow_name, 256)?;
            check("flow_path", &r.flow_path, 1024)?;
            check("hostname", &r.hostname, 256)?;
            if let Some(err) = &r.error {
                check("error", err, 65536)?;
            }
            for t in &r.tags {
                check("tags", t, 128)?;
            }
        }
        Event::TaskRun(r) => {
            check("task_name", &r.task_name, 256)?;
            check("task_path", &r.task_path, 1024)?;
            if let Some(err) = &r.error {
                check("error", err, 65536)?;
            }
            if let Some(k) = &r.cache_key {
                check("cache_key", k, 1024)?;
            }
        }
        Event::State(s) => {
            if let Some(m) = &s.message {
                check("message", m, 65536)?;
            }
        }
        Event::Log(l) => {
            check("message", &l.message, 65536)?;
            check("level", &l.level, 16)?;
            check("target", &l.target, 256)?;
        }
    }
    Ok(())
}

/// Records a batch of events. Each run snapshot is a state proposal the server accepts or
/// rejects; retrying a batch after a lost response changes nothing.
#[utoipa::path(post, path = "/events", request_body = EventBatch,
    responses((status = 200, body = BatchResult), (status = 422, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn post_events(
    AxState(app): AxState<AppState>,
    ApiJson(batch): ApiJson<EventBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    for (i, e) in batch.events.iter().enumerate() {
        validate(e, i)?;
    }
    let mut result = BatchResult {
        accepted: 0,
        rejected: Vec::new(),
    };
    let mut logs = false;
    for (index, e) in batch.events.iter().enumerate() {
        let applied = match e {
            Event::FlowRun(r) => app.db.apply_flow_run(r).await?,
            Event::TaskRun(r) => app.db.apply_task_run(r).await?,
            Event::State(s) => {
                app.db.insert_state(s).await?;
                Applied::Accepted
            }
            Event::Log(l) => {
                app.db.insert_log(l).await?;
                logs = true;
                Applied::Accepted
            }
        };
        match applied {
            Applied::Accepted => result.accepted += 1,
            Applied::Rejected { current } => result.rejected.push(Rejection {
                index,
                code: "conflict".into(),
                message: format!("the run is {current}, a final state; it cannot change"),
            }),
        }
    }
    if logs {
        app.new_logs.notify_waiters();
    }
    Ok(Json(result))
}

/// Lists flow runs, newest first.
#[utoipa::path(get, path = "/flow_runs", params(FlowRunQuery),
    responses((status = 200, body = FlowRunPage), (status = 422, body = ErrorBody)))]
async fn list_flow_runs(
    AxState(app): AxState<AppState>,
    Query(q): Query<FlowRunQuery>,
) -> Result<Json<FlowRunPage>, ApiError> {
    let filter = FlowRunFilter {
        state: state_param(q.state)?,
        flow: q.flow,
        tag: q.tag,
        created_after: q.created_after,
        created_before: q.created_before,
        parent: q.parent.as_deref().map(|p| id_param(p, "parent")).transpose()?,
        limit: q.limit.unwrap_or(50),
        cursor: q.cursor,
    };
    let (items, next_cursor) = app.db.list_flow_runs(filter).await?;
    Ok(Json(FlowRunPage { items, next_cursor }))
}

/// Records one flow run (creates it, or proposes a new snapshot of it).
#[utoipa::path(post, path = "/flow_runs", request_body = FlowRunRecord,
    responses((status = 200, body = FlowRunRecord), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn post_flow_run(
    AxState(app): AxState<AppState>,
    ApiJson(r): ApiJson<FlowRunRecord>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    validate(&Event::FlowRun(r.clone()), 0)?;
    match app.db.apply_flow_run(&r).await? {
        Applied::Accepted => Ok(Json(app.db.flow_run(r.id).await?)),
        Applied::Rejected { current } => Err(ApiError::Conflict(format!(
            "flow run {} is {current}, a final state; it cannot become {}",
            r.id, r.state
        ))),
    }
}

/// One flow run.
#[utoipa::path(get, path = "/flow_runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody)))]
async fn get_flow_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    Ok(Json(app.db.flow_run(id_param(&id, "flow run")?).await?))
}

/// Proposes a new state for a flow run: 409 if the rules refuse it (a Completed run cannot
/// run again; a Cancelled one stays cancelled). Proposing the state it already has is a no-op.
#[utoipa::path(post, path = "/flow_runs/{id}/state", params(("id" = String, Path)), request_body = StateProposal,
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_flow_run_state(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<StateProposal>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    let id: FlowRunId = id_param(&id, "flow run")?;
    let mut run = app.db.flow_run(id).await?;
    if let Some(m) = &p.message {
        check_text("message", m, 65536)?;
    }
    let now = weir_types::time::now_micros();
    run.state = p.state;
    if p.state == State::Running && run.started_at.is_none() {
        run.started_at = Some(now);
    }
    if p.state.is_final() {
        run.ended_at = Some(now);
        run.error = p.message.clone();
    }
    match app.db.apply_flow_run(&run).await? {
        Applied::Accepted => Ok(Json(app.db.flow_run(id).await?)),
        Applied::Rejected { current } => Err(ApiError::Conflict(format!(
            "flow run {id} is {current}, a final state; it cannot become {}",
            p.state
        ))),
    }
}

/// The state history of a flow run.
#[utoipa::path(get, path = "/flow_runs/{id}/states", params(("id" = String, Path)),
    responses((status = 200, body = Vec<StateRecord>), (status = 404, body = ErrorBody)))]
async fn flow_run_states(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<StateRecord>>, ApiError> {
    Ok(Json(app.db.flow_run_states(id_param(&id, "flow run")?).await?))
}

/// Lists task runs, newest first.
#[utoipa::path(get, path = "/task_runs", params(TaskRunQuery),
    responses((status = 200, body = TaskRunPage), (status = 422, body = ErrorBody)))]
async fn list_task_runs(
    AxState(app): AxState<AppState>,
    Query(q): Query<TaskRunQuery>,
) -> Result<Json<TaskRunPage>, ApiError> {
    let flow_run = q.flow_run_id.as_deref().map(|f| id_param(f, "flow run")).transpose()?;
    let (items, next_cursor) = app
        .db
        .list_task_runs(flow_run, state_param(q.state)?, q.limit.unwrap_or(100), q.cursor)
        .await?;
    Ok(Json(TaskRunPage { items, next_cursor }))
}

/// One task run.
#[utoipa::path(get, path = "/task_runs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TaskRunRecord), (status = 404, body = ErrorBody)))]
async fn get_task_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRunRecord>, ApiError> {
    let id: TaskRunId = id_param(&id, "task run")?;
    Ok(Json(app.db.task_run(id).await?))
}

/// Log lines of a flow run and its task runs, in order; with `follow`, waits for new ones.
#[utoipa::path(get, path = "/flow_runs/{id}/logs", params(("id" = String, Path), LogQuery),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody)))]
async fn flow_run_logs(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let id: FlowRunId = id_param(&id, "flow run")?;
    app.db.flow_run(id).await?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(q.follow.unwrap_or(0).min(60));
    loop {
        // Subscribe before querying, so a line arriving in between still wakes us.
        let notified = app.new_logs.notified();
        let lines = app.db.logs(id, after, limit).await?;
        if !lines.is_empty() || tokio::time::Instant::now() >= deadline {
            let last_seq = lines.last().map(|(s, _)| *s).unwrap_or(after);
            let items = lines.into_iter().map(|(seq, record)| LogLine { seq, record }).collect();
            return Ok(Json(LogPage { items, last_seq }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            continue;
        }
    }
}

/// Flows seen by the server, by name.
#[utoipa::path(get, path = "/flows", params(NamePageQuery), responses((status = 200, body = FlowPage)))]
async fn list_flows(
    AxState(app): AxState<AppState>,
    Query(q): Query<NamePageQuery>,
) -> Result<Json<FlowPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let flows = app.db.flows(q.cursor.as_deref().unwrap_or(""), limit + 1).await?;
    let mut items: Vec<Flow> = flows
        .into_iter()
        .map(|(name, path, created_at)| Flow { name, path, created_at })
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|f| f.name.clone()).unwrap_or_default()
    });
    Ok(Json(FlowPage { items, next_cursor }))
}

fn check_var_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("'{name}' is not a variable name (letters, digits, '_', '-', '.'; at most 128)"),
            Some("name".into()),
        ))
    }
}

/// Variables, by name.
#[utoipa::path(get, path = "/variables", params(NamePageQuery), responses((status = 200, body = VariablePage)))]
async fn list_variables(
    AxState(app): AxState<AppState>,
    Query(q): Query<NamePageQuery>,
) -> Result<Json<VariablePage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut items: Vec<Variable> = app
        .db
        .variables(q.cursor.as_deref().unwrap_or(""), limit + 1)
        .await?
        .into_iter()
        .map(|(name, value, updated_at)| Variable {
            name,
            value,
            updated_at,
        })
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|v| v.name.clone()).unwrap_or_default()
    });
    Ok(Json(VariablePage { items, next_cursor }))
}

/// One variable.
#[utoipa::path(get, path = "/variables/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Variable), (status = 404, body = ErrorBody)))]
async fn get_variable(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<Json<Variable>, ApiError> {
    check_var_name(&name)?;
    let (value, updated_at) = app.db.variable(&name).await?;
    Ok(Json(Variable {
        name,
        value,
        updated_at,
    }))
}

/// Sets a variable (a small named JSON value, at most 64 KiB).
#[utoipa::path(put, path = "/variables/{name}", params(("name" = String, Path)), request_body = VariableValue,
    responses((status = 200, body = Variable), (status = 422, body = ErrorBody)))]
async fn put_variable(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(v): ApiJson<VariableValue>,
) -> Result<Json<Variable>, ApiError> {
    check_var_name(&name)?;
    if v.value.to_string().len() > 65536 {
        return Err(ApiError::invalid(
            "a variable holds at most 64 KiB of JSON",
            Some("value".into()),
        ));
    }
    let now = weir_types::time::now_micros();
    app.db.put_variable(&name, &v.value, now).await?;
    Ok(Json(Variable {
        name,
        value: v.value,
        updated_at: now,
    }))
}

/// Deletes a variable.
#[utoipa::path(delete, path = "/variables/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_variable(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    check_var_name(&name)?;
    if app.db.delete_variable(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no variable '{name}'")))
    }
}

/// The API's routes and its OpenAPI description, built from the same handlers.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(list_flow_runs, post_flow_run))
        .routes(routes!(get_flow_run))
        .routes(routes!(set_flow_run_state))
        .routes(routes!(flow_run_states))
        .routes(routes!(flow_run_logs))
        .routes(routes!(list_task_runs))
        .routes(routes!(get_task_run))
        .routes(routes!(list_flows))
        .routes(routes!(list_variables))
        .routes(routes!(get_variable, put_variable, delete_variable))
}
