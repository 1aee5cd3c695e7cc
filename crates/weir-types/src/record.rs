//! What is recorded about runs: the rows of the state database and, later, of the API.
//!
//! Times are microseconds since the Unix epoch (see [`crate::time`]).

use serde::{Deserialize, Serialize};

use crate::{FlowRunId, State, TaskRunId};

/// What the result cache did for one task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// The task is not cached.
    Disabled,
    /// The result came from the store.
    Hit,
    /// Not in the store (or expired, or unreadable): computed and stored.
    Miss,
    /// Recomputed on request (`refresh_cache` / `WEIR_REFRESH_CACHE`).
    Refreshed,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Disabled => "-",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Refreshed => "refresh",
        }
    }

    pub fn parse(s: &str) -> CacheStatus {
        match s {
            "hit" => CacheStatus::Hit,
            "miss" => CacheStatus::Miss,
            "refresh" => CacheStatus::Refreshed,
            _ => CacheStatus::Disabled,
        }
    }
}

/// One flow run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowRunRecord {
    pub id: FlowRunId,
    pub flow_name: String,
    /// Crate and module path of the flow function.
    pub flow_path: String,
    pub parent_flow_run_id: Option<FlowRunId>,
    pub parent_task_run_id: Option<TaskRunId>,
    pub state: State,
    /// The parameters as JSON.
    pub parameters: serde_json::Value,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The error chain of a failed run.
    pub error: Option<String>,
    pub hostname: String,
    pub pid: u32,
    /// Labels for filtering (`tag=nightly`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The deployment this run belongs to (`None` for a run started by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// When a deployment run is due (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    /// The work pool whose workers run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_pool: Option<String>,
    /// The worker that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The run this one retries (a deployment's `retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<FlowRunId>,
    /// A cancel was asked for; its worker stops it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

/// One task run: one call of a task inside a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRunRecord {
    pub id: TaskRunId,
    pub flow_run_id: Option<FlowRunId>,
    pub task_name: String,
    pub task_path: String,
    pub state: State,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub cache_status: CacheStatus,
    /// Hex BLAKE3 cache key, for cached tasks.
    pub cache_key: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    /// Every state the task run went through, oldest first. Kept in the run's own record
    /// (one row write per task run instead of one per state: recording is most of the
    /// per-task overhead).
    #[serde(default)]
    pub history: Vec<StateEntry>,
}

/// One state a task run went through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateEntry {
    pub state: State,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One entry of a run's state history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateRecord {
    pub flow_run_id: Option<FlowRunId>,
    pub task_run_id: Option<TaskRunId>,
    pub state: State,
    pub at: i64,
    pub message: Option<String>,
}

/// One log line emitted inside a flow or task run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    pub flow_run_id: Option<FlowRunId>,
    pub task_run_id: Option<TaskRunId>,
    pub at: i64,
    pub level: String,
    pub target: String,
    pub message: String,
}

/// Something to record about a run: what the engine sends to the embedded database or to
/// the server. Run records are snapshots (the latest wins, unless the run already ended);
/// states and logs are appended. On the wire: `{"kind": "flow_run", "record": {…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Event {
    FlowRun(FlowRunRecord),
    TaskRun(TaskRunRecord),
    State(StateRecord),
    Log(LogRecord),
}
