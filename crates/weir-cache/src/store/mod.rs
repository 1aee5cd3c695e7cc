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
//!
//! One file per kind of operation, each an `impl Store` block: [`layout`] (paths),
//! `manifest`, `blob`, `named`, `lease`, `gc`; [`types`] holds what they take and answer.

mod blob;
mod files;
mod gc;
pub mod layout;
mod lease;
mod manifest;
mod named;
pub mod types;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::backend::Backend;
use crate::key::CacheKey;
use named::NamedData;

pub use blob::{BLOB_REFRESH_AGE_MICROS, MIN_REUPLOAD_GRACE_MICROS};
pub use files::StoredFiles;
pub(crate) use layout::{blob_path, manifest_path};
pub use layout::{named_lease_key, validate_name};
pub(crate) use lease::new_token;
pub use types::*;

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
    /// Extends a held lease, if it is still ours: a holder that stalled past its expiry
    /// may find it [`Renewal::Lost`] to another, and never touches theirs.
    fn renew<'a>(&'a self, lease: &'a Lease, ttl_micros: i64, now: i64) -> BoxFuture<'a, Result<Renewal, StoreError>>;
    /// Gives a lease up, if it is still ours (`false`: someone else holds the key now).
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Whether leases are exclusive here: the backend's create-if-absent was measured
    /// atomic (once per store). Where it is not, leases are best-effort.
    fn atomic_leases(&self) -> BoxFuture<'_, Result<bool, StoreError>>;
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
    /// Stores local files as blobs named by their hash — the artifacts a result refers to,
    /// before the manifest that lists them in `files`; returns the hashes, in order.
    fn put_blobs(&self, srcs: Vec<PathBuf>, mode: PutMode) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Makes the blobs `meta.files` lists available on local disk, verified (in place for
    /// folders, otherwise downloaded once into `dest_dir`).
    fn get_blobs<'a>(
        &'a self,
        meta: &'a EntryMeta,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<StoredFiles, StoreError>>;
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

/// The result store layout over one backend.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    compression: Compression,
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
        Box::pin(self.entry_impl(key))
    }

    fn entries(&self) -> BoxFuture<'_, Result<Vec<EntryMeta>, StoreError>> {
        Box::pin(self.entries_impl())
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.remove_impl(key))
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

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: i64, now: i64) -> BoxFuture<'a, Result<Renewal, StoreError>> {
        Box::pin(self.renew_impl(lease, ttl, now))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.release_impl(lease))
    }

    fn atomic_leases(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.atomic_leases_impl())
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

    fn put_blobs(&self, srcs: Vec<PathBuf>, mode: PutMode) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.put_blobs_impl(srcs, mode))
    }

    fn get_blobs<'a>(
        &'a self,
        meta: &'a EntryMeta,
        dest_dir: &'a Path,
    ) -> BoxFuture<'a, Result<StoredFiles, StoreError>> {
        Box::pin(self.get_blobs_impl(meta, dest_dir))
    }
}
