//! Object storage as a backend, through OpenDAL: S3 and S3-compatible servers, memory (for
//! tests), and GCS / Azure Blob behind the `gcs` / `azure` cargo features.
//!
//! S3 makes each PUT atomic (an object appears whole or not at all) and honours
//! `If-None-Match: *` for create-if-absent; OpenDAL exposes that as `if_not_exists`.
//! Conditional deletes (`If-Match` with the ETag read) make [`Backend::delete_if`] atomic.
//! A server claiming conditional writes is not trusted blindly: [`Backend::probe_atomic`]
//! checks once per backend that concurrent create-if-absent has exactly one winner.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use opendal::{ErrorKind, Operator};

use crate::backend::{Backend, BackendError, ObjectInfo, Versioned, WriteMode, Written};

/// An OpenDAL operator as a backend.
#[derive(Debug, Clone)]
pub struct ObjectBackend {
    op: Operator,
    location: String,
    atomic_if_absent: bool,
    /// What [`Backend::probe_atomic`] found, once per backend (shared by clones).
    probed: Arc<futures::lock::Mutex<Option<bool>>>,
}

/// The probe: up to this many rounds, one after the other, of this many concurrent
/// create-if-absent writes of one fresh name; the first round with more than one winner
/// ends it. Against s3s-fs (which checks, then writes) a single round still shows one winner
/// about one time in fifteen, so six rounds misjudge it about once in ten million probes.
/// An atomic server costs six round trips, once per process and store.
const PROBE_ROUNDS: usize = 6;
const PROBE_WRITERS: usize = 4;
const PROBE_BYTES: usize = 1024;

impl ObjectBackend {
    /// Wraps an operator; `location` names it in messages.
    pub fn new(op: Operator, location: impl Into<String>) -> ObjectBackend {
        let atomic_if_absent = op.info().capability().write_with_if_not_exists;
        ObjectBackend {
            op,
            location: location.into(),
            atomic_if_absent,
            probed: Arc::default(),
        }
    }

    async fn run_probe(&self) -> Result<bool, BackendError> {
        let run = crate::store::new_token();
        let mut written = Vec::new();
        let mut verdict = Ok(true);
        for round in 0..PROBE_ROUNDS {
            let path = format!("v1/probe/{run}-{round}");
            let writes = (0..PROBE_WRITERS).map(|i| {
                let body = vec![i as u8; PROBE_BYTES];
                let path = path.as_str();
                async move { self.op.write_with(path, body).if_not_exists(true).await }
            });
            let mut created = 0;
            for r in futures::future::join_all(writes).await {
                match r {
                    Ok(_) => created += 1,
                    Err(e) if e.kind() == ErrorKind::ConditionNotMatch => {}
                    Err(e) => verdict = Err(err(&self.location, "probe", &path, e)),
                }
            }
            written.push(path);
            if verdict.is_err() || created != 1 {
                verdict = verdict.map(|_| false);
                break;
            }
        }
        let _ = self.op.delete_iter(written).await;
        verdict
    }

    /// The in-process memory backend (tests; one per call, shared by clones).
    pub fn memory() -> Result<ObjectBackend, BackendError> {
        let op = Operator::new(opendal::services::Memory::default()).map_err(|e| err("memory://", "open", "", e))?;
        Ok(ObjectBackend::new(op, "memory://"))
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }
}

impl ObjectBackend {
    /// Deletes `path` if its ETag is still `etag` (a conditional DELETE where the service
    /// has one; S3 does). Where it has not, or the server refuses the condition, the delete
    /// is plain: the window since the caller's check is then a round trip, not zero.
    async fn delete_matching(&self, path: &str, etag: Option<&str>) -> Result<bool, BackendError> {
        if let Some(tag) = etag
            && self.op.info().capability().delete_with_if_match
        {
            let opts = opendal::options::DeleteOptions {
                if_match: Some(tag.to_string()),
                ..Default::default()
            };
            match self.op.delete_options(path, opts).await {
                Ok(()) => return Ok(true),
                Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::NotFound) => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                Err(e) => return Err(err(&self.location, "delete", path, e)),
            }
        }
        match self.op.delete(path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(err(&self.location, "delete", path, e)),
        }
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn err(backend: &str, op: &'static str, path: &str, e: opendal::Error) -> BackendError {
    BackendError {
        backend: backend.to_string(),
        op,
        path: path.to_string(),
        message: e.to_string(),
    }
}

impl ObjectBackend {
    /// Streams `src` through `writer` and completes the upload. The file must keep the size
    /// it had when opened: the caller named the object after the file's hash, so a file
    /// that shrank or grew meanwhile must not be stored under that name.
    async fn upload(&self, writer: &mut opendal::Writer, path: &str, src: &Path) -> Result<(), BackendError> {
        let io_err = |e: std::io::Error| BackendError {
            backend: self.location.clone(),
            op: "read",
            path: src.display().to_string(),
            message: e.to_string(),
        };
        let mut file = std::fs::File::open(src).map_err(io_err)?;
        let expected = file.metadata().map_err(io_err)?.len();
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; crate::stream::CHUNK];
            let n = crate::stream::read_full(&mut file, &mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sent += n as u64;
            if sent > expected {
                break;
            }
            writer
                .write(buf)
                .await
                .map_err(|e| err(&self.location, "write", path, e))?;
        }
        if sent != expected {
            return Err(io_err(std::io::Error::other(format!(
                "the file changed while it was uploaded ({expected} bytes when opened, {}{sent} read)",
                if sent > expected { "at least " } else { "" }
            ))));
        }
        writer
            .close()
            .await
            .map_err(|e| err(&self.location, "write", path, e))?;
        Ok(())
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn atomic_if_absent(&self) -> bool {
        self.atomic_if_absent
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(async move {
            match self.op.read(path).await {
                Ok(buf) => Ok(Some(buf.to_vec())),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(err(&self.location, "read", path, e)),
            }
        })
    }

    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(async move {
            let result = match mode {
                WriteMode::IfAbsent if self.atomic_if_absent => {
                    self.op.write_with(path, bytes).if_not_exists(true).await
                }
                WriteMode::IfAbsent => {
                    // No conditional writes here: check, then write. Racy, and documented so.
                    match self.op.exists(path).await {
                        Ok(true) => return Ok(Written::Exists),
                        Ok(false) => self.op.write(path, bytes).await,
                        Err(e) => Err(e),
                    }
                }
                WriteMode::Overwrite => self.op.write(path, bytes).await,
            };
            match result {
                Ok(_) => Ok(Written::Created),
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(Written::Exists),
                Err(e) => Err(err(&self.location, "write", path, e)),
            }
        })
    }

    fn write_file<'a>(
        &'a self,
        path: &'a str,
        src: &'a Path,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(async move {
            if mode == WriteMode::IfAbsent {
                match self.op.exists(path).await {
                    Ok(true) => return Ok(Written::Exists),
                    Ok(false) => {}
                    Err(e) => return Err(err(&self.location, "stat", path, e)),
                }
            }
            // Multipart upload: parts of CHUNK bytes, at most two in flight, so memory stays
            // around three chunks whatever the file's size.
            let mut writer = self
                .op
                .writer_with(path)
                .chunk(crate::stream::CHUNK)
                .concurrent(2)
                .await
                .map_err(|e| err(&self.location, "write", path, e))?;
            match self.upload(&mut writer, path, src).await {
                Ok(()) => Ok(Written::Created),
                Err(mut e) => {
                    // Parts already sent stay in the bucket (and are billed) until the
                    // upload is aborted or completed.
                    if let Err(abort) = writer.abort().await {
                        e.message = format!(
                            "{}; the incomplete upload could not be aborted either ({abort}): a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes it",
                            e.message
                        );
                    }
                    Err(e)
                }
            }
        })
    }

    fn read_to_file<'a>(
        &'a self,
        path: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Option<(String, u64)>, BackendError>> {
        Box::pin(async move {
            let size = match self.op.stat(path).await {
                Ok(m) => m.content_length(),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(err(&self.location, "stat", path, e)),
            };
            let reader = self
                .op
                .reader(path)
                .await
                .map_err(|e| err(&self.location, "read", path, e))?;
            let io_err = |e: std::io::Error| BackendError {
                backend: self.location.clone(),
                op: "write",
                path: dest.display().to_string(),
                message: e.to_string(),
            };
            let mut out = std::fs::File::create(dest).map_err(io_err)?;
            let mut hasher = blake3::Hasher::new();
            let mut offset = 0u64;
            while offset < size {
                let end = (offset + crate::stream::CHUNK as u64).min(size);
                let buf = reader
                    .read(offset..end)
                    .await
                    .map_err(|e| err(&self.location, "read", path, e))?;
                for chunk in buf {
                    hasher.update(&chunk);
                    out.write_all(&chunk).map_err(io_err)?;
                }
                offset = end;
            }
            out.flush().map_err(io_err)?;
            Ok(Some((hasher.finalize().to_hex().to_string(), size)))
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            match self.op.delete(path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(err(&self.location, "delete", path, e)),
            }
        })
    }

    fn refresh<'a>(&'a self, path: &'a str, max_age: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        // There is no "touch" in object storage (copying an object onto itself is refused
        // unless its metadata changes), so a writer that finds a blob re-uploads it, but
        // only when it is older than `max_age`: see `BLOB_REFRESH_AGE` in the store.
        Box::pin(async move {
            match self.op.stat(path).await {
                Ok(m) => Ok(m
                    .last_modified()
                    .is_some_and(|t| t.into_inner().as_microsecond() > now_micros() - max_age)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(err(&self.location, "stat", path, e)),
            }
        })
    }

    fn read_versioned<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, BackendError>> {
        Box::pin(async move {
            let cap = self.op.info().capability();
            if !(cap.read_with_if_match && cap.delete_with_if_match) {
                // No ETags to compare (the memory backend): the bytes are the version.
                let Some(bytes) = self.read(path).await? else {
                    return Ok(None);
                };
                let version = format!("b3:{}", blake3::hash(&bytes).to_hex());
                return Ok(Some((bytes, version)));
            }
            // The ETag first, then the bytes only if they are still that version; a file
            // replaced in between is read again (a few times at most: leases change every
            // few seconds, not every few milliseconds).
            for _ in 0..3 {
                let etag = match self.op.stat(path).await {
                    Ok(m) => m.etag().map(str::to_string),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(err(&self.location, "stat", path, e)),
                };
                let Some(etag) = etag else {
                    let Some(bytes) = self.read(path).await? else {
                        return Ok(None);
                    };
                    let version = format!("b3:{}", blake3::hash(&bytes).to_hex());
                    return Ok(Some((bytes, version)));
                };
                match self.op.read_with(path).if_match(&etag).await {
                    Ok(buf) => return Ok(Some((buf.to_vec(), etag))),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) if e.kind() == ErrorKind::ConditionNotMatch => continue,
                    Err(e) => return Err(err(&self.location, "read", path, e)),
                }
            }
            Err(BackendError {
                backend: self.location.clone(),
                op: "read",
                path: path.to_string(),
                message: "changed on every read".into(),
            })
        })
    }

    fn delete_if<'a>(&'a self, path: &'a str, version: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            if let Some(hash) = version.strip_prefix("b3:") {
                // Check, then delete: only where the backend has no conditional delete.
                let same = self
                    .read(path)
                    .await?
                    .is_some_and(|b| blake3::hash(&b).to_hex().as_str() == hash);
                if same {
                    self.delete(path).await?;
                }
                return Ok(same);
            }
            match self.op.delete_with(path).if_match(version).await {
                Ok(()) => Ok(true),
                Err(e) if matches!(e.kind(), ErrorKind::ConditionNotMatch | ErrorKind::NotFound) => Ok(false),
                Err(e) => Err(err(&self.location, "delete", path, e)),
            }
        })
    }

    fn delete_if_unchanged<'a>(
        &'a self,
        path: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let etag = match self.op.stat(path).await {
                Ok(m) => m.etag().map(str::to_string),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(err(&self.location, "stat", path, e)),
            };
            let read = match &etag {
                Some(tag) => self.op.read_with(path).if_match(tag).await,
                None => self.op.read(path).await,
            };
            match read {
                Ok(b) if b.to_vec() == expected => {}
                Ok(_) => return Ok(false),
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConditionNotMatch) => return Ok(false),
                Err(e) => return Err(err(&self.location, "read", path, e)),
            }
            self.delete_matching(path, etag.as_deref()).await
        })
    }

    fn delete_if_older<'a>(&'a self, path: &'a str, cutoff: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let (modified, etag) = match self.op.stat(path).await {
                Ok(m) => (
                    m.last_modified().map(|t| t.into_inner().as_microsecond()).unwrap_or(0),
                    m.etag().map(str::to_string),
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(err(&self.location, "stat", path, e)),
            };
            if modified > cutoff {
                return Ok(false);
            }
            self.delete_matching(path, etag.as_deref()).await
        })
    }

    fn probe_atomic(&self) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(async move {
            if !self.atomic_if_absent {
                return Ok(false);
            }
            // One probe per backend: whoever asks first runs it, the others wait for it.
            let mut probed = self.probed.lock().await;
            if let Some(atomic) = *probed {
                return Ok(atomic);
            }
            let atomic = self.run_probe().await?;
            *probed = Some(atomic);
            Ok(atomic)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, BackendError>> {
        Box::pin(async move {
            let dir = if prefix.is_empty() || prefix.ends_with('/') {
                prefix.to_string()
            } else {
                format!("{prefix}/")
            };
            let entries = match self.op.list_with(&dir).recursive(true).await {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(err(&self.location, "list", prefix, e)),
            };
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                if entry.metadata().is_dir() {
                    continue;
                }
                let path = entry.path().to_string();
                // Listings may omit sizes and times; ask when they do.
                let meta = if entry.metadata().content_length() == 0 {
                    match self.op.stat(&path).await {
                        Ok(m) => m,
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(err(&self.location, "stat", &path, e)),
                    }
                } else {
                    entry.metadata().clone()
                };
                out.push(ObjectInfo {
                    path,
                    size: meta.content_length(),
                    modified: meta
                        .last_modified()
                        .map(|t| t.into_inner().as_microsecond())
                        .unwrap_or(0),
                });
            }
            Ok(out)
        })
    }
}
