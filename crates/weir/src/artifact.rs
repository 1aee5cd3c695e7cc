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

    /// Starts a file result written as a stream, in the system's temp folder. Write to it
    /// (it is a `std::io::Write`), then [`ArtifactWriter::finish`].
    ///
    /// ```no_run
    /// use std::io::Write;
    ///
    /// #[weir::task(cache = "inputs")]
    /// fn table(rows: u64) -> anyhow::Result<weir::Artifact> {
    ///     let mut out = weir::Artifact::create()?;
    ///     for i in 0..rows {
    ///         writeln!(out, "{i},{}", i * i)?;
    ///     }
    ///     Ok(out.finish()?)
    /// }
    /// ```
    pub fn create() -> std::io::Result<ArtifactWriter> {
        Self::create_in(std::env::temp_dir())
    }

    /// As [`Artifact::create`], in `dir` (put it on the same disk as the result store to let
    /// the kernel copy it cheaply).
    pub fn create_in(dir: impl AsRef<Path>) -> std::io::Result<ArtifactWriter> {
        let file = tempfile::Builder::new().prefix("weir-artifact-").tempfile_in(dir)?;
        Ok(ArtifactWriter {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
        })
    }

    /// Opens the file for reading, as a stream (`std::io::Read`).
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.path)
    }

    /// Opens the file for reading from async code (`tokio::io::AsyncRead`).
    pub async fn open_async(&self) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(&self.path).await
    }

    /// The file's size in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A file result being written as a stream; see [`Artifact::create`].
pub struct ArtifactWriter {
    out: std::io::BufWriter<tempfile::NamedTempFile>,
}

impl ArtifactWriter {
    /// Flushes and closes the file; it becomes the task's result.
    pub fn finish(self) -> std::io::Result<Artifact> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let path = file.into_temp_path().keep().map_err(|e| e.error)?;
        Ok(Artifact { path })
    }
}

impl std::io::Write for ArtifactWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
