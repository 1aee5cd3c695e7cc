//! Cache keys over canonically encoded inputs, and the result store they index.
//!
//! - [`canonical`]: a byte encoding of any `Serialize` value that is the same in every
//!   process (sorted maps, normalised floats).
//! - [`key`]: the cache key of a task call: BLAKE3 over the task's path, its code version
//!   and the digests of its inputs.
//! - [`store`]: the result store layout (manifests, content-addressed blobs, leases) over
//!   any [`backend::Backend`]: a [`folder`] (local disk, NFS, JuiceFS) or [`object`]
//!   storage (S3, memory, GCS, Azure). [`tier`] puts a local folder in front of a remote
//!   store; [`location`] opens any of them from a URL.
//! - [`format`]: how results become bytes (JSON or MessagePack).

// The store reads files other processes (and people) may truncate or rewrite: no mapped
// memory, no `unsafe` at all (issue 7, item 9), enforced by the compiler.
#![forbid(unsafe_code)]

pub mod backend;
pub mod canonical;
pub mod filehash;
pub mod folder;
pub mod format;
pub mod key;
pub mod location;
pub mod object;
pub mod store;
pub mod stream;
pub mod tier;

pub use format::Format;
pub use key::{CacheKey, InputDigest, KeyParts};
pub use location::{OpenOptions, open, open_with_credentials};
pub use store::{
    BLOB_REFRESH_AGE_MICROS, Compression, EntryMeta, FileLookup, GcOptions, GcReport, Lease, LeaseOutcome, LeaseRecord,
    Lookup, MIN_REUPLOAD_GRACE_MICROS, PutMode, PutOutcome, Renewal, ResultStore, Store, StoreError, StoreStats,
    StoredFiles, named_lease_key, validate_name,
};
