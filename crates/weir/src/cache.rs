//! How a task run uses the result store: key material from the inputs, lookup, publish.

use std::sync::Arc;

use weir_cache::canonical::CanonicalError;
use weir_cache::{CacheKey, EntryMeta, Format, KeyParts, Lookup, PutMode, PutOutcome, ResultStore};

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
            task_path: spec.path,
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
}

/// The outcome of looking a key up.
pub(crate) enum Found<T> {
    Value(T),
    /// Compute, then publish with this mode.
    Compute(PutMode),
}

pub(crate) fn lookup<T>(store: &Arc<dyn ResultStore>, key: &CacheKey, codec: &Codec<T>, spec: &TaskSpec) -> Found<T> {
    match store.get(key, weir_types::time::now_micros()) {
        Ok(Lookup::Hit { meta, bytes }) => {
            match Format::from_name(&meta.serializer).and_then(|f| (codec.decode)(&bytes, f)) {
                Ok(v) => Found::Value(v),
                Err(e) => {
                    tracing::warn!(
                        target: "weir::cache",
                        "cached result of {} (key {}) cannot be read as this task's output ({e}); recomputing",
                        spec.name,
                        &meta.key[..16]
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

/// Publishes a computed result. Returns the winner's value when another writer published
/// the same key first, so every caller of a key sees one result.
pub(crate) async fn publish<T>(
    store: Arc<dyn ResultStore>,
    codec: &Codec<T>,
    mut meta: EntryMeta,
    value: T,
    format: Format,
    mode: PutMode,
) -> T {
    let bytes = match (codec.encode)(&value, format) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(target: "weir::cache", "result of {} cannot be serialized for the cache ({e}); not cached", meta.task);
            return value;
        }
    };
    let key = meta.key.clone();
    let task = meta.task.clone();
    // fsync and link take milliseconds on real disks: keep them off the async workers.
    let write_store = store.clone();
    let outcome = tokio::task::spawn_blocking(move || write_store.put(&mut meta, &bytes, mode)).await;
    match outcome {
        Ok(Ok(PutOutcome::Published)) => value,
        Ok(Ok(PutOutcome::AlreadyPresent)) => {
            let Ok(parsed) = key.parse::<CacheKey>() else {
                return value;
            };
            match store.get(&parsed, weir_types::time::now_micros()) {
                Ok(Lookup::Hit { meta, bytes }) => Format::from_name(&meta.serializer)
                    .and_then(|f| (codec.decode)(&bytes, f))
                    .unwrap_or(value),
                _ => value,
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "weir::cache", "could not store the result of {task} ({e}); it will be recomputed next time");
            value
        }
        Err(e) => {
            tracing::warn!(target: "weir::cache", "could not store the result of {task} ({e})");
            value
        }
    }
}
