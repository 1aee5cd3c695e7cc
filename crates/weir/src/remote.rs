//! The second transport: run state sent to a weir server (`WEIR_API_URL`).
//!
//! Events go into a bounded queue (a recording task waits only while it is full) and a
//! background thread posts them in batches of at most [`MAX_BATCH`] events and
//! [`MAX_BATCH_BYTES`] bytes. What the server would refuse is made acceptable first: text
//! over its limits is truncated and NULs replaced, saying so in the text. A batch the server
//! still refuses (422, 413) is split until the refused event is alone; only that one is
//! dropped (reported on stderr).
//!
//! While the server is unreachable, events go to a spool file under `$WEIR_HOME/spool`
//! (at most [`SPOOL_MAX`] bytes per process, `WEIR_SPOOL_MAX_BYTES`; beyond that events are lost and reported). The
//! spool is sent when the server is back: by this process, or by the next process that
//! reports to it (a spool file is locked by its owner while the owner lives). A flush waits
//! at most [`FLUSH_WAIT`] for the server; then it reports what stayed in the spool. Resending
//! is safe: the server treats snapshots as idempotent proposals and deduplicates logs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use weir_client::{Client, ClientError};
use weir_types::{Event, FlowRunId};

use crate::engine::Transport;

/// Events queued for the reporter at most (a sender waits while it is full).
const QUEUE: usize = 4096;
/// At most this many events per request…
const MAX_BATCH: usize = 2000;
/// …and at most this many bytes (the server takes bodies up to 4 MiB).
const MAX_BATCH_BYTES: usize = 3 << 20;
/// One event larger than this (huge parameters, a very long history) is shrunk first.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// How long one request may take before the server counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a flush (a root flow run's end) waits for an unreachable server.
pub(crate) const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// The largest spool file one process writes, unless `WEIR_SPOOL_MAX_BYTES` says otherwise.
pub(crate) const SPOOL_MAX: u64 = 64 << 20;
/// Answers of 5xx to one request before it counts as failing on its events (if the server
/// takes an empty batch meanwhile); the pause before the next try grows by this much each time.
const SERVER_ERROR_TRIES: u32 = 3;
const SERVER_ERROR_PAUSE: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

// Events dominate the channel; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Option<FlowRunId>, Event),
    /// A flush, with its deadline (counted from the moment the flow asked).
    Flush(Option<FlowRunId>, Instant, oneshot::Sender<Result<(), String>>),
}

/// The deadlines of flushes sent but not yet taken by the reporter. A request in flight
/// (which may hang up to [`REQUEST_TIMEOUT`]) is cut at the earliest, so a flush arriving
/// behind it still waits at most [`FLUSH_WAIT`].
type Pending = watch::Sender<Vec<Instant>>;

pub(crate) struct HttpTransport {
    tx: mpsc::Sender<Msg>,
    pending: std::sync::Arc<Pending>,
}

impl HttpTransport {
    /// `spool_dir` holds one folder per server (see [`server_folder`]).
    pub fn start(client: Client, spool_dir: PathBuf, spool_max: u64) -> std::io::Result<HttpTransport> {
        let spool_dir = spool_dir.join(server_folder(client.base_url()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = std::sync::Arc::new(watch::Sender::new(Vec::new()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let reporter = Reporter {
            client,
            rx,
            pending: std::sync::Arc::clone(&pending),
            batch: Vec::new(),
            batch_bytes: 0,
            waiters: Vec::new(),
            losses: HashMap::new(),
            spool: Spool::new(spool_dir, spool_max),
            retry_at: None,
            backoff: BACKOFF_FIRST,
            foreign: None,
            foreign_scanned: false,
            closed: false,
        };
        std::thread::Builder::new()
            .name("weir-api-reporter".into())
            .spawn(move || rt.block_on(reporter.run()))?;
        Ok(HttpTransport { tx, pending })
    }
}

impl Transport for HttpTransport {
    fn send(&self, root: Option<FlowRunId>, event: Event) {
        match self.tx.try_send(Msg::Event(root, event)) {
            Ok(()) => {}
            // Backpressure: wait for room. The reporter runs on its own thread and runtime,
            // so waiting here (even on a runtime worker) cannot deadlock it. Unconstrained:
            // on a tokio worker whose cooperative budget is spent, the send would otherwise
            // defer its wake-up to a scheduler this thread never returns to.
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let _ = futures::executor::block_on(tokio::task::unconstrained(self.tx.send(msg)));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn flush(&self, root: Option<FlowRunId>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            let deadline = Instant::now() + FLUSH_WAIT;
            // Before the message: the reporter may be stuck in a request, with the queue full.
            self.pending.send_modify(|p| p.push(deadline));
            self.tx
                .send(Msg::Flush(root, deadline, done))
                .await
                .map_err(|_| "the server reporter has stopped".to_string())?;
            wait.await
                .map_err(|_| "the server reporter stopped before flushing".to_string())?
        })
    }
}

/// One event, serialized once (measured, posted and spooled as these bytes).
struct Item {
    root: Option<FlowRunId>,
    json: Vec<u8>,
}

struct Waiter {
    root: Option<FlowRunId>,
    deadline: Instant,
    done: oneshot::Sender<Result<(), String>>,
}

/// Why a set of events was not delivered.
enum PostError {
    /// The server is unreachable or unavailable: keep them (spool) and try again later.
    Transient(String),
    /// The server will never take them (a wrong key, say): they are lost.
    Permanent(String),
}

struct Reporter {
    client: Client,
    rx: mpsc::Receiver<Msg>,
    pending: std::sync::Arc<Pending>,
    batch: Vec<Item>,
    batch_bytes: usize,
    waiters: Vec<Waiter>,
    /// Events lost per root flow run (count, last reason), until that root flushes.
    losses: HashMap<Option<FlowRunId>, (usize, String)>,
    spool: Spool,
    /// Set while the server is unreachable: when to try again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Another (dead) process's spool being delivered, one batch per turn.
    foreign: Option<Foreign>,
    foreign_scanned: bool,
    closed: bool,
}

impl Reporter {
    async fn run(mut self) {
        loop {
            self.gather().await;
            if !self.batch.is_empty() {
                let items = std::mem::take(&mut self.batch);
                self.batch_bytes = 0;
                if self.retry_at.is_some() {
                    self.spool_items(items);
                } else {
                    let deadline = self.earliest_deadline();
                    match self.post_all(&items, deadline).await {
                        Ok(()) => {}
                        Err(PostError::Transient(e)) => {
                            self.went_down(&e);
                            self.spool_items(items);
                        }
                        Err(PostError::Permanent(e)) => self.lose(&items, &e),
                    }
                }
            }
            if let Some(at) = self.retry_at
                && Instant::now() >= at
            {
                self.retry().await;
            }
            if self.retry_at.is_none() && self.batch.is_empty() {
                self.deliver_foreign_batch().await;
            }
            self.answer_waiters();
            if self.closed && self.batch.is_empty() {
                return;
            }
        }
    }

    /// Takes messages into the batch: waits for the first one only when there is nothing
    /// else to do (and not past a retry time or a flush deadline).
    async fn gather(&mut self) {
        let idle = self.foreign.is_none() || self.retry_at.is_some();
        if self.batch.is_empty() && idle && !self.closed {
            let wake = [self.retry_at, self.earliest_deadline()].into_iter().flatten().min();
            let msg = match wake {
                Some(t) => tokio::time::timeout_at(t, self.rx.recv()).await.ok(),
                None => Some(self.rx.recv().await),
            };
            match msg {
                Some(Some(m)) => self.take(m),
                Some(None) => self.closed = true,
                None => {}
            }
        }
        while self.batch.len() < MAX_BATCH && self.batch_bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(m) => self.take(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Event(root, event) => match encode(sanitize(event)) {
                Ok(json) => {
                    self.batch_bytes += json.len() + 1;
                    self.batch.push(Item { root, json });
                }
                Err(e) => self.lose_one(root, &format!("an event could not be encoded: {e}")),
            },
            Msg::Flush(root, deadline, done) => {
                self.pending.send_modify(|p| {
                    if let Some(i) = p.iter().position(|d| *d == deadline) {
                        p.swap_remove(i);
                    }
                });
                self.waiters.push(Waiter { root, deadline, done });
            }
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    /// Answers the flushes whose events are all delivered, or spooled past their deadline.
    fn answer_waiters(&mut self) {
        let now = Instant::now();
        let delivered = self.retry_at.is_none() && self.spool.is_empty();
        let foreign_done = self.foreign.is_none();
        let mut keep = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            let lost = |losses: &mut HashMap<_, (usize, String)>| match losses.remove(&w.root) {
                Some((n, e)) => Err(format!("{n} events not recorded on {}: {e}", self.client.base_url())),
                None => Ok(()),
            };
            if delivered && (foreign_done || now >= w.deadline) {
                let _ = w.done.send(lost(&mut self.losses));
            } else if now >= w.deadline {
                let spooled = format!(
                    "the server at {} is unreachable; {} events wait in {} and will be sent when it is back \
                     (by this process, or the next one that reports to it)",
                    self.client.base_url(),
                    self.spool.events,
                    self.spool.path.display()
                );
                let answer = match lost(&mut self.losses) {
                    Ok(()) => Err(spooled),
                    Err(e) => Err(format!("{e}; {spooled}")),
                };
                let _ = w.done.send(answer);
            } else {
                keep.push(w);
            }
        }
        self.waiters = keep;
    }

    fn went_down(&mut self, why: &str) {
        if self.retry_at.is_none() {
            tracing::debug!(target: "weir::remote", "reporting to {} failed ({why}); spooling", self.client.base_url());
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Tries to send the spool; the server counts as back once it is all delivered.
    async fn retry(&mut self) {
        let deadline = self.earliest_deadline();
        match self.deliver_own_spool(deadline).await {
            Ok(()) => {
                self.retry_at = None;
                self.backoff = BACKOFF_FIRST;
                // Processes may have died with spools meanwhile.
                self.foreign_scanned = false;
            }
            Err(e) => self.went_down(&e),
        }
    }

    fn spool_items(&mut self, items: Vec<Item>) {
        if let Err((written, e)) = self.spool.append(&items) {
            self.lose(&items[written..], &e);
        }
    }

    fn lose(&mut self, items: &[Item], why: &str) {
        for item in items {
            self.lose_one(item.root, why);
        }
    }

    fn lose_one(&mut self, root: Option<FlowRunId>, why: &str) {
        let entry = self.losses.entry(root).or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = why.to_string();
    }

    async fn deliver_own_spool(&mut self, deadline: Option<Instant>) -> Result<(), String> {
        let Some(mut reader) = self.spool.reader().map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let reading = |e: std::io::Error| format!("reading the spool: {e}");
        reader.seek(SeekFrom::Start(self.spool.sent)).map_err(reading)?;
        loop {
            let chunk = read_chunk(&mut reader).map_err(reading)?;
            if chunk.is_empty() {
                break;
            }
            match self.post_all(&chunk, deadline).await {
                Ok(()) => {}
                Err(PostError::Transient(e)) => return Err(e),
                Err(PostError::Permanent(e)) => self.lose(&chunk, &e),
            }
            self.spool.sent = reader.stream_position().map_err(reading)?;
            mark_sent(&self.spool.path, self.spool.sent);
        }
        self.spool.clear();
        Ok(())
    }

    /// Sends one batch of another process's spool, if there is one to send.
    async fn deliver_foreign_batch(&mut self) {
        if self.foreign.is_none() && !self.foreign_scanned {
            self.foreign = Foreign::claim_next(&self.spool.dir, &self.spool.path);
            self.foreign_scanned = self.foreign.is_none();
        }
        let Some(foreign) = &mut self.foreign else { return };
        let chunk = match read_chunk(&mut foreign.reader).and_then(|c| Ok((c, foreign.reader.stream_position()?))) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "weir: warning: could not read the spool {}: {e}",
                    foreign.path.display()
                );
                self.foreign = None;
                return;
            }
        };
        let (chunk, end) = chunk;
        if chunk.is_empty() {
            if let Some(f) = self.foreign.take() {
                f.finish();
            }
            return;
        }
        let deadline = self.earliest_deadline();
        let posted = self.post_all(&chunk, deadline).await;
        if !matches!(posted, Err(PostError::Transient(_)))
            && let Some(f) = &self.foreign
        {
            mark_sent(&f.path, end);
        }
        match posted {
            Ok(()) => {}
            // Released (its lock drops with it) and tried again when the server is back.
            Err(PostError::Transient(e)) => {
                self.foreign = None;
                self.went_down(&e);
            }
            Err(PostError::Permanent(e)) => {
                eprintln!("weir: warning: {} spooled events not recorded: {e}", chunk.len());
            }
        }
    }

    /// Posts items in requests within the batch limits; a refused request is split until
    /// the refused event is alone, and only that event is dropped.
    ///
    /// A request the server answers with a 5xx is tried [`SERVER_ERROR_TRIES`] times; if it
    /// still fails while the server takes an empty batch, it is the events, not the server
    /// (a server bug on one event): the request is halved the same way, and the one event
    /// the server always fails on is dropped and reported lost.
    async fn post_all(&mut self, items: &[Item], deadline: Option<Instant>) -> Result<(), PostError> {
        let mut ranges: Vec<(usize, usize)> = chunks(items).into_iter().rev().collect();
        // Parts of a request being halved for a 5xx: tried once each.
        let mut halves = std::collections::HashSet::new();
        let mut tries = 0;
        while let Some((start, end)) = ranges.pop() {
            let part = &items[start..end];
            match self.post(part.iter().map(|i| i.json.as_slice()), deadline).await {
                Ok(()) => tries = 0,
                Err(Failure::Client(ClientError::Api { status, detail })) if status >= 500 => {
                    let why = format!("the server answered {status}: {}", detail.message);
                    if !halves.contains(&(start, end)) {
                        tries += 1;
                        if tries < SERVER_ERROR_TRIES {
                            tokio::time::sleep(SERVER_ERROR_PAUSE * tries).await;
                            ranges.push((start, end));
                            continue;
                        }
                        tries = 0;
                    }
                    if !self.server_answers(deadline).await {
                        return Err(PostError::Transient(why));
                    }
                    if part.len() == 1 {
                        eprintln!(
                            "weir: warning: one event not recorded: the server fails on it ({why}) while it takes \
                             others; dropped it and sent the rest: {}",
                            String::from_utf8_lossy(&part[0].json[..part[0].json.len().min(300)])
                        );
                        self.lose_one(part[0].root, &format!("the server fails on it ({why})"));
                        continue;
                    }
                    let mid = start + part.len() / 2;
                    halves.extend([(start, mid), (mid, end)]);
                    ranges.push((mid, end));
                    ranges.push((start, mid));
                }
                Err(Failure::Client(ClientError::Api { status, detail })) if status == 422 || status == 413 => {
                    if part.len() == 1 {
                        self.refused(&part[0], status, &detail.message, deadline).await?;
                        continue;
                    }
                    // The server names the refused event (`events[3].record.message`); without
                    // that, halve.
                    let named = detail
                        .field
                        .as_deref()
                        .and_then(event_index)
                        .filter(|i| *i < part.len());
                    match named {
                        Some(i) => {
                            ranges.push((start + i + 1, end));
                            ranges.push((start + i, start + i + 1));
                            ranges.push((start, start + i));
                        }
                        None => {
                            let mid = start + part.len() / 2;
                            ranges.push((mid, end));
                            ranges.push((start, mid));
                        }
                    }
                    ranges.retain(|(s, e)| s < e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the server takes a request at all (an empty batch).
    async fn server_answers(&self, deadline: Option<Instant>) -> bool {
        self.post(std::iter::empty(), deadline).await.is_ok()
    }

    /// One event the server refuses. A flow run refused for its parameters (too deep, say)
    /// is sent again without them, so the run itself is not lost; anything else is dropped.
    async fn refused(&self, item: &Item, status: u16, why: &str, deadline: Option<Instant>) -> Result<(), PostError> {
        if let Ok(Event::FlowRun(mut run)) = serde_json::from_slice::<Event>(&item.json)
            && !run.parameters.is_null()
        {
            run.parameters =
                serde_json::Value::String(format!("[parameters not recorded: the server refused them ({why})]"));
            if let Ok(json) = serde_json::to_vec(&Event::FlowRun(run)) {
                match self.post(std::iter::once(json.as_slice()), deadline).await {
                    Ok(()) => {
                        eprintln!(
                            "weir: warning: the server refused a flow run's parameters ({why}); recorded the run without them"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        if let PostError::Transient(e) = e.into() {
                            return Err(PostError::Transient(e));
                        }
                    }
                }
            }
        }
        eprintln!(
            "weir: warning: the server refused one event ({status}: {why}); dropped it and sent the others: {}",
            String::from_utf8_lossy(&item.json[..item.json.len().min(300)])
        );
        Ok(())
    }

    async fn post<'a>(&self, events: impl Iterator<Item = &'a [u8]>, deadline: Option<Instant>) -> Result<(), Failure> {
        let mut body = Vec::with_capacity(MAX_BATCH_BYTES / 4);
        body.extend_from_slice(b"{\"events\":[");
        for (i, e) in events.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e);
        }
        body.extend_from_slice(b"]}");
        // A flush waiting on this request bounds it too.
        let timeout = deadline
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100))
            })
            .map_or(REQUEST_TIMEOUT, |left| left.min(REQUEST_TIMEOUT));
        let request = self.client.post_events_json(body, timeout);
        let result = tokio::select! {
            r = request => r.map_err(Failure::Client)?,
            () = flush_deadline(self.pending.subscribe()) => return Err(Failure::Cut),
        };
        for r in &result.rejected {
            tracing::warn!(target: "weir::remote", "the server refused a state change: {}", r.message);
        }
        Ok(())
    }
}

/// Why one request delivered nothing.
enum Failure {
    Client(ClientError),
    /// A flush's deadline passed while the request was in flight.
    Cut,
}

impl From<Failure> for PostError {
    fn from(f: Failure) -> PostError {
        match f {
            Failure::Client(e) if e.is_transient() => PostError::Transient(e.to_string()),
            Failure::Client(e) => PostError::Permanent(e.to_string()),
            Failure::Cut => PostError::Transient("no answer before a flush's deadline".into()),
        }
    }
}

/// Resolves at the earliest deadline of the flushes not yet taken by the reporter.
async fn flush_deadline(mut pending: watch::Receiver<Vec<Instant>>) {
    loop {
        let earliest = pending.borrow_and_update().iter().min().copied();
        let changed = async {
            if pending.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match earliest {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                () = changed => {}
            },
            None => changed.await,
        }
    }
}

/// `events[12].record.message` → 12.
fn event_index(field: &str) -> Option<usize> {
    let rest = field.trim_start_matches('.').strip_prefix("events[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// Splits items into runs within the count and byte limits of one request.
fn chunks(items: &[Item]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let size = item.json.len() + 1;
        if i > start && (i - start >= MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            out.push((start, i));
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < items.len() {
        out.push((start, items.len()));
    }
    out
}

/// Reads up to one batch of spooled events (one JSON event per line).
fn read_chunk(reader: &mut BufReader<File>) -> std::io::Result<Vec<Item>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // A line cut short by a crash mid-write is not an event.
        if line.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_err() {
            continue;
        }
        bytes += line.len() + 1;
        out.push(Item { root: None, json: line });
    }
    Ok(out)
}

fn encode(event: Event) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(&event)?;
    if json.len() <= MAX_EVENT_BYTES {
        return Ok(json);
    }
    serde_json::to_vec(&shrink(event, json.len()))
}

/// The spool folder of one server: its address (`127.0.0.1_4200_api_v1`), without scheme
/// or user info. Spools are per server so that events spooled for one server are never
/// delivered to another by a process reporting there.
pub(crate) fn server_folder(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    rest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This process's spool file: created when first needed, locked while the process lives.
struct Spool {
    dir: PathBuf,
    path: PathBuf,
    file: Option<File>,
    bytes: u64,
    /// The most `bytes` may reach.
    max: u64,
    events: usize,
    /// Where the part already delivered ends.
    sent: u64,
}

impl Spool {
    fn new(dir: PathBuf, max: u64) -> Spool {
        let me = std::process::id();
        let start = weir_state::process_start_time(me).unwrap_or(0);
        let path = dir.join(format!("{me}-{start}-{:08x}.jsonl", fastrand::u32(..)));
        Spool {
            dir,
            path,
            file: None,
            bytes: 0,
            max,
            events: 0,
            sent: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Appends the items that fit; on error, how many were written and why the rest were not.
    fn append(&mut self, items: &[Item]) -> Result<(), (usize, String)> {
        let mut size = 0u64;
        let fit = items
            .iter()
            .take_while(|i| {
                size += i.json.len() as u64 + 1;
                self.bytes + size <= self.max
            })
            .count();
        let size: u64 = items[..fit].iter().map(|i| i.json.len() as u64 + 1).sum();
        let err = |e: std::io::Error| {
            (
                0,
                format!(
                    "the server is unreachable and the spool {} failed: {e}",
                    self.path.display()
                ),
            )
        };
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(err)?;
            // Created under a name no other process claims, locked, and only then named
            // `.jsonl`: a `.jsonl` file is locked from the moment it exists, so another
            // process can never take a spool being created for a dead process's (and delete it).
            let fresh = self.path.with_extension("new");
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .append(true)
                .open(&fresh)
                .map_err(err)?;
            test_gate();
            // Held for the life of this process: others deliver the file only once it is free.
            let locked = file
                .try_lock()
                .map_err(|e| err(std::io::Error::other(e.to_string())))
                .and_then(|()| std::fs::rename(&fresh, &self.path).map_err(err));
            if let Err(e) = locked {
                let _ = std::fs::remove_file(&fresh);
                return Err(e);
            }
            self.file = Some(file);
        }
        let Some(file) = &mut self.file else { return Ok(()) };
        let mut out = Vec::with_capacity(size as usize);
        for item in &items[..fit] {
            out.extend_from_slice(&item.json);
            out.push(b'\n');
        }
        file.write_all(&out).map_err(err)?;
        self.bytes += size;
        self.events += fit;
        if fit < items.len() {
            return Err((
                fit,
                format!(
                    "the server is unreachable and the spool {} is full ({} bytes, WEIR_SPOOL_MAX_BYTES)",
                    self.path.display(),
                    self.max
                ),
            ));
        }
        Ok(())
    }

    fn reader(&self) -> std::io::Result<Option<BufReader<File>>> {
        if self.events == 0 {
            return Ok(None);
        }
        Ok(Some(BufReader::new(File::open(&self.path)?)))
    }

    fn clear(&mut self) {
        if let Some(file) = &mut self.file {
            let _ = file.set_len(0).and_then(|_| file.rewind());
        }
        self.bytes = 0;
        self.events = 0;
        self.sent = 0;
        let _ = std::fs::remove_file(sent_path(&self.path));
    }
}

/// A pause point for tests (`WEIR_TEST_SPOOL_GATE`, a folder): a new spool file's creation
/// stops here, says so (`paused`) and goes on once the test writes `go` (at most 60 s), so a
/// test can put another process's claim inside what used to be a race window.
fn test_gate() {
    let Some(dir) = std::env::var_os("WEIR_TEST_SPOOL_GATE").map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::write(dir.join("paused"), b"");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Another process's spool, claimed by taking its lock (free only once that process ended).
struct Foreign {
    path: PathBuf,
    reader: BufReader<File>,
}

impl Foreign {
    fn claim_next(dir: &Path, own: &Path) -> Option<Foreign> {
        let entries = std::fs::read_dir(dir).ok()?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path == own || path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue;
            }
            let mut reader = BufReader::new(file);
            if reader.seek(SeekFrom::Start(read_sent(&path))).is_err() {
                continue;
            }
            return Some(Foreign { path, reader });
        }
        None
    }

    /// Delivered: emptied first, so a process that opened it meanwhile finds nothing to resend.
    fn finish(self) {
        let _ = self.reader.get_ref().set_len(0);
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(sent_path(&self.path));
    }
}

/// Where the delivered part of a spool ends, kept beside it (`<spool>.sent`): a delivery cut
/// short (the server gone again, the delivering process ended) resumes there, by this process
/// or the next, instead of resending what the server already has. Written after each
/// delivered request; a marker lost or torn only means a resend (which is safe, just noisy).
fn sent_path(spool: &Path) -> PathBuf {
    spool.with_extension("sent")
}

fn mark_sent(spool: &Path, offset: u64) {
    let _ = std::fs::write(sent_path(spool), offset.to_string());
}

fn read_sent(spool: &Path) -> u64 {
    std::fs::read_to_string(sent_path(spool))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

// ---------- what the server would refuse, made acceptable ----------

/// The server's limits on text fields, in bytes (`weir-server`'s `validate`).
mod limit {
    pub const NAME: usize = 256;
    pub const PATH: usize = 1024;
    pub const TEXT: usize = 65536;
    pub const TAG: usize = 128;
    pub const LEVEL: usize = 16;
    /// A history entry's message (the server takes more; a long history adds up).
    pub const HISTORY_MESSAGE: usize = 4096;
    /// History entries kept at each end of a very long history.
    pub const HISTORY_ENDS: usize = 100;
    /// Nesting of parameters: the server's JSON parser stops at 128 levels, the event
    /// around them takes a few.
    pub const PARAMETER_DEPTH: usize = 100;
}

/// How deeply a JSON value nests (without recursing: the value may be very deep).
fn depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Cleans text the server would refuse: NULs become `␀`, text over `max` bytes is cut at a
/// character boundary and says how much was cut.
fn clean(text: &mut String, max: usize) {
    if text.contains('\0') {
        *text = text.replace('\0', "␀");
    }
    if text.len() <= max {
        return;
    }
    let note_room = 64;
    let mut cut = max.saturating_sub(note_room);
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!("…[truncated by weir: {dropped} more bytes]"));
}

fn clean_opt(text: &mut Option<String>, max: usize) {
    if let Some(t) = text {
        clean(t, max);
    }
}

fn sanitize(mut event: Event) -> Event {
    use limit::*;
    match &mut event {
        Event::FlowRun(r) => {
            clean(&mut r.flow_name, NAME);
            clean(&mut r.flow_path, PATH);
            clean(&mut r.hostname, NAME);
            clean_opt(&mut r.error, TEXT);
            r.tags.iter_mut().for_each(|t| clean(t, TAG));
            let levels = depth(&r.parameters);
            if levels > PARAMETER_DEPTH {
                r.parameters = serde_json::Value::String(format!(
                    "[parameters not recorded by weir: nested {levels} levels deep, over the server's limit]"
                ));
            }
        }
        Event::TaskRun(r) => {
            clean(&mut r.task_name, NAME);
            clean(&mut r.task_path, PATH);
            clean_opt(&mut r.error, TEXT);
            clean_opt(&mut r.cache_key, PATH);
            for h in &mut r.history {
                clean_opt(&mut h.message, HISTORY_MESSAGE);
            }
            if r.history.len() > 2 * HISTORY_ENDS {
                let omitted = r.history.len() - 2 * HISTORY_ENDS;
                r.history.drain(HISTORY_ENDS..HISTORY_ENDS + omitted);
                let note = format!("[weir: {omitted} earlier states not recorded]");
                let entry = &mut r.history[HISTORY_ENDS];
                entry.message = Some(match entry.message.take() {
                    Some(m) => format!("{note} {m}"),
                    None => note,
                });
            }
        }
        Event::State(s) => clean_opt(&mut s.message, TEXT),
        Event::Log(l) => {
            clean(&mut l.message, TEXT);
            clean(&mut l.level, LEVEL);
            clean(&mut l.target, NAME);
        }
    }
    event
}

/// An event still over [`MAX_EVENT_BYTES`] after cleaning: its bulk (a flow run's
/// parameters) is replaced by a note.
fn shrink(mut event: Event, size: usize) -> Event {
    if let Event::FlowRun(r) = &mut event {
        r.parameters = serde_json::Value::String(format!(
            "[parameters not recorded by weir: the run's record is {size} bytes, over the {} MiB limit of one event]",
            MAX_EVENT_BYTES >> 20
        ));
    }
    event
}
