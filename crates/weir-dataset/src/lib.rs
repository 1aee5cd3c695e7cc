//! Hive-style datasets on a folder or on S3, laid out so a program in any language finds them:
//!
//! ```text
//! ROOT/<format>/dataset=<name>/<key>=<value>/…/data.<ext>     one file per partition
//! ROOT/latest/dataset=<name>/latest.json                     the last successful write
//! ```
//!
//! `<format>` and `<ext>` are `csv`, `parquet` or `jsonl`. `latest.json` is
//! `{"path": "csv/dataset=x/rundate=2022-10-23/data.csv", "format": "csv",
//! "partitions": [["rundate", "2022-10-23"]], "size": 1234}`; `path` is relative to ROOT.
//!
//! A partition file and `latest.json` are each replaced whole: on a folder written to
//! `ROOT/.weir-tmp/`, fsynced and renamed into place; on S3 a single PUT (or a multipart
//! upload, which becomes visible only when completed). `latest.json` is written only after
//! the data it names is complete, so a reader following it never sees half of a write.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weir_dataset::DatasetError> {
//! use weir_dataset::{Dataset, DatasetRoot, Format};
//! let root = DatasetRoot::parse("s3://willowdata/datasets?region=eu-west-1")?;
//! let ds = Dataset::new("my_cool_dataset").format(Format::Csv).partition("rundate", "2022-10-23");
//! root.write(&ds, "a,b\n1,2\n").await?;
//! let latest = root.read_latest("my_cool_dataset").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

#[cfg(feature = "arrow")]
pub mod arrow;
mod folder;
mod validate;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

pub use validate::validate_component;

/// The pointer file's name inside `latest/dataset=<name>/`.
pub const LATEST_FILE: &str = "latest.json";
/// Chunks a stream is uploaded in on object storage (multipart parts).
const CHUNK: usize = 8 * 1024 * 1024;

/// A dataset file's format: the folder it lives under and its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
    /// JSON lines (one JSON value a line), extension `jsonl`.
    #[serde(rename = "jsonl")]
    JsonLines,
}

impl Format {
    /// `csv`, `parquet` or `jsonl`: the top folder and the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::JsonLines => "jsonl",
        }
    }
}

/// What went wrong with a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("dataset root {0}")]
    Config(String),
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("dataset '{0}' has no latest write yet")]
    NoLatest(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Object {
        path: String,
        #[source]
        source: opendal::Error,
    },
    /// Batches that could not be encoded or decoded (feature `arrow`).
    #[error("{format}: {message}")]
    Encoding { format: &'static str, message: String },
    #[error("{path}: unreadable pointer: {source}")]
    Pointer {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One partition of a dataset: a name, a format and `key=value` partition pairs (in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    name: String,
    format: Format,
    partitions: Vec<(String, String)>,
}

impl Dataset {
    /// A dataset in CSV with no partitions yet.
    pub fn new(name: impl Into<String>) -> Dataset {
        Dataset {
            name: name.into(),
            format: Format::Csv,
            partitions: Vec::new(),
        }
    }

    pub fn format(mut self, format: Format) -> Dataset {
        self.format = format;
        self
    }

    /// Adds a partition level (`rundate=2022-10-23`), nested under the previous ones.
    pub fn partition(mut self, key: impl Into<String>, value: impl Into<String>) -> Dataset {
        self.partitions.push((key.into(), value.into()));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn partitions(&self) -> &[(String, String)] {
        &self.partitions
    }

    /// The data file's path relative to the root, after checking every name and value.
    pub fn path(&self) -> Result<String, DatasetError> {
        validate::validate_component("dataset name", &self.name, true)?;
        let mut path = format!("{}/dataset={}", self.format.as_str(), self.name);
        for (k, v) in &self.partitions {
            validate::validate_component("partition name", k, true)?;
            validate::validate_component("partition value", v, false)?;
            path.push_str(&format!("/{k}={v}"));
        }
        path.push_str(&format!("/data.{}", self.format.as_str()));
        Ok(path)
    }
}

/// An S3 root for [`DatasetRoot::s3`] (what an `s3-bucket` block holds).
#[derive(Clone, Default)]
pub struct S3Root {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Access key id and secret.
    pub credentials: Option<(String, String)>,
}

/// What `latest/dataset=<name>/latest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    /// The data file, relative to the root.
    pub path: String,
    pub format: Format,
    pub partitions: Vec<(String, String)>,
    pub size: u64,
}

enum Backend {
    Folder(folder::Folder),
    Object(opendal::Operator),
}

/// Where datasets live: a local folder, or a bucket and prefix on S3.
pub struct DatasetRoot {
    backend: Backend,
    /// The root as given (for messages and [`DatasetRoot::location`]).
    location: String,
}

impl DatasetRoot {
    /// A folder on this machine (or a shared mount).
    pub fn folder(path: impl Into<PathBuf>) -> DatasetRoot {
        let path = path.into();
        DatasetRoot {
            location: path.display().to_string(),
            backend: Backend::Folder(folder::Folder::new(path)),
        }
    }

    /// An OpenDAL operator (any service it supports) as the root.
    pub fn object(op: opendal::Operator, location: impl Into<String>) -> DatasetRoot {
        DatasetRoot {
            backend: Backend::Object(op),
            location: location.into(),
        }
    }

    /// A folder path, `file:///path`, or `s3://bucket/prefix?region=…&endpoint=…` (path-style
    /// for an endpoint; credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
    pub fn parse(location: &str) -> Result<DatasetRoot, DatasetError> {
        if !location.contains("://") {
            return Ok(DatasetRoot::folder(location));
        }
        let config = |why: String| DatasetError::Config(why);
        let url = url::Url::parse(location).map_err(|e| config(format!("'{location}' is not a URL: {e}")))?;
        let query = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|_| config(format!("'{location}' is not a local file URL")))?;
                Ok(DatasetRoot::folder(path))
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| config(format!("'{location}' names no bucket (s3://bucket/prefix)")))?;
                let endpoint = query("endpoint").or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                let credentials = match (
                    std::env::var("AWS_ACCESS_KEY_ID"),
                    std::env::var("AWS_SECRET_ACCESS_KEY"),
                ) {
                    (Ok(id), Ok(secret)) => Some((id, secret)),
                    _ => None,
                };
                DatasetRoot::s3(S3Root {
                    bucket: bucket.to_string(),
                    prefix: url.path().trim_matches('/').to_string(),
                    endpoint,
                    region: query("region"),
                    credentials,
                })
            }
            other => Err(config(format!(
                "'{location}': unsupported scheme '{other}' (a path, file:// or s3://)"
            ))),
        }
    }

    /// A bucket and prefix on S3 (or an S3-compatible server at `endpoint`, path-style).
    /// Without `credentials` the `AWS_*` variables apply; the region defaults to `AWS_REGION`,
    /// else `us-east-1`.
    pub fn s3(root: S3Root) -> Result<DatasetRoot, DatasetError> {
        let location = format!("s3://{}/{}", root.bucket, root.prefix);
        let mut b = opendal::services::S3::default()
            .bucket(&root.bucket)
            .root(&format!("/{}", root.prefix))
            .region(
                &root
                    .region
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into()),
            )
            // Only what we are told: no instance metadata probing on a laptop.
            .disable_ec2_metadata();
        if let Some(endpoint) = &root.endpoint {
            b = b.endpoint(endpoint);
        }
        if let Some((id, secret)) = &root.credentials {
            b = b.access_key_id(id).secret_access_key(secret);
        }
        let op = opendal::Operator::new(b)
            .map_err(|e| DatasetError::Config(format!("cannot open '{location}': {e}")))?
            .layer(opendal::layers::RetryLayer::new());
        Ok(DatasetRoot::object(op, location))
    }

    /// `WEIR_DATASETS` (a path or URL), else `$WEIR_HOME/datasets` (`~/.weir/datasets`).
    pub fn from_env() -> Result<DatasetRoot, DatasetError> {
        if let Ok(loc) = std::env::var("WEIR_DATASETS")
            && !loc.is_empty()
        {
            return DatasetRoot::parse(&loc);
        }
        let home = std::env::var_os("WEIR_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".weir")))
            .ok_or_else(|| DatasetError::Config("unknown: set WEIR_DATASETS or HOME".into()))?;
        Ok(DatasetRoot::folder(home.join("datasets")))
    }

    /// The root as given.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Where a partition's file is, for another program: a local path or an `s3://` URL.
    pub fn locate(&self, ds: &Dataset) -> Result<String, DatasetError> {
        Ok(format!("{}/{}", self.location.trim_end_matches('/'), ds.path()?))
    }

    /// Writes a partition from bytes (replacing it whole), then points `latest` at it.
    pub async fn write(&self, ds: &Dataset, data: impl Into<Bytes>) -> Result<Latest, DatasetError> {
        let data: Bytes = data.into();
        self.write_stream(ds, futures::stream::iter([Ok::<_, std::io::Error>(data)]))
            .await
    }

    /// Writes a partition from a local file.
    pub async fn write_file(&self, ds: &Dataset, path: impl AsRef<Path>) -> Result<Latest, DatasetError> {
        let path = path.as_ref();
        let file = tokio::fs::File::open(path).await.map_err(|source| DatasetError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let stream = futures::stream::unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        self.write_stream(ds, stream).await
    }

    /// Writes a partition from a stream of byte chunks. Nothing is visible until the
    /// stream ended without error; then `latest` points at the partition.
    pub async fn write_stream<S>(&self, ds: &Dataset, stream: S) -> Result<Latest, DatasetError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let path = ds.path()?;
        let size = match &self.backend {
            Backend::Folder(f) => f.write_stream(&path, stream).await?,
            Backend::Object(op) => object_write(op, &path, stream).await?,
        };
        let latest = Latest {
            path,
            format: ds.format,
            partitions: ds.partitions.clone(),
            size,
        };
        let pointer = latest_path(&ds.name);
        let json = serde_json::to_vec_pretty(&latest).map_err(|source| DatasetError::Pointer {
            path: pointer.clone(),
            source,
        })?;
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(json))]);
        match &self.backend {
            Backend::Folder(f) => f.write_stream(&pointer, body).await?,
            Backend::Object(op) => object_write(op, &pointer, body).await?,
        };
        Ok(latest)
    }

    /// Reads a partition whole.
    pub async fn read(&self, ds: &Dataset) -> Result<Bytes, DatasetError> {
        self.read_path(&ds.path()?).await
    }

    async fn read_path(&self, path: &str) -> Result<Bytes, DatasetError> {
        match &self.backend {
            Backend::Folder(f) => f.read(path).await,
            Backend::Object(op) => match op.read(path).await {
                Ok(buf) => Ok(buf.to_bytes()),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Err(DatasetError::NotFound {
                    path: format!("{}/{path}", self.location),
                }),
                Err(source) => Err(DatasetError::Object {
                    path: path.to_string(),
                    source,
                }),
            },
        }
    }

    /// What `latest` points at for dataset `name`; `None` before its first write.
    pub async fn latest(&self, name: &str) -> Result<Option<Latest>, DatasetError> {
        validate::validate_component("dataset name", name, true)?;
        let pointer = latest_path(name);
        let bytes = match self.read_path(&pointer).await {
            Ok(b) => b,
            Err(DatasetError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| DatasetError::Pointer { path: pointer, source })
    }

    /// Reads the partition `latest` points at.
    pub async fn read_latest(&self, name: &str) -> Result<(Latest, Bytes), DatasetError> {
        let latest = self
            .latest(name)
            .await?
            .ok_or_else(|| DatasetError::NoLatest(name.to_string()))?;
        let data = self.read_path(&latest.path).await?;
        Ok((latest, data))
    }

    /// Every partition of dataset `name` in `format`, as its `key=value` pairs, sorted.
    pub async fn partitions(&self, name: &str, format: Format) -> Result<Vec<Vec<(String, String)>>, DatasetError> {
        validate::validate_component("dataset name", name, true)?;
        let dir = format!("{}/dataset={name}/", format.as_str());
        let file = format!("data.{}", format.as_str());
        let paths = match &self.backend {
            Backend::Folder(f) => f.list(&dir).await?,
            Backend::Object(op) => {
                let mut out = Vec::new();
                let mut lister = op
                    .lister_with(&dir)
                    .recursive(true)
                    .await
                    .map_err(|source| DatasetError::Object {
                        path: dir.clone(),
                        source,
                    })?;
                while let Some(entry) = lister.next().await {
                    let entry = entry.map_err(|source| DatasetError::Object {
                        path: dir.clone(),
                        source,
                    })?;
                    out.push(entry.path().to_string());
                }
                out
            }
        };
        let mut parts: Vec<Vec<(String, String)>> = paths
            .iter()
            .filter_map(|p| p.strip_prefix(&dir))
            .filter_map(|rest| rest.strip_suffix(&file))
            .filter_map(|levels| {
                levels
                    .split('/')
                    .filter(|l| !l.is_empty())
                    .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect::<Option<Vec<_>>>()
            })
            .collect();
        parts.sort();
        Ok(parts)
    }
}

fn latest_path(name: &str) -> String {
    format!("latest/dataset={name}/{LATEST_FILE}")
}

/// One PUT for a single chunk, a multipart upload otherwise; the object appears only when
/// the upload completes, and an aborted stream leaves nothing.
async fn object_write<S>(op: &opendal::Operator, path: &str, stream: S) -> Result<u64, DatasetError>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let err = |source| DatasetError::Object {
        path: path.to_string(),
        source,
    };
    let mut writer = op.writer_with(path).chunk(CHUNK).await.map_err(err)?;
    let mut size = 0u64;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(source) => {
                let _ = writer.abort().await;
                return Err(DatasetError::Io {
                    path: path.to_string(),
                    source,
                });
            }
        };
        size += chunk.len() as u64;
        if let Err(e) = writer.write(chunk).await {
            let _ = writer.abort().await;
            return Err(err(e));
        }
    }
    writer.close().await.map_err(err)?;
    Ok(size)
}
