//! Where blocking (plain `fn`) task bodies run: weir's own detached threads, not tokio's
//! blocking pool.
//!
//! A blocking body cannot be interrupted, so one past its timeout keeps running. On tokio's
//! pool such a thread would keep the program from exiting (dropping a runtime waits for its
//! blocking threads); on a detached thread it ends with the process. Threads are reused:
//! an idle one waits [`IDLE_FOR`] for more work, then exits.
//!
//! Each running body is registered under its task run, so a retry can wait for the attempt
//! that timed out instead of overlapping it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use weir_types::TaskRunId;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for another body before it exits.
const IDLE_FOR: Duration = Duration::from_secs(10);

/// Idle threads, each by its id and the way to hand it a body.
type Idle = Mutex<Vec<(usize, Sender<Job>)>>;

fn idle() -> &'static Idle {
    static IDLE: OnceLock<Idle> = OnceLock::new();
    IDLE.get_or_init(Default::default)
}

/// Runs `job` on an idle weir thread, or a new one.
pub(crate) fn spawn(mut job: Job) -> std::io::Result<()> {
    loop {
        let worker = idle().lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some((_, tx)) = worker else { break };
        match tx.send(job) {
            Ok(()) => return Ok(()),
            // That thread exited meanwhile; try another.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("weir-blocking".into())
        .spawn(move || worker(id, job))?;
    Ok(())
}

fn worker(id: usize, first: Job) {
    let (tx, rx) = mpsc::channel::<Job>();
    let mut next = Some(first);
    while let Some(job) = next.take() {
        job();
        idle().lock().unwrap_or_else(|e| e.into_inner()).push((id, tx.clone()));
        next = match rx.recv_timeout(IDLE_FOR) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let mut list = idle().lock().unwrap_or_else(|e| e.into_inner());
                match list.iter().position(|(i, _)| *i == id) {
                    // Nobody took this thread: leave.
                    Some(at) => {
                        list.remove(at);
                        None
                    }
                    // Someone took it just now and is sending a body: run it.
                    None => {
                        drop(list);
                        rx.recv().ok()
                    }
                }
            }
        };
    }
}

/// A blocking body that is running (or finished).
#[derive(Default)]
pub(crate) struct Running {
    finished: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Running {
    /// Waits at most `limit` for the body to finish; true if it did.
    pub async fn wait(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a finish in between is not missed.
            notified.as_mut().enable();
            if self.finished.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.finished.load(Ordering::SeqCst);
            }
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

fn registry() -> &'static Mutex<HashMap<TaskRunId, Arc<Running>>> {
    static RUNNING: OnceLock<Mutex<HashMap<TaskRunId, Arc<Running>>>> = OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Registers a body of `task_run` as running; the guard marks it finished when dropped
/// (even by a panic). Only bodies still running are registered, so this stays small.
pub(crate) fn register(task_run: TaskRunId) -> FinishGuard {
    let running = Arc::new(Running::default());
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(task_run, running.clone());
    FinishGuard { task_run, running }
}

pub(crate) struct FinishGuard {
    task_run: TaskRunId,
    running: Arc<Running>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.task_run).is_some_and(|r| Arc::ptr_eq(r, &self.running)) {
            map.remove(&self.task_run);
        }
        drop(map);
        self.running.finish();
    }
}

/// The body of `task_run` still running on a weir thread, if any.
pub(crate) fn still_running(task_run: TaskRunId) -> Option<Arc<Running>> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&task_run)
        .cloned()
}
