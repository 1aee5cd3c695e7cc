//! Ids, run states, run records and configuration paths shared by every weir crate.
//!
//! This crate is deliberately small and dependency-light: the SDK, the local state
//! database, the CLI and (later) the server all speak in these types.

pub mod block;
pub mod config;
pub mod deployment;
pub mod duration;
pub mod ids;
pub mod profile;
pub mod record;
pub mod state;
pub mod time;

pub use ids::{FlowRunId, TaskRunId};
pub use record::{CacheStatus, Event, FlowRunRecord, LogRecord, StateEntry, StateRecord, TaskRunRecord};
pub use state::State;
