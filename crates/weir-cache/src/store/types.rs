//! What the store's operations take and answer: entry metadata, lookups, put modes,
//! leases, gc options and reports, errors.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::key::{CacheKey, InputDigest};

/// Version of the manifest format. Unchanged by inline results: a manifest without
/// `inline` is read exactly as before, and one with it needs no other change.
pub const MANIFEST_FORMAT: u32 = 1;

/// Results whose stored bytes (after compression) are at most this long live inside their
/// manifest instead of in a blob: a hit is then one small read, and a miss one durable
/// write instead of two. 4 KiB is one page: a manifest then stays within two pages (base64
/// adds a third) and reading it costs the same as reading a metadata-only one.
pub const INLINE_MAX: usize = 4096;

/// The metadata stored with every result: what it is and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub format: u32,
    /// Hex cache key.
    pub key: String,
    /// Full path of the task (`crate::module::name`).
    pub task: String,
    pub flow: Option<String>,
    pub flow_run_id: Option<String>,
    pub task_run_id: String,
    /// `json` or `msgpack`.
    pub serializer: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Size of the stored blob in bytes (after compression).
    pub size: u64,
    /// Size of the serialized result before compression.
    #[serde(default)]
    pub raw_size: u64,
    /// `zstd`, or absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Hex BLAKE3 of the stored blob: its name and its checksum.
    pub blob: String,
    /// The task's manual `cache_version`.
    pub cache_version: String,
    /// Hash of the task's source when it is part of the key (`inputs+source`).
    pub source_hash: Option<String>,
    /// Hash of the task's source, always (provenance: which code produced this result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_hash: Option<String>,
    /// Digest of each input, by parameter name.
    pub inputs: Vec<InputDigest>,
    /// Hex BLAKE3 of each file (artifact) the result refers to, stored as blobs beside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The stored bytes themselves (base64 in the manifest) for results of at most
    /// [`INLINE_MAX`] bytes; `blob` is then their checksum and there is no blob file.
    /// Lookups move it into [`Lookup::Hit`]'s `bytes`, so metadata handed out is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "inline_base64")]
    pub inline: Option<Vec<u8>>,
}

mod inline_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Decodes straight from the parser's buffer (no intermediate `String`: this is on
    /// every hit's path).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("base64 bytes or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(self)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                STANDARD.decode(s.as_bytes()).map(Some).map_err(E::custom)
            }
        }
        d.deserialize_option(V)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A complete, verified entry; `bytes` are decompressed.
    Hit { meta: EntryMeta, bytes: Vec<u8> },
    /// No entry.
    Miss,
    /// An entry past its `expires_at`.
    Expired { meta: EntryMeta },
    /// An entry that cannot be trusted (unparseable manifest, checksum mismatch, a manifest
    /// whose blob is gone…): replace it ([`PutMode::Replace`]) — a create-if-absent publish
    /// would find the manifest and leave the entry broken for good.
    Corrupt { reason: String },
}

/// What a lookup of a file result found.
#[derive(Debug)]
pub enum FileLookup {
    /// A complete, verified file on local disk.
    Hit {
        meta: EntryMeta,
        path: PathBuf,
    },
    Miss,
    Expired {
        meta: EntryMeta,
    },
    Corrupt {
        reason: String,
    },
}

/// How to publish a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Only if no entry exists for the key: concurrent writers agree on one winner.
    IfAbsent,
    /// Replace what is there (an expired, corrupt or refreshed entry).
    Replace,
}

/// What a put did.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Published,
    /// Another writer published this key first (only with [`PutMode::IfAbsent`]).
    AlreadyPresent,
}

/// Compression of stored blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Result<Compression, StoreError> {
        match s {
            "none" | "" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            other => Err(StoreError::Config(format!(
                "unknown compression '{other}' (expected zstd or none)"
            ))),
        }
    }
}

/// A store failure (not a bad entry, which is a [`Lookup::Corrupt`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("could not encode entry metadata: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("compression: {0}")]
    Compression(std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Who holds the right to compute a key, until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub expires_at: i64,
    /// Random, one per acquisition and kept through renewals: what tells a lease from a
    /// later lease on the same key, even one with the same generation number.
    #[serde(default)]
    pub token: String,
    /// The holder's lease TTL (µs; 0 in records written before it was kept): it renews
    /// every third of it, so a waiter with a shorter TTL of its own knows how long a silence
    /// still means a live holder.
    #[serde(default)]
    pub ttl: i64,
}

/// A lease this process holds. Renewing gives the next one ([`Renewal::Renewed`]).
#[derive(Clone, Debug)]
pub struct Lease {
    pub key: CacheKey,
    pub(super) generation: u64,
    pub holder: String,
    pub token: String,
    /// Until when (µs), as of the last acquisition or renewal.
    pub expires_at: i64,
}

/// The answer to renewing a lease.
#[derive(Debug)]
pub enum Renewal {
    /// Still ours, until the new lease's `expires_at`.
    Renewed(Lease),
    /// Someone else took the lease over (ours had expired): stop acting as its holder.
    /// Their record, when it could be read.
    Lost(Option<LeaseRecord>),
}

/// The answer to asking for a lease.
#[derive(Debug)]
pub enum LeaseOutcome {
    Acquired(Lease),
    /// Someone else is computing this key.
    Held(LeaseRecord),
}

/// What `gc` should remove.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Remove entries created more than this many µs ago.
    pub older_than_micros: Option<i64>,
    /// Then remove the oldest entries until blobs take at most this many bytes.
    pub max_size: Option<u64>,
    /// Only report.
    pub dry_run: bool,
    /// Unreferenced blobs younger than this (µs) are kept: they may belong to an entry
    /// being published right now.
    pub grace_micros: i64,
}

/// What `gc` removed (or would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub entries_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub entries_kept: usize,
    pub bytes_kept: u64,
}

/// Counts of a store's contents.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStats {
    pub entries: usize,
    pub expired: usize,
    pub blobs: usize,
    pub bytes: u64,
}
