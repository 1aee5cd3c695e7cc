//! `POST /events`: batches of run snapshots, states and log lines.

use axum::Json;
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::Event;

use super::AppState;
use super::params::check_text;
use crate::db::Applied;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_events))
}

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

/// Checks an event's text fields against the limits the server keeps.
pub(super) fn validate(e: &Event, i: usize) -> Result<(), ApiError> {
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
