//! The files a result refers to (artifacts nested in it), stored as blobs beside it and
//! listed in its manifest (`EntryMeta::files`), so they travel to other machines and gc keeps
//! them while the entry lives.

use std::path::{Path, PathBuf};

use crate::store::blob::blob_mode;
use crate::store::layout::blob_path;
use crate::store::{EntryMeta, FileLookup, PutMode, Store, StoreError};

/// Where the files of an entry are on local disk, or why they cannot be used.
#[derive(Debug)]
pub enum StoredFiles {
    /// One verified local file per hash in `EntryMeta::files`, in order.
    Present(Vec<PathBuf>),
    /// A listed blob is gone (the entry is a miss).
    Missing(String),
    /// A listed blob does not match its hash.
    Corrupt(String),
}

impl Store {
    /// Stores each file as the blob named by its hash; returns the hashes, in order. Written
    /// before the manifest that lists them, like every blob.
    pub(super) async fn put_blobs_impl(&self, srcs: Vec<PathBuf>, mode: PutMode) -> Result<Vec<String>, StoreError> {
        let mut hashes: Vec<String> = Vec::with_capacity(srcs.len());
        for src in srcs {
            let hash = crate::filehash::digest_file(&src)
                .map_err(|e| StoreError::Config(format!("cannot read the result file {}: {e}", src.display())))?;
            let hex = blake3::Hash::from_bytes(hash).to_hex().to_string();
            if !hashes.contains(&hex) {
                self.backend.write_file(&blob_path(&hex), &src, blob_mode(mode)).await?;
            }
            hashes.push(hex);
        }
        Ok(hashes)
    }

    /// Makes each blob `meta.files` lists available on local disk, verified against its hash:
    /// in place for folders, else downloaded once into `dest_dir`.
    pub(super) async fn get_blobs_impl(&self, meta: &EntryMeta, dest_dir: &Path) -> Result<StoredFiles, StoreError> {
        let mut out = Vec::with_capacity(meta.files.len());
        for hash in &meta.files {
            let one = EntryMeta {
                blob: hash.clone(),
                files: Vec::new(),
                ..meta.clone()
            };
            let changed = |p: &Path| format!("blob {} does not match its checksum", p.display());
            let bpath = blob_path(hash);
            match self
                .fetch_file(one, &bpath, dest_dir, crate::stream::hash_immutable_file, changed)
                .await?
            {
                FileLookup::Hit { path, .. } => out.push(path),
                FileLookup::Miss | FileLookup::Expired { .. } => return Ok(StoredFiles::Missing(hash.clone())),
                FileLookup::Corrupt { reason } => return Ok(StoredFiles::Corrupt(reason)),
            }
        }
        Ok(StoredFiles::Present(out))
    }
}
