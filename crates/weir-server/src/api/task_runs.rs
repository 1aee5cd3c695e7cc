//! `/task_runs`: listing and reading task runs.

use axum::Json;
use axum::extract::{Path, State as AxState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::{TaskRunId, TaskRunRecord};

use super::AppState;
use super::params::{ApiQuery, id_param, in_range, state_param};
use crate::error::{ApiError, ErrorBody};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_task_runs))
        .routes(routes!(get_task_run))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskRunPage {
    pub items: Vec<TaskRunRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskRunQuery {
    pub flow_run_id: Option<String>,
    pub state: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Lists task runs, newest first.
#[utoipa::path(get, path = "/task_runs", params(TaskRunQuery),
    responses((status = 200, body = TaskRunPage), (status = 422, body = ErrorBody)))]
async fn list_task_runs(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<TaskRunQuery>,
) -> Result<Json<TaskRunPage>, ApiError> {
    let flow_run = q
        .flow_run_id
        .as_deref()
        .map(|f| id_param(f, "flow_run_id", "flow run"))
        .transpose()?;
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    let (items, next_cursor) = app
        .db
        .list_task_runs(flow_run, state_param(q.state)?, limit, q.cursor)
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
    let id: TaskRunId = id_param(&id, "id", "task run")?;
    Ok(Json(app.db.task_run(id).await?))
}
