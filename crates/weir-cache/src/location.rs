//! Opening a result store from a URL (`WEIR_RESULTS`).
//!
//! | URL | store |
//! |---|---|
//! | `/path`, `./path`, `file:///path` | a folder: local disk, or an NFS / JuiceFS mount |
//! | `s3://bucket/prefix?endpoint=http://host:port&region=us-east-1` | S3 or an S3-compatible server (path-style); credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` |
//! | `memory://` | in this process only (tests) |
//! | `gcs://bucket/prefix` | Google Cloud Storage (cargo feature `gcs`) |
//! | `azblob://container/prefix?endpoint=…` | Azure Blob Storage (cargo feature `azure`) |
//!
//! Any URL takes `?compression=zstd`. Any store, a folder included, gets a local disk tier
//! in front of it when [`OpenOptions::local_tier`] is set: worth it for object stores and for
//! network folders (NFS, JuiceFS), where a hit then costs one small remote read (the manifest,
//! to revalidate) instead of two. The configuration decides: `WEIR_LOCAL_CACHE` defaults to a
//! tier for remote URLs only, and a folder gets one when it is set explicitly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::folder::FolderBackend;
use crate::object::ObjectBackend;
use crate::store::{Compression, ResultStore, Store, StoreError};
use crate::tier::Tiered;

/// How to open a store, besides its URL.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// fsync folder writes before publishing them.
    pub fsync: bool,
    /// Compression when the URL does not say.
    pub compression: Compression,
    /// A local folder and size cap (bytes) in front of the store (see the module docs).
    pub local_tier: Option<(PathBuf, u64)>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            fsync: true,
            compression: Compression::None,
            local_tier: None,
        }
    }
}

fn config(msg: impl Into<String>) -> StoreError {
    StoreError::Config(msg.into())
}

/// Opens the store a URL names.
pub fn open(location: &str, opts: &OpenOptions) -> Result<Arc<dyn ResultStore>, StoreError> {
    open_with_credentials(location, opts, None)
}

/// [`open`], with S3 credentials given instead of read from `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` (a store named by an `s3-bucket` block carries its own).
pub fn open_with_credentials(
    location: &str,
    opts: &OpenOptions,
    credentials: Option<&weir_types::block::AwsCredentials>,
) -> Result<Arc<dyn ResultStore>, StoreError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(config("empty result store location"));
    }
    let looks_like_path = !location.contains("://");
    if looks_like_path {
        let path = PathBuf::from(location);
        return with_tier(folder(path.clone(), opts, opts.compression)?, Some(&path), opts);
    }
    let url = url::Url::parse(location).map_err(|e| config(format!("invalid result store URL '{location}': {e}")))?;
    let query = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let compression = match query("compression") {
        Some(c) => Compression::parse(&c)?,
        None => opts.compression,
    };
    let prefix = url.path().trim_matches('/').to_string();
    let remote: Arc<dyn Backend> = match url.scheme() {
        "file" => {
            let path = url.to_file_path().map_err(|_| {
                config(format!(
                    "'{location}' is not a local file URL (use file:///absolute/path)"
                ))
            })?;
            return with_tier(folder(path.clone(), opts, compression)?, Some(&path), opts);
        }
        "memory" => Arc::new(ObjectBackend::memory()?),
        "s3" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| config(format!("'{location}' names no bucket (s3://bucket/prefix)")))?;
            let mut b = opendal::services::S3::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"))
                .region(
                    &query("region")
                        .or_else(|| std::env::var("AWS_REGION").ok())
                        .unwrap_or_else(|| "us-east-1".into()),
                );
            if let Some(endpoint) = query("endpoint").or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()) {
                b = b.endpoint(&endpoint);
            }
            if let Some(c) = credentials {
                b = b
                    .access_key_id(&c.access_key_id)
                    .secret_access_key(&c.secret_access_key);
            } else if let (Ok(id), Ok(secret)) = (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                b = b.access_key_id(&id).secret_access_key(&secret);
            }
            // Only what the URL and AWS_* say: no instance metadata probing on a laptop.
            b = b.disable_ec2_metadata();
            let op = opendal::Operator::new(b).map_err(|e| config(format!("cannot open '{location}': {e}")))?;
            // Object stores answer 5xx/429 now and then; retry those with backoff rather than
            // report a miss or compute a key twice.
            let op = op.layer(opendal::layers::RetryLayer::new());
            Arc::new(ObjectBackend::new(op, location.split('?').next().unwrap_or(location)))
        }
        #[cfg(feature = "gcs")]
        "gcs" | "gs" => {
            let bucket = url
                .host_str()
                .ok_or_else(|| config(format!("'{location}' names no bucket")))?;
            let b = opendal::services::Gcs::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"));
            let op = opendal::Operator::new(b).map_err(|e| config(format!("cannot open '{location}': {e}")))?;
            Arc::new(ObjectBackend::new(op, location))
        }
        #[cfg(feature = "azure")]
        "azblob" => {
            let container = url
                .host_str()
                .ok_or_else(|| config(format!("'{location}' names no container")))?;
            let mut b = opendal::services::Azblob::default()
                .container(container)
                .root(&format!("/{prefix}"));
            if let Some(endpoint) = query("endpoint") {
                b = b.endpoint(&endpoint);
            }
            let op = opendal::Operator::new(b).map_err(|e| config(format!("cannot open '{location}': {e}")))?;
            Arc::new(ObjectBackend::new(op, location))
        }
        other => {
            return Err(config(format!(
                "unsupported result store '{other}://' in '{location}' (supported: a path, file://, s3://, memory://{}{})",
                if cfg!(feature = "gcs") { ", gcs://" } else { "" },
                if cfg!(feature = "azure") { ", azblob://" } else { "" },
            )));
        }
    };
    with_tier(Store::new(remote).with_compression(compression), None, opts)
}

/// Puts the configured local tier, if any, in front of `store` (whose folder, for folder
/// stores, is `folder`).
fn with_tier(store: Store, folder: Option<&Path>, opts: &OpenOptions) -> Result<Arc<dyn ResultStore>, StoreError> {
    let Some((dir, cap)) = &opts.local_tier else {
        return Ok(Arc::new(store));
    };
    let mut local = FolderBackend::open(dir)?;
    if !opts.fsync {
        local = local.without_fsync();
    }
    // A tier in the store's own folder would evict the shared results themselves.
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(root) = folder
        && same(root, dir)
    {
        return Err(config(format!(
            "WEIR_LOCAL_CACHE ({}) is the result store's own folder: point it at another folder on local disk, or set it to none",
            dir.display()
        )));
    }
    Ok(Arc::new(Tiered::new(local, Arc::new(store), *cap)))
}

fn folder(path: PathBuf, opts: &OpenOptions, compression: Compression) -> Result<Store, StoreError> {
    let mut b = FolderBackend::open(path)?;
    if !opts.fsync {
        b = b.without_fsync();
    }
    Ok(Store::new(Arc::new(b)).with_compression(compression))
}
