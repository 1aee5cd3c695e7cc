//! `/task_runs`: listing and reading task runs.

use axum::Json;
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::{TaskRunId, TaskRunRecord};

use super::AppState;
use super::params::{ApiPath as Path, ApiQuery, id_param, in_range, state_param};
use crate::error::{ApiError, ErrorBody};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_task_runs))
        .routes(routes!(get_task_run))
        .routes(routes!(cache_counts))
}

/// How many task runs had each cache status.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CacheCount {
    /// `hit`, `miss`, `refreshed`, `disabled`, …
    pub cache_status: String,
    #[schema(minimum = 0)]
    pub count: i64,
}

/// How often task runs hit or missed the cache (`weir cache stats`).
#[utoipa::path(get, path = "/cache_counts", responses((status = 200, body = Vec<CacheCount>)))]
async fn cache_counts(AxState(app): AxState<AppState>) -> Result<Json<Vec<CacheCount>>, ApiError> {
    let counts = app.db.cache_counts().await?;
    Ok(Json(
        counts
            .into_iter()
            .map(|(cache_status, count)| CacheCount { cache_status, count })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskRunPage {
    pub items: Vec<TaskRunRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskRunQuery {
    /// Only task runs of this flow run.
    #[param(value_type = uuid::Uuid, required = false)]
    pub flow_run_id: Option<String>,
    /// Only task runs in this state.
    #[param(value_type = weir_types::State, required = false)]
    pub state: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = String, required = false, pattern = r"^-?[0-9]{1,19}:[0-9a-fA-F-]{36}$")]
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
#[utoipa::path(get, path = "/task_runs/{id}", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    responses((status = 200, body = TaskRunRecord), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_task_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRunRecord>, ApiError> {
    let id: TaskRunId = id_param(&id, "id", "task run")?;
    Ok(Json(app.db.task_run(id).await?))
}
