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
    /// Events the orchestration rules refused: `conflict` (a final state cannot change),
    /// `stale` (older than what is stored), `not_found` (a state or log line of an unknown run).
    pub rejected: Vec<Rejection>,
}

/// Checks an event's text fields against the limits the server keeps; errors name the field
/// as `prefix` + its name (`events[3].record.` in a batch, nothing for a lone record).
pub(super) fn validate(e: &Event, prefix: &str) -> Result<(), ApiError> {
    let at = |f: &str| format!("{prefix}{f}");
    let check = |f: &str, v: &str, max: usize| check_text(&at(f), v, max);
    match e {
        Event::FlowRun(r) => {
            check("flow_name", &r.flow_name, 256)?;
            check("flow_path", &r.flow_path, 1024)?;
            check("hostname", &r.hostname, 256)?;
            if let Some(err) = &r.error {
                check("error", err, 65536)?;
            }
            for (j, t) in r.tags.iter().enumerate() {
                check(&format!("tags[{j}]"), t, 128)?;
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

/// Records a batch of events in one transaction. Each run snapshot is a state proposal the
/// server accepts or rejects (a run only moves forward; a final state stays); retrying a
/// batch after a lost response changes nothing.
#[utoipa::path(post, path = "/events", request_body = EventBatch,
    responses((status = 200, body = BatchResult), (status = 422, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn post_events(
    AxState(app): AxState<AppState>,
    ApiJson(batch): ApiJson<EventBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    for (i, e) in batch.events.iter().enumerate() {
        validate(e, &format!("events[{i}].record."))?;
    }
    let refused = app.db.apply_events(&batch.events).await?;
    if batch.events.iter().any(|e| matches!(e, Event::Log(_))) {
        app.new_logs.notify_waiters();
    }
    // A run that ended frees a concurrency slot, and a failed one may be retried.
    if batch
        .events
        .iter()
        .any(|e| matches!(e, Event::FlowRun(r) if r.state.is_final()))
    {
        app.kick.notify_one();
        app.wake.wake(&app.db).await;
    }
    let result = BatchResult {
        accepted: batch.events.len() - refused.len(),
        rejected: refused
            .into_iter()
            .map(|r| Rejection {
                index: r.index,
                code: r.code.to_string(),
                message: r.message,
            })
            .collect(),
    };
    Ok(Json(result))
}
