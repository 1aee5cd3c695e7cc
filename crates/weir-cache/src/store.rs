//! The result store: where cached task results live.
//!
//! # Layout (the same for every backend)
//!
//! ```text
//! <root>/v1/manifests/<k0k1>/<key>.json   small JSON metadata, one per cache key
//! <root>/v1/blobs/<b0b1>/<blob>           result bytes, named by their BLAKE3 hash
//! <root>/v1/tmp/                          files being written (same filesystem, for link(2))
//! ```
//!
//! Blobs are content-addressed, so identical results are stored once. A manifest is
//! published only after its blob, so a reader that finds a manifest finds a complete blob
//! (or, if someone deleted it, treats the entry as a miss).
//!
//! # Atomicity on a folder (local disk, NFS, JuiceFS)
//!
//! Every file is written to `tmp/`, fsynced, then published under its final name with
//! `link(2)`, which fails if the name exists: two machines writing one key at once cannot
//! both win, and the loser reads the winner's entry ([`PutOutcome::AlreadyPresent`]). A
//! process killed mid-write leaves only an unpublished temp file. Replacing a known-bad or
//! refreshed entry uses `rename(2)`, which is atomic too.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::{CacheKey, InputDigest};

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// The metadata stored with every result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub format: u32,
    /// Hex cache key.
    pub key: String,
    /// Full path of the task (`crate::module::name`).
    pub task: String,
    pub flow: Option<String>,
    pub flow_run_id: Option<String>,
    pub task_run_id: String,
    /// `json` or `msgpack`.
    pub serializer: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Hex BLAKE3 of the blob: its name and its checksum.
    pub blob: String,
    /// The task's manual `cache_version`.
    pub cache_version: String,
    /// Hash of the task's source, for the `inputs+source` policy.
    pub source_hash: Option<String>,
    /// Digest of each input, by parameter name.
    pub inputs: Vec<InputDigest>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A complete, verified entry.
    Hit { meta: EntryMeta, bytes: Vec<u8> },
    /// No entry, or a manifest whose blob is gone.
    Miss,
    /// An entry past its `expires_at`.
    Expired { meta: EntryMeta },
    /// An entry that cannot be trusted (unparseable manifest, blob checksum mismatch…).
    Corrupt { reason: String },
}

/// How to publish a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Only if no entry exists for the key: concurrent writers agree on one winner.
    IfAbsent,
    /// Replace what is there (an expired, corrupt or refreshed entry).
    Replace,
}

/// What a put did.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Published,
    /// Another writer published this key first (only with [`PutMode::IfAbsent`]).
    AlreadyPresent,
}

/// An I/O failure of the store itself (not a bad entry, which is a [`Lookup::Corrupt`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("result store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not encode entry metadata: {0}")]
    Meta(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A place to keep results. Implementations must make `put` atomic (see the module docs).
pub trait ResultStore: Send + Sync + fmt::Debug {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Looks a key up; `now` (µs since the epoch) decides expiry.
    fn get(&self, key: &CacheKey, now: i64) -> Result<Lookup, StoreError>;
    /// Stores `bytes` under `meta.key`. `meta.blob` and `meta.size` are filled in by the store.
    fn put(&self, meta: &mut EntryMeta, bytes: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError>;
}

/// A result store in a folder: a local disk or a shared mount (NFS, JuiceFS).
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
    manifests: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

impl FolderStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let base = root.join("v1");
        let store = FolderStore {
            manifests: base.join("manifests"),
            blobs: base.join("blobs"),
            tmp: base.join("tmp"),
            root,
            fsync: true,
        };
        for dir in [&store.manifests, &store.blobs, &store.tmp] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(store)
    }

    /// Skips fsync before publishing. Faster, but an OS crash (not a process crash) may
    /// leave a published file empty. For throwaway caches and benchmarks only.
    pub fn without_fsync(mut self) -> Self {
        self.fsync = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest path of a key.
    pub fn manifest_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.to_hex();
        self.manifests.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The path of a blob, by its hex hash.
    pub fn blob_path(&self, blob_hex: &str) -> PathBuf {
        let shard = blob_hex.get(..2).unwrap_or("__");
        self.blobs.join(shard).join(blob_hex)
    }

    /// Writes `bytes` to a temp file in `tmp/`, fsynced, ready to publish.
    fn write_temp(&self, bytes: &[u8]) -> Result<tempfile::NamedTempFile, StoreError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".w-")
            .tempfile_in(&self.tmp)
            .map_err(io_err(&self.tmp))?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        if self.fsync {
            tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        }
        Ok(tmp)
    }

    /// Publishes a temp file under `dest` only if `dest` does not exist.
    /// Returns false if someone else's file is already there.
    fn link_if_absent(&self, tmp: &tempfile::NamedTempFile, dest: &Path) -> Result<bool, StoreError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match fs::hard_link(tmp.path(), dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(dest)(e)),
        }
        // The temp file is unlinked when `tmp` drops.
    }
}

impl ResultStore for FolderStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &CacheKey, now: i64) -> Result<Lookup, StoreError> {
        let path = self.manifest_path(key);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta: EntryMeta = match serde_json::from_slice(&raw) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Lookup::Corrupt {
                    reason: format!("manifest {} is unreadable: {e}", path.display()),
                });
            }
        };
        if meta.key != key.to_hex() {
            return Ok(Lookup::Corrupt {
                reason: format!("manifest {} belongs to key {}", path.display(), meta.key),
            });
        }
        if meta.expires_at.is_some_and(|exp| exp <= now) {
            return Ok(Lookup::Expired { meta });
        }
        let blob_path = self.blob_path(&meta.blob);
        let bytes = match fs::read(&blob_path) {
            Ok(b) => b,
            // A manifest whose data is gone is a miss, never an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(io_err(&blob_path)(e)),
        };
        let actual = blake3::hash(&bytes);
        if actual.to_hex().as_str() != meta.blob {
            return Ok(Lookup::Corrupt {
                reason: format!(
                    "blob {} does not match its checksum ({} bytes, expected {})",
                    blob_path.display(),
                    bytes.len(),
                    meta.size
                ),
            });
        }
        Ok(Lookup::Hit { meta, bytes })
    }

    fn put(&self, meta: &mut EntryMeta, bytes: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError> {
        let blob_hex = blake3::hash(bytes).to_hex().to_string();
        meta.blob = blob_hex.clone();
        meta.size = bytes.len() as u64;
        meta.format = MANIFEST_FORMAT;

        // Blob first. An existing blob with this name has this content, unless it was
        // damaged: check it, and replace it if so.
        let blob_path = self.blob_path(&blob_hex);
        let blob_ok = match fs::read(&blob_path) {
            Ok(existing) => blake3::hash(&existing).to_hex().as_str() == blob_hex,
            Err(_) => false,
        };
        if !blob_ok {
            let tmp = self.write_temp(bytes)?;
            if !self.link_if_absent(&tmp, &blob_path)? {
                // Present but damaged (we checked above), or raced by an identical writer:
                // either way our copy is good, so put it in place atomically.
                tmp.persist(&blob_path).map_err(|e| io_err(&blob_path)(e.error))?;
            }
        }

        // Manifest last.
        let manifest = serde_json::to_vec_pretty(meta)?;
        let key: CacheKey = meta.key.parse().map_err(|e: crate::key::InvalidKey| StoreError::Io {
            path: self.root.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let path = self.manifest_path(&key);
        let tmp = self.write_temp(&manifest)?;
        match mode {
            PutMode::IfAbsent => {
                if self.link_if_absent(&tmp, &path)? {
                    Ok(PutOutcome::Published)
                } else {
                    Ok(PutOutcome::AlreadyPresent)
                }
            }
            PutMode::Replace => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
                Ok(PutOutcome::Published)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyParts;

    fn key(n: u8) -> CacheKey {
        let inputs = [("x", [n; 32])];
        KeyParts {
            task_path: "t",
            cache_version: "",
            source_hash: None,
            inputs: &inputs,
            custom: None,
        }
        .key()
    }

    fn meta(k: &CacheKey) -> EntryMeta {
        EntryMeta {
            format: MANIFEST_FORMAT,
            key: k.to_hex(),
            task: "t".into(),
            flow: None,
            flow_run_id: None,
            task_run_id: "r".into(),
            serializer: "json".into(),
            created_at: 0,
            expires_at: None,
            size: 0,
            blob: String::new(),
            cache_version: String::new(),
            source_hash: None,
            inputs: vec![],
        }
    }

    #[test]
    fn put_then_get_and_first_writer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let k = key(1);
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Miss));
        assert_eq!(
            store.put(&mut meta(&k), b"41", PutMode::IfAbsent).unwrap(),
            PutOutcome::Published
        );
        assert_eq!(
            store.put(&mut meta(&k), b"42", PutMode::IfAbsent).unwrap(),
            PutOutcome::AlreadyPresent
        );
        match store.get(&k, 0).unwrap() {
            Lookup::Hit { bytes, meta } => {
                assert_eq!(bytes, b"41");
                assert_eq!(meta.size, 2);
            }
            other => panic!("expected hit, got {other:?}"),
        }
        store.put(&mut meta(&k), b"43", PutMode::Replace).unwrap();
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Hit { bytes, .. } if bytes == b"43"));
        // Nothing is left behind in tmp/.
        assert_eq!(fs::read_dir(dir.path().join("v1/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn missing_blob_is_a_miss_and_damage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let k = key(2);
        let mut m = meta(&k);
        store.put(&mut m, b"hello", PutMode::IfAbsent).unwrap();
        let blob = store.blob_path(&m.blob);

        fs::write(&blob, b"hellO").unwrap();
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Corrupt { .. }));

        fs::remove_file(&blob).unwrap();
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Miss));

        // Re-putting the same content repairs the blob.
        store.put(&mut meta(&k), b"hello", PutMode::Replace).unwrap();
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Hit { .. }));

        fs::write(store.manifest_path(&k), b"{ not json").unwrap();
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Corrupt { .. }));
    }

    #[test]
    fn expired_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let k = key(3);
        let mut m = meta(&k);
        m.expires_at = Some(100);
        store.put(&mut m, b"1", PutMode::IfAbsent).unwrap();
        assert!(matches!(store.get(&k, 99).unwrap(), Lookup::Hit { .. }));
        assert!(matches!(store.get(&k, 100).unwrap(), Lookup::Expired { .. }));
    }

    #[test]
    fn identical_results_share_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let (mut a, mut b) = (meta(&key(4)), meta(&key(5)));
        store.put(&mut a, b"same", PutMode::IfAbsent).unwrap();
        store.put(&mut b, b"same", PutMode::IfAbsent).unwrap();
        assert_eq!(a.blob, b.blob);
        let shard = store.blob_path(&a.blob).parent().unwrap().to_path_buf();
        assert_eq!(fs::read_dir(shard).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writers_agree_on_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path()).unwrap();
        let k = key(6);
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || {
                        let body = format!("writer-{i}");
                        store.put(&mut meta(&k), body.as_bytes(), PutMode::IfAbsent).unwrap()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|o| *o == PutOutcome::Published)
                .count()
        });
        assert_eq!(winners, 1);
        assert!(matches!(store.get(&k, 0).unwrap(), Lookup::Hit { .. }));
    }
}
