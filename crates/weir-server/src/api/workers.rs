//! Workers and work pools: claims (a long poll), heartbeats, the worker's fenced reports
//! (`/crash`, `/cancelled`), cancels, and the lists of workers and pools.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State as AxState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::deployment::{ClaimRequest, ClaimToken, ClaimedRun, Heartbeat, HeartbeatReply, WorkPool, WorkerRecord};
use weir_types::{FlowRunRecord, State};

use super::AppState;
use super::deployments::check_name;
use super::params::{check_text, id_param};
use crate::db::CrashOutcome;
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

/// The longest a claim may wait for work.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// A waiting claim looks again at least this often, whatever woke it or not (a safety net
/// for wake-ups this server cannot see, such as another process writing the same SQLite file).
const RECHECK: Duration = Duration::from_secs(2);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(claim))
        .routes(routes!(heartbeat))
        .routes(routes!(list_workers))
        .routes(routes!(list_pools))
        .routes(routes!(put_pool))
        .routes(routes!(cancel_run))
        .routes(routes!(crash_run))
        .routes(routes!(cancelled_run))
}

/// A pool's settings.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// At most this many runs of the pool at once; `null` for no limit.
    pub concurrency_limit: Option<u32>,
}

/// A worker's report that a run it claimed crashed.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashReport {
    pub token: ClaimToken,
    /// What happened, such as `killed by signal 9 (SIGKILL)`.
    pub reason: String,
}

/// A worker's report that it stopped a run after a cancel.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelledReport {
    pub token: ClaimToken,
}

/// Claims due runs of a pool for a worker (a long poll). Answers as soon as at least one run
/// is claimed, or `[]` after `wait_ms` (at most 30 000). Each claimed run is `Pending`, owned
/// by the worker, and carries a fresh token that fences the worker's reports about it.
/// Honours the deployments' and the pool's concurrency limits. Counts as a heartbeat.
#[utoipa::path(post, path = "/work_pools/{pool}/claim", params(("pool" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    request_body = ClaimRequest,
    responses((status = 200, body = Vec<ClaimedRun>), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn claim(
    AxState(app): AxState<AppState>,
    Path(pool): Path<String>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<Vec<ClaimedRun>>, ApiError> {
    check_name("work pool", "pool", &pool)?;
    check_text("worker", &req.worker, 256)?;
    if req.worker.is_empty() {
        return Err(ApiError::invalid("the worker name is empty", Some("worker".into())));
    }
    if !(1..=64).contains(&req.limit) {
        return Err(ApiError::invalid(
            format!("limit must be 1..=64, not {}", req.limit),
            Some("limit".into()),
        ));
    }
    if req.wait_ms > MAX_WAIT.as_millis() as u64 {
        return Err(ApiError::invalid(
            format!("wait_ms must be at most {}, not {}", MAX_WAIT.as_millis(), req.wait_ms),
            Some("wait_ms".into()),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
    loop {
        // Registered before looking, so a run made while we look still wakes us.
        let woken = app.wake.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = weir_types::time::now_micros();
        let got = app.db.claim(&pool, &req.worker, req.limit, now).await?;
        let now_inst = tokio::time::Instant::now();
        if !got.is_empty() || now_inst >= deadline {
            return Ok(Json(got));
        }
        let mut until = deadline.min(now_inst + RECHECK);
        if let Some(due) = app.db.next_due(&pool).await? {
            let wait_ms = due - weir_types::time::now_micros() / 1000;
            if wait_ms >= 0 {
                until = until.min(now_inst + Duration::from_millis(wait_ms as u64 + 1));
            }
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = app.stopping.wait() => return Ok(Json(Vec::new())),
        }
    }
}

/// A worker is alive: records it, and answers which of its runs to cancel and which claims
/// it lost (stop those and report nothing about them).
#[utoipa::path(post, path = "/workers/heartbeat", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatReply), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn heartbeat(
    AxState(app): AxState<AppState>,
    ApiJson(h): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    check_text("worker", &h.worker, 256)?;
    check_name("work pool", "pool", &h.pool)?;
    check_text("hostname", &h.hostname, 256)?;
    if h.running.len() > 4096 {
        return Err(ApiError::invalid("at most 4096 running claims", Some("running".into())));
    }
    let reply = app
        .db
        .heartbeat(
            &h.worker,
            &h.pool,
            &h.hostname,
            &h.running,
            weir_types::time::now_micros(),
        )
        .await?;
    Ok(Json(reply))
}

/// Workers, with their last heartbeat (µs since the epoch) and whether they are online
/// (heard from within the heartbeat timeout).
#[utoipa::path(get, path = "/workers", responses((status = 200, body = Vec<WorkerRecord>)))]
async fn list_workers(AxState(app): AxState<AppState>) -> Result<Json<Vec<WorkerRecord>>, ApiError> {
    let since = weir_types::time::now_micros() - app.opts.heartbeat_timeout.as_micros() as i64;
    Ok(Json(app.db.workers(since).await?))
}

/// Work pools, with their concurrency limit, runs running and workers online.
#[utoipa::path(get, path = "/work_pools", responses((status = 200, body = Vec<WorkPool>)))]
async fn list_pools(AxState(app): AxState<AppState>) -> Result<Json<Vec<WorkPool>>, ApiError> {
    let since = weir_types::time::now_micros() - app.opts.heartbeat_timeout.as_micros() as i64;
    Ok(Json(app.db.pools(since).await?))
}

/// Creates a work pool or sets its concurrency limit.
#[utoipa::path(put, path = "/work_pools/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    request_body = PoolSettings,
    responses((status = 200, body = WorkPool), (status = 422, body = ErrorBody)))]
async fn put_pool(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(s): ApiJson<PoolSettings>,
) -> Result<Json<WorkPool>, ApiError> {
    check_name("work pool", "name", &name)?;
    let now = weir_types::time::now_micros();
    app.db.put_pool(&name, s.concurrency_limit, now).await?;
    // A raised limit may let waiting claimers take runs now.
    app.wake.wake(&app.db).await;
    let since = now - app.opts.heartbeat_timeout.as_micros() as i64;
    let pool = app
        .db
        .pools(since)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no work pool '{name}'")))?;
    Ok(Json(pool))
}

/// Cancels a run. One no worker claimed yet is `Cancelled` at once; a claimed one is marked
/// `cancel_requested` and its worker stops it (it learns so from its next heartbeat) and
/// reports `/cancelled`. A run in a final state is a 409.
#[utoipa::path(post, path = "/flow_runs/{id}/cancel", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn cancel_run(AxState(app): AxState<AppState>, Path(id): Path<String>) -> Result<Json<FlowRunRecord>, ApiError> {
    let id = id_param(&id, "id", "flow run")?;
    let run = app.db.cancel(id, weir_types::time::now_micros()).await?;
    if run.state.is_final() {
        app.wake.wake(&app.db).await;
    }
    Ok(Json(run))
}

async fn report(
    app: &AppState,
    id: &str,
    token: ClaimToken,
    state: State,
    reason: Option<&str>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    let id = id_param(id, "id", "flow run")?;
    let now = weir_types::time::now_micros();
    match app.db.report_end(id, token, state, reason, now).await? {
        CrashOutcome::Ended(run) => {
            // A freed slot may let a claimer in; a crashed run may be retried at once.
            app.kick.notify_one();
            app.wake.wake(&app.db).await;
            Ok(Json(run))
        }
        CrashOutcome::AlreadyFinal(run) => Ok(Json(run)),
    }
}

/// A worker reports that a run it claimed crashed (killed by a signal, exited without a
/// final state, its code could not be fetched or built): the run ends `Crashed` with the
/// reason, unless it already ended. 409 when the token is not the run's current claim.
#[utoipa::path(post, path = "/flow_runs/{id}/crash", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    request_body = CrashReport,
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn crash_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<CrashReport>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    check_text("reason", &r.reason, 65536)?;
    report(&app, &id, r.token, State::Crashed, Some(&r.reason)).await
}

/// A worker reports that it stopped a run after a cancel: the run ends `Cancelled`, unless
/// it already ended. 409 when the token is not the run's current claim.
#[utoipa::path(post, path = "/flow_runs/{id}/cancelled", params(("id" = uuid::Uuid, Path, description = "The run's id (a UUID).")),
    request_body = CancelledReport,
    responses((status = 200, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn cancelled_run(
    AxState(app): AxState<AppState>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<CancelledReport>,
) -> Result<Json<FlowRunRecord>, ApiError> {
    report(&app, &id, r.token, State::Cancelled, Some("cancelled")).await
}
