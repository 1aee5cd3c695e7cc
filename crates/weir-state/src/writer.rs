use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use futures_channel::oneshot;
use rusqlite::{Transaction, params};
use weir_types::{FlowRunId, TaskRunId};

use crate::db::{StateDb, StateError};

pub use weir_types::Event;

// Events dominate the channel; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Recording failed; the message says why (disk full, database locked for too long…).
#[derive(Debug, thiserror::Error)]
#[error("run state was not recorded: {0}")]
pub struct FlushError(pub String);

/// The batching writer. Cheap to clone; the thread stops when the last clone drops.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

/// This process's start time (see [`crate::process_start_time`]), read once.
static OWN_START: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// At most this many events per transaction, so a flush never waits behind a huge batch.
const MAX_BATCH: usize = 8192;

impl Writer {
    /// Opens the database (creating and migrating it) and starts the writer thread.
    pub fn start(path: &Path) -> Result<Writer, StateError> {
        let db = StateDb::open(path)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("weir-state-writer".into())
            .spawn(move || run(db, rx))
            .map_err(|e| StateError::Malformed(format!("could not start the writer thread: {e}")))?;
        Ok(Writer { tx })
    }

    /// Queues an event. Never blocks.
    pub fn send(&self, event: Event) {
        // A closed channel means the writer thread is gone (it only exits when every
        // sender is dropped), so there is nobody to tell.
        let _ = self.tx.send(Msg::Event(event));
    }

    /// Resolves once every event sent before this call is committed.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .map_err(|_| FlushError("the state writer has stopped".into()))?;
        match wait.await {
            Ok(result) => result.map_err(FlushError),
            Err(_) => Err(FlushError("the state writer stopped before flushing".into())),
        }
    }
}

fn run(mut db: StateDb, rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(1024);
    let mut waiters = Vec::new();
    // The last error, reported to the next flush so a caller learns its states were lost.
    let mut last_error: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            if let Err(e) = write_batch(&mut db, &batch) {
                last_error = Some(e.to_string());
            }
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(match last_error.take() {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
    }
}

fn write_batch(db: &mut StateDb, batch: &[Event]) -> Result<(), StateError> {
    // Keep only the newest snapshot of each run: a task that went Pending → Running →
    // Completed inside one batch is one row write, not three.
    let mut flow_runs: HashMap<FlowRunId, usize> = HashMap::new();
    let mut task_runs: HashMap<TaskRunId, usize> = HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        match e {
            Event::FlowRun(r) => {
                flow_runs.insert(r.id, i);
            }
            Event::TaskRun(r) => {
                task_runs.insert(r.id, i);
            }
            _ => {}
        }
    }
    let tx = db.conn.transaction()?;
    write_events(&tx, batch, &flow_runs, &task_runs)?;
    tx.commit()?;
    Ok(())
}

fn write_events(
    tx: &Transaction<'_>,
    batch: &[Event],
    flow_runs: &HashMap<FlowRunId, usize>,
    task_runs: &HashMap<TaskRunId, usize>,
) -> Result<(), StateError> {
    let mut flow_stmt = tx.prepare_cached(
        "INSERT INTO flow_runs (id, flow_name, flow_path, parent_flow_run_id, parent_task_run_id, state,
             parameters, created_at, started_at, ended_at, error, hostname, pid, tags, pid_start)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, started_at = excluded.started_at,
             ended_at = excluded.ended_at, error = excluded.error",
    )?;
    let mut task_stmt = tx.prepare_cached(
        "INSERT INTO task_runs (id, flow_run_id, task_name, task_path, state, attempt, cache_status,
             cache_key, created_at, started_at, ended_at, error, history)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
             cache_status = excluded.cache_status, cache_key = excluded.cache_key,
             started_at = excluded.started_at, ended_at = excluded.ended_at, error = excluded.error,
             history = excluded.history",
    )?;
    let mut state_stmt = tx.prepare_cached(
        "INSERT INTO states (flow_run_id, task_run_id, state, at, message) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut log_stmt = tx.prepare_cached(
        "INSERT INTO logs (flow_run_id, task_run_id, at, level, target, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (i, e) in batch.iter().enumerate() {
        match e {
            Event::FlowRun(r) => {
                if flow_runs.get(&r.id) != Some(&i) {
                    continue;
                }
                flow_stmt.execute(params![
                    r.id.to_string(),
                    r.flow_name,
                    r.flow_path,
                    r.parent_flow_run_id.map(|i| i.to_string()),
                    r.parent_task_run_id.map(|i| i.to_string()),
                    r.state.as_str(),
                    r.parameters.to_string(),
                    r.created_at,
                    r.started_at,
                    r.ended_at,
                    r.error,
                    r.hostname,
                    r.pid,
                    serde_json::to_string(&r.tags).map_err(|e| StateError::Malformed(e.to_string()))?,
                    // The writer runs in the process it records, so it knows that process's
                    // start time (crash detection tells a reused pid by it).
                    (r.pid == std::process::id())
                        .then(|| *OWN_START.get_or_init(|| crate::crash::process_start_time(r.pid)))
                        .flatten()
                        .map(|t| t as i64),
                ])?;
            }
            Event::TaskRun(r) => {
                if task_runs.get(&r.id) != Some(&i) {
                    continue;
                }
                task_stmt.execute(params![
                    r.id.to_string(),
                    r.flow_run_id.map(|i| i.to_string()),
                    r.task_name,
                    r.task_path,
                    r.state.as_str(),
                    r.attempt,
                    r.cache_status.as_str(),
                    r.cache_key,
                    r.created_at,
                    r.started_at,
                    r.ended_at,
                    r.error,
                    serde_json::to_string(&r.history).map_err(|e| StateError::Malformed(e.to_string()))?,
                ])?;
            }
            Event::State(s) => {
                state_stmt.execute(params![
                    s.flow_run_id.map(|i| i.to_string()),
                    s.task_run_id.map(|i| i.to_string()),
                    s.state.as_str(),
                    s.at,
                    s.message,
                ])?;
            }
            Event::Log(l) => {
                log_stmt.execute(params![
                    l.flow_run_id.map(|i| i.to_string()),
                    l.task_run_id.map(|i| i.to_string()),
                    l.at,
                    l.level,
                    l.target,
                    l.message,
                ])?;
            }
        }
    }
    Ok(())
}
