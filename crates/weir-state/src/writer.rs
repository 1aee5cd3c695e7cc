use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use futures_channel::oneshot;
use rusqlite::{Transaction, params};
use weir_types::{FlowRunId, TaskRunId};

use crate::db::{StateDb, StateError};

pub use weir_types::Event;

// Events dominate the channel; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// An event, and the root flow run it belongs to (whose flush hears of its loss).
    Event(Option<FlowRunId>, Event),
    Flush(Option<FlowRunId>, oneshot::Sender<Result<(), String>>),
}

/// Recording failed; the message says why (disk full, database locked for too long…).
#[derive(Debug, thiserror::Error)]
#[error("run state was not recorded: {0}")]
pub struct FlushError(pub String);

/// How a [`Writer`] behaves under load and failure. The defaults suit flows; tests shorten
/// the waits.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// How long one attempt waits for another process's lock on the database.
    pub busy_timeout: Duration,
    /// Attempts per batch before its events are given up as lost (and reported to the
    /// flow runs they belong to). Between attempts the writer waits 100 ms, doubling, at most 2 s.
    pub attempts: u32,
    /// Events queued at most; a sender waits when the queue is full (backpressure), so
    /// memory stays bounded however fast a flow produces records.
    pub queue: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            busy_timeout: Duration::from_secs(10),
            attempts: 4,
            queue: MAX_BATCH,
        }
    }
}

/// The batching writer. Cheap to clone; the thread stops when the last clone drops.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::SyncSender<Msg>,
}

/// This process's start time (see [`crate::process_start_time`]), read once.
static OWN_START: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// At most this many events per transaction, so a flush never waits behind a huge batch.
const MAX_BATCH: usize = 8192;

/// Root flow runs whose losses are remembered until they flush; past this, losses are
/// only printed.
const MAX_LOST_RUNS: usize = 4096;

impl Writer {
    /// Opens the database (creating and migrating it) and starts the writer thread.
    pub fn start(path: &Path) -> Result<Writer, StateError> {
        Self::start_with(path, WriterOptions::default())
    }

    /// As [`Writer::start`], with explicit options.
    pub fn start_with(path: &Path, options: WriterOptions) -> Result<Writer, StateError> {
        let db = StateDb::open(path)?;
        db.conn
            .busy_timeout(options.busy_timeout)
            .map_err(|source| StateError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        thread::Builder::new()
            .name("weir-state-writer".into())
            .spawn(move || run(db, rx, options))
            .map_err(|e| StateError::Malformed(format!("could not start the writer thread: {e}")))?;
        Ok(Writer { tx })
    }

    /// Queues an event that belongs to no flow run. Waits only while the queue is full.
    pub fn send(&self, event: Event) {
        self.send_for(None, event)
    }

    /// Queues an event of the flow run tree under `root`: if it is lost, `root`'s
    /// [`flush_run`](Writer::flush_run) reports it. Waits only while the queue is full.
    pub fn send_for(&self, root: Option<FlowRunId>, event: Event) {
        // A closed channel means the writer thread is gone (it only exits when every
        // sender is dropped), so there is nobody to tell.
        let _ = self.tx.send(Msg::Event(root, event));
    }

    /// Resolves once every event sent before this call is committed; an error reports
    /// events sent with [`send`](Writer::send) that were lost since the last flush.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.flush_run(None).await
    }

    /// Resolves once every event sent before this call is committed; an error reports
    /// events of `root`'s tree that were lost (and only those).
    pub async fn flush_run(&self, root: Option<FlowRunId>) -> Result<(), FlushError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(root, done))
            .map_err(|_| FlushError("the state writer has stopped".into()))?;
        match wait.await {
            Ok(result) => result.map_err(FlushError),
            Err(_) => Err(FlushError("the state writer stopped before flushing".into())),
        }
    }
}

/// Events lost per root flow run, until that root flushes.
#[derive(Default)]
struct Losses {
    by_root: HashMap<Option<FlowRunId>, (usize, String)>,
}

impl Losses {
    fn add(&mut self, roots: &[Option<FlowRunId>], error: &str) {
        let mut counts: HashMap<Option<FlowRunId>, usize> = HashMap::new();
        for r in roots {
            *counts.entry(*r).or_default() += 1;
        }
        for (root, n) in counts {
            if self.by_root.len() >= MAX_LOST_RUNS && !self.by_root.contains_key(&root) {
                eprintln!("weir: warning: {n} run records not recorded: {error}");
                continue;
            }
            let entry = self.by_root.entry(root).or_insert((0, String::new()));
            entry.0 += n;
            entry.1 = error.to_string();
        }
    }

    fn take(&mut self, root: Option<FlowRunId>) -> Result<(), String> {
        match self.by_root.remove(&root) {
            Some((n, error)) => Err(format!("{n} events lost: {error}")),
            None => Ok(()),
        }
    }
}

fn run(mut db: StateDb, rx: mpsc::Receiver<Msg>, options: WriterOptions) {
    let mut batch = Vec::with_capacity(1024);
    let mut roots = Vec::with_capacity(1024);
    let mut waiters = Vec::new();
    let mut losses = Losses::default();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(root, e) => {
                    batch.push(e);
                    roots.push(root);
                }
                Msg::Flush(root, w) => waiters.push((root, w)),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            if let Err(e) = write_with_retry(&mut db, &batch, &options) {
                losses.add(&roots, &e);
            }
            batch.clear();
            roots.clear();
        }
        for (root, w) in waiters.drain(..) {
            let _ = w.send(losses.take(root));
        }
    }
}

/// Writes a batch, retrying failures (a lock held past the busy timeout, a full disk that
/// may clear) a bounded number of times.
fn write_with_retry(db: &mut StateDb, batch: &[Event], options: &WriterOptions) -> Result<(), String> {
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match write_batch(db, batch) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < options.attempts => {
                eprintln!("weir: recording run state failed ({e}); retrying in {wait:?}");
                thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            Err(e) => return Err(format!("{e} (after {attempt} attempts)")),
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
