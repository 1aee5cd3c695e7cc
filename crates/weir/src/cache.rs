//! How a task run uses the result store: key material from the inputs, lookup, isolation
//! leases, publish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use weir_cache::canonical::CanonicalError;
use weir_cache::{
    CacheKey, EntryMeta, Format, KeyParts, Lease, LeaseOutcome, Lookup, PutMode, PutOutcome, Renewal, ResultStore,
    StoredFiles,
};

use crate::task::{CachePolicy, TaskSpec};

/// What a task call's cache key is made of: a digest per input, or one user-supplied key.
#[derive(Clone, Debug)]
pub struct KeyMaterial {
    inputs: Vec<(&'static str, [u8; 32])>,
    custom: Option<[u8; 32]>,
    /// Files keyed by their contents: a result is stored under this key only if they still
    /// hold those contents after the task ran (see [`KeyMaterial::files_unchanged`]).
    files: Vec<weir_cache::canonical::KeyedFile>,
}

/// Why a task call has no cache key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An input that could not be hashed (its `Serialize` impl failed).
    #[error("could not hash input `{input}` for the cache key: {source}")]
    Input {
        input: &'static str,
        #[source]
        source: CanonicalError,
    },
    /// Another task definition in this program already keys its results by this path.
    #[error(
        "another task in this program has the cache key path `{path}` (same-named tasks in \
         sibling blocks or closures of one function cannot be told apart); rename one of them \
         so they do not read each other's cached results"
    )]
    SharedKeyPath { path: &'static str },
}

/// The key path of one task definition, and whether that definition owns it.
///
/// Each `#[weir::task]` expansion holds one of these in its own `static`, whose address
/// names the definition: the first call registers (path → address) once, and a second
/// definition with the same path is refused for good rather than handed the first's keys.
/// Paths are not made unique with line numbers, which would move whenever code above moves.
#[derive(Debug)]
pub struct KeyPathClaim {
    path: &'static str,
    owned: bool,
}

/// Which definition owns each key path. One entry per hash-keyed task definition in the
/// program, so bounded by the code itself.
static KEY_PATH_OWNERS: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

impl KeyPathClaim {
    /// Registers the definition whose claim lives at `owner` (the address of its `static`)
    /// for `path`, if `register`; definitions that do not hash keys (named results,
    /// uncached tasks) only remember their path.
    pub fn new(path: String, owner: usize, register: bool) -> KeyPathClaim {
        // Made once per definition and kept for the program's life.
        let path: &'static str = Box::leak(path.into_boxed_str());
        if !register {
            return KeyPathClaim { path, owned: true };
        }
        let mut owners = KEY_PATH_OWNERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = *owners.entry(path).or_insert(owner);
        KeyPathClaim {
            path,
            owned: first == owner,
        }
    }

    pub fn path(&self) -> &'static str {
        self.path
    }

    /// Ok if this definition owns its key path.
    pub fn check(&self) -> Result<(), KeyError> {
        match self.owned {
            true => Ok(()),
            false => Err(KeyError::SharedKeyPath { path: self.path }),
        }
    }
}

impl KeyMaterial {
    /// From each input's name and canonical digest.
    pub fn inputs(digests: Vec<(&'static str, Result<[u8; 32], CanonicalError>)>) -> Result<KeyMaterial, KeyError> {
        let inputs = digests
            .into_iter()
            .map(|(name, d)| {
                d.map(|d| (name, d))
                    .map_err(|source| KeyError::Input { input: name, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyMaterial {
            inputs,
            custom: None,
            files: Vec::new(),
        })
    }

    /// From the digest of a user key function's result.
    pub fn custom(digest: Result<[u8; 32], CanonicalError>) -> Result<KeyMaterial, KeyError> {
        let d = digest.map_err(|source| KeyError::Input { input: "key", source })?;
        Ok(KeyMaterial {
            inputs: Vec::new(),
            custom: Some(d),
            files: Vec::new(),
        })
    }

    /// Runs `make` (which digests the inputs, on this thread) and remembers the files it
    /// keyed by their contents.
    pub fn recording_files(make: impl FnOnce() -> Result<KeyMaterial, KeyError>) -> Result<KeyMaterial, KeyError> {
        let (material, files) = weir_cache::canonical::recording_files(make);
        material.map(|m| KeyMaterial { files, ..m })
    }

    /// Whether every file input still holds the contents this key was computed from; the
    /// first that does not otherwise. A task reads its input files when it runs, which may
    /// be long after its call was keyed: a file rewritten meanwhile gave a result of other
    /// contents, which must not be stored under this key. Hashes files again only if they
    /// changed (or changed just before they were keyed), so run on the blocking pool.
    pub(crate) async fn files_unchanged(&self) -> Result<(), std::path::PathBuf> {
        if self.files.is_empty() {
            return Ok(());
        }
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || weir_cache::canonical::files_unchanged(&files))
            .await
            .unwrap_or_else(|_| Err(std::path::PathBuf::new()))
    }

    pub(crate) fn parts<'a>(&'a self, spec: &'a TaskSpec) -> KeyParts<'a> {
        KeyParts {
            task_path: (spec.key_path)(),
            cache_version: spec.cache_version,
            source_hash: (spec.cache == CachePolicy::InputsAndSource).then_some(spec.source_hash),
            inputs: &self.inputs,
            custom: self.custom,
        }
    }
}

/// Encoders the engine needs for a cached task's output type.
pub(crate) struct Codec<T> {
    pub key: Result<KeyMaterial, KeyError>,
    pub encode: fn(&T, Format) -> Result<Vec<u8>, weir_cache::format::FormatError>,
    pub decode: fn(&[u8], Format) -> Result<T, weir_cache::format::FormatError>,
    /// For `Artifact` outputs: the file to stream into the store…
    pub as_file: fn(&T) -> Option<std::path::PathBuf>,
    /// …and the output made from a stored file. `None` for other outputs.
    pub from_file: Option<fn(std::path::PathBuf) -> Option<T>>,
}

/// The outcome of looking a key up.
pub(crate) enum Found<T> {
    Value(T),
    /// Compute, then publish with this mode.
    Compute(PutMode),
    /// The store failed (not a miss): compute without the cache — no lease, no publish,
    /// each of which would spend its own retries on a store that just failed.
    Unavailable,
}

async fn lookup_file<T>(
    store: &Arc<dyn ResultStore>,
    key: &CacheKey,
    from_file: fn(std::path::PathBuf) -> Option<T>,
    spec: &TaskSpec,
) -> Found<T> {
    let dir = crate::engine::get().settings.artifacts_dir.clone();
    let store = store.clone();
    let key = *key;
    let found = on_blocking_pool(store, move |s| {
        Box::pin(async move { s.get_file(&key, weir_types::time::now_micros(), &dir).await })
    })
    .await;
    match found {
        Ok(weir_cache::FileLookup::Hit { path, .. }) => match from_file(path) {
            Some(v) => Found::Value(v),
            None => Found::Compute(PutMode::Replace),
        },
        Ok(weir_cache::FileLookup::Miss) => Found::Compute(PutMode::IfAbsent),
        Ok(weir_cache::FileLookup::Expired { .. }) => Found::Compute(PutMode::Replace),
        Ok(weir_cache::FileLookup::Corrupt { reason }) => {
            tracing::warn!(target: "weir::cache", "cached file of {} is damaged ({reason}); recomputing", spec.name);
            Found::Compute(PutMode::Replace)
        }
        Err(e) => {
            tracing::warn!(target: "weir::cache", "result store unavailable ({e}); computing {} without the cache", spec.name);
            Found::Unavailable
        }
    }
}

pub(crate) async fn lookup<T>(
    store: &Arc<dyn ResultStore>,
    key: &CacheKey,
    codec: &Codec<T>,
    spec: &TaskSpec,
) -> Found<T> {
    if let Some(from_file) = codec.from_file {
        return lookup_file(store, key, from_file, spec).await;
    }
    match store.get(key, weir_types::time::now_micros()).await {
        Ok(Lookup::Hit { meta, bytes }) => match decode_result(store, codec, &meta, &bytes).await {
            Ok(v) => Found::Value(v),
            Err(e) => {
                tracing::warn!(
                    target: "weir::cache",
                    "cached result of {} (key {}) cannot be read as this task's output ({e}); recomputing",
                    spec.name,
                    meta.key.get(..16).unwrap_or(&meta.key)
                );
                Found::Compute(PutMode::Replace)
            }
        },
        Ok(Lookup::Miss) => Found::Compute(PutMode::IfAbsent),
        Ok(Lookup::Expired { .. }) => {
            tracing::debug!(target: "weir::cache", "cached result of {} expired; recomputing", spec.name);
            Found::Compute(PutMode::Replace)
        }
        Ok(Lookup::Corrupt { reason }) => {
            tracing::warn!(target: "weir::cache", "cache entry of {} is damaged ({reason}); recomputing", spec.name);
            Found::Compute(PutMode::Replace)
        }
        Err(e) => {
            tracing::warn!(target: "weir::cache", "result store unavailable ({e}); computing {} without the cache", spec.name);
            Found::Unavailable
        }
    }
}

/// Identifies one stored entry, so that a process waiting for a key can tell the entry it
/// saw (and decided to replace) from a newer one someone else published meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryId {
    created_at: i64,
    blob: String,
    task_run_id: String,
}

impl From<&EntryMeta> for EntryId {
    fn from(m: &EntryMeta) -> EntryId {
        EntryId {
            created_at: m.created_at,
            blob: m.blob.clone(),
            task_run_id: m.task_run_id.clone(),
        }
    }
}

/// What the entry a run decided to compute was, for [`recheck`]: absent, expired or
/// damaged (any usable entry found later is newer), or a usable entry being refreshed.
pub(crate) enum Seen {
    Unusable,
    Refreshing(Option<EntryId>),
}

/// What looking again, while waiting for or holding a key's lease, found.
pub(crate) enum Recheck<T> {
    /// A usable result someone else published: take it.
    Value(T),
    /// Nothing newer than what this run saw: compute.
    Compute,
    /// Stop: this run must not compute (`on_duplicate = "error"` met a result).
    Fail(String),
}

/// Looks a key up again after another process may have computed it.
pub(crate) async fn recheck<T>(
    store: &Arc<dyn ResultStore>,
    key: &CacheKey,
    codec: &Codec<T>,
    spec: &TaskSpec,
    seen: &Seen,
) -> Recheck<T> {
    if let Seen::Refreshing(old) = seen {
        // The entry being refreshed is usable, so a lookup alone would take it: only a
        // newer manifest is someone else's refresh.
        match store.entry(key).await {
            Ok(Some(m)) if Some(EntryId::from(&m)) != *old => {}
            _ => return Recheck::Compute,
        }
    }
    match lookup(store, key, codec, spec).await {
        Found::Value(v) => Recheck::Value(v),
        Found::Compute(_) | Found::Unavailable => Recheck::Compute,
    }
}

enum LeaseCmd {
    /// Renew now and answer whether the lease is still ours.
    Confirm(tokio::sync::oneshot::Sender<bool>),
    Release(tokio::sync::oneshot::Sender<()>),
}

/// The right to compute a key, kept alive by a heartbeat task (renewing every third of the
/// TTL) until released or dropped. The heartbeat finds out when the lease was lost to
/// another process (this one stalled past the expiry): [`HeldLease::confirm`] then says so,
/// and the run must not publish over the new holder's result.
pub(crate) struct HeldLease {
    cmds: tokio::sync::mpsc::UnboundedSender<LeaseCmd>,
}

impl HeldLease {
    fn start(store: Arc<dyn ResultStore>, lease: Lease, ttl: Duration) -> HeldLease {
        let (cmds, rx) = tokio::sync::mpsc::unbounded_channel();
        let beat = heartbeat(store, lease, ttl, rx);
        // In the task run's scope, so its warnings name the run.
        match crate::context::current() {
            Some(scope) => tokio::spawn(crate::context::SCOPE.scope(scope, beat)),
            None => tokio::spawn(beat),
        };
        HeldLease { cmds }
    }

    /// Renews the lease now: `true` if it is still ours, so publishing may replace an entry.
    pub async fn confirm(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.cmds.send(LeaseCmd::Confirm(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Gives the lease up (only if it is still ours) and waits until that is done.
    pub async fn release(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.cmds.send(LeaseCmd::Release(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

// Dropped without `release` (the run was cancelled): the channel closes and the heartbeat
// releases the lease in the background, or it expires if the runtime is going away.

async fn heartbeat(
    store: Arc<dyn ResultStore>,
    mut lease: Lease,
    ttl: Duration,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<LeaseCmd>,
) {
    let ttl_us = ttl.as_micros() as i64;
    let period = ttl / 3;
    let mut lost = false;
    let mut next = tokio::time::Instant::now() + period;
    loop {
        let cmd = tokio::select! {
            _ = tokio::time::sleep_until(next), if !lost => None,
            cmd = cmds.recv() => match cmd {
                Some(cmd) => Some(cmd),
                None => Some(LeaseCmd::Release(tokio::sync::oneshot::channel().0)),
            },
        };
        match cmd {
            Some(LeaseCmd::Release(done)) => {
                if !lost && let Err(e) = store.release(&lease).await {
                    tracing::debug!(target: "weir::cache", "could not release the lease on {}: {e}", lease.key);
                }
                let _ = done.send(());
                return;
            }
            Some(LeaseCmd::Confirm(answer)) => {
                if !lost {
                    lost = !renew(&store, &mut lease, ttl_us).await;
                }
                let _ = answer.send(!lost);
            }
            None => lost = !renew(&store, &mut lease, ttl_us).await,
        }
        next = tokio::time::Instant::now() + period;
    }
}

/// One renewal; `false` once the lease is (or may be) someone else's.
async fn renew(store: &Arc<dyn ResultStore>, lease: &mut Lease, ttl_us: i64) -> bool {
    let now = weir_types::time::now_micros();
    match store.renew(lease, ttl_us, now).await {
        Ok(Renewal::Renewed(next)) => {
            *lease = next;
            true
        }
        Ok(Renewal::Lost(rec)) => {
            let by = rec.map(|r| r.holder).unwrap_or_else(|| "another process".into());
            tracing::warn!(
                target: "weir::cache",
                "lost the lease on {} to {by} (this run stalled past its expiry); its result will not replace theirs",
                lease.key
            );
            false
        }
        Err(e) => {
            // A store blip: still ours until it expires, since nobody can take over before.
            tracing::warn!(target: "weir::cache", "could not renew the lease on {}: {e}", lease.key);
            lease.expires_at > now
        }
    }
}

/// What serializable isolation decided.
pub(crate) enum Isolation<T> {
    /// We hold the lease (or isolation is unavailable): compute.
    Compute(Option<HeldLease>),
    /// Someone else computed it while we waited.
    Value(T),
    /// [`Recheck::Fail`]: do not compute.
    Fail(String),
    /// The deadline passed while this process held the key.
    TimedOut { holder: String },
}

/// How to wait for a key's lease.
pub(crate) struct Waiting<'a> {
    /// This run, as recorded in the lease (`host:pid (task run …)`).
    pub holder: &'a str,
    pub ttl: Duration,
    /// The task's timeout covers waiting too.
    pub deadline: Option<tokio::time::Instant>,
    pub task: &'static str,
}

/// How many lease TTLs (the holder's or ours, whichever is longer) a holder may go without
/// renewing (as seen by the waiter's own clock) before a waiter treats it as dead whatever
/// its lease's expiry says: the holder's clock may be ahead of ours.
const STALE_TTLS: u32 = 2;

/// A lease request that fails (the store, not a holder) is retried at most this many times,
/// and not once [`LEASE_ERROR_BUDGET`] has passed since the first failing one was sent (each
/// request may spend the store's own retries too): then the task is computed without
/// isolation.
const LEASE_ERRORS: u32 = 5;
const LEASE_ERROR_BUDGET: Duration = Duration::from_secs(10);

/// Whether this process has started measuring the store's create-if-absent (once: the
/// engine has one store).
static PROBE_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes sure one process computes a key at a time: takes the key's lease, or waits for
/// whoever holds it to publish (or to die, and the lease to expire). `recheck` looks again
/// once the lease is ours and after every wait, so a result published meanwhile is taken
/// instead of computed again.
///
/// Bounded: by `deadline` (the task's timeout); without one, by the holder, for as long as
/// it keeps renewing its lease (a live computation); a holder that stops is taken over
/// after its lease expires, or after [`STALE_TTLS`] TTLs without a renewal by our clock.
pub(crate) async fn isolate<T, F: Future<Output = Recheck<T>>>(
    store: &Arc<dyn ResultStore>,
    key: &CacheKey,
    how: &Waiting<'_>,
    mut recheck: impl FnMut() -> F,
) -> Isolation<T> {
    let ttl_us = how.ttl.as_micros() as i64;
    if !PROBE_STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        // Only a warning depends on it: measure in the background, off the first miss's path.
        let store = store.clone();
        tokio::spawn(async move {
            if let Ok(false) = store.atomic_leases().await {
                tracing::warn!(
                    target: "weir::cache",
                    "{}: create-if-absent is not atomic on this store, so two processes may compute one key at once (leases are best-effort)",
                    store.location()
                );
            }
        });
    }
    let mut wait = Duration::from_millis(20);
    let mut announced = false;
    let mut errors = 0;
    let mut failing_since: Option<tokio::time::Instant> = None;
    // The holder's lease as last seen, and since when (our clock) it has not changed.
    let mut last_seen: Option<((String, i64), tokio::time::Instant)> = None;
    let mut take_over_at: Option<i64> = None;
    loop {
        let now = weir_types::time::now_micros().max(take_over_at.unwrap_or(i64::MIN));
        let asked = tokio::time::Instant::now();
        match store.try_lease(key, how.holder, ttl_us, now).await {
            Ok(LeaseOutcome::Acquired(lease)) => {
                // It may have been published between our lookup and the lease.
                let decided = match recheck().await {
                    Recheck::Compute => {
                        return Isolation::Compute(Some(HeldLease::start(store.clone(), lease, how.ttl)));
                    }
                    Recheck::Value(v) => Isolation::Value(v),
                    Recheck::Fail(why) => Isolation::Fail(why),
                };
                let _ = store.release(&lease).await;
                return decided;
            }
            Ok(LeaseOutcome::Held(rec)) => {
                if !announced {
                    tracing::info!(target: "weir::cache", "waiting for {} to compute this result", rec.holder);
                    announced = true;
                }
                let progress = (rec.token.clone(), rec.expires_at);
                match &last_seen {
                    Some((p, since)) if *p == progress => {
                        // The holder renews every third of its own TTL, which may be
                        // longer than ours (`WEIR_LEASE_TTL` differs between machines).
                        let theirs = Duration::from_micros(rec.ttl.max(0) as u64);
                        if since.elapsed() >= how.ttl.max(theirs) * STALE_TTLS {
                            // Ask again as if at its expiry: its holder is gone.
                            take_over_at = Some(rec.expires_at);
                        }
                    }
                    _ => last_seen = Some((progress, tokio::time::Instant::now())),
                }
                if let Some(deadline) = how.deadline {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Isolation::TimedOut { holder: rec.holder };
                    }
                    wait = wait.min(left);
                }
                // Another process on another machine: only the store can tell us when it is
                // done, so we ask it, backing off up to a second.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                match recheck().await {
                    Recheck::Compute => {}
                    Recheck::Value(v) => return Isolation::Value(v),
                    Recheck::Fail(why) => return Isolation::Fail(why),
                }
            }
            // A store that keeps failing must not block the task forever; a blip must not
            // make two processes compute one key.
            Err(e) if errors < LEASE_ERRORS && failing_since.get_or_insert(asked).elapsed() < LEASE_ERROR_BUDGET => {
                errors += 1;
                tracing::debug!(target: "weir::cache", "lease request failed ({e}); retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(target: "weir::cache", "cache isolation unavailable ({e}); computing {} anyway", how.task);
                return Isolation::Compute(None);
            }
        }
    }
}

/// A result encoded for the store, and the files (artifacts) anywhere inside it, which go
/// into the store beside it as blobs (see [`crate::artifact`]).
pub(crate) fn encode_result<T>(
    codec: &Codec<T>,
    value: &T,
    format: Format,
) -> Result<(Vec<u8>, Vec<std::path::PathBuf>), weir_cache::format::FormatError> {
    let (bytes, files) = crate::artifact::collect_files(|| (codec.encode)(value, format));
    Ok((bytes?, files))
}

/// Stores the files a result refers to, before its manifest; returns their hashes.
async fn store_files(
    store: &Arc<dyn ResultStore>,
    files: Vec<std::path::PathBuf>,
    mode: PutMode,
) -> Result<Vec<String>, String> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    on_blocking_pool(store.clone(), move |s| s.put_blobs(files, mode)).await
}

/// Decodes a stored result, first making the files it refers to available on local disk,
/// verified. Any failure (a file gone or damaged, bytes of another type) means recompute.
pub(crate) async fn decode_result<T>(
    store: &Arc<dyn ResultStore>,
    codec: &Codec<T>,
    meta: &EntryMeta,
    bytes: &[u8],
) -> Result<T, String> {
    let format = Format::from_name(&meta.serializer).map_err(|e| e.to_string())?;
    let files = if meta.files.is_empty() {
        Vec::new()
    } else {
        let dir = crate::engine::get().settings.artifacts_dir.clone();
        let meta = meta.clone();
        match on_blocking_pool(store.clone(), move |s| {
            Box::pin(async move { s.get_blobs(&meta, &dir).await })
        })
        .await?
        {
            StoredFiles::Present(paths) => paths,
            StoredFiles::Missing(blob) => return Err(format!("its file {blob} is gone from the store")),
            StoredFiles::Corrupt(reason) => return Err(reason),
        }
    };
    crate::artifact::resolve_files(files, || (codec.decode)(bytes, format)).map_err(|e| e.to_string())
}

/// Publishes a computed result. Returns the winner's value when another writer published
/// the same key first, so every caller of a key sees one result.
pub(crate) async fn publish<T>(
    store: Arc<dyn ResultStore>,
    codec: &Codec<T>,
    meta: EntryMeta,
    value: T,
    format: Format,
    mode: PutMode,
) -> T {
    if codec.from_file.is_some() {
        let Some(src) = (codec.as_file)(&value) else {
            return value;
        };
        let task = meta.task.clone();
        if let Err(e) = on_blocking_pool(store, move |s| s.put_file(meta, src, mode)).await {
            tracing::warn!(target: "weir::cache", "could not store the file result of {task} ({e})");
        }
        return value;
    }
    let (bytes, files) = match encode_result(codec, &value, format) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(target: "weir::cache", "result of {} cannot be serialized for the cache ({e}); not cached", meta.task);
            return value;
        }
    };
    let mut meta = meta;
    match store_files(&store, files, mode).await {
        Ok(hashes) => meta.files = hashes,
        Err(e) => {
            tracing::warn!(target: "weir::cache", "could not store the files in the result of {} ({e}); not cached", meta.task);
            return value;
        }
    }
    let key = meta.key.clone();
    let task = meta.task.clone();
    match on_blocking_pool(store.clone(), move |s| s.put(meta, bytes, mode)).await {
        Ok((PutOutcome::Published, _)) => value,
        Ok((PutOutcome::AlreadyPresent, _)) => {
            let Ok(parsed) = key.parse::<CacheKey>() else {
                return value;
            };
            match store.get(&parsed, weir_types::time::now_micros()).await {
                Ok(Lookup::Hit { meta, bytes }) => decode_result(&store, codec, &meta, &bytes).await.unwrap_or(value),
                _ => value,
            }
        }
        Err(e) => {
            tracing::warn!(target: "weir::cache", "could not store the result of {task} ({e}); it will be recomputed next time");
            value
        }
    }
}

/// Results being published in the background at most, per process: past this, a task that
/// finishes waits for a slot before returning (so memory held by pending results stays
/// bounded: each holds its encoded bytes).
pub(crate) const PENDING_PUBLISHES: usize = 64;
static PUBLISH_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PENDING_PUBLISHES);

/// Says so if a background publish never finished (the runtime shut down under it): the
/// result was computed and returned but is not in the cache.
struct Unfinished {
    task: String,
    done: bool,
}

impl Unfinished {
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(target: "weir::cache", "the result of {} was not stored: the process stopped before it was published", self.task);
        }
    }
}

/// Publishes an encoded result off the task's critical path: the task returns at once and
/// the result is made durable while the flow goes on. `tracker` is the flow run's, so the
/// flow run ends only after it is published; `lease` (the key's) is held until then, so
/// another process waiting for the key reads this result instead of computing it. Only for
/// results whose publish cannot lose to another writer's (a held lease, or a replace):
/// otherwise the caller must see the winner's value, which only a synchronous publish
/// knows.
pub(crate) async fn publish_later(
    tracker: &tokio_util::task::TaskTracker,
    store: Arc<dyn ResultStore>,
    meta: EntryMeta,
    bytes: Vec<u8>,
    mode: PutMode,
    lease: Option<HeldLease>,
) {
    // Closed only if the process is going away; then publish inline like before.
    let Ok(permit) = PUBLISH_SLOTS.acquire().await else {
        let task = meta.task.clone();
        if let Err(e) = on_blocking_pool(store, move |s| s.put(meta, bytes, mode)).await {
            tracing::warn!(target: "weir::cache", "could not store the result of {task} ({e}); it will be recomputed next time");
        }
        return;
    };
    let guard = Unfinished {
        task: meta.task.clone(),
        done: false,
    };
    let scope = crate::context::current().unwrap_or_default();
    let fut = async move {
        let _permit = permit;
        if let Err(e) = on_blocking_pool(store, move |s| s.put(meta, bytes, mode)).await {
            tracing::warn!(target: "weir::cache", "could not store the result of {} ({e}); it will be recomputed next time", guard.task);
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        guard.finish();
    };
    tracker.spawn(crate::context::SCOPE.scope(scope, fut));
}

/// What to do when a templated result key already has a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Use the stored result (a cache hit). The default.
    Skip,
    /// Compute again and replace it.
    Overwrite,
    /// Fail the task run.
    Error,
}

/// Values a result key template can use.
pub(crate) struct KeyContext<'a> {
    pub flow_name: &'a str,
    pub task_name: &'a str,
    pub flow_run_id: String,
    pub task_run_id: String,
    pub params: &'a serde_json::Map<String, serde_json::Value>,
}

/// Renders `{flow_name}/{task_name}/{date}/{region}.json`. `{{` and `}}` are literal braces.
/// (Single-brace placeholders are the whole language, so a template engine would add
/// nothing but a second syntax; the macro already rejected unknown names at compile time.)
pub(crate) fn render_key(template: &str, ctx: &KeyContext<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let value = match name.as_str() {
                    "flow_name" => ctx.flow_name.to_string(),
                    "task_name" => ctx.task_name.to_string(),
                    "flow_run_id" => ctx.flow_run_id.clone(),
                    "task_run_id" => ctx.task_run_id.clone(),
                    "date" => weir_types::time::now().strftime("%Y-%m-%d").to_string(),
                    param => match ctx.params.get(param) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => return Err(format!("result key '{template}' names an unknown field '{{{param}}}'")),
                    },
                };
                out.push_str(&value);
            }
            other => out.push(other),
        }
    }
    weir_cache::validate_name(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs store I/O that takes milliseconds (fsync, link, uploads, hashing large files) on the
/// blocking pool instead of the async workers.
async fn on_blocking_pool<T: Send + 'static>(
    store: Arc<dyn ResultStore>,
    op: impl for<'a> FnOnce(&'a dyn ResultStore) -> BoxFuture<'a, Result<T, weir_cache::StoreError>> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || tokio::runtime::Handle::current().block_on(op(store.as_ref())))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Publishes a named result (from [`encode_result`]), with the files it refers to.
pub(crate) async fn publish_named(
    store: Arc<dyn ResultStore>,
    mut meta: EntryMeta,
    (bytes, files): (Vec<u8>, Vec<std::path::PathBuf>),
    mode: PutMode,
) -> Result<PutOutcome, String> {
    meta.files = store_files(&store, files, mode).await?;
    on_blocking_pool(store, move |s| s.put_named(meta, bytes, mode))
        .await
        .map(|(o, _)| o)
}

/// Publishes a named file result, streaming the file.
pub(crate) async fn publish_named_file(
    store: Arc<dyn ResultStore>,
    meta: EntryMeta,
    src: std::path::PathBuf,
    mode: PutMode,
) -> Result<PutOutcome, String> {
    on_blocking_pool(store, move |s| s.put_named_file(meta, src, mode))
        .await
        .map(|(o, _)| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(params: &serde_json::Map<String, serde_json::Value>) -> KeyContext<'_> {
        KeyContext {
            flow_name: "daily",
            task_name: "load",
            flow_run_id: "f".into(),
            task_run_id: "t".into(),
            params,
        }
    }

    #[test]
    fn renders_fields_and_parameters() {
        let mut p = serde_json::Map::new();
        p.insert("region".into(), "eu-west".into());
        p.insert("day".into(), 7.into());
        let k = render_key("{flow_name}/{task_name}/{region}-{day}.json", &ctx(&p)).unwrap();
        assert_eq!(k, "daily/load/eu-west-7.json");
        let d = render_key("{date}/x", &ctx(&p)).unwrap();
        assert_eq!(d.len(), "2026-11-22/x".len());
        assert_eq!(render_key("a{{b}}", &ctx(&p)).unwrap(), "a{b}");
    }

    #[test]
    fn refuses_keys_that_leave_the_store() {
        let mut p = serde_json::Map::new();
        for evil in ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", "a//b", "a\\b"] {
            p.insert("region".into(), evil.into());
            let err = render_key("{region}", &ctx(&p)).unwrap_err();
            assert!(err.contains("result key"), "{evil}: {err}");
        }
        let err = render_key("{nope}", &ctx(&p)).unwrap_err();
        assert!(err.contains("unknown field '{nope}'"), "{err}");
    }
}
