//! Listing, counting and garbage-collecting entries and blobs.

use std::collections::HashSet;

use crate::store::{EntryMeta, GcOptions, GcReport, Store, StoreError, StoreStats};

impl Store {
    pub(super) async fn entries_impl(&self) -> Result<Vec<EntryMeta>, StoreError> {
        let mut out = Vec::new();
        for obj in self.backend.list("v1/manifests/").await? {
            if !obj.path.ends_with(".json") {
                continue;
            }
            if let Some(Ok(meta)) = self.read_manifest(&obj.path).await? {
                out.push(meta);
            }
        }
        out.sort_by_key(|m| m.created_at);
        Ok(out)
    }

    pub(super) async fn gc_impl(&self, opts: GcOptions, now: i64) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut live: Vec<(EntryMeta, String)> = Vec::new();
        let cutoff = opts.older_than_micros.map(|age| now - age);
        for obj in self.backend.list("v1/manifests/").await? {
            let meta = match self.read_manifest(&obj.path).await? {
                Some(Ok(m)) => m,
                // Unreadable manifests are garbage too.
                Some(Err(_)) => {
                    report.entries_removed += 1;
                    if !opts.dry_run {
                        self.backend.delete(&obj.path).await?;
                    }
                    continue;
                }
                None => continue,
            };
            let expired = meta.expires_at.is_some_and(|e| e <= now);
            let too_old = cutoff.is_some_and(|c| meta.created_at < c);
            if expired || too_old {
                report.entries_removed += 1;
                if !opts.dry_run {
                    self.backend.delete(&obj.path).await?;
                }
            } else {
                live.push((meta, obj.path));
            }
        }
        if let Some(max) = opts.max_size {
            // Oldest first, until what is left fits (shared blobs counted once).
            live.sort_by_key(|(m, _)| std::cmp::Reverse(m.created_at));
            let mut seen = HashSet::new();
            let mut total = 0u64;
            let mut keep = Vec::new();
            for (meta, path) in live {
                let extra = if seen.contains(&meta.blob) { 0 } else { meta.size };
                if total + extra <= max {
                    total += extra;
                    seen.insert(meta.blob.clone());
                    keep.push((meta, path));
                } else {
                    report.entries_removed += 1;
                    if !opts.dry_run {
                        self.backend.delete(&path).await?;
                    }
                }
            }
            live = keep;
        }
        let referenced: HashSet<&str> = live
            .iter()
            .flat_map(|(m, _)| std::iter::once(&m.blob).chain(&m.files).map(String::as_str))
            .collect();
        for obj in self.backend.list("v1/blobs/").await? {
            let name = obj.path.rsplit('/').next().unwrap_or("");
            if referenced.contains(name) {
                report.bytes_kept += obj.size;
                continue;
            }
            // A blob is written before its manifest: a young unreferenced blob may be
            // half of an entry being published right now.
            if obj.modified > now - opts.grace_micros {
                continue;
            }
            report.blobs_removed += 1;
            report.bytes_freed += obj.size;
            if !opts.dry_run {
                self.backend.delete(&obj.path).await?;
            }
        }
        for obj in self.backend.list("tmp/").await? {
            if obj.modified <= now - opts.grace_micros.max(3_600_000_000) && !opts.dry_run {
                // Left by writers that were killed mid-write.
                self.backend.delete(&obj.path).await?;
            }
        }
        report.entries_kept = live.len();
        Ok(report)
    }

    pub(super) async fn stats_impl(&self, now: i64) -> Result<StoreStats, StoreError> {
        let entries = self.entries_impl().await?;
        let blobs = self.backend.list("v1/blobs/").await?;
        Ok(StoreStats {
            entries: entries.len(),
            expired: entries
                .iter()
                .filter(|m| m.expires_at.is_some_and(|e| e <= now))
                .count(),
            blobs: blobs.len(),
            bytes: blobs.iter().map(|b| b.size).sum(),
        })
    }
}
