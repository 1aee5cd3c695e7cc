//! The result store: where cached task results live, on any [`Backend`].
//!
//! # Layout (the same on every backend)
//!
//! ```text
//! v1/manifests/<k0k1>/<key>.json   small JSON metadata (EntryMeta), one per cache key
//! v1/blobs/<b0b1>/<blob>           result bytes (maybe zstd-compressed), named by their BLAKE3 hash
//! v1/leases/<key>/<generation>     who is computing a key right now (cache isolation)
//! tmp/                             files being written (folder backend only)
//! ```
//!
//! Blobs are content-addressed, so identical results are stored once. A manifest is written
//! only after its blob, create-if-absent where the backend can do that atomically, so a
//! reader that finds a manifest finds a complete blob, and of two concurrent writers of one
//! key exactly one wins; the other reads the winner's entry. Blobs are checked against their
//! hash on every read: a mismatch is [`Lookup::Corrupt`], never data.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, WriteMode, Written};
use crate::key::{CacheKey, InputDigest};

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// The metadata stored with every result: what it is and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A complete, verified entry; `bytes` are decompressed.
    Hit { meta: EntryMeta, bytes: Vec<u8> },
    /// No entry, or a manifest whose blob is gone.
    Miss,
    /// An entry past its `expires_at`.
    Expired { meta: EntryMeta },
    /// An entry that cannot be trusted (unparseable manifest, checksum mismatch…).
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
}

/// A lease this process holds.
#[derive(Clone, Debug)]
pub struct Lease {
    pub key: CacheKey,
    generation: u64,
    pub holder: String,
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

/// A place to keep results. [`Store`] is the one implementation over a [`Backend`];
/// [`crate::tier::Tiered`] puts a local folder in front of a remote store.
pub trait ResultStore: Send + Sync + fmt::Debug {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Looks a key up; `now` (µs since the epoch) decides expiry.
    fn get<'a>(&'a self, key: &'a CacheKey, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>>;
    /// Stores `bytes` (the serialized result) under `meta.key`; returns the manifest as
    /// stored (with `blob`, `size`, `compression` filled in).
    fn put(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>>;
    /// The manifest of a key, expired or not.
    fn entry<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<EntryMeta>, StoreError>>;
    /// Every readable manifest.
    fn entries(&self) -> BoxFuture<'_, Result<Vec<EntryMeta>, StoreError>>;
    /// Removes an entry (its blob goes at the next gc if nothing else uses it).
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Removes expired and old entries and unreferenced blobs.
    fn gc(&self, opts: GcOptions, now: i64) -> BoxFuture<'_, Result<GcReport, StoreError>>;
    /// Counts entries and bytes.
    fn stats(&self, now: i64) -> BoxFuture<'_, Result<StoreStats, StoreError>>;
    /// Asks for the right to compute `key` for `ttl_micros`.
    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        holder: &'a str,
        ttl_micros: i64,
        now: i64,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>>;
    /// Extends a held lease.
    fn renew<'a>(&'a self, lease: &'a Lease, ttl_micros: i64, now: i64) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Gives a lease up.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Stores the local file `src` as the result of `meta.key`, streaming it (bounded memory).
    fn put_file(
        &self,
        meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>>;
    /// Looks a file result up and makes it available on local disk (zero-copy for folders,
    /// otherwise downloaded once into `dest_dir`), verified against its hash.
    fn get_file<'a>(
        &'a self,
        key: &'a CacheKey,
        now: i64,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<FileLookup, StoreError>>;
    /// Stores a file as the named result `named/<name>`, streaming it.
    fn put_named_file(
        &self,
        meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>>;
    /// Looks a named file result up and makes it available on local disk, verified.
    fn get_named_file<'a>(
        &'a self,
        name: &'a str,
        now: i64,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<FileLookup, StoreError>>;
    /// Looks a named (templated-key) result up: `named/<name>`.
    fn get_named<'a>(&'a self, name: &'a str, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>>;
    /// Stores a named result at `named/<name>`, readable by people and other programs.
    fn put_named(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>>;
}

/// Checks that a templated result key stays inside the store: a relative path of plain
/// segments (no `..`, no `.`, no empty segments, no absolute paths, no backslashes or NULs).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Config(format!("result key '{name}' {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with('/') {
        return bad("is an absolute path; result keys are relative to the store");
    }
    if name.contains('\\') || name.contains('\0') {
        return bad("contains a backslash or NUL");
    }
    for seg in name.split('/') {
        match seg {
            "" => return bad("has an empty path segment"),
            "." | ".." => return bad("would resolve outside the store ('.' or '..' segment)"),
            _ => {}
        }
    }
    Ok(())
}

fn named_data_path(name: &str) -> String {
    format!("named/{name}")
}

fn named_manifest_path(name: &str) -> String {
    format!("v1/named/{name}.json")
}

/// The result store layout over one backend.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    compression: Compression,
}

pub(crate) fn manifest_path(key_hex: &str) -> String {
    format!("v1/manifests/{}/{key_hex}.json", &key_hex[..2.min(key_hex.len())])
}

pub(crate) fn blob_path(blob_hex: &str) -> String {
    format!("v1/blobs/{}/{blob_hex}", blob_hex.get(..2).unwrap_or("__"))
}

/// Why a manifest cannot be used, as the answer a lookup gives.
enum Unusable {
    Missing,
    Corrupt(String),
    Expired(Box<EntryMeta>),
}

impl From<Unusable> for Lookup {
    fn from(u: Unusable) -> Lookup {
        match u {
            Unusable::Missing => Lookup::Miss,
            Unusable::Corrupt(reason) => Lookup::Corrupt { reason },
            Unusable::Expired(meta) => Lookup::Expired { meta: *meta },
        }
    }
}

impl From<Unusable> for FileLookup {
    fn from(u: Unusable) -> FileLookup {
        match u {
            Unusable::Missing => FileLookup::Miss,
            Unusable::Corrupt(reason) => FileLookup::Corrupt { reason },
            Unusable::Expired(meta) => FileLookup::Expired { meta: *meta },
        }
    }
}

/// What a named result is stored from.
enum NamedData {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn blob_mode(mode: PutMode) -> WriteMode {
    match mode {
        PutMode::IfAbsent => WriteMode::IfAbsent,
        PutMode::Replace => WriteMode::Overwrite,
    }
}

/// Fills in a file result's manifest fields (hash, size, serializer) from the file itself.
fn describe_file(meta: &mut EntryMeta, src: &Path) -> Result<(), StoreError> {
    let (hash, size) = crate::stream::hash_file(src)
        .map_err(|e| StoreError::Config(format!("cannot read the result file {}: {e}", src.display())))?;
    meta.format = MANIFEST_FORMAT;
    meta.serializer = "file".into();
    meta.compression = None;
    meta.blob = hash;
    meta.size = size;
    meta.raw_size = size;
    Ok(())
}

fn lease_dir(key: &CacheKey) -> String {
    format!("v1/leases/{}/", key.to_hex())
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            compression: Compression::None,
        }
    }

    /// Compress blobs written from now on (reading handles both).
    pub fn with_compression(mut self, compression: Compression) -> Store {
        self.compression = compression;
        self
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The backend path of a key's manifest.
    pub fn manifest_path(&self, key: &CacheKey) -> String {
        manifest_path(&key.to_hex())
    }

    /// The backend path of a blob.
    pub fn blob_path(&self, blob_hex: &str) -> String {
        blob_path(blob_hex)
    }

    async fn read_manifest(&self, path: &str) -> Result<Option<Result<EntryMeta, String>>, StoreError> {
        let Some(raw) = self.backend.read(path).await? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice::<EntryMeta>(&raw).map_err(|e| {
            format!("manifest {path} in {} is unreadable: {e}", self.backend.location())
        })))
    }

    /// Reads a live manifest, or says why there is none usable (missing, unreadable, expired).
    async fn manifest_at(&self, path: &str, now: i64) -> Result<Result<EntryMeta, Unusable>, StoreError> {
        Ok(match self.read_manifest(path).await? {
            None => Err(Unusable::Missing),
            Some(Err(reason)) => Err(Unusable::Corrupt(reason)),
            Some(Ok(m)) if m.expires_at.is_some_and(|exp| exp <= now) => Err(Unusable::Expired(Box::new(m))),
            Some(Ok(m)) => Ok(m),
        })
    }

    async fn get_impl(&self, key: &CacheKey, now: i64) -> Result<Lookup, StoreError> {
        let path = self.manifest_path(key);
        let meta = match self.manifest_at(&path, now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        if meta.key != key.to_hex() {
            return Ok(Lookup::Corrupt {
                reason: format!("manifest {path} belongs to key {}", meta.key),
            });
        }
        let bpath = blob_path(&meta.blob);
        // A manifest whose data is gone is a miss, never an error.
        let Some(stored) = self.backend.read(&bpath).await? else {
            return Ok(Lookup::Miss);
        };
        if blake3::hash(&stored).to_hex().as_str() != meta.blob {
            return Ok(Lookup::Corrupt {
                reason: format!(
                    "blob {bpath} in {} does not match its checksum ({} bytes, expected {})",
                    self.backend.location(),
                    stored.len(),
                    meta.size
                ),
            });
        }
        let bytes = match meta.compression.as_deref() {
            None => stored,
            Some("zstd") => match zstd::decode_all(&stored[..]) {
                Ok(b) => b,
                Err(e) => {
                    return Ok(Lookup::Corrupt {
                        reason: format!("blob {bpath} does not decompress: {e}"),
                    });
                }
            },
            Some(other) => {
                return Ok(Lookup::Corrupt {
                    reason: format!("blob {bpath} uses unknown compression '{other}'"),
                });
            }
        };
        Ok(Lookup::Hit { meta, bytes })
    }

    async fn put_impl(
        &self,
        mut meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        meta.format = MANIFEST_FORMAT;
        meta.raw_size = bytes.len() as u64;
        let compression = match meta.compression.as_deref() {
            Some("zstd") => Compression::Zstd,
            Some("none") => Compression::None,
            _ => self.compression,
        };
        let stored = match compression {
            Compression::None => {
                meta.compression = None;
                bytes
            }
            Compression::Zstd => {
                meta.compression = Some("zstd".into());
                zstd::encode_all(&bytes[..], 3).map_err(StoreError::Compression)?
            }
        };
        meta.blob = blake3::hash(&stored).to_hex().to_string();
        meta.size = stored.len() as u64;

        // Blob first. A blob that exists has this content (its name is its hash) unless it
        // was damaged, which is why entries are replaced after a corrupt read: then the
        // blob is rewritten too.
        self.backend
            .write(&blob_path(&meta.blob), stored, blob_mode(mode))
            .await?;

        // Manifest last.
        let path = manifest_path(&meta.key);
        self.publish_manifest(&path, meta, mode).await
    }

    /// Writes a manifest, last: create-if-absent, or replace.
    async fn publish_manifest(
        &self,
        path: &str,
        meta: EntryMeta,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        let manifest = serde_json::to_vec_pretty(&meta)?;
        let written = match mode {
            PutMode::IfAbsent => self.backend.write(path, manifest, WriteMode::IfAbsent).await?,
            PutMode::Replace => self.backend.write(path, manifest, WriteMode::Overwrite).await?,
        };
        Ok(match written {
            Written::Created => (PutOutcome::Published, meta),
            Written::Exists => (PutOutcome::AlreadyPresent, meta),
        })
    }

    async fn put_file_impl(
        &self,
        mut meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        describe_file(&mut meta, &src)?;
        self.backend
            .write_file(&blob_path(&meta.blob), &src, blob_mode(mode))
            .await?;
        let path = manifest_path(&meta.key);
        self.publish_manifest(&path, meta, mode).await
    }

    async fn get_file_impl(&self, key: &CacheKey, now: i64, dest_dir: &Path) -> Result<FileLookup, StoreError> {
        let meta = match self.manifest_at(&self.manifest_path(key), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        let bpath = blob_path(&meta.blob);
        // Blobs are immutable once published, so they can be mapped to hash them.
        let changed = |p: &Path| format!("blob {} does not match its checksum", p.display());
        self.fetch_file(meta, &bpath, dest_dir, crate::stream::hash_immutable_file, changed)
            .await
    }

    /// Makes the stored file `data_path` available on local disk, verified against
    /// `meta.blob`: in place for folders, else downloaded once into `dest_dir`.
    async fn fetch_file(
        &self,
        meta: EntryMeta,
        data_path: &str,
        dest_dir: &Path,
        hash: fn(&Path) -> std::io::Result<(String, u64)>,
        changed: impl Fn(&Path) -> String,
    ) -> Result<FileLookup, StoreError> {
        let verify = |p: &Path| -> Result<bool, StoreError> {
            match hash(p) {
                Ok((h, _)) => Ok(h == meta.blob),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::Config(format!("cannot read {}: {e}", p.display()))),
            }
        };
        if let Some(local) = self.backend.local_path(data_path) {
            if !local.exists() {
                return Ok(FileLookup::Miss);
            }
            return Ok(if verify(&local)? {
                FileLookup::Hit { meta, path: local }
            } else {
                FileLookup::Corrupt {
                    reason: changed(&local),
                }
            });
        }
        let dest = dest_dir.join(&meta.blob);
        if dest.exists() && verify(&dest)? {
            return Ok(FileLookup::Hit { meta, path: dest });
        }
        std::fs::create_dir_all(dest_dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dest_dir.display())))?;
        let tmp = dest_dir.join(format!(".{}.{}.part", meta.blob, std::process::id()));
        match self.backend.read_to_file(data_path, &tmp).await? {
            None => {
                let _ = std::fs::remove_file(&tmp);
                Ok(FileLookup::Miss)
            }
            Some((hash, _)) if hash == meta.blob => {
                std::fs::rename(&tmp, &dest)
                    .map_err(|e| StoreError::Config(format!("cannot move into {}: {e}", dest.display())))?;
                Ok(FileLookup::Hit { meta, path: dest })
            }
            Some(_) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(FileLookup::Corrupt {
                    reason: format!("{data_path} in {} does not match its checksum", self.backend.location()),
                })
            }
        }
    }

    async fn get_named_impl(&self, name: &str, now: i64) -> Result<Lookup, StoreError> {
        validate_name(name)?;
        let meta = match self.manifest_at(&named_manifest_path(name), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        let Some(bytes) = self.backend.read(&named_data_path(name)).await? else {
            return Ok(Lookup::Miss);
        };
        if blake3::hash(&bytes).to_hex().as_str() != meta.blob {
            return Ok(Lookup::Corrupt {
                reason: format!(
                    "named result {name} in {} does not match its checksum",
                    self.backend.location()
                ),
            });
        }
        Ok(Lookup::Hit { meta, bytes })
    }

    /// Stores a named result: the data at its readable name, then its manifest. Stored as
    /// serialized, uncompressed: the point of a named result is that people and other
    /// programs can read it where they expect it.
    async fn put_named_data(
        &self,
        mut meta: EntryMeta,
        data: NamedData,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        let name = meta.key.clone();
        validate_name(&name)?;
        match &data {
            NamedData::Bytes(bytes) => {
                meta.format = MANIFEST_FORMAT;
                meta.raw_size = bytes.len() as u64;
                meta.size = bytes.len() as u64;
                meta.compression = None;
                meta.blob = blake3::hash(bytes).to_hex().to_string();
            }
            NamedData::File(src) => describe_file(&mut meta, src)?,
        }
        let mpath = named_manifest_path(&name);
        if mode == PutMode::IfAbsent && self.backend.read(&mpath).await?.is_some() {
            return Ok((PutOutcome::AlreadyPresent, meta));
        }
        let dpath = named_data_path(&name);
        match data {
            NamedData::Bytes(bytes) => self.backend.write(&dpath, bytes, WriteMode::Overwrite).await?,
            NamedData::File(src) => self.backend.write_file(&dpath, &src, WriteMode::Overwrite).await?,
        };
        self.publish_manifest(&mpath, meta, mode).await
    }

    async fn get_named_file_impl(&self, name: &str, now: i64, dest_dir: &Path) -> Result<FileLookup, StoreError> {
        validate_name(name)?;
        let meta = match self.manifest_at(&named_manifest_path(name), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        // A named file is meant to be read (and may be edited) by people: hash it by reading
        // in chunks, never by mapping it.
        let changed = |p: &Path| format!("named result {} was changed since it was stored", p.display());
        self.fetch_file(
            meta,
            &named_data_path(name),
            dest_dir,
            crate::stream::hash_file,
            changed,
        )
        .await
    }

    async fn entries_impl(&self) -> Result<Vec<EntryMeta>, StoreError> {
        let mut out = Vec::new();
        for obj in self.backend.list("v1/manifests/").await? {
            if !obj.path.ends_with(".json") {
                continue;
            }
            if let Some(Ok(meta)) = self.read_manifest(&obj.path).await? {
                out.push(meta);
            }
        }
        out.sort_by_key(|m| m.created_at);
        Ok(out)
    }

    async fn gc_impl(&self, opts: GcOptions, now: i64) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut live: Vec<(EntryMeta, String)> = Vec::new();
        let cutoff = opts.older_than_micros.map(|age| now - age);
        for obj in self.backend.list("v1/manifests/").await? {
            let meta = match self.read_manifest(&obj.path).await? {
                Some(Ok(m)) => m,
                // Unreadable manifests are garbage too.
                Some(Err(_)) => {
                    report.entries_removed += 1;
                    if !opts.dry_run {
                        self.backend.delete(&obj.path).await?;
                    }
                    continue;
                }
                None => continue,
            };
            let expired = meta.expires_at.is_some_and(|e| e <= now);
            let too_old = cutoff.is_some_and(|c| meta.created_at < c);
            if expired || too_old {
                report.entries_removed += 1;
                if !opts.dry_run {
                    self.backend.delete(&obj.path).await?;
                }
            } else {
                live.push((meta, obj.path));
            }
        }
        if let Some(max) = opts.max_size {
            // Oldest first, until what is left fits (shared blobs counted once).
            live.sort_by_key(|(m, _)| std::cmp::Reverse(m.created_at));
            let mut seen = HashSet::new();
            let mut total = 0u64;
            let mut keep = Vec::new();
            for (meta, path) in live {
                let extra = if seen.contains(&meta.blob) { 0 } else { meta.size };
                if total + extra <= max {
                    total += extra;
                    seen.insert(meta.blob.clone());
                    keep.push((meta, path));
                } else {
                    report.entries_removed += 1;
                    if !opts.dry_run {
                        self.backend.delete(&path).await?;
                    }
                }
            }
            live = keep;
        }
        let referenced: HashSet<&str> = live.iter().map(|(m, _)| m.blob.as_str()).collect();
        for obj in self.backend.list("v1/blobs/").await? {
            let name = obj.path.rsplit('/').next().unwrap_or("");
            if referenced.contains(name) {
                report.bytes_kept += obj.size;
                continue;
            }
            // A blob is written before its manifest: a young unreferenced blob may be
            // half of an entry being published right now.
            if obj.modified > now - opts.grace_micros {
                continue;
            }
            report.blobs_removed += 1;
            report.bytes_freed += obj.size;
            if !opts.dry_run {
                self.backend.delete(&obj.path).await?;
            }
        }
        for obj in self.backend.list("tmp/").await? {
            if obj.modified <= now - opts.grace_micros.max(3_600_000_000) && !opts.dry_run {
                // Left by writers that were killed mid-write.
                self.backend.delete(&obj.path).await?;
            }
        }
        report.entries_kept = live.len();
        Ok(report)
    }

    async fn stats_impl(&self, now: i64) -> Result<StoreStats, StoreError> {
        let entries = self.entries_impl().await?;
        let blobs = self.backend.list("v1/blobs/").await?;
        Ok(StoreStats {
            entries: entries.len(),
            expired: entries
                .iter()
                .filter(|m| m.expires_at.is_some_and(|e| e <= now))
                .count(),
            blobs: blobs.len(),
            bytes: blobs.iter().map(|b| b.size).sum(),
        })
    }

    async fn current_lease(&self, key: &CacheKey) -> Result<Option<(u64, Option<LeaseRecord>)>, StoreError> {
        let mut gens: Vec<u64> = self
            .backend
            .list(&lease_dir(key))
            .await?
            .iter()
            .filter_map(|o| o.path.rsplit('/').next()?.parse().ok())
            .collect();
        gens.sort_unstable();
        let Some(&gen_) = gens.last() else { return Ok(None) };
        let rec = self
            .backend
            .read(&format!("{}{gen_:020}", lease_dir(key)))
            .await?
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        Ok(Some((gen_, rec)))
    }

    async fn try_lease_impl(
        &self,
        key: &CacheKey,
        holder: &str,
        ttl: i64,
        now: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        // Generations make take-over safe with nothing but create-if-absent: whoever
        // creates generation n+1 of an expired lease n owns it, and only one can.
        let next = match self.current_lease(key).await? {
            None => 1,
            Some((gen_, Some(rec))) if rec.expires_at > now => {
                let _ = gen_;
                return Ok(LeaseOutcome::Held(rec));
            }
            // Expired, or unreadable (a holder killed mid-write): take it over.
            Some((gen_, _)) => gen_ + 1,
        };
        let rec = LeaseRecord {
            holder: holder.to_string(),
            expires_at: now + ttl,
        };
        let path = format!("{}{next:020}", lease_dir(key));
        match self
            .backend
            .write(&path, serde_json::to_vec(&rec)?, WriteMode::IfAbsent)
            .await?
        {
            Written::Created => {
                if next > 1 {
                    let _ = self
                        .backend
                        .delete(&format!("{}{:020}", lease_dir(key), next - 1))
                        .await;
                }
                Ok(LeaseOutcome::Acquired(Lease {
                    key: *key,
                    generation: next,
                    holder: holder.to_string(),
                }))
            }
            Written::Exists => {
                let rec = self
                    .backend
                    .read(&path)
                    .await?
                    .and_then(|raw| serde_json::from_slice(&raw).ok())
                    .unwrap_or(LeaseRecord {
                        holder: "another writer".into(),
                        expires_at: now + ttl,
                    });
                Ok(LeaseOutcome::Held(rec))
            }
        }
    }
}

impl ResultStore for Store {
    fn location(&self) -> String {
        self.backend.location()
    }

    fn get<'a>(&'a self, key: &'a CacheKey, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        Box::pin(self.get_impl(key, now))
    }

    fn put(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        Box::pin(self.put_impl(meta, bytes, mode))
    }

    fn entry<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<EntryMeta>, StoreError>> {
        Box::pin(async move {
            Ok(match self.read_manifest(&self.manifest_path(key)).await? {
                Some(Ok(m)) => Some(m),
                _ => None,
            })
        })
    }

    fn entries(&self) -> BoxFuture<'_, Result<Vec<EntryMeta>, StoreError>> {
        Box::pin(self.entries_impl())
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let path = self.manifest_path(key);
            let existed = self.backend.read(&path).await?.is_some();
            self.backend.delete(&path).await?;
            Ok(existed)
        })
    }

    fn gc(&self, opts: GcOptions, now: i64) -> BoxFuture<'_, Result<GcReport, StoreError>> {
        Box::pin(self.gc_impl(opts, now))
    }

    fn stats(&self, now: i64) -> BoxFuture<'_, Result<StoreStats, StoreError>> {
        Box::pin(self.stats_impl(now))
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        holder: &'a str,
        ttl: i64,
        now: i64,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>> {
        Box::pin(self.try_lease_impl(key, holder, ttl, now))
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: i64, now: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let rec = LeaseRecord {
                holder: lease.holder.clone(),
                expires_at: now + ttl,
            };
            let path = format!("{}{:020}", lease_dir(&lease.key), lease.generation);
            self.backend
                .write(&path, serde_json::to_vec(&rec)?, WriteMode::Overwrite)
                .await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = format!("{}{:020}", lease_dir(&lease.key), lease.generation);
            self.backend.delete(&path).await?;
            Ok(())
        })
    }

    fn put_named_file(
        &self,
        meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        Box::pin(self.put_named_data(meta, NamedData::File(src), mode))
    }

    fn get_named_file<'a>(
        &'a self,
        name: &'a str,
        now: i64,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<FileLookup, StoreError>> {
        Box::pin(self.get_named_file_impl(name, now, dest_dir))
    }

    fn get_named<'a>(&'a self, name: &'a str, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        Box::pin(self.get_named_impl(name, now))
    }

    fn put_file(
        &self,
        meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        Box::pin(self.put_file_impl(meta, src, mode))
    }

    fn get_file<'a>(
        &'a self,
        key: &'a CacheKey,
        now: i64,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<FileLookup, StoreError>> {
        Box::pin(self.get_file_impl(key, now, dest_dir))
    }

    fn put_named(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        Box::pin(self.put_named_data(meta, NamedData::Bytes(bytes), mode))
    }
}
