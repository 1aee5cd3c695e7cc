//! `/flow_runs`: listing, recording, reading and moving flow runs through their states.

use axum::Json;
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::{Event, FlowRunId, FlowRunRecord, State, StateRecord};

use super::AppState;
use super::events::validate;
use super::params::{ApiPath as Path, ApiQuery, check_text, id_param, in_range, state_param};
use crate::db::FlowRunFilter;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flow_runs, post_flow_run))
        .routes(routes!(get_flow_run))
        .routes(routes!(set_flow_run_state))
        .routes(routes!(flow_run_states))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateProposal {
    pub state: State,
    #[schema(max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub message: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct FlowRunPage {
    pub items: Vec<FlowRunRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlowRunQuery {
    /// Only runs in this state.
    #[param(value_type = State, required = false)]
    pub state: Option<String>,
    /// Only runs of this flow.
    #[param(value_type = String, required = false, max_length = 256, pattern = r"^[^\u0000]*$")]
    pub flow: Option<String>,
    /// Only runs with this tag.
    #[param(value_type = String, required = false, max_length = 128, pattern = r"^[^\u0000]*$")]
    pub tag: Option<String>,
    /// Only runs created at or after this time (µs since the epoch).
    #[param(value_type = i64, required = false)]
    pub created_after: Option<i64>,
    /// Only runs created before this time (µs since the epoch).
    #[param(value_type = i64, required = false)]
    pub created_before: Option<i64>,
    /// Only subflow runs of this flow run.
    #[param(value_type = uuid::Uuid, required = false)]
    pub parent: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = String, required = false, pattern = r"^-?[0-9]{1,19}:[0-9a-fA-F-]{36}$")]
    pub cursor: Option<String>,
}

/// Lists flow runs, newest first.
#[utoipa::path(get, path = "/flow_runs", params(FlowRunQuery),
    responses((status = 200, body = FlowRunPage), (status = 422, body = ErrorBody)))]
async fn list_flow_runs(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<FlowRunQuery>,
) -> Result<Json<FlowRunPage>, ApiError> {
    let filter = FlowRunFilter {
        state: state_param(q.state)?,
        flow: q.flow.map(|f| check_text("flow", &f, 256).map(|()| f)).transpose()?,
        tag: q.tag.map(|t| check_text("tag", &t, 128).map(|()| t)).transpose()?,
        created_after: q.created_after,
        created_before: q.created_before,
        parent: q
            .parent
            .as_deref()
            .map(|p| id_param(p, "parent", "flow run"))
            .transpose()?,
        limit: in_range("limit", q.limit, 1, 500)?.unwrap_or(50) as usize,
        cursor: q.cursor,
    };
    let (items, next_cursor) = app.db.list_flow_runs(filter).await?;
    Ok(Json(FlowRunPage { items, next_cursor }))
}

/// Records one flow run (creates it, or proposes a new snapshot of it).
#[utoipa::path(post, path = "/flow_runs", request_body = FlowRunRecord,
    responses((status = 200, body = FlowRunRecord), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn post_flow_run(
    AxState(app): AxState<AppState>,
    ApiJson(r): ApiJson<FlowRunRecord>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    let id = r.id;
    let event = Event::FlowRun(r);
    validate(&event, "")?;
    propose(&app, id, event).await
}

/// One flow run.
#[utoipa::path(get, path = "/flow_runs/{id}", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_flow_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    Ok(Json(app.db.flow_run(id_param(&id, "id", "flow run")?).await?))
}

/// Proposes a new state for a flow run: 409 if the rules refuse it (a Completed run cannot
/// run again; a Cancelled one stays cancelled; a Running one cannot become Pending).
/// Proposing the final state it already has is a no-op that changes nothing.
#[utoipa::path(post, path = "/flow_runs/{id}/state", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")), request_body = StateProposal,
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_flow_run_state(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<StateProposal>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    let id: FlowRunId = id_param(&id, "id", "flow run")?;
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
    propose(&app, id, Event::FlowRun(run)).await
}

/// Applies one snapshot by the batch rules: 409 with the rule's reason if refused.
async fn propose(app: &AppState, id: FlowRunId, event: Event) -> Result<Json<FlowRunRecord>, ApiError> {
    if let Some(r) = app.db.apply_events(std::slice::from_ref(&event)).await?.pop() {
        return Err(ApiError::Conflict(format!("flow run {id}: {}", r.message)));
    }
    Ok(Json(app.db.flow_run(id).await?))
}

/// The state history of a flow run.
#[utoipa::path(get, path = "/flow_runs/{id}/states", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    responses((status = 200, body = Vec<StateRecord>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn flow_run_states(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<StateRecord>>, ApiError> {
    Ok(Json(app.db.flow_run_states(id_param(&id, "id", "flow run")?).await?))
}
