//! Named results: stored at a readable path (`named/<templated key>`) with a manifest beside.

use std::path::{Path, PathBuf};

use crate::backend::WriteMode;
use crate::store::blob::{BlobData, describe_file};
use crate::store::layout::{blob_path, named_data_path, named_manifest_path, validate_name};
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
        let bytes = match self.backend.read(&named_data_path(name)).await? {
            Some(bytes) => bytes,
            // Not copied to its name yet (its writer is between the manifest and the copy, or
            // died there): the blob written before the manifest holds it, until gc.
            None => match self.backend.read(&blob_path(&meta.blob)).await? {
                Some(bytes) => bytes,
                // A manifest without its data must be replaced, not kept (see `Lookup::Corrupt`).
                None => {
                    return Ok(Lookup::Corrupt {
                        reason: format!("named result {name} in {} is missing", self.backend.location()),
                    });
                }
            },
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

    /// Stores a named result: its data as a content-addressed blob, then its manifest
    /// (create-if-absent, or replace), and only if that publish was won, the data at its
    /// readable name. Stored as serialized, uncompressed: the point of a named result is
    /// that people and other programs can read it where they expect it.
    ///
    /// A writer that loses the manifest's create-if-absent writes nothing under the name, so
    /// one writer's data never sits under another's manifest, and `on_duplicate = "error"`
    /// leaves the winner's result untouched. Replacing is left to the holder of the name's
    /// lease ([`crate::store::named_lease_key`]), which confirms it still holds it first;
    /// until its copy lands, readers find the old data under the new manifest, which fails
    /// its checksum (`Corrupt`) — weir's own readers wait for the lease instead. A name
    /// published for the first time reads from the blob until the copy lands.
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
        meta.inline = None;
        let bpath = blob_path(&meta.blob);
        match &data {
            // Held twice for a moment (the blob, then the readable name): named results
            // that are large are better returned as files, which are streamed.
            NamedData::Bytes(bytes) => self.store_blob(&bpath, BlobData::Bytes(bytes.clone()), mode).await?,
            NamedData::File(src) => self.store_blob(&bpath, BlobData::File(src), mode).await?,
        }
        let (outcome, meta) = self.publish_manifest(&named_manifest_path(&name), meta, mode).await?;
        if outcome != PutOutcome::Published {
            return Ok((outcome, meta));
        }
        let dpath = named_data_path(&name);
        match data {
            NamedData::Bytes(bytes) => self.backend.write(&dpath, bytes, WriteMode::Overwrite).await?,
            NamedData::File(src) => self.backend.write_file(&dpath, &src, WriteMode::Overwrite).await?,
        };
        Ok((outcome, meta))
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
            .fetch_file(meta.clone(), &data, dest_dir, crate::stream::hash_file, changed)
            .await?;
        if !matches!(found, FileLookup::Miss) {
            return Ok(found);
        }
        // Not copied to its name yet: the blob written before the manifest (see `get_named_impl`).
        let blob = blob_path(&meta.blob);
        let changed = |p: &Path| format!("blob {} does not match its checksum", p.display());
        let found = self
            .fetch_file(meta, &blob, dest_dir, crate::stream::hash_file, changed)
            .await?;
        Ok(self.missing_is_corrupt(found, &data))
    }
}
