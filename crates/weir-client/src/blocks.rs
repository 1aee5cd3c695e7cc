//! Blocks: `/blocks` and `/block_types`, and resolving a result store named by a block.

use serde_json::{Value, json};
use weir_types::block::{
    AwsCredentials, Block, BlockAddress, BlockKind, BlockPage, BlockType, BlockTypeList, BlockVersionPage,
    LocalFileSystem, S3Bucket,
};

use crate::{Client, ClientError};

/// A result store location resolved from a block: a path or URL for `weir_cache::open`,
/// and the credentials to open it with (never in the URL).
#[derive(Clone, Debug)]
pub struct ResolvedStore {
    pub location: String,
    pub credentials: Option<AwsCredentials>,
}

impl Client {
    fn block_url(&self, addr: &BlockAddress) -> String {
        format!("{}/blocks/{}/{}", self.base, addr.block_type, addr.name)
    }

    /// One block: the latest version or `version`; secret fields hold their values only
    /// with `reveal` (which the server allows with an API key, or to this machine).
    pub async fn block(&self, addr: &BlockAddress, version: Option<i64>, reveal: bool) -> Result<Block, ClientError> {
        let url = self.block_url(addr);
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(v) = version {
            q.push(("version", v.to_string()));
        }
        if reveal {
            q.push(("reveal", "true".into()));
        }
        self.send(self.http.get(&url).query(&q), &url).await
    }

    /// A block's latest version, revealed, as the Rust type of its block type.
    pub async fn load_block<T: BlockKind>(&self, name: &str) -> Result<T, ClientError> {
        let addr: BlockAddress = format!("{}/{name}", T::TYPE).parse().map_err(ClientError::Block)?;
        let b = self.block(&addr, None, true).await?;
        serde_json::from_value(b.data)
            .map_err(|e| ClientError::Block(format!("block {addr} does not fit {}: {e}", std::any::type_name::<T>())))
    }

    /// Saves `data` as the next version of a block.
    pub async fn put_block(&self, addr: &BlockAddress, data: Value) -> Result<Block, ClientError> {
        let url = self.block_url(addr);
        self.send(self.http.put(&url).json(&json!({ "data": data })), &url)
            .await
    }

    /// Deletes a block and all its versions.
    pub async fn delete_block(&self, addr: &BlockAddress) -> Result<(), ClientError> {
        let url = self.block_url(addr);
        self.send_raw(self.http.delete(&url), &url).await.map(|_| ())
    }

    /// Every block (latest versions, masked), of one type when given, through every page.
    pub async fn blocks(&self, block_type: Option<&str>) -> Result<Vec<Block>, ClientError> {
        let url = format!("{}/blocks", self.base);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = vec![("limit", "1000")];
            if let Some(t) = block_type {
                q.push(("type", t));
            }
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let page: BlockPage = self.send(self.http.get(&url).query(&q), &url).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Every version of a block, newest first (masked).
    pub async fn block_versions(&self, addr: &BlockAddress) -> Result<Vec<Block>, ClientError> {
        let url = format!("{}/versions", self.block_url(addr));
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = vec![("limit", "1000")];
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let page: BlockVersionPage = self.send(self.http.get(&url).query(&q), &url).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Every block type, built-in first.
    pub async fn block_types(&self) -> Result<Vec<BlockType>, ClientError> {
        let url = format!("{}/block_types", self.base);
        let list: BlockTypeList = self.send(self.http.get(&url), &url).await?;
        Ok(list.items)
    }

    /// Registers (or replaces) a block type.
    pub async fn put_block_type(
        &self,
        name: &str,
        schema: Value,
        description: Option<&str>,
    ) -> Result<BlockType, ClientError> {
        let url = format!("{}/block_types/{name}", self.base);
        let body = json!({ "schema": schema, "description": description });
        self.send(self.http.put(&url).json(&body), &url).await
    }

    /// The result store a block names: `s3-bucket/NAME` or `local-file-system/NAME` (the
    /// part after `block:` in `WEIR_RESULTS=block:s3-bucket/NAME`).
    pub async fn resolve_store(&self, spec: &str) -> Result<ResolvedStore, ClientError> {
        let addr: BlockAddress = spec.parse().map_err(ClientError::Block)?;
        match addr.block_type.as_str() {
            "s3-bucket" => {
                let b: S3Bucket = self.load_block(&addr.name).await?;
                Ok(ResolvedStore {
                    location: b.store_url(),
                    credentials: b.credentials,
                })
            }
            "local-file-system" => {
                let b: LocalFileSystem = self.load_block(&addr.name).await?;
                Ok(ResolvedStore {
                    location: b.basepath,
                    credentials: None,
                })
            }
            other => Err(ClientError::Block(format!(
                "block {addr}: a result store is named by an s3-bucket or local-file-system block, not a {other} block"
            ))),
        }
    }
}
