//! Named results: stored at a readable path (`named/<templated key>`) with a manifest beside.

use std::path::{Path, PathBuf};

use crate::backend::WriteMode;
use crate::store::blob::describe_file;
use crate::store::layout::{named_data_path, named_manifest_path, validate_name};
use crate::store::{EntryMeta, FileLookup, Lookup, MANIFEST_FORMAT, PutMode, PutOutcome, Store, StoreError};

/// What a named result is stored from.
pub(super) enum NamedData {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Store {
    pub(super) async fn get_named_impl(&self, name: &str, now: i64) -> Result<Lookup, StoreError> {
        validate_name(name)?;
        let meta = match self.manifest_at(&named_manifest_path(name), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        let Some(bytes) = self.backend.read(&named_data_path(name)).await? else {
            // A manifest without its data must be replaced, not kept (see `Lookup::Corrupt`).
            return Ok(Lookup::Corrupt {
                reason: format!("named result {name} in {} is missing", self.backend.location()),
            });
        };
        if blake3::hash(&bytes).to_hex().as_str() != meta.blob {
            return Ok(Lookup::Corrupt {
                reason: format!(
                    "named result {name} in {} does not match its checksum",
                    self.backend.location()
                ),
            });
        }
        Ok(Lookup::Hit { meta, bytes })
    }

    /// Stores a named result: the data at its readable name, then its manifest. Stored as
    /// serialized, uncompressed: the point of a named result is that people and other
    /// programs can read it where they expect it.
    ///
    /// Checks, then writes: callers serialize the writers of one name by holding its lease
    /// ([`crate::store::named_lease_key`]), so that two writers cannot leave one's data under
    /// the other's manifest, and a create-if-absent that finds a manifest writes nothing.
    pub(super) async fn put_named_data(
        &self,
        mut meta: EntryMeta,
        data: NamedData,
        mode: PutMode,
    ) -> Result<(PutOutcome, EntryMeta), StoreError> {
        let name = meta.key.clone();
        validate_name(&name)?;
        match &data {
            NamedData::Bytes(bytes) => {
                meta.format = MANIFEST_FORMAT;
                meta.raw_size = bytes.len() as u64;
                meta.size = bytes.len() as u64;
                meta.compression = None;
                meta.blob = blake3::hash(bytes).to_hex().to_string();
            }
            NamedData::File(src) => describe_file(&mut meta, src)?,
        }
        let mpath = named_manifest_path(&name);
        if mode == PutMode::IfAbsent && self.backend.read(&mpath).await?.is_some() {
            return Ok((PutOutcome::AlreadyPresent, meta));
        }
        let dpath = named_data_path(&name);
        match data {
            NamedData::Bytes(bytes) => self.backend.write(&dpath, bytes, WriteMode::Overwrite).await?,
            NamedData::File(src) => self.backend.write_file(&dpath, &src, WriteMode::Overwrite).await?,
        };
        self.publish_manifest(&mpath, meta, mode).await
    }

    pub(super) async fn get_named_file_impl(
        &self,
        name: &str,
        now: i64,
        dest_dir: &Path,
    ) -> Result<FileLookup, StoreError> {
        validate_name(name)?;
        let meta = match self.manifest_at(&named_manifest_path(name), now).await? {
            Ok(m) => m,
            Err(unusable) => return Ok(unusable.into()),
        };
        // A named file is meant to be read (and may be edited) by people: hash it by reading
        // in chunks, never by mapping it.
        let changed = |p: &Path| format!("named result {} was changed since it was stored", p.display());
        let data = named_data_path(name);
        let found = self
            .fetch_file(meta, &data, dest_dir, crate::stream::hash_file, changed)
            .await?;
        Ok(self.missing_is_corrupt(found, &data))
    }
}
