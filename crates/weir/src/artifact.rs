//! Results that are files: written and read as streams, never held in memory.
//!
//! As an input, an [`Artifact`] is keyed by the BLAKE3 of its contents (the canonical encoder
//! sees it as a newtype named [`FILE_NEWTYPE`]). As an output, or anywhere inside one, every
//! artifact is stored in the result store beside the result: while a result is encoded for
//! the store a collector on this thread gathers the files and each artifact is written as an
//! index into the manifest's `files`; while one is decoded a resolver maps each index to a
//! verified local copy.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use weir_cache::canonical::FILE_NEWTYPE;

/// A file a task takes or produces.
///
/// **As an input** it is keyed by the BLAKE3 of its contents, not by its path: a file
/// rewritten in place is a new key, and the same contents at two paths are one. The hash is
/// remembered per file version (path, size, times, inode) in this process, so a large input
/// is read once, not on every call.
///
/// **As a result** — returned directly, or anywhere inside the result (`Vec<Artifact>`, an
/// `Option`, a struct field) — it is streamed into the result store (multipart-uploaded to
/// object storage) and, on a hit, handed back as a file on local disk: for a folder store
/// the stored blob itself (treat it as read-only), for object storage a copy downloaded once
/// into the local tier (or `$WEIR_HOME/artifacts`), verified against its hash. Memory use
/// stays bounded (a few 8 MiB buffers) whatever the size.
///
/// ```no_run
/// #[weir::task(cache = "inputs")]
/// async fn export(day: String) -> anyhow::Result<weir::Artifact> {
///     let path = std::env::temp_dir().join(format!("export-{day}.parquet"));
///     std::fs::write(&path, b"...")?;
///     Ok(weir::Artifact::from_path(path))
/// }
/// ```
///
/// Outside the cache (flow parameters, records, your own JSON) it serializes as its path.
#[derive(Clone)]
pub struct Artifact {
    path: PathBuf,
    /// For files made by [`Artifact::create`]: deleted when the last clone is dropped.
    temp: Option<Arc<tempfile::TempPath>>,
}

impl PartialEq for Artifact {
    fn eq(&self, other: &Artifact) -> bool {
        self.path == other.path
    }
}

impl Eq for Artifact {}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("path", &self.path)
            .field("temporary", &self.temp.is_some())
            .finish()
    }
}

impl Artifact {
    /// The file at `path` (yours: weir never deletes it).
    pub fn from_path(path: impl Into<PathBuf>) -> Artifact {
        Artifact {
            path: path.into(),
            temp: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a file result written as a stream, in the system's temp folder. Write to it
    /// (it is a `std::io::Write`), then [`ArtifactWriter::finish`].
    ///
    /// The file is temporary, like a `tempfile::NamedTempFile`: a writer dropped without
    /// `finish` leaves nothing, and the finished file is deleted when the last clone of its
    /// `Artifact` is dropped — after a cached task's result was stored, the store holds it.
    /// [`Artifact::persist`] keeps a copy. Files left by a process that was killed are
    /// removed by a later process's first `create` in the same folder once they are a day old.
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
        sweep_once(dir.as_ref());
        let file = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
        Ok(ArtifactWriter {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
        })
    }

    /// Whether the file was made by [`Artifact::create`] and goes when this value does.
    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }

    /// Keeps the file at `dest` (a hard link where possible, else a copy), beyond this
    /// value's life; returns it as an `Artifact` of its own.
    pub fn persist(&self, dest: impl AsRef<Path>) -> std::io::Result<Artifact> {
        let dest = dest.as_ref();
        if std::fs::hard_link(&self.path, dest).is_err() {
            std::fs::copy(&self.path, dest)?;
        }
        Ok(Artifact::from_path(dest))
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
        let temp = file.into_temp_path();
        Ok(Artifact {
            path: temp.to_path_buf(),
            temp: Some(Arc::new(temp)),
        })
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

/// The name prefix of [`Artifact::create`]'s files.
const TEMP_PREFIX: &str = "weir-artifact-";

/// How old a leftover `Artifact::create` file must be before another process removes it.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// At most this many folder entries are looked at by one sweep.
const SWEEP_LIMIT: usize = 100_000;

/// Removes `Artifact::create` files a killed process left in `dir`, once per folder per
/// process.
fn sweep_once(dir: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        if swept.iter().any(|d| d == dir) {
            return;
        }
        swept.push(dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let cutoff = std::time::SystemTime::now() - LEFTOVER_AGE;
    for entry in entries.take(SWEEP_LIMIT).flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

thread_local! {
    /// Files of the result being encoded for the store, in index order.
    static COLLECTOR: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
    /// Local copies of the files of the result being decoded from the store, by index.
    static RESOLVER: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
}

/// Puts `new` in `slot` for the guard's life and restores what was there after, even on panic.
struct Swap {
    slot: &'static std::thread::LocalKey<RefCell<Option<Vec<PathBuf>>>>,
    old: Option<Option<Vec<PathBuf>>>,
}

impl Swap {
    fn new(slot: &'static std::thread::LocalKey<RefCell<Option<Vec<PathBuf>>>>, new: Option<Vec<PathBuf>>) -> Swap {
        let old = slot.with(|s| s.replace(new));
        Swap { slot, old: Some(old) }
    }

    fn take(mut self) -> Option<Vec<PathBuf>> {
        let old = self.old.take().unwrap_or_default();
        self.slot.with(|s| s.replace(old))
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            self.slot.with(|s| *s.borrow_mut() = old);
        }
    }
}

/// Runs `encode` (synchronous, on this thread) with artifacts written as references; returns
/// its result and the files referred to, by index.
pub(crate) fn collect_files<R>(encode: impl FnOnce() -> R) -> (R, Vec<PathBuf>) {
    let guard = Swap::new(&COLLECTOR, Some(Vec::new()));
    let out = encode();
    (out, guard.take().unwrap_or_default())
}

/// Runs `decode` (synchronous, on this thread) with each artifact reference resolved to
/// `files[index]`.
pub(crate) fn resolve_files<R>(files: Vec<PathBuf>, decode: impl FnOnce() -> R) -> R {
    let _guard = Swap::new(&RESOLVER, Some(files));
    decode()
}

/// The key an artifact reference is written under in a stored result.
const REF_KEY: &str = "$weir::file";

/// An artifact inside a stored result: `{"$weir::file": index}` into the manifest's `files`.
struct StoredRef(usize);

impl Serialize for StoredRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(REF_KEY, &self.0)?;
        map.end()
    }
}

impl Serialize for Artifact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let index = COLLECTOR.with(|c| {
            c.borrow_mut()
                .as_mut()
                .map(|files| match files.iter().position(|f| *f == self.path) {
                    Some(i) => i,
                    None => {
                        files.push(self.path.clone());
                        files.len() - 1
                    }
                })
        });
        match index {
            Some(i) => s.serialize_newtype_struct(FILE_NEWTYPE, &StoredRef(i)),
            None => s.serialize_newtype_struct(FILE_NEWTYPE, &self.path),
        }
    }
}

impl<'de> Deserialize<'de> for Artifact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Artifact, D::Error> {
        d.deserialize_newtype_struct(FILE_NEWTYPE, ArtifactVisitor)
    }
}

struct ArtifactVisitor;

impl ArtifactVisitor {
    fn by_path<E: de::Error>(path: PathBuf) -> Result<Artifact, E> {
        if RESOLVER.with(|r| r.borrow().is_some()) {
            // Written before artifacts were stored beside results: the path is of another
            // time, maybe another machine.
            return Err(E::custom(format!(
                "the cached result names the file {} by its path only, without storing it",
                path.display()
            )));
        }
        Ok(Artifact::from_path(path))
    }

    fn by_index<E: de::Error>(index: usize) -> Result<Artifact, E> {
        RESOLVER.with(|r| match r.borrow().as_ref() {
            Some(files) => files.get(index).map(Artifact::from_path).ok_or_else(|| {
                E::custom(format!(
                    "the cached result refers to file {index}, which its entry does not list"
                ))
            }),
            None => Err(E::custom(
                "this artifact refers to a file in weir's result store; only weir can read it back",
            )),
        })
    }
}

impl<'de> Visitor<'de> for ArtifactVisitor {
    type Value = Artifact;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a file path")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Artifact, D::Error> {
        d.deserialize_any(ArtifactVisitor)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Artifact, E> {
        Self::by_path(PathBuf::from(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Artifact, A::Error> {
        // `{"path": …}` is how artifacts were written before they were keyed by contents.
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                REF_KEY => found = Some(Self::by_index(map.next_value::<usize>()?)?),
                "path" => found = Some(Self::by_path(map.next_value::<PathBuf>()?)?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        found.ok_or_else(|| de::Error::custom("an artifact needs a path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_the_cache_an_artifact_is_its_path() {
        let a = Artifact::from_path("/data/in.csv");
        assert_eq!(serde_json::to_string(&a).unwrap(), r#""/data/in.csv""#);
        let back: Artifact = serde_json::from_str(r#""/data/in.csv""#).unwrap();
        assert_eq!(back, a);
        let legacy: Artifact = serde_json::from_str(r#"{"path":"/data/in.csv"}"#).unwrap();
        assert_eq!(legacy, a);
    }

    #[test]
    fn in_the_cache_artifacts_are_references_resolved_to_local_files() {
        let value = (
            vec![
                Artifact::from_path("/a"),
                Artifact::from_path("/b"),
                Artifact::from_path("/a"),
            ],
            Some(Artifact::from_path("/c")),
        );
        for format in [weir_cache::Format::Json, weir_cache::Format::MsgPack] {
            let (bytes, files) = collect_files(|| format.encode(&value));
            let bytes = bytes.unwrap();
            assert_eq!(files, ["/a", "/b", "/c"].map(PathBuf::from));
            let local = vec![PathBuf::from("/x/1"), PathBuf::from("/x/2"), PathBuf::from("/x/3")];
            let back: (Vec<Artifact>, Option<Artifact>) = resolve_files(local, || format.decode(&bytes)).unwrap();
            let paths: Vec<_> = back.0.iter().map(|a| a.path().to_path_buf()).collect();
            assert_eq!(paths, ["/x/1", "/x/2", "/x/1"].map(PathBuf::from));
            assert_eq!(back.1.unwrap().path(), Path::new("/x/3"));
            // Without the store's files a reference means nothing.
            assert!(format.decode::<(Vec<Artifact>, Option<Artifact>)>(&bytes).is_err());
        }
    }

    #[test]
    fn a_stored_bare_path_is_not_trusted() {
        let err = resolve_files(Vec::new(), || serde_json::from_str::<Artifact>(r#"{"path":"/tmp/x"}"#)).unwrap_err();
        assert!(err.to_string().contains("by its path only"), "{err}");
    }

    #[test]
    fn a_writer_dropped_without_finish_leaves_nothing_and_a_finished_file_goes_with_its_last_clone() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut w = Artifact::create_in(dir.path()).unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut w = Artifact::create_in(dir.path()).unwrap();
        w.write_all(b"whole").unwrap();
        let a = w.finish().unwrap();
        let b = a.clone();
        let kept = a.persist(dir.path().join("kept")).unwrap();
        drop(a);
        assert_eq!(std::fs::read(b.path()).unwrap(), b"whole", "a clone keeps it");
        let path = b.path().to_path_buf();
        drop(b);
        assert!(!path.exists());
        assert_eq!(std::fs::read(kept.path()).unwrap(), b"whole");
    }
}
