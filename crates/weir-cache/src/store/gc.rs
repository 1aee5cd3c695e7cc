//! Listing, counting and garbage-collecting entries and blobs.

use std::collections::HashSet;

use crate::store::blob::MIN_REUPLOAD_GRACE_MICROS;
use crate::store::{EntryMeta, GcOptions, GcReport, Store, StoreError, StoreStats};

impl Store {
    pub(super) async fn entries_impl(&self) -> Result<Vec<EntryMeta>, StoreError> {
        let mut out = Vec::new();
        for obj in self.backend.list("v1/manifests/").await? {
            if !obj.path.ends_with(".json") {
                continue;
            }
            if let Some(Ok(meta)) = self.read_manifest(&obj.path).await? {
                out.push(EntryMeta { inline: None, ..meta });
            }
        }
        out.sort_by_key(|m| m.created_at);
        Ok(out)
    }

    /// Deletes a manifest only if it is still the one gc judged: a writer may have
    /// replaced it (a refresh, or the repair of a bad entry) since it was read.
    async fn drop_manifest(&self, path: &str, judged: &[u8], report: &mut GcReport) -> Result<(), StoreError> {
        if self.backend.delete_if_unchanged(path, judged).await? {
            report.entries_removed += 1;
        }
        Ok(())
    }

    pub(super) async fn gc_impl(&self, opts: GcOptions, now: i64) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        // What each live manifest was when judged: a digest, not the bytes (inline results
        // make manifests up to a few KiB, and a store can hold millions).
        let mut live: Vec<(EntryMeta, String, blake3::Hash)> = Vec::new();
        let cutoff = opts.older_than_micros.map(|age| now - age);
        for obj in self.backend.list("v1/manifests/").await? {
            let (raw, meta) = match self.read_manifest_raw(&obj.path).await? {
                Some((raw, Ok(m))) => (raw, m),
                // Unreadable manifests are garbage too.
                Some((raw, Err(_))) => {
                    if opts.dry_run {
                        report.entries_removed += 1;
                    } else {
                        self.drop_manifest(&obj.path, &raw, &mut report).await?;
                    }
                    continue;
                }
                None => continue,
            };
            let expired = meta.expires_at.is_some_and(|e| e <= now);
            let too_old = cutoff.is_some_and(|c| meta.created_at < c);
            if expired || too_old {
                if opts.dry_run {
                    report.entries_removed += 1;
                } else {
                    self.drop_manifest(&obj.path, &raw, &mut report).await?;
                }
            } else {
                let digest = blake3::hash(&raw);
                live.push((EntryMeta { inline: None, ..meta }, obj.path, digest));
            }
        }
        if let Some(max) = opts.max_size {
            // Oldest first, until what is left fits (shared blobs counted once).
            live.sort_by_key(|(m, _, _)| std::cmp::Reverse(m.created_at));
            let mut seen = HashSet::new();
            let mut total = 0u64;
            let mut keep = Vec::new();
            for (meta, path, digest) in live {
                let extra = if seen.contains(&meta.blob) { 0 } else { meta.size };
                if total + extra <= max {
                    total += extra;
                    seen.insert(meta.blob.clone());
                    keep.push((meta, path, digest));
                } else if opts.dry_run {
                    report.entries_removed += 1;
                } else if let Some(raw) = self.backend.read(&path).await?
                    && blake3::hash(&raw) == digest
                {
                    self.drop_manifest(&path, &raw, &mut report).await?;
                }
            }
            live = keep;
        }
        let referenced: HashSet<&str> = live
            .iter()
            .flat_map(|(m, _, _)| std::iter::once(&m.blob).chain(&m.files).map(String::as_str))
            .collect();
        // A writer reuses a blob it finds young without refreshing it where refreshing means
        // uploading again: a shorter grace would delete blobs such writers are about to name.
        let blob_grace = match self.backend.refreshes_in_place() {
            true => opts.grace_micros,
            false => opts.grace_micros.max(MIN_REUPLOAD_GRACE_MICROS),
        };
        let young = now - blob_grace;
        for obj in self.backend.list("v1/blobs/").await? {
            let name = obj.path.rsplit('/').next().unwrap_or("");
            if referenced.contains(name) {
                report.bytes_kept += obj.size;
                continue;
            }
            // A blob is written (or, when already there, refreshed) before its manifest: a
            // young unreferenced blob may be half of an entry being published right now.
            // Checked again as it is deleted, since a writer may refresh it after the list.
            if obj.modified > young {
                continue;
            }
            if opts.dry_run || self.backend.delete_if_older(&obj.path, young).await? {
                report.blobs_removed += 1;
                report.bytes_freed += obj.size;
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
