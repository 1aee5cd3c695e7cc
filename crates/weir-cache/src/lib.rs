//! Cache keys over canonically encoded inputs, and the result store they index.
//!
//! - [`canonical`]: a byte encoding of any `Serialize` value that is the same in every
//!   process (sorted maps, normalised floats).
//! - [`key`]: the cache key of a task call: BLAKE3 over the task's path, its code version
//!   and the digests of its inputs.
//! - [`store`]: the result store abstraction, its entry metadata, and the local folder
//!   backend ([`FolderStore`]) that also serves shared mounts (NFS, JuiceFS).
//! - [`format`]: how results become bytes (JSON or MessagePack).

pub mod canonical;
pub mod format;
pub mod key;
pub mod store;

pub use format::Format;
pub use key::{CacheKey, InputDigest, KeyParts};
pub use store::{EntryMeta, FolderStore, Lookup, PutMode, PutOutcome, ResultStore, StoreError};
