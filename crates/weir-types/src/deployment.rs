//! Deployments, work pools and workers: what the server, the CLI, workers and flow binaries
//! say to each other about running a flow somewhere else.
//!
//! The wire contract (all JSON, under `/api/v1`):
//!
//! | call | body → answer |
//! |---|---|
//! | `PUT /deployments/{name}` | [`DeploymentSpec`] → [`Deployment`] (create or replace; `weir deploy`) |
//! | `GET /deployments`, `GET /deployments/{name}` | → `[Deployment]`, [`Deployment`] (404 naming it) |
//! | `DELETE /deployments/{name}` | → 204 (its runs stay) |
//! | `POST /deployments/{name}/pause`, `/resume` | → [`Deployment`] |
//! | `POST /deployments/{name}/runs` | [`CreateRun`] → 201 [`FlowRunRecord`] in `Scheduled` (422 naming a bad parameter) |
//! | `POST /work_pools/{pool}/claim` | [`ClaimRequest`] → `[ClaimedRun]` (long poll: answers as soon as one run is claimable, or `[]` after `wait_ms`) |
//! | `POST /workers/heartbeat` | [`Heartbeat`] → [`HeartbeatReply`] (which of its runs to cancel, which it no longer owns) |
//! | `GET /workers`, `GET /work_pools` | → `[WorkerRecord]`, `[WorkPool]` |
//! | `POST /flow_runs/{id}/cancel` | → [`FlowRunRecord`] (a run not yet claimed is `Cancelled` at once; a claimed one is cancelled by its worker) |
//!
//! A claimed run carries a [`ClaimToken`]: a worker's reports about that run (its own
//! events such as `Crashed` with a signal, heartbeats) carry the token, and the server refuses
//! them (409) once the claim was taken over, so a slow worker cannot report over a new attempt.
//! The flow process itself reports through the ordinary `POST /events` path under the run id
//! it was given in `WEIR_FLOW_RUN_ID`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{FlowRunId, FlowRunRecord};

/// Environment variables a worker (or `serve`) sets for the flow process it starts.
pub mod env {
    /// The run to execute: the flow binary runs this existing run instead of creating one.
    pub const FLOW_RUN_ID: &str = "WEIR_FLOW_RUN_ID";
    /// The run's parameters, merged with the deployment's defaults, as one JSON object.
    pub const PARAMETERS: &str = "WEIR_PARAMETERS";
    /// The flow's name (a flow binary holding several flows runs this one).
    pub const FLOW_NAME: &str = "WEIR_FLOW_NAME";
    /// The deployment's name.
    pub const DEPLOYMENT: &str = "WEIR_DEPLOYMENT";
    /// The server the process reports to, and its key (already used by the SDK).
    pub const API_URL: &str = "WEIR_API_URL";
    pub const API_KEY: &str = "WEIR_API_KEY";
}

/// What `weir.toml` declares for one deployment, as registered with the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Unique name, `[A-Za-z0-9_.-]{1,128}`.
    pub name: String,
    /// The flow's name as the flow binary's `describe` prints it.
    pub flow: String,
    /// The command that runs the flow, split like a shell would (no shell is involved):
    /// for a weir flow binary `["target/release/my_flows", "run", "etl"]`; for any program,
    /// any command (it finds its run id and parameters in the environment, see [`env`]).
    pub entrypoint: Vec<String>,
    /// Default parameters; a run's parameters are merged over them (top-level keys).
    #[serde(default = "empty_object")]
    pub parameters: serde_json::Value,
    /// JSON Schema of the flow's parameters (from `describe`); every run's merged
    /// parameters are validated against it at creation.
    #[serde(default = "empty_object")]
    pub parameter_schema: serde_json::Value,
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    /// What to do with scheduled runs that are late (missed while workers or the server were away).
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// The work pool whose workers run it.
    #[serde(default = "default_pool")]
    pub work_pool: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra environment for the flow process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// At most this many of its runs at once (claims wait beyond it).
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
    /// Crashed or Failed runs are run again (as a new run, `retry_of` the old) this many times.
    #[serde(default)]
    pub retries: u32,
    /// Where the code lives.
    pub source: CodeSource,
    #[serde(default)]
    pub description: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn default_pool() -> String {
    "default".to_string()
}

/// Where a deployment's code lives. The server stores this; only workers read the code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CodeSource {
    /// A directory on the worker's machine; the entrypoint runs in it.
    Local { path: String },
    /// A git repository checked out at a pinned commit (resolved from `reference` at deploy
    /// time), cached per commit on the worker; `build` runs once per commit in the checkout.
    Git {
        url: String,
        /// A branch, tag or commit, as given in `weir.toml`.
        reference: String,
        /// The commit `reference` resolved to when deployed (full hex sha).
        #[serde(default)]
        commit: Option<String>,
        #[serde(default)]
        build: Option<String>,
        /// Subdirectory of the checkout the entrypoint runs in.
        #[serde(default)]
        directory: Option<String>,
    },
    /// A container image: `docker run IMAGE entrypoint…`.
    Image { image: String },
}

/// When a deployment runs by itself. A deployment may have several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// A cron expression (5 or 6 fields) in an IANA time zone (default UTC).
    Cron {
        cron: String,
        #[serde(default = "utc")]
        timezone: String,
    },
    /// Every `every_seconds`, counted from `anchor` (ms since the epoch; default 0).
    Interval {
        every_seconds: u64,
        #[serde(default)]
        anchor_ms: i64,
    },
}

fn utc() -> String {
    "UTC".to_string()
}

/// Scheduled runs not started within the grace period are Late; this says which still run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Every late run still runs, oldest first.
    All,
    /// Only the newest late run of the deployment runs; older late ones end Cancelled.
    #[default]
    Newest,
    /// Late runs end Cancelled; the schedule resumes with the next on-time run.
    Skip,
}

/// A registered deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    #[serde(flatten)]
    pub spec: DeploymentSpec,
    pub paused: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A request for a run of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Merged over the deployment's default parameters (top-level keys).
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Added to the deployment's tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When to start it (ms since the epoch); default now.
    #[serde(default)]
    pub scheduled_at: Option<i64>,
}

/// A worker asking for work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The worker's name, unique per worker process (`weir worker start` makes `host-pid-rand`).
    pub worker: String,
    /// How many runs it can take now (1..=64).
    pub limit: u32,
    /// How long the server may hold the request open waiting for a run (≤ 30 000).
    pub wait_ms: u64,
}

/// A fence for one claim of one run: reports carrying an older token are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct ClaimToken(pub uuid::Uuid);

/// A run handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedRun {
    /// The run, now `Pending` and owned by the worker.
    pub flow_run: FlowRunRecord,
    pub token: ClaimToken,
    /// The deployment as it was when claimed.
    pub deployment: Deployment,
    /// The merged, validated parameters (also in `flow_run.parameters`).
    pub parameters: serde_json::Value,
}

/// A worker saying it is alive, and which runs it is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub worker: String,
    pub pool: String,
    pub hostname: String,
    /// Runs the worker is running, with the token of each claim.
    pub running: Vec<RunningClaim>,
    /// Free slots (its `--limit` minus what it runs).
    pub free: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningClaim {
    pub flow_run_id: FlowRunId,
    pub token: ClaimToken,
}

/// The server's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    /// Cancel these (SIGTERM to the process group, SIGKILL after the grace period).
    pub cancel: Vec<FlowRunId>,
    /// Claims that are no longer this worker's (taken over or ended): stop them, report nothing.
    pub lost: Vec<FlowRunId>,
}

/// A worker as the server last heard from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerRecord {
    pub name: String,
    pub pool: String,
    pub hostname: String,
    pub last_heartbeat: i64,
    pub running: u32,
    /// Online when its last heartbeat is within the heartbeat timeout.
    pub online: bool,
}

/// A work pool: where deployments send runs, and how many may run at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkPool {
    pub name: String,
    pub concurrency_limit: Option<u32>,
    pub running: u32,
    pub workers_online: u32,
}
