//! A folder as a backend: a local disk, or a shared mount (NFS, JuiceFS).
//!
//! Every file is written to `tmp/` under the root, fsynced, then published under its final
//! name: with `link(2)` for [`WriteMode::IfAbsent`] (which fails if the name exists, so of
//! two machines writing one name exactly one wins, even on a shared mount), with `rename(2)`
//! for [`WriteMode::Overwrite`]; then the directory holding the name is fsynced too, so a
//! power loss cannot keep a manifest and lose the blob it names (new directories are made
//! durable in their parents the same way). A process killed mid-write leaves only a temp
//! file.
//!
//! I/O here is synchronous inside the returned futures: small files are read from the page
//! cache in microseconds, far less than handing the work to another thread would cost.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::future::BoxFuture;

use crate::backend::{Backend, BackendError, ObjectInfo, Versioned, WriteMode, Written};

/// A folder backend.
#[derive(Debug, Clone)]
pub struct FolderBackend {
    root: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

impl FolderBackend {
    /// Opens (creating if needed) the folder `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<FolderBackend, BackendError> {
        let root = root.into();
        let tmp = root.join("tmp");
        let b = FolderBackend { root, tmp, fsync: true };
        fs::create_dir_all(&b.tmp).map_err(|e| b.err("create", &b.tmp, e))?;
        Ok(b)
    }

    /// Skips fsync before publishing: an OS crash (not a process crash) may then leave a
    /// published file empty. For throwaway caches and benchmarks.
    pub fn without_fsync(mut self) -> Self {
        self.fsync = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path on disk of a backend path.
    pub fn path_of(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn err(&self, op: &'static str, path: &Path, e: io::Error) -> BackendError {
        BackendError {
            backend: self.root.display().to_string(),
            op,
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Writes `path` the safe way: `fill` writes a temp file in `tmp/`, which is fsynced and
    /// then published (see [`FolderBackend::publish`]).
    fn write_via_temp(
        &self,
        path: &str,
        mode: WriteMode,
        fill: impl FnOnce(&mut tempfile::NamedTempFile) -> Result<(), BackendError>,
    ) -> Result<Written, BackendError> {
        self.write_via_temp_as(path, mode, self.fsync, fill)
    }

    /// [`FolderBackend::write_via_temp`], durable (fsynced: data, name, new directories)
    /// only if `durable`. Either way the name appears complete or not at all.
    fn write_via_temp_as(
        &self,
        path: &str,
        mode: WriteMode,
        durable: bool,
        fill: impl FnOnce(&mut tempfile::NamedTempFile) -> Result<(), BackendError>,
    ) -> Result<Written, BackendError> {
        let dest = self.path_of(path);
        if let Some(parent) = dest.parent() {
            self.ensure_dir(parent, durable)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".w-")
            .tempfile_in(&self.tmp)
            .map_err(|e| self.err("create", &self.tmp, e))?;
        fill(&mut tmp)?;
        if durable {
            tmp.as_file().sync_all().map_err(|e| self.err("fsync", tmp.path(), e))?;
        }
        self.publish(tmp, &dest, mode, durable)
    }

    fn write_sync(&self, path: &str, bytes: &[u8], mode: WriteMode) -> Result<Written, BackendError> {
        self.write_via_temp(path, mode, |tmp| {
            tmp.write_all(bytes).map_err(|e| self.err("write", tmp.path(), e))
        })
    }

    /// Publishes a finished temp file under `dest`: `link(2)` for create-if-absent (fails if
    /// the name exists, even on a shared mount), `rename(2)` to replace; then fsyncs the
    /// directory, so the name is as durable as the data (the next file published — the
    /// manifest after its blob — can only ever be found with what it names).
    fn publish(
        &self,
        tmp: tempfile::NamedTempFile,
        dest: &Path,
        mode: WriteMode,
        durable: bool,
    ) -> Result<Written, BackendError> {
        // Close before publishing: network filesystems (JuiceFS, NFS) hand a file's data to
        // other clients on close, so a name published while the file is open can read as empty
        // elsewhere when fsync is off.
        let tmp = tmp.into_temp_path();
        match mode {
            WriteMode::IfAbsent => match fs::hard_link(&tmp, dest) {
                // The temp name is unlinked when `tmp` drops.
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Written::Exists),
                Err(e) => return Err(self.err("link", dest, e)),
            },
            WriteMode::Overwrite => {
                tmp.persist(dest).map_err(|e| self.err("rename", dest, e.error))?;
            }
        }
        if durable && let Some(parent) = dest.parent() {
            self.sync_dir(parent)?;
        }
        Ok(Written::Created)
    }

    /// fsyncs a directory, making the names in it durable. Filesystems that cannot fsync a
    /// directory (some FUSE servers answer EINVAL) make names durable on their own terms;
    /// there is nothing more to ask of them.
    fn sync_dir(&self, dir: &Path) -> Result<(), BackendError> {
        if !self.fsync {
            return Ok(());
        }
        match fs::File::open(dir).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(22) || e.kind() == io::ErrorKind::Unsupported => Ok(()),
            Err(e) => Err(self.err("fsync", dir, e)),
        }
    }

    /// Creates `dir` (and missing parents), each made durable in its parent if `durable`.
    fn ensure_dir(&self, dir: &Path, durable: bool) -> Result<(), BackendError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(|e| self.err("create", dir, e))?;
        if !durable {
            return Ok(());
        }
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent() {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Moves `path` out of the way (to `tmp/`), atomically: from then on no reader finds it
    /// and no writer can refresh it in place. Returns the temp name holding it, which is
    /// deleted when dropped.
    fn set_aside(&self, path: &str) -> Result<Option<tempfile::TempPath>, BackendError> {
        let src = self.path_of(path);
        let aside = tempfile::Builder::new()
            .prefix(".gc-")
            .make_in(&self.tmp, |p| fs::rename(&src, p));
        match aside {
            Ok(f) => Ok(Some(f.into_temp_path())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("rename", &src, e)),
        }
    }

    /// Puts a file set aside back under its name, unless a writer published a new one
    /// there meanwhile (which then wins).
    fn put_back(&self, aside: &Path, path: &str) -> Result<(), BackendError> {
        let dest = self.path_of(path);
        match fs::hard_link(aside, &dest) {
            Ok(()) => match dest.parent() {
                Some(parent) => self.sync_dir(parent),
                None => Ok(()),
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(self.err("link", &dest, e)),
        }
    }

    fn delete_if_unchanged_sync(&self, path: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let Some(aside) = self.set_aside(path)? else {
            return Ok(false);
        };
        let now = fs::read(&aside).map_err(|e| self.err("read", &aside, e))?;
        if now == expected {
            return Ok(true);
        }
        // Replaced between the caller's read and ours: the new file stays.
        self.put_back(&aside, path)?;
        Ok(false)
    }

    fn delete_if_older_sync(&self, path: &str, cutoff_micros: i64) -> Result<bool, BackendError> {
        let Some(aside) = self.set_aside(path)? else {
            return Ok(false);
        };
        let modified = fs::metadata(&aside)
            .and_then(|m| m.modified())
            .map_err(|e| self.err("stat", &aside, e))?;
        if micros(modified) <= cutoff_micros {
            return Ok(true);
        }
        // Refreshed by a writer after the caller listed it: it is about to be used.
        self.put_back(&aside, path)?;
        Ok(false)
    }

    fn write_file_sync(&self, path: &str, src: &Path, mode: WriteMode) -> Result<Written, BackendError> {
        self.write_via_temp(path, mode, |tmp| {
            let mut input = fs::File::open(src).map_err(|e| self.err("open", src, e))?;
            // std::io::copy uses copy_file_range on Linux: the kernel moves the bytes.
            io::copy(&mut input, tmp.as_file_mut()).map_err(|e| self.err("copy", tmp.path(), e))?;
            // Hits hand this very file to tasks: read-only, so nobody edits a stored result by
            // accident.
            let file = tmp.as_file();
            let mut perms = file
                .metadata()
                .map_err(|e| self.err("stat", tmp.path(), e))?
                .permissions();
            perms.set_readonly(true);
            file.set_permissions(perms)
                .map_err(|e| self.err("chmod", tmp.path(), e))
        })
    }

    fn read_to_file_sync(&self, path: &str, dest: &Path) -> Result<Option<(String, u64)>, BackendError> {
        let src = self.path_of(path);
        let input = match fs::File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("open", &src, e)),
        };
        let mut out = fs::File::create(dest).map_err(|e| self.err("create", dest, e))?;
        let (hash, size) = crate::stream::hash_copy(input, &mut out).map_err(|e| self.err("copy", &src, e))?;
        Ok(Some((hash, size)))
    }

    fn read_sync(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError> {
        match fs::read(self.path_of(path)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("read", &self.path_of(path), e)),
        }
    }

    fn read_versioned_sync(&self, path: &str) -> Result<Option<Versioned>, BackendError> {
        Ok(self.read_sync(path)?.map(|bytes| {
            let version = content_version(&bytes);
            (bytes, version)
        }))
    }

    /// A folder has no compare-and-delete: this compares the file's contents, then unlinks.
    /// What can slip between the two is another file taking this name in those
    /// microseconds; the store only uses it on files that are never rewritten in place, so
    /// that would take the file being deleted and the name created again meanwhile.
    fn delete_if_sync(&self, path: &str, version: &str) -> Result<bool, BackendError> {
        match self.read_sync(path)? {
            Some(bytes) if content_version(&bytes) == version => {}
            _ => return Ok(false),
        }
        let p = self.path_of(path);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("delete", &p, e)),
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        let start = self.path_of(prefix);
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err("list", &dir, e))?;
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Deleted while we listed (gc, eviction): not there any more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.err("stat", &path, e)),
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    let modified = meta.modified().map(micros).unwrap_or(0);
                    out.push(ObjectInfo {
                        path: rel.to_string_lossy().replace('\\', "/"),
                        size: meta.len(),
                        modified,
                    });
                }
            }
        }
        Ok(out)
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Which version of a file was read: a hash of its contents. Not its inode and change
/// time: FUSE and network mounts (JuiceFS, NFS) cache attributes, so right after a file is
/// created `fstat` and `stat` can disagree about its change time; and a freed inode number
/// is soon reused. The store's versioned files carry a random token, so their contents
/// tell them apart.
fn content_version(bytes: &[u8]) -> String {
    format!("b3:{}", blake3::hash(bytes).to_hex())
}

impl Backend for FolderBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn atomic_if_absent(&self) -> bool {
        true
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        let result = self.read_sync(path);
        Box::pin(std::future::ready(result))
    }

    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(std::future::ready(self.write_sync(path, &bytes, mode)))
    }

    fn create_volatile<'a>(&'a self, path: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<Written, BackendError>> {
        let written = self.write_via_temp_as(path, WriteMode::IfAbsent, false, |tmp| {
            tmp.write_all(&bytes).map_err(|e| self.err("write", tmp.path(), e))
        });
        Box::pin(std::future::ready(written))
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let p = self.path_of(path);
        let result = match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", &p, e)),
        };
        Box::pin(std::future::ready(result))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, BackendError>> {
        Box::pin(std::future::ready(self.list_sync(prefix)))
    }

    fn read_versioned<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, BackendError>> {
        Box::pin(std::future::ready(self.read_versioned_sync(path)))
    }

    fn delete_if<'a>(&'a self, path: &'a str, version: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(std::future::ready(self.delete_if_sync(path, version)))
    }

    fn write_file<'a>(
        &'a self,
        path: &'a str,
        src: &'a Path,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(std::future::ready(self.write_file_sync(path, src, mode)))
    }

    fn read_to_file<'a>(
        &'a self,
        path: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Option<(String, u64)>, BackendError>> {
        Box::pin(std::future::ready(self.read_to_file_sync(path, dest)))
    }

    fn local_path(&self, path: &str) -> Option<PathBuf> {
        Some(self.path_of(path))
    }

    fn touch<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let p = self.path_of(path);
        let result = fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(SystemTime::now()));
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("touch", &p, e)),
        };
        Box::pin(std::future::ready(result))
    }

    fn refresh<'a>(&'a self, path: &'a str, _max_age: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        // Setting the time needs ownership, not write permission (blobs are read-only); a
        // file of another user, or one gc just set aside, is written again instead.
        let p = self.path_of(path);
        let result = match fs::File::open(&p).and_then(|f| f.set_modified(SystemTime::now())) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied) => Ok(false),
            Err(e) => Err(self.err("touch", &p, e)),
        };
        Box::pin(std::future::ready(result))
    }

    fn refreshes_in_place(&self) -> bool {
        true
    }

    fn delete_if_unchanged<'a>(
        &'a self,
        path: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(std::future::ready(self.delete_if_unchanged_sync(path, expected)))
    }

    fn delete_if_older<'a>(&'a self, path: &'a str, cutoff_micros: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(std::future::ready(self.delete_if_older_sync(path, cutoff_micros)))
    }
}
