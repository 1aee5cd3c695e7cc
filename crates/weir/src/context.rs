//! Which flow run and task run the current code belongs to.
//!
//! A task-local carries the [`Scope`] through async code; blocking tasks, which run on
//! another thread, get it through a thread-local for the duration of the call.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio_util::task::TaskTracker;
use weir_types::{FlowRunId, TaskRunId};

/// Counters of the root flow run, for the progress line and the summary.
#[derive(Default)]
pub(crate) struct Counters {
    pub running: AtomicUsize,
    pub completed: AtomicUsize,
    pub cached: AtomicUsize,
    pub failed: AtomicUsize,
}

impl Counters {
    pub fn snapshot(&self) -> [usize; 4] {
        [
            self.running.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.cached.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ]
    }
}

/// A flow run in progress.
pub(crate) struct FlowRunCtx {
    pub id: FlowRunId,
    /// The root flow run of this tree (this run's own id for a root).
    pub root: FlowRunId,
    pub name: &'static str,
    /// The run's parameters as JSON (`Null` if they could not be serialized); shell tasks
    /// hand them to their child as `WEIR_PARAMETERS`.
    pub params: Arc<serde_json::Value>,
    /// Counters of this flow run's own task runs.
    pub counters: Arc<Counters>,
    /// Counters shared by the whole tree of runs under one root flow run (the progress line).
    pub root_counters: Arc<Counters>,
    /// Tasks started with `submit()`; the flow run waits for them before it ends.
    pub submitted: TaskTracker,
    pub started: Instant,
}

/// Where code is running: inside which flow run, inside which task run.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    pub flow: Option<Arc<FlowRunCtx>>,
    pub task: Option<(TaskRunId, &'static str)>,
}

tokio::task_local! {
    pub(crate) static SCOPE: Scope;
}

thread_local! {
    static BLOCKING_SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// The scope of the calling code, if it runs inside a flow or task.
pub(crate) fn current() -> Option<Scope> {
    SCOPE
        .try_with(|s| s.clone())
        .ok()
        .or_else(|| BLOCKING_SCOPE.with(|b| b.borrow().clone()))
}

/// Runs `f` with `scope` visible to [`current`] on this thread (for blocking tasks).
pub(crate) fn with_blocking_scope<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Scope>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            BLOCKING_SCOPE.with(|b| *b.borrow_mut() = prev);
        }
    }
    let prev = BLOCKING_SCOPE.with(|b| b.borrow_mut().replace(scope));
    let _reset = Reset(prev);
    f()
}
