//! Results stored as content-addressed blobs (or, when small, inside their manifest):
//! in-memory results and streamed files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use crate::backend::WriteMode;
use crate::key::CacheKey;
use crate::store::layout::{blob_path, manifest_path};
use crate::store::{
    Compression, EntryMeta, FileLookup, INLINE_MAX, Lookup, MANIFEST_FORMAT, PutMode, PutOutcome, Store, StoreError,
};

/// A writer that finds its (content-addressed) blob already stored refreshes it, so that gc,
/// which keeps unreferenced blobs younger than its grace period, cannot delete it before the
/// writer's manifest points at it. Folders just set the time. Object storage has no cheap
/// way to do that, so the blob is uploaded again, but only if it is older than this: gc's
/// grace on object storage must be longer (the default grace is an hour).
pub const BLOB_REFRESH_AGE_MICROS: i64 = 10 * 60 * 1_000_000;

/// The shortest grace gc gives unreferenced blobs on backends that cannot refresh a file in
/// place (see [`crate::backend::Backend::refreshes_in_place`]), whatever it is asked: a
/// writer there reuses a blob younger than [`BLOB_REFRESH_AGE_MICROS`] without touching it,
/// and then has at least that long again to publish the manifest naming it.
pub const MIN_REUPLOAD_GRACE_MICROS: i64 = 2 * BLOB_REFRESH_AGE_MICROS;

/// Links handed out on hits stay at least this long after the store dropped their blob
/// (and forever while a task holds them open): see [`Store::sweep_links`].
const LINK_KEEP_MICROS: i64 = 3_600_000_000;

/// Fills in a file result's manifest fields (hash, size, serializer) from the file itself.
pub(super) fn describe_file(meta: &mut EntryMeta, src: &Path) -> Result<(), StoreError> {
    let (hash, size) = crate::stream::hash_file(src)
        .map_err(|e| StoreError::Config(format!("cannot read the result file {}: {e}", src.display())))?;
    meta.format = MANIFEST_FORMAT;
    meta.serializer = "file".into();
    meta.compression = None;
    meta.blob = hash;
    meta.size = size;
    meta.raw_size = size;
    meta.inline = None;
    Ok(())
}

/// What a blob is written from.
pub(super) enum BlobData<'a> {
    Bytes(Vec<u8>),
    File(&'a Path),
}

fn io_error(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Config(format!("cannot {what} {}: {e}", path.display()))
}

impl Store {
    pub(super) async fn get_impl(&self, key: &CacheKey, now: i64) -> Result<Lookup, StoreError> {
        let path = self.manifest_path(key);
        let mut meta = match self.manifest_at(&path, now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        if meta.key != key.to_hex() {
            return Ok(Lookup::Corrupt {
                reason: format!("manifest {path} belongs to key {}", meta.key),
            });
        }
        let bpath = blob_path(&meta.blob);
        let (stored, source) = match meta.inline.take() {
            Some(bytes) => (bytes, path.as_str()),
            None => match self.backend.read(&bpath).await? {
                Some(bytes) => (bytes, bpath.as_str()),
                // The manifest is there and its data is not (deleted by hand, or lost): the
                // entry must be replaced, which a create-if-absent publish would never do.
                None => {
                    return Ok(Lookup::Corrupt {
                        reason: format!("blob {bpath} in {} is missing", self.backend.location()),
                    });
                }
            },
        };
        if blake3::hash(&stored).to_hex().as_str() != meta.blob {
            return Ok(Lookup::Corrupt {
                reason: format!(
                    "{source} in {} does not match its checksum ({} bytes, expected {})",
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
                        reason: format!("{source} does not decompress: {e}"),
                    });
                }
            },
            Some(other) => {
                return Ok(Lookup::Corrupt {
                    reason: format!("{source} uses unknown compression '{other}'"),
                });
            }
        };
        Ok(Lookup::Hit { meta, bytes })
    }

    pub(super) async fn put_impl(
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
        let path = manifest_path(&meta.key);
        if stored.len() <= INLINE_MAX {
            // One file, one durable write; nothing for gc to race with.
            meta.inline = Some(stored);
            return self.publish_manifest(&path, meta, mode).await;
        }
        meta.inline = None;
        // Blob first. A blob that exists has this content (its name is its hash) unless it
        // was damaged, which is why entries are replaced after a corrupt read: then the
        // blob is rewritten too.
        self.store_blob(&blob_path(&meta.blob), BlobData::Bytes(stored), mode)
            .await?;
        // Manifest last.
        self.publish_manifest(&path, meta, mode).await
    }

    /// Writes a blob, unless it is already there, in which case it is refreshed (see
    /// [`BLOB_REFRESH_AGE_MICROS`]) so gc keeps it until the manifest about to name it is
    /// published. Refresh first, then write: a blob is content-addressed, so writing it over
    /// itself (when it is missing, too old to refresh, or not ours to touch) is harmless,
    /// and the common case of a present blob costs no upload.
    pub(super) async fn store_blob(&self, path: &str, data: BlobData<'_>, mode: PutMode) -> Result<(), StoreError> {
        if mode == PutMode::IfAbsent && self.backend.refresh(path, BLOB_REFRESH_AGE_MICROS).await? {
            return Ok(());
        }
        match data {
            BlobData::Bytes(bytes) => self.backend.write(path, bytes, WriteMode::Overwrite).await?,
            BlobData::File(src) => self.backend.write_file(path, src, WriteMode::Overwrite).await?,
        };
        Ok(())
    }

    pub(super) async fn put_file_impl(
        &self,
        mut meta: EntryMeta,
        src: PathBuf,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        describe_file(&mut meta, &src)?;
        self.store_blob(&blob_path(&meta.blob), BlobData::File(&src), mode)
            .await?;
        let path = manifest_path(&meta.key);
        self.publish_manifest(&path, meta, mode).await
    }

    pub(super) async fn get_file_impl(
        &self,
        key: &CacheKey,
        now: i64,
        dest_dir: &Path,
    ) -> Result<FileLookup, StoreError> {
        let meta = match self.manifest_at(&self.manifest_path(key), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        let bpath = blob_path(&meta.blob);
        let changed = |p: &Path| format!("blob {} does not match its checksum", p.display());
        let found = self
            .fetch_file(meta, &bpath, dest_dir, crate::stream::hash_file, changed)
            .await?;
        Ok(self.missing_is_corrupt(found, &bpath))
    }

    /// A manifest was found but its data was not: the entry must be replaced, which a
    /// create-if-absent publish would never do (see [`Lookup::Corrupt`]).
    pub(super) fn missing_is_corrupt(&self, found: FileLookup, data_path: &str) -> FileLookup {
        match found {
            FileLookup::Miss => FileLookup::Corrupt {
                reason: format!("{data_path} in {} is missing", self.backend.location()),
            },
            other => other,
        }
    }

    /// Makes the stored file `data_path` available on local disk, verified against
    /// `meta.blob`: for folders a hard link to it in `dest_dir/links` (so gc can delete the
    /// stored file while a task reads it; a copy where linking is refused), else downloaded
    /// once into `dest_dir`.
    pub(super) async fn fetch_file(
        &self,
        mut meta: EntryMeta,
        data_path: &str,
        dest_dir: &Path,
        hash: fn(&Path) -> std::io::Result<(String, u64)>,
        changed: impl Fn(&Path) -> String,
    ) -> Result<FileLookup, StoreError> {
        meta.inline = None;
        let verify = |p: &Path| -> Result<bool, StoreError> {
            match hash(p) {
                Ok((h, _)) => Ok(h == meta.blob),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::Config(format!("cannot read {}: {e}", p.display()))),
            }
        };
        // The data is gone: `Miss` here, which callers holding a manifest turn into
        // `Corrupt` (see `missing_is_corrupt`).
        let missing = || FileLookup::Miss;
        if let Some(local) = self.backend.local_path(data_path) {
            let links = dest_dir.join("links");
            std::fs::create_dir_all(&links).map_err(|e| io_error("create", &links, e))?;
            sweep_links(&links);
            let dest = links.join(&meta.blob);
            if dest.exists() && verify(&dest)? {
                return Ok(FileLookup::Hit { meta, path: dest });
            }
            let tmp = match tempfile::Builder::new()
                .prefix(".link-")
                .make_in(&links, |p| std::fs::hard_link(&local, p))
            {
                Ok(t) => t.into_temp_path(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(missing()),
                // Another device (the store on a mount, artifacts on local disk) or a file
                // the kernel will not let us link (another user's, with protected_hardlinks).
                Err(_) => {
                    let tmp = tempfile::Builder::new()
                        .prefix(".copy-")
                        .tempfile_in(&links)
                        .map_err(|e| io_error("create a file in", &links, e))?
                        .into_temp_path();
                    match std::fs::copy(&local, &tmp) {
                        Ok(_) => tmp,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(missing()),
                        Err(e) => return Err(io_error("copy", &local, e)),
                    }
                }
            };
            // What is verified is the very file handed out, so nothing can change between
            // the check and the task's read short of someone writing into it.
            if !verify(&tmp)? {
                return Ok(FileLookup::Corrupt {
                    reason: changed(&local),
                });
            }
            tmp.persist(&dest).map_err(|e| io_error("move into", &dest, e.error))?;
            return Ok(FileLookup::Hit { meta, path: dest });
        }
        let dest = dest_dir.join(&meta.blob);
        if dest.exists() && verify(&dest)? {
            return Ok(FileLookup::Hit { meta, path: dest });
        }
        std::fs::create_dir_all(dest_dir).map_err(|e| io_error("create", dest_dir, e))?;
        // A name of its own for every download: two downloads of one blob (threads of one
        // process, or processes) never write into one file.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", meta.blob))
            .suffix(".part")
            .tempfile_in(dest_dir)
            .map_err(|e| io_error("create a file in", dest_dir, e))?
            .into_temp_path();
        if self.backend.read_to_file(data_path, &tmp).await?.is_none() {
            return Ok(missing());
        }
        // The hash of what is on disk now, not of the stream that was written: only a file
        // known to be complete and right is published under the blob's name.
        if !verify(&tmp)? {
            return Ok(FileLookup::Corrupt {
                reason: format!("{data_path} in {} does not match its checksum", self.backend.location()),
            });
        }
        tmp.persist(&dest).map_err(|e| io_error("move into", &dest, e.error))?;
        Ok(FileLookup::Hit { meta, path: dest })
    }
}

/// Removes links handed out on earlier hits that nothing needs any more: those whose blob
/// the store has dropped (the link is the file's last name, so it holds disk space the
/// store believes free) for over [`LINK_KEEP_MICROS`]. At most once an hour per process, so
/// hits do not pay for it; bounded by the number of distinct file results hit.
fn sweep_links(links: &Path) {
    use std::os::unix::fs::MetadataExt;
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = weir_types::time::now_micros();
    let last = LAST.load(Ordering::Relaxed);
    if now - last < LINK_KEEP_MICROS
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let Ok(entries) = std::fs::read_dir(links) else { return };
    for entry in entries.flatten() {
        let Ok(m) = entry.metadata() else { continue };
        // ctime moves when a name is added or removed: for a link whose blob gc deleted,
        // that is when gc deleted it.
        let changed = m.ctime() * 1_000_000 + m.ctime_nsec() / 1_000;
        if m.nlink() == 1 && changed < now - LINK_KEEP_MICROS {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
