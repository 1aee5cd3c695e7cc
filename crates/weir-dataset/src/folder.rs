//! A dataset root on a local folder (or a shared mount): every file replaced whole by
//! write-to-temp, fsync, rename, fsync of the directory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::DatasetError;

/// Where files are written before they are renamed into place (same filesystem as the data).
const TMP_DIR: &str = ".weir-tmp";
/// Partition levels a listing descends at most.
const MAX_DEPTH: usize = 32;

pub(crate) struct Folder {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Folder {
    pub fn new(root: PathBuf) -> Folder {
        Folder { root }
    }

    pub async fn write_stream<S>(&self, rel: &str, stream: S) -> Result<u64, DatasetError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let dest = self.root.join(rel);
        let tmp_dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io(&tmp_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix("part-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        // The TempPath removes the file if anything below fails.
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut size = 0u64;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(io(&dest))?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io(&tmp_path))?;
        }
        file.flush().await.map_err(io(&tmp_path))?;
        file.sync_all().await.map_err(io(&tmp_path))?;
        drop(file);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent).await.map_err(io(&parent))?;
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), DatasetError> {
            tmp_path.persist(&dest2).map_err(|e| DatasetError::Io {
                path: dest2.display().to_string(),
                source: e.error,
            })?;
            // The rename is durable only once its directory is.
            std::fs::File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(io(&parent))
        })
        .await
        .map_err(|e| DatasetError::Io {
            path: dest.display().to_string(),
            source: std::io::Error::other(e),
        })??;
        Ok(size)
    }

    pub async fn read(&self, rel: &str) -> Result<Bytes, DatasetError> {
        let path = self.root.join(rel);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::NotFound {
                path: path.display().to_string(),
            }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every file under `rel` (a folder path ending in `/`), relative to the root.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>, DatasetError> {
        let root = self.root.clone();
        let rel = rel.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root.join(&rel), 0, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| DatasetError::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::other(e),
        })?
    }
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<(), DatasetError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, depth + 1, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}
