//! Manifests: reading one (and deciding whether it is usable), publishing one last.

use crate::backend::WriteMode;
use crate::backend::Written;
use crate::key::CacheKey;
use crate::store::{EntryMeta, FileLookup, Lookup, PutMode, PutOutcome, Store, StoreError};

/// Why a manifest cannot be used, as the answer a lookup gives.
pub(super) enum Unusable {
    Missing,
    Corrupt(String),
    Expired(Box<EntryMeta>),
}

impl From<Unusable> for Lookup {
    fn from(u: Unusable) -> Lookup {
        match u {
            Unusable::Missing => Lookup::Miss,
            Unusable::Corrupt(reason) => Lookup::Corrupt { reason },
            Unusable::Expired(meta) => Lookup::Expired { meta: *meta },
        }
    }
}

impl From<Unusable> for FileLookup {
    fn from(u: Unusable) -> FileLookup {
        match u {
            Unusable::Missing => FileLookup::Miss,
            Unusable::Corrupt(reason) => FileLookup::Corrupt { reason },
            Unusable::Expired(meta) => FileLookup::Expired { meta: *meta },
        }
    }
}

impl Store {
    pub(super) async fn read_manifest(&self, path: &str) -> Result<Option<Result<EntryMeta, String>>, StoreError> {
        Ok(self.read_manifest_raw(path).await?.map(|(_, m)| m))
    }

    /// A manifest's bytes as stored (for compare-and-delete) and what they parse to. Both
    /// forms parse: compact JSON (written now) and pretty-printed (written before).
    pub(super) async fn read_manifest_raw(
        &self,
        path: &str,
    ) -> Result<Option<(Vec<u8>, Result<EntryMeta, String>)>, StoreError> {
        let Some(raw) = self.backend.read(path).await? else {
            return Ok(None);
        };
        let parsed = serde_json::from_slice::<EntryMeta>(&raw)
            .map_err(|e| format!("manifest {path} in {} is unreadable: {e}", self.backend.location()));
        Ok(Some((raw, parsed)))
    }

    /// Reads a live manifest, or says why there is none usable (missing, unreadable, expired).
    pub(super) async fn manifest_at(&self, path: &str, now: i64) -> Result<Result<EntryMeta, Unusable>, StoreError> {
        Ok(match self.read_manifest(path).await? {
            None => Err(Unusable::Missing),
            Some(Err(reason)) => Err(Unusable::Corrupt(reason)),
            Some(Ok(m)) if m.expires_at.is_some_and(|exp| exp <= now) => Err(Unusable::Expired(Box::new(m))),
            Some(Ok(m)) => Ok(m),
        })
    }

    /// Writes a manifest, last: create-if-absent, or replace. Compact JSON: a manifest is
    /// read on every hit, and pretty-printing made it larger and slower to parse (`jq`
    /// prints it nicely when people want to read one). Inline bytes go in the file and are
    /// left out of the returned metadata.
    pub(super) async fn publish_manifest(
        &self,
        path: &str,
        mut meta: EntryMeta,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        let manifest = serde_json::to_vec(&meta)?;
        meta.inline = None;
        let written = match mode {
            PutMode::IfAbsent => self.backend.write(path, manifest, WriteMode::IfAbsent).await?,
            PutMode::Replace => self.backend.write(path, manifest, WriteMode::Overwrite).await?,
        };
        Ok(match written {
            Written::Created => (PutOutcome::Published, meta),
            Written::Exists => (PutOutcome::AlreadyPresent, meta),
        })
    }

    pub(super) async fn entry_impl(&self, key: &CacheKey) -> Result<Option<EntryMeta>, StoreError> {
        Ok(match self.read_manifest(&self.manifest_path(key)).await? {
            Some(Ok(m)) => Some(EntryMeta { inline: None, ..m }),
            _ => None,
        })
    }

    pub(super) async fn remove_impl(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let path = self.manifest_path(key);
        let existed = self.backend.read(&path).await?.is_some();
        self.backend.delete(&path).await?;
        Ok(existed)
    }
}
