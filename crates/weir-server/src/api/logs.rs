//! `/flow_runs/{id}/logs`: a flow run's log lines, in order, optionally waiting for more.

use axum::Json;
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::{FlowRunId, LogRecord};

use super::AppState;
use super::params::{ApiPath as Path, ApiQuery, id_param, in_range};
use crate::error::{ApiError, ErrorBody};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(flow_run_logs))
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Lines after this sequence number (default: from the start).
    #[param(value_type = i64, required = false, minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1–5000 (default 1000).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 5000)]
    pub limit: Option<u32>,
    /// Wait up to this many seconds, 0–60, for new lines when there are none yet.
    #[param(value_type = u32, required = false, minimum = 0, maximum = 60)]
    pub follow: Option<u32>,
}

/// Log lines of a flow run and its task runs, in order; with `follow`, waits for new ones.
#[utoipa::path(get, path = "/flow_runs/{id}/logs", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID)."), LogQuery),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn flow_run_logs(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let id: FlowRunId = id_param(&id, "id", "flow run")?;
    let after = in_range("after", q.after, 0, i64::MAX)?.unwrap_or(0);
    let limit = in_range("limit", q.limit, 1, 5000)?.unwrap_or(1000) as usize;
    let follow = in_range("follow", q.follow, 0, 60)?.unwrap_or(0);
    app.db.flow_run(id).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(follow.into());
    loop {
        // Subscribe before querying, so a line arriving in between still wakes us.
        let notified = app.new_logs.notified();
        let lines = app.db.logs(id, after, limit).await?;
        if !lines.is_empty() || tokio::time::Instant::now() >= deadline {
            let last_seq = lines.last().map(|(s, _)| *s).unwrap_or(after);
            let items = lines.into_iter().map(|(seq, record)| LogLine { seq, record }).collect();
            return Ok(Json(LogPage { items, last_seq }));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = notified => {}
            // A stopping server answers what it has now rather than holding the drain open.
            _ = app.stopping.wait() => {
                let items = app.db.logs(id, after, limit).await?;
                let last_seq = items.last().map(|(s, _)| *s).unwrap_or(after);
                let items = items.into_iter().map(|(seq, record)| LogLine { seq, record }).collect();
                return Ok(Json(LogPage { items, last_seq }));
            }
        }
    }
}
