//! Results that are files: written and read as streams, never held in memory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A file a task produces. Returned from a cached task, it is streamed into the result
/// store (multipart-uploaded to object storage) and, on a hit, handed back as a file on
/// local disk: for a folder store the stored blob itself (treat it as read-only), for
/// object storage a copy downloaded once into the local tier (or `$WEIR_HOME/artifacts`).
/// Memory use stays bounded (a few 8 MiB buffers) whatever the size.
///
/// ```no_run
/// #[weir::task(cache = "inputs")]
/// async fn export(day: String) -> anyhow::Result<weir::Artifact> {
///     let path = std::env::temp_dir().join(format!("export-{day}.parquet"));
///     std::fs::write(&path, b"...")?;
///     Ok(weir::Artifact::from_path(path))
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    path: PathBuf,
}

impl Artifact {
    pub fn from_path(path: impl Into<PathBuf>) -> Artifact {
        Artifact { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file for reading.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.path)
    }

    /// The file's size in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}
