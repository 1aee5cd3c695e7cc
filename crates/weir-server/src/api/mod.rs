//! The REST API under `/api/v1`, with its OpenAPI document generated from these handlers.
//!
//! One module per resource, each owning its routes, request and response types and
//! handlers: [`events`], [`flow_runs`], [`task_runs`], [`logs`], [`flows`], [`variables`],
//! [`deployments`], [`workers`] (claims, heartbeats, worker reports, pools), [`blocks`];
//! [`params`] holds what they share for reading query and path parameters.

pub mod blocks;
pub mod deployments;
pub mod events;
pub mod flow_runs;
pub mod flows;
pub mod logs;
pub mod params;
pub mod task_runs;
pub mod variables;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;

use crate::db::Db;
use crate::scheduler::{Options, Wake};

pub use events::{BatchResult, EventBatch, Rejection};
pub use flow_runs::{FlowRunPage, FlowRunQuery, StateProposal};
pub use flows::{Flow, FlowPage};
pub use logs::{LogLine, LogPage, LogQuery};
pub use params::NamePageQuery;
pub use task_runs::{TaskRunPage, TaskRunQuery};
pub use variables::{Variable, VariablePage, VariableValue};
pub use weir_types::Event;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Woken when log lines arrive, for `follow`.
    pub new_logs: Arc<Notify>,
    /// Set when the server stops, so log followers answer at once instead of holding the
    /// drain open.
    pub stopping: Arc<Stopping>,
    /// Wakes claims waiting for work (runs made, runs ended).
    pub wake: Wake,
    /// Asks the scheduler for a tick now (a deployment changed, a run crashed).
    pub kick: Arc<Notify>,
    pub opts: Arc<Options>,
    /// Encrypts blocks' secret fields.
    pub secret_key: crate::secrets::SecretKey,
    /// Every request presented the API key (the server has one): secrets may be revealed.
    pub api_key_set: bool,
}

impl AppState {
    pub fn new(db: Db) -> AppState {
        AppState::with_options(db, Options::default())
    }

    pub fn with_options(db: Db, opts: Options) -> AppState {
        AppState {
            db,
            new_logs: Default::default(),
            stopping: Default::default(),
            wake: Default::default(),
            kick: Default::default(),
            opts: Arc::new(opts),
            secret_key: crate::secrets::SecretKey::random(),
            api_key_set: false,
        }
    }

    /// With this key for blocks' secret fields (instead of a random one).
    pub fn with_secret_key(mut self, key: crate::secrets::SecretKey) -> AppState {
        self.secret_key = key;
        self
    }

    /// Starts what runs beside the handlers: the scheduler and, on PostgreSQL, the listener
    /// for other servers' new runs. Both end when the server stops.
    pub fn spawn_background(&self) {
        let (db, opts, wake, stop, kick) = (
            self.db.clone(),
            (*self.opts).clone(),
            self.wake.clone(),
            Arc::clone(&self.stopping),
            Arc::clone(&self.kick),
        );
        tokio::spawn(crate::scheduler::run(
            db.clone(),
            opts,
            wake.clone(),
            Arc::clone(&stop),
            kick,
        ));
        tokio::spawn(crate::scheduler::listen(db, wake, stop));
    }
}

/// A one-way "the server is stopping" flag that can be awaited.
#[derive(Default)]
pub struct Stopping {
    flag: AtomicBool,
    notify: Notify,
}

impl Stopping {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Completes once [`Stopping::stop`] was called (before or after this call).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if self.flag.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// The API's routes and its OpenAPI description, built from the same handlers.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(events::routes())
        .merge(flow_runs::routes())
        .merge(logs::routes())
        .merge(task_runs::routes())
        .merge(flows::routes())
        .merge(variables::routes())
        .merge(deployments::routes())
        .merge(workers::routes())
        .merge(blocks::routes())
}
