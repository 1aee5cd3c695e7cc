//! Results stored as content-addressed blobs: in-memory results and streamed files.

use std::path::{Path, PathBuf};

use crate::backend::WriteMode;
use crate::key::CacheKey;
use crate::store::layout::{blob_path, manifest_path};
use crate::store::{
    Compression, EntryMeta, FileLookup, Lookup, MANIFEST_FORMAT, PutMode, PutOutcome, Store, StoreError,
};

pub(super) fn blob_mode(mode: PutMode) -> WriteMode {
    match mode {
        PutMode::IfAbsent => WriteMode::IfAbsent,
        PutMode::Replace => WriteMode::Overwrite,
    }
}

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
    Ok(())
}

impl Store {
    pub(super) async fn get_impl(&self, key: &CacheKey, now: i64) -> Result<Lookup, StoreError> {
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

    pub(super) async fn put_file_impl(
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
        // Blobs are immutable once published, so they can be mapped to hash them.
        let changed = |p: &Path| format!("blob {} does not match its checksum", p.display());
        self.fetch_file(meta, &bpath, dest_dir, crate::stream::hash_immutable_file, changed)
            .await
    }

    /// Makes the stored file `data_path` available on local disk, verified against
    /// `meta.blob`: in place for folders, else downloaded once into `dest_dir`.
    pub(super) async fn fetch_file(
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
}
