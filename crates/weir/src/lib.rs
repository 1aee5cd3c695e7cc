//! weir: flows and tasks as plain async Rust functions. weir runs them, records every
//! state, retries what fails, and caches task results by a hash of their inputs in a
//! folder that many processes and machines can share.
//!
//! ```no_run
//! use weir::prelude::*;
//!
//! #[weir::task(cache = "inputs", retries = 2, retry_delay = "500ms", timeout = "10s")]
//! async fn slow_sum(xs: Vec<i64>) -> anyhow::Result<i64> {
//!     tokio::time::sleep(std::time::Duration::from_secs(3)).await;
//!     Ok(xs.iter().sum())
//! }
//!
//! #[weir::task]
//! async fn square(x: i64) -> anyhow::Result<i64> {
//!     Ok(x * x)
//! }
//!
//! #[weir::flow]
//! async fn demo(input: Vec<i64>) -> anyhow::Result<i64> {
//!     let total = slow_sum(input.clone()).await?;
//!     let squares = square.map(input).await?;
//!     Ok(total + squares.iter().sum::<i64>())
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     println!("{}", demo(vec![1, 2, 3]).await?);
//!     Ok(())
//! }
//! ```
//!
//! # Tasks
//!
//! `#[weir::task(...)]` goes on an `async fn` (or on a plain `fn`, which then runs on the
//! blocking thread pool so CPU-bound work never stalls the async runtime) that returns a
//! `Result`. Calling it returns a [`TaskCall`]: `.await` it, [`submit`](TaskCall::submit)
//! it to run concurrently, combine calls with `tokio::join!`, or run one per item with
//! [`MapExt::map`] / [`all`]. Options:
//!
//! | option | meaning |
//! |---|---|
//! | `cache = "inputs"` | cache by the task's path, `cache_version` and inputs (inputs must be `Serialize`, the output `Serialize + DeserializeOwned`) |
//! | `cache = "inputs+source"` | as `inputs`, plus the task's own source: editing the task invalidates its entries |
//! | `cache = "none"` | the default |
//! | `key = my_fn` | cache by `my_fn(&arg1, &arg2, …)`, which returns any `Serialize` value |
//! | `cache_version = "2"` | bump by hand when something the key cannot see changed (a helper function) |
//! | `cache_expiration = "1d"` | entries older than this are recomputed |
//! | `refresh_cache = true` | always recompute and replace the entry (`WEIR_REFRESH_CACHE=1` does it for a whole run) |
//! | `serializer = "msgpack"` | store results as MessagePack instead of JSON (`serde_bytes` fields as `bin`) |
//! | `serializer = "raw"` | store a result that serializes as one byte buffer as the bytes themselves (automatic for `Vec<u8>`, `bytes::Bytes`, `serde_bytes::ByteBuf`) |
//! | `retries = 2`, `retry_delay = "500ms"` | retry failures and timeouts |
//! | `backoff = "exponential"`, `jitter = 0.2` | double the delay each retry; spread it by ±20 % |
//! | `timeout = "10s"` | a longer attempt is cancelled and counts as `TimedOut` |
//! | `blocking` | documents that a plain `fn` runs on the blocking pool (always true for them) |
//! | `name = "..."` | the name shown in records (default: the function name) |
//!
//! A task's inputs must be `Clone` when it has retries (each attempt gets its own copy).
//!
//! # Flows
//!
//! `#[weir::flow]` goes on an `async fn` returning a `Result`. Awaiting the call runs a flow
//! run: its states, its task runs and their logs are recorded; a flow called from a flow is
//! a subflow, linked to its parent. Parameters must be `Serialize + Deserialize + JsonSchema`
//! (`my_flow::schema()` returns their JSON Schema).
//!
//! # Configuration
//!
//! From the environment (see [`Settings::from_env`]) or once with [`configure`].

mod artifact;
mod blocking;
pub mod blocks;
mod cache;
mod console;
mod context;
mod engine;
mod flow;
pub mod logging;
mod map;
mod remote;
mod settings;
mod shell;
mod task;
pub mod testing;

pub use artifact::{Artifact, ArtifactWriter};
pub use blocks::{Block, dataset_root};
pub use cache::{KeyError, KeyMaterial, OnDuplicate};
pub use flow::{FlowCall, FlowError, FlowSpec, RunReport};
pub use map::{DEFAULT_MAP_LIMIT, MapCall, MapExt, all};
pub use settings::{AlreadyConfigured, ProgressMode, Settings, configure};
pub use shell::{Shell, ShellError, shell};
pub use task::{Backoff, CachePolicy, TaskCall, TaskError, TaskHandle, TaskOutput, TaskSpec};
pub use weir_cache::{CacheKey, Format};
pub use weir_dataset::{Dataset, DatasetRoot};
pub use weir_macros::{flow, task};
pub use weir_types::{CacheStatus, FlowRunId, State, TaskRunId};

/// The `schemars` crate weir uses, for `#[schemars(crate = "weir::schemars")]`.
pub use schemars;
/// Flow parameter types implement this (`#[derive(schemars::JsonSchema)]`, with `schemars = "1"`
/// in your `Cargo.toml`, the same way they derive serde's traits).
pub use schemars::JsonSchema;

/// Hive-style datasets on a folder or S3 with an atomic `latest` pointer (the `weir-dataset`
/// crate): `weir::dataset::Format::Parquet`, `weir::dataset::DatasetError`, …
pub mod dataset {
    pub use weir_dataset::*;
}

/// `use weir::prelude::*;` brings in what flows and tasks need.
pub mod prelude {
    pub use crate::{MapExt, all, flow, task};
}

#[doc(hidden)]
pub mod __private {
    use futures::future::BoxFuture;
    use serde::Serialize;

    pub use crate::cache::{KeyMaterial, KeyPathClaim};
    pub use schemars;
    pub use serde;
    pub use serde_json;

    pub fn digest<T: Serialize + ?Sized>(value: &T) -> Result<[u8; 32], weir_cache::canonical::CanonicalError> {
        weir_cache::canonical::digest(value)
    }

    /// The key path of a task whose module is `module_path` and whose marker type the
    /// compiler calls `marker` (see `TaskSpec::key_path`).
    ///
    /// A task at module level keeps `module_path` (so its keys never change); one nested in
    /// a function gets `module_path@` plus its scope, which names the enclosing functions.
    /// The scope is the compiler's `type_name`, whose format may change between compiler
    /// versions: nested tasks' keys may then change once (a miss, never a wrong hit).
    pub fn task_key_path(module_path: &str, marker: &str) -> String {
        let scope = marker.strip_suffix("::__WeirTaskMarker").unwrap_or(marker);
        // `type_name` writes `r#match` as `match`.
        if scope == module_path || scope == module_path.replace("r#", "") {
            module_path.to_string()
        } else {
            format!("{module_path}@{scope}")
        }
    }

    pub fn boxed<T, F>(f: F) -> BoxFuture<'static, anyhow::Result<T>>
    where
        F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        Box::pin(f)
    }

    /// Runs a blocking task body on a weir thread (see `blocking.rs`), inside its task
    /// run's scope.
    pub fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, anyhow::Result<T>> {
        Box::pin(async move {
            let scope = crate::context::current().unwrap_or_default();
            let guard = scope.task.map(|(id, _)| crate::blocking::register(id));
            let (tx, rx) = futures::channel::oneshot::channel();
            let job = move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::context::with_blocking_scope(scope, f)
                }));
                let _ = tx.send(result);
                drop(guard);
            };
            if let Err(e) = crate::blocking::spawn(Box::new(job)) {
                return Err(anyhow::anyhow!("could not start a thread for a blocking task: {e}"));
            }
            match rx.await {
                Ok(Ok(r)) => r,
                // Re-raised so the engine records the task run as Crashed, like an async panic.
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => Err(anyhow::anyhow!("blocking task did not finish")),
            }
        })
    }

    /// The attempt of a task without retries, asked for a second time (cannot happen).
    pub fn already_ran<T>() -> BoxFuture<'static, anyhow::Result<T>> {
        Box::pin(async { Err(anyhow::anyhow!("internal: task inputs were already consumed")) })
    }

    pub fn params_json<T: Serialize>(params: &T) -> Result<serde_json::Value, String> {
        serde_json::to_value(params).map_err(|e| e.to_string())
    }

    pub fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(serde_json::Value::Null)
    }
}
