//! The files a result refers to (artifacts nested in it), stored as blobs beside it and
//! listed in its manifest (`EntryMeta::files`), so they travel to other machines and gc keeps
//! them while the entry lives.

use std::path::{Path, PathBuf};

use crate::store::blob::BlobData;
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
                self.store_blob(&blob_path(&hex), BlobData::File(&src), mode).await?;
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
                .fetch_file(one, &bpath, dest_dir, crate::stream::hash_file, changed)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::folder::FolderBackend;
    use crate::key::CacheKey;
    use crate::store::{GcOptions, Lookup, ResultStore};

    fn meta(key: &CacheKey) -> EntryMeta {
        EntryMeta {
            format: 1,
            key: key.to_hex(),
            task: "t".into(),
            flow: None,
            flow_run_id: None,
            task_run_id: "r".into(),
            serializer: "json".into(),
            created_at: 1,
            expires_at: None,
            size: 0,
            raw_size: 0,
            compression: None,
            blob: String::new(),
            cache_version: String::new(),
            source_hash: None,
            code_hash: None,
            inputs: vec![],
            files: Vec::new(),
            inline: None,
        }
    }

    #[tokio::test]
    async fn gc_keeps_the_files_a_live_entry_lists_and_removes_them_with_it() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(FolderBackend::open(root.path().join("s")).unwrap()));
        let src = work.path().join("part.csv");
        std::fs::write(&src, b"a,b\n1,2\n").unwrap();
        let key = CacheKey([7; 32]);
        let files = store
            .put_blobs(vec![src.clone(), src], PutMode::IfAbsent)
            .await
            .unwrap();
        assert_eq!(files.len(), 2, "one hash per reference, in order");
        let mut m = meta(&key);
        m.files = files.clone();
        // Above the inline size, so the result has a blob of its own too.
        let result = vec![b' '; crate::store::INLINE_MAX + 1];
        store.put(m, result, PutMode::IfAbsent).await.unwrap();
        let later = i64::MAX / 2;
        let no_grace = GcOptions::default();
        store.gc(no_grace.clone(), later).await.unwrap();

        let Lookup::Hit { meta, .. } = store.get(&key, later).await.unwrap() else {
            panic!("entry gone")
        };
        assert_eq!(meta.files, files);
        let got = store.get_blobs(&meta, work.path()).await.unwrap();
        let StoredFiles::Present(paths) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            std::fs::read(&paths[0]).unwrap(),
            b"a,b\n1,2\n",
            "gc kept the listed blob"
        );

        store.remove(&key).await.unwrap();
        let report = store.gc(no_grace, later).await.unwrap();
        assert_eq!(report.blobs_removed, 2, "the result's blob and its file's");
        // Seen from a machine that has no link of its own yet (a link handed out earlier
        // keeps its verified file, as it should).
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(matches!(
            store.get_blobs(&meta, elsewhere.path()).await.unwrap(),
            StoredFiles::Missing(_)
        ));
    }
}
