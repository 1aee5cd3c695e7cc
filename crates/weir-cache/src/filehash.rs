//! The BLAKE3 of a file's contents, remembered per file so a large input is not re-read on
//! every call.
//!
//! A file input ([`weir::Artifact`](../../weir/struct.Artifact.html)) is keyed by what it
//! holds, not by where it is. Hashing 1 GiB takes about a second, so the hash is remembered in
//! this process, under the file's path, and trusted again only while the file's fingerprint —
//! device, inode, size, modification and change times — is the same.
//!
//! A write that lands within the file system's timestamp granularity of the hash (one clock
//! tick on Linux, up to 2 s on some network file systems) can leave every timestamp equal. So,
//! as git does for its index, a hash taken while the file's newest timestamp was less than
//! [`RACY_MARGIN`] old is used for that call but not remembered: the next call reads the file
//! again.
//!
//! The memory is per process (a new process hashes each file input once) and bounded to
//! [`MAX_ENTRIES`] files, least recently used out first.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// How recent a file's timestamps may be for its hash to be remembered (see the module docs).
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// How many files' hashes one process remembers.
pub const MAX_ENTRIES: usize = 4096;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Fingerprint {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Fingerprint {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let ns = |t: io::Result<SystemTime>| {
                t.ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as i128)
            };
            Fingerprint {
                dev: 0,
                ino: 0,
                size: meta.len(),
                mtime_ns: ns(meta.modified()),
                ctime_ns: ns(meta.created()),
            }
        }
    }

    fn newest_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

struct Entry {
    fingerprint: Fingerprint,
    hash: [u8; 32],
    last_used: u64,
}

/// Remembered file hashes. [`digest_file`] uses one per process; tests make their own.
pub struct FileHashCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
    racy_margin: Duration,
    capacity: usize,
    clock: AtomicU64,
    reads: AtomicU64,
}

impl FileHashCache {
    pub fn new(racy_margin: Duration, capacity: usize) -> FileHashCache {
        FileHashCache {
            entries: Mutex::new(HashMap::new()),
            racy_margin,
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// How many times a file was read to hash it (the cache's misses).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The BLAKE3 of the file at `path`, read only if this version of it was not hashed before.
    pub fn digest(&self, path: &Path) -> io::Result<[u8; 32]> {
        let before = Fingerprint::of(&std::fs::metadata(path)?);
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock().get_mut(path)
            && e.fingerprint == before
        {
            e.last_used = tick;
            return Ok(e.hash);
        }
        let started = SystemTime::now();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (hex, _) = crate::stream::hash_file(path)?;
        let hash = parse_hex(&hex)?;
        // Changed while we read it: the hash may mix two versions, so it is not kept (the
        // caller still gets it; a key that matches nothing is a miss, not a wrong hit).
        let after = Fingerprint::of(&std::fs::metadata(path)?);
        let settled = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|now| now.as_nanos() as i128 - after.newest_ns() >= self.racy_margin.as_nanos() as i128)
            .unwrap_or(false);
        if after == before && settled {
            let mut entries = self.lock();
            if entries.len() >= self.capacity && !entries.contains_key(path) {
                evict_oldest(&mut entries, self.capacity / 4 + 1);
            }
            entries.insert(
                path.to_path_buf(),
                Entry {
                    fingerprint: after,
                    hash,
                    last_used: tick,
                },
            );
        }
        Ok(hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (inserts are
        // whole), so a poisoned map is still sound.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn evict_oldest(entries: &mut HashMap<PathBuf, Entry>, n: usize) {
    let mut ages: Vec<(u64, PathBuf)> = entries.iter().map(|(p, e)| (e.last_used, p.clone())).collect();
    ages.sort_unstable_by_key(|(t, _)| *t);
    for (_, p) in ages.into_iter().take(n) {
        entries.remove(&p);
    }
}

fn parse_hex(hex: &str) -> io::Result<[u8; 32]> {
    blake3::Hash::from_hex(hex)
        .map(|h| *h.as_bytes())
        .map_err(|e| io::Error::other(format!("bad hash {hex}: {e}")))
}

/// This process's file-hash memory.
pub fn shared() -> &'static FileHashCache {
    static CACHE: OnceLock<FileHashCache> = OnceLock::new();
    CACHE.get_or_init(|| FileHashCache::new(RACY_MARGIN, MAX_ENTRIES))
}

/// The BLAKE3 of a file's contents, remembered by this process (see the module docs).
pub fn digest_file(path: &Path) -> io::Result<[u8; 32]> {
    shared().digest(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets the modification time to one fixed instant, as `touch -d` or `tar -x` would.
    fn back_date(path: &Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .unwrap();
    }

    fn ctime(path: &Path) -> i128 {
        Fingerprint::of(&std::fs::metadata(path).unwrap()).ctime_ns
    }

    #[test]
    fn an_unchanged_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.bin");
        std::fs::write(&p, vec![7u8; 100_000]).unwrap();
        // ctime cannot be set back, so this cache trusts timestamps of any age.
        let cache = FileHashCache::new(Duration::ZERO, 8);
        let h = cache.digest(&p).unwrap();
        assert_eq!(h, *blake3::hash(&[7u8; 100_000]).as_bytes());
        for _ in 0..5 {
            assert_eq!(cache.digest(&p).unwrap(), h);
        }
        assert_eq!(cache.reads(), 1, "five more calls, no more reads");
    }

    #[test]
    fn a_file_rewritten_in_place_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.bin");
        std::fs::write(&p, b"aaaa").unwrap();
        back_date(&p);
        let cache = FileHashCache::new(Duration::ZERO, 8);
        let a = cache.digest(&p).unwrap();
        // Same size, same mtime, new contents: only the change time moves. Rewrite until the
        // file system's clock has ticked (a write within one tick is what RACY_MARGIN covers).
        let first = ctime(&p);
        for _ in 0..100_000 {
            std::fs::write(&p, b"bbbb").unwrap();
            back_date(&p);
            if ctime(&p) != first {
                break;
            }
        }
        assert_ne!(ctime(&p), first, "the change time never moved");
        let b = cache.digest(&p).unwrap();
        assert_ne!(a, b);
        assert_eq!(b, *blake3::hash(b"bbbb").as_bytes());
        assert_eq!(cache.reads(), 2);
    }

    #[test]
    fn a_hash_taken_right_after_a_write_is_not_trusted_later() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.bin");
        std::fs::write(&p, b"fresh").unwrap();
        let cache = FileHashCache::new(Duration::from_secs(3600), 8);
        cache.digest(&p).unwrap();
        cache.digest(&p).unwrap();
        assert_eq!(cache.reads(), 2, "a write in the same clock tick would be invisible");
    }

    #[test]
    fn memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileHashCache::new(Duration::ZERO, 4);
        for i in 0..20 {
            let p = dir.path().join(format!("{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            cache.digest(&p).unwrap();
        }
        assert!(cache.lock().len() <= 4);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = shared().digest(Path::new("/nonexistent/weir-input")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

#[cfg(test)]
mod key_tests {
    //! How the canonical encoder keys a file input (see `canonical::FILE_NEWTYPE`).
    use serde::{Serialize, Serializer};

    use crate::canonical::{FILE_NEWTYPE, to_bytes};

    /// Serializes like `weir::Artifact`.
    struct File(String);

    impl Serialize for File {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_newtype_struct(FILE_NEWTYPE, &self.0)
        }
    }

    fn file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> File {
        let p = dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        File(p.display().to_string())
    }

    #[test]
    fn a_file_is_keyed_by_its_contents_not_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.csv", b"1,2,3\n");
        let b = file(&dir, "b.csv", b"1,2,3\n");
        let c = file(&dir, "c.csv", b"1,2,4\n");
        assert_eq!(to_bytes(&a).unwrap(), to_bytes(&b).unwrap());
        assert_ne!(to_bytes(&a).unwrap(), to_bytes(&c).unwrap());
        assert_ne!(
            to_bytes(&a).unwrap(),
            to_bytes(&a.0).unwrap(),
            "not its path as a string"
        );
        // Rewritten in place: a new key.
        let before = to_bytes(&a).unwrap();
        std::fs::write(&a.0, b"9,9,9\n").unwrap();
        assert_ne!(to_bytes(&a).unwrap(), before);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = to_bytes(&File("/nonexistent/weir/input.csv".into())).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/weir/input.csv") && msg.contains("No such file"),
            "{msg}"
        );
    }
}
