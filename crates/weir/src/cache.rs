//! How a task run uses the result store: key material from the inputs, lookup, isolation
//! leases, publish.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use weir_cache::canonical::CanonicalError;
use weir_cache::{
    CacheKey, EntryMeta, Format, KeyParts, Lease, LeaseOutcome, Lookup, PutMode, PutOutcome, ResultStore,
};

use crate::task::{CachePolicy, TaskSpec};

/// What a task call's cache key is made of: a digest per input, or one user-supplied key.
#[derive(Clone, Debug)]
pub struct KeyMaterial {
    inputs: Vec<(&'static str, [u8; 32])>,
    custom: Option<[u8; 32]>,
}

/// An input that could not be hashed (its `Serialize` impl failed).
#[derive(Debug, thiserror::Error)]
#[error("could not hash input `{input}` for the cache key: {source}")]
pub struct KeyError {
    pub input: &'static str,
    #[source]
    pub source: CanonicalError,
}

impl KeyMaterial {
    /// From each input's name and canonical digest.
    pub fn inputs(digests: Vec<(&'static str, Result<[u8; 32], CanonicalError>)>) -> Result<KeyMaterial, KeyError> {
        let inputs = digests
            .into_iter()
            .map(|(name, d)| d.map(|d| (name, d)).map_err(|source| KeyError { input: name, source }))
            .collect::<Result<_, _>>()?;
        Ok(KeyMaterial { inputs, custom: None })
    }

    /// From the digest of a user key function's result.
    pub fn custom(digest: Result<[u8; 32], CanonicalError>) -> Result<KeyMaterial, KeyError> {
        let d = digest.map_err(|source| KeyError { input: "key", source })?;
        Ok(KeyMaterial {
            inputs: Vec::new(),
            custom: Some(d),
        })
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
            Found::Compute(PutMode::IfAbsent)
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
        Ok(Lookup::Hit { meta, bytes }) => {
            match Format::from_name(&meta.serializer).and_then(|f| (codec.decode)(&bytes, f)) {
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
            }
        }
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
            Found::Compute(PutMode::IfAbsent)
        }
    }
}

/// The right to compute a key, kept alive by a heartbeat until dropped or released.
pub(crate) struct HeldLease {
    store: Arc<dyn ResultStore>,
    lease: Option<Lease>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl HeldLease {
    pub async fn release(mut self) {
        self.heartbeat.abort();
        if let Some(lease) = self.lease.take()
            && let Err(e) = self.store.release(&lease).await
        {
            tracing::debug!(target: "weir::cache", "could not release the lease on {}: {e}", lease.key);
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // Dropped without release (the run was cancelled): release in the background, or
        // let the lease expire if the runtime is going away.
        if let Some(lease) = self.lease.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            rt.spawn(async move {
                let _ = store.release(&lease).await;
            });
        }
    }
}

/// What serializable isolation decided.
pub(crate) enum Isolation<T> {
    /// We hold the lease: compute.
    Compute(Option<HeldLease>),
    /// Someone else computed it while we waited.
    Value(T),
}

/// Makes sure one process computes a key at a time: takes the key's lease, or waits for
/// whoever holds it to publish (or to die, and the lease to expire).
pub(crate) async fn isolate<T>(
    store: &Arc<dyn ResultStore>,
    key: &CacheKey,
    codec: &Codec<T>,
    spec: &TaskSpec,
    holder: &str,
    ttl: Duration,
) -> Isolation<T> {
    let ttl_us = ttl.as_micros() as i64;
    let mut wait = Duration::from_millis(20);
    let mut announced = false;
    let mut errors = 0;
    loop {
        match store
            .try_lease(key, holder, ttl_us, weir_types::time::now_micros())
            .await
        {
            Ok(LeaseOutcome::Acquired(lease)) => {
                // It may have been published between our lookup and the lease.
                if let Found::Value(v) = lookup(store, key, codec, spec).await {
                    let _ = store.release(&lease).await;
                    return Isolation::Value(v);
                }
                let hb_store = store.clone();
                let hb_lease = lease.clone();
                let heartbeat = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(ttl / 3).await;
                        if let Err(e) = hb_store.renew(&hb_lease, ttl_us, weir_types::time::now_micros()).await {
                            tracing::warn!(target: "weir::cache", "could not renew the lease on {}: {e}", hb_lease.key);
                        }
                    }
                });
                return Isolation::Compute(Some(HeldLease {
                    store: store.clone(),
                    lease: Some(lease),
                    heartbeat,
                }));
            }
            Ok(LeaseOutcome::Held(rec)) => {
                if !announced {
                    tracing::info!(target: "weir::cache", "waiting for {} to compute this result", rec.holder);
                    announced = true;
                }
                // Another process on another machine: only the store can tell us when it is
                // done, so we ask it, backing off up to a second.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                if let Found::Value(v) = lookup(store, key, codec, spec).await {
                    return Isolation::Value(v);
                }
            }
            // A store that keeps failing must not block the task forever; a blip must not
            // make two processes compute one key.
            Err(e) if errors < 5 => {
                errors += 1;
                tracing::debug!(target: "weir::cache", "lease request failed ({e}); retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(target: "weir::cache", "cache isolation unavailable ({e}); computing {} anyway", spec.name);
                return Isolation::Compute(None);
            }
        }
    }
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
    let bytes = match (codec.encode)(&value, format) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(target: "weir::cache", "result of {} cannot be serialized for the cache ({e}); not cached", meta.task);
            return value;
        }
    };
    let key = meta.key.clone();
    let task = meta.task.clone();
    match on_blocking_pool(store.clone(), move |s| s.put(meta, bytes, mode)).await {
        Ok((PutOutcome::Published, _)) => value,
        Ok((PutOutcome::AlreadyPresent, _)) => {
            let Ok(parsed) = key.parse::<CacheKey>() else {
                return value;
            };
            match store.get(&parsed, weir_types::time::now_micros()).await {
                Ok(Lookup::Hit { meta, bytes }) => Format::from_name(&meta.serializer)
                    .and_then(|f| (codec.decode)(&bytes, f))
                    .unwrap_or(value),
                _ => value,
            }
        }
        Err(e) => {
            tracing::warn!(target: "weir::cache", "could not store the result of {task} ({e}); it will be recomputed next time");
            value
        }
    }
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

/// Publishes a named result (already serialized).
pub(crate) async fn publish_named(
    store: Arc<dyn ResultStore>,
    meta: EntryMeta,
    bytes: Vec<u8>,
    mode: PutMode,
) -> Result<PutOutcome, String> {
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
