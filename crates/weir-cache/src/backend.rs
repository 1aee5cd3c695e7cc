//! The few operations the result store needs from a place that holds files.
//!
//! [`FolderBackend`](crate::folder::FolderBackend) is a POSIX folder (local disk, NFS,
//! JuiceFS); [`ObjectBackend`](crate::object::ObjectBackend) is object storage through
//! OpenDAL (S3 and S3-compatible servers, in-memory for tests, GCS and Azure behind cargo
//! features). The result store's layout and checks are written once, over this trait.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

/// How to write a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace whatever is there (atomically: readers see the old or the new file).
    Overwrite,
    /// Create only if nothing is there; never replace.
    IfAbsent,
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    /// `IfAbsent` and the name was taken.
    Exists,
}

/// One stored file, as listed.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// Path relative to the backend's root, with `/` separators.
    pub path: String,
    pub size: u64,
    /// Last modification, µs since the epoch (0 if the backend does not say).
    pub modified: i64,
}

/// A file's bytes, and what identifies this very version of it (see
/// [`Backend::read_versioned`]).
pub type Versioned = (Vec<u8>, String);

/// A failure of the backend itself (I/O, network, permissions), not a missing file.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {op} {path}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub op: &'static str,
    pub path: String,
    pub message: String,
}

/// A place that holds files by path.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where this is, for messages (`/mnt/cache`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Whether `WriteMode::IfAbsent` is atomic here. Where it is not, concurrent writers of
    /// one name may both believe they created it (the last write wins).
    fn atomic_if_absent(&self) -> bool;

    /// The file's bytes, or `None` if there is no such file.
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>>;

    /// Writes a whole file atomically: a reader never sees part of it.
    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>>;

    /// Creates a file only if absent (atomically, like [`WriteMode::IfAbsent`]), without
    /// making it durable: for files worth nothing after a power loss (leases, which expire
    /// anyway). Backends whose writes cost no fsync keep the default, a plain [`Backend::write`].
    fn create_volatile<'a>(&'a self, path: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<Written, BackendError>> {
        self.write(path, bytes, WriteMode::IfAbsent)
    }

    /// Deletes a file; deleting a missing file is not an error.
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The file's bytes and what identifies this very version of it (the ETag on object
    /// storage; a hash of the contents on folders), or `None` if there is no such file.
    fn read_versioned<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, BackendError>>;

    /// Deletes `path` only if it is still the version [`Backend::read_versioned`] returned:
    /// `Ok(false)` if it changed or is gone. Atomic where the backend has conditional
    /// deletes (S3's `If-Match`); elsewhere a check just before the delete (see each backend).
    fn delete_if<'a>(&'a self, path: &'a str, version: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Whether `WriteMode::IfAbsent` is really atomic here, as measured rather than claimed:
    /// object storage runs a probe once per backend (concurrent create-if-absent of one name
    /// must have exactly one winner; some S3-compatible servers check, then write).
    fn probe_atomic(&self) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(std::future::ready(Ok(self.atomic_if_absent())))
    }

    /// Every file under `prefix` (recursively).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, BackendError>>;

    /// Streams the local file `src` into `path` with bounded memory (multipart uploads on
    /// object storage), atomically like [`Backend::write`].
    fn write_file<'a>(
        &'a self,
        path: &'a str,
        src: &'a Path,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>>;

    /// Streams `path` into the new local file `dest` with bounded memory; returns the
    /// BLAKE3 (hex) and size of what was read, or `None` if there is no such file.
    fn read_to_file<'a>(
        &'a self,
        path: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Option<(String, u64)>, BackendError>>;

    /// The file on local disk holding `path`, when the backend is a folder (zero-copy reads).
    fn local_path(&self, _path: &str) -> Option<PathBuf> {
        None
    }

    /// Marks a file as just used (for least-recently-used eviction). Optional.
    fn touch<'a>(&'a self, _path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// For a content-addressed file a writer found already present: makes sure garbage
    /// collection sees it as young (modified within `max_age_micros`) so it is not deleted
    /// before the writer's manifest points at it. `false` means "not done (missing, or
    /// cannot be refreshed in place): write it again with [`WriteMode::Overwrite`]", which
    /// the default always answers.
    fn refresh<'a>(&'a self, _path: &'a str, _max_age_micros: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async { Ok(false) })
    }

    /// Whether [`Backend::refresh`] makes any file young in place, whatever its age. Where
    /// it does not (object storage re-uploads only blobs older than the age it is given),
    /// gc keeps unreferenced blobs for at least [`crate::store::MIN_REUPLOAD_GRACE_MICROS`].
    fn refreshes_in_place(&self) -> bool {
        false
    }

    /// Deletes `path` only if it still holds `expected`; `false` if it changed (or is gone).
    /// The default compares, then deletes: a write landing in between is lost, which
    /// backends close with a real compare-and-delete.
    fn delete_if_unchanged<'a>(
        &'a self,
        path: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            if self.read(path).await?.as_deref() != Some(expected) {
                return Ok(false);
            }
            self.delete(path).await?;
            Ok(true)
        })
    }

    /// Deletes `path` only if it was last modified at or before `cutoff_micros` (µs since
    /// the epoch); `false` if it is younger (a writer refreshed it) or gone. The default
    /// deletes unconditionally: only for backends that are never shared.
    fn delete_if_older<'a>(&'a self, path: &'a str, _cutoff_micros: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            self.delete(path).await?;
            Ok(true)
        })
    }
}
