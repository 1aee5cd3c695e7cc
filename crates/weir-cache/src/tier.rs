//! A local disk tier in front of a remote store (sccache's multi-level cache).
//!
//! Reads check the local folder first; a hit written by another machine is fetched from the
//! remote once and kept locally, so a repeated hit costs a local-disk read. Writes go to the
//! remote (the source of truth) first, then locally. The local folder has a size cap; when
//! it is exceeded the least recently used entries go (a local hit refreshes an entry's
//! modification time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;

use crate::backend::Backend;
use crate::folder::FolderBackend;
use crate::key::CacheKey;
use crate::store::{
    EntryMeta, GcOptions, GcReport, Lease, LeaseOutcome, Lookup, PutMode, PutOutcome, Renewal, ResultStore, Store,
    StoreError, StoreStats, manifest_path,
};

/// Counters of one tiered store, for `weir cache stats` and tests.
#[derive(Debug, Default)]
pub struct TierCounters {
    pub local_hits: AtomicU64,
    pub remote_hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// A local folder in front of a remote store.
#[derive(Debug)]
pub struct Tiered {
    local: Store,
    local_folder: FolderBackend,
    remote: Arc<dyn ResultStore>,
    cap: u64,
    /// Bytes of blobs in the local folder, counted on first write.
    size: AtomicU64,
    sized: AtomicBool,
    pub counters: TierCounters,
}

impl Tiered {
    /// `local` is the folder of the local tier; `cap` its size limit in bytes.
    pub fn new(local: FolderBackend, remote: Arc<dyn ResultStore>, cap: u64) -> Tiered {
        Tiered {
            local: Store::new(Arc::new(local.clone())),
            local_folder: local,
            remote,
            cap,
            size: AtomicU64::new(0),
            sized: AtomicBool::new(false),
            counters: TierCounters::default(),
        }
    }

    pub fn local(&self) -> &Store {
        &self.local
    }

    async fn keep_locally(&self, meta: EntryMeta, bytes: Vec<u8>) {
        // The local tier is an optimisation: failing to fill it is not an error.
        let Ok((_, stored)) = self.local.put(meta, bytes, PutMode::Replace).await else {
            return;
        };
        if !self.sized.swap(true, Ordering::Relaxed) {
            let total = match self.local_folder.list("v1/blobs/").await {
                Ok(objs) => objs.iter().map(|o| o.size).sum(),
                Err(_) => 0,
            };
            self.size.store(total, Ordering::Relaxed);
        } else {
            self.size.fetch_add(stored.size, Ordering::Relaxed);
        }
        if self.size.load(Ordering::Relaxed) > self.cap {
            self.evict().await;
        }
    }

    /// Removes least recently used local entries until the tier is under 90 % of its cap.
    async fn evict(&self) {
        let Ok(manifests) = self.local_folder.list("v1/manifests/").await else {
            return;
        };
        let Ok(blobs) = self.local_folder.list("v1/blobs/").await else {
            return;
        };
        let mut total: u64 = blobs.iter().map(|b| b.size).sum();
        let target = self.cap / 10 * 9;
        let mut by_age = manifests;
        by_age.sort_by_key(|m| m.modified);
        for m in by_age {
            if total <= target {
                break;
            }
            let Ok(Some(raw)) = self.local_folder.read(&m.path).await else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<EntryMeta>(&raw) else {
                let _ = self.local_folder.delete(&m.path).await;
                continue;
            };
            let _ = self.local_folder.delete(&m.path).await;
            // A blob shared with a surviving entry turns that entry into a local miss,
            // which the remote answers: harmless.
            let _ = self.local_folder.delete(&self.local.blob_path(&meta.blob)).await;
            total = total.saturating_sub(meta.size);
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.size.store(total, Ordering::Relaxed);
    }
}

impl ResultStore for Tiered {
    fn location(&self) -> String {
        format!(
            "{} (local tier {})",
            self.remote.location(),
            self.local_folder.location()
        )
    }

    fn get<'a>(&'a self, key: &'a CacheKey, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        Box::pin(async move {
            if let Ok(Lookup::Hit { meta, bytes }) = self.local.get(key, now).await {
                self.counters.local_hits.fetch_add(1, Ordering::Relaxed);
                let _ = self.local_folder.touch(&manifest_path(&meta.key)).await;
                return Ok(Lookup::Hit { meta, bytes });
            }
            match self.remote.get(key, now).await? {
                Lookup::Hit { meta, bytes } => {
                    self.counters.remote_hits.fetch_add(1, Ordering::Relaxed);
                    self.keep_locally(meta.clone(), bytes.clone()).await;
                    Ok(Lookup::Hit { meta, bytes })
                }
                other => {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    Ok(other)
                }
            }
        })
    }

    fn put(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        Box::pin(async move {
            let local_copy = bytes.clone();
            let (outcome, stored) = self.remote.put(meta, bytes, mode).await?;
            if outcome == PutOutcome::Published {
                self.keep_locally(stored.clone(), local_copy).await;
            }
            Ok((outcome, stored))
        })
    }

    fn entry<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<EntryMeta>, StoreError>> {
        self.remote.entry(key)
    }

    fn entries(&self) -> BoxFuture<'_, Result<Vec<EntryMeta>, StoreError>> {
        self.remote.entries()
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let _ = self.local.remove(key).await;
            self.remote.remove(key).await
        })
    }

    fn gc(&self, opts: GcOptions, now: i64) -> BoxFuture<'_, Result<GcReport, StoreError>> {
        Box::pin(async move {
            let _ = self.local.gc(opts.clone(), now).await;
            self.remote.gc(opts, now).await
        })
    }

    fn stats(&self, now: i64) -> BoxFuture<'_, Result<StoreStats, StoreError>> {
        self.remote.stats(now)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        holder: &'a str,
        ttl: i64,
        now: i64,
    ) -> BoxFuture<'a, Result<LeaseOutcome, StoreError>> {
        self.remote.try_lease(key, holder, ttl, now)
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: i64, now: i64) -> BoxFuture<'a, Result<Renewal, StoreError>> {
        self.remote.renew(lease, ttl, now)
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.remote.release(lease)
    }

    fn atomic_leases(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.remote.atomic_leases()
    }

    fn put_file(
        &self,
        meta: EntryMeta,
        src: std::path::PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        self.remote.put_file(meta, src, mode)
    }

    fn get_file<'a>(
        &'a self,
        key: &'a CacheKey,
        now: i64,
        _dest_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<crate::store::FileLookup, StoreError>> {
        // Downloaded files live in the local tier, so a repeated hit is a local read.
        Box::pin(async move {
            let dir = self.local_folder.root().join("files");
            self.remote.get_file(key, now, &dir).await
        })
    }

    fn put_named_file(
        &self,
        meta: EntryMeta,
        src: std::path::PathBuf,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        self.remote.put_named_file(meta, src, mode)
    }

    fn get_named_file<'a>(
        &'a self,
        name: &'a str,
        now: i64,
        _dest_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<crate::store::FileLookup, StoreError>> {
        Box::pin(async move {
            let dir = self.local_folder.root().join("files");
            self.remote.get_named_file(name, now, &dir).await
        })
    }

    fn get_named<'a>(&'a self, name: &'a str, now: i64) -> BoxFuture<'a, Result<Lookup, StoreError>> {
        self.remote.get_named(name, now)
    }

    fn put_blobs(
        &self,
        srcs: Vec<std::path::PathBuf>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.remote.put_blobs(srcs, mode)
    }

    fn get_blobs<'a>(
        &'a self,
        meta: &'a EntryMeta,
        _dest_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<crate::store::StoredFiles, StoreError>> {
        // Downloaded like file results: into the local tier.
        Box::pin(async move {
            let dir = self.local_folder.root().join("files");
            self.remote.get_blobs(meta, &dir).await
        })
    }

    fn put_named(
        &self,
        meta: EntryMeta,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> BoxFuture<'_, Result<(PutOutcome, EntryMeta), StoreError>> {
        self.remote.put_named(meta, bytes, mode)
    }
}
