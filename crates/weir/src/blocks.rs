//! Blocks: named, typed configuration documents kept by the weir server (`s3-bucket/willowdata`).
//!
//! ```no_run
//! # async fn f() -> Result<(), weir::blocks::BlockError> {
//! use weir::blocks::S3Bucket;
//! let bucket = weir::Block::load::<S3Bucket>("willowdata").await?;
//! let settings = weir::Block::load_json("json/etl-settings").await?;
//! # Ok(()) }
//! ```
//!
//! Blocks are read from the server the process reports to (`WEIR_API_URL`, `WEIR_API_KEY`,
//! or the active profile), with secret fields revealed: the server allows that to a client
//! holding its API key, or to one on the server's own machine. The built-in types'
//! structs mask their secrets in `Debug`, so logging one leaks nothing.

pub use weir_types::block::{AwsCredentials, BlockAddress, BlockKind, LocalFileSystem, MASK, S3Bucket, Secret};

use crate::settings::{CONFIGURED, Settings};

/// Why a block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("blocks live on the weir server, and no server is configured (set WEIR_API_URL, or use a profile)")]
    NoServer,
    #[error("{0}")]
    Address(String),
    #[error(transparent)]
    Client(#[from] weir_client::ClientError),
}

/// Reads blocks from the configured server.
pub struct Block;

fn client() -> Result<weir_client::Client, BlockError> {
    let settings = CONFIGURED.get().cloned().unwrap_or_else(Settings::from_env);
    client_of(&settings)
}

pub(crate) fn client_of(settings: &Settings) -> Result<weir_client::Client, BlockError> {
    let url = settings.api_url.as_deref().ok_or(BlockError::NoServer)?;
    Ok(weir_client::Client::new(url, settings.api_key.clone())?)
}

impl Block {
    /// The latest version of the block `T::TYPE/name`, secrets revealed, as `T`.
    pub async fn load<T: BlockKind>(name: &str) -> Result<T, BlockError> {
        Ok(client()?.load_block::<T>(name).await?)
    }

    /// The document of the block at `address` (`TYPE/NAME`, e.g. `json/settings`), latest
    /// version, secrets revealed.
    pub async fn load_json(address: &str) -> Result<serde_json::Value, BlockError> {
        let addr: BlockAddress = address.parse().map_err(BlockError::Address)?;
        Ok(client()?.block(&addr, None, true).await?.data)
    }
}

/// A dataset root from a location: `block:s3-bucket/NAME` or `block:local-file-system/NAME`
/// (read from the server, credentials included), else a folder path or URL as
/// [`weir_dataset::DatasetRoot::parse`] takes.
pub async fn dataset_root(location: &str) -> Result<weir_dataset::DatasetRoot, BlockError> {
    let Some(address) = location.strip_prefix("block:") else {
        return weir_dataset::DatasetRoot::parse(location).map_err(|e| BlockError::Address(e.to_string()));
    };
    let addr: BlockAddress = address.parse().map_err(BlockError::Address)?;
    match addr.block_type.as_str() {
        S3Bucket::TYPE => {
            let b = Block::load::<S3Bucket>(&addr.name).await?;
            weir_dataset::DatasetRoot::s3(weir_dataset::S3Root {
                bucket: b.bucket,
                prefix: b.prefix.trim_matches('/').to_string(),
                endpoint: b.endpoint,
                region: b.region,
                credentials: b.credentials.map(|c| (c.access_key_id, c.secret_access_key)),
            })
            .map_err(|e| BlockError::Address(e.to_string()))
        }
        LocalFileSystem::TYPE => {
            let b = Block::load::<LocalFileSystem>(&addr.name).await?;
            Ok(weir_dataset::DatasetRoot::folder(b.basepath))
        }
        other => Err(BlockError::Address(format!(
            "a dataset root is an s3-bucket or local-file-system block, not '{other}'"
        ))),
    }
}

/// Resolves `WEIR_RESULTS=block:TYPE/NAME` to a store location and its credentials. Called
/// while the engine starts, which may be on an async worker: the request runs on its own
/// thread and runtime, bounded by the client's timeouts (5 s to connect, 30 s in all).
pub(crate) fn resolve_store(settings: &Settings, spec: &str) -> Result<weir_client::ResolvedStore, String> {
    let client = client_of(settings).map_err(|e| format!("WEIR_RESULTS=block:{spec}: {e}"))?;
    let spec_owned = spec.to_string();
    let resolved = std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(client.resolve_store(&spec_owned))
                .map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("resolving the block panicked".into()))
    });
    resolved.map_err(|e| format!("WEIR_RESULTS=block:{spec}: {e}"))
}
