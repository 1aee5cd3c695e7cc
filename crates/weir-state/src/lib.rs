//! The embedded run-state database: flow runs, task runs, state history and logs in SQLite.
//!
//! Writing goes through a [`Writer`]: a background thread that takes [`Event`]s from a
//! channel and commits them in batches (one transaction per batch), so recording a task's
//! states costs the engine a channel send. [`Writer::flush`] resolves once everything sent
//! before it is committed. Reading ([`StateDb`]) is plain synchronous SQL for the CLI.
//!
//! The database is opened in WAL mode with a busy timeout, so several processes sharing one
//! `WEIR_HOME` can record at once.

mod crash;
mod db;
mod read;
mod writer;

pub use crash::{process_alive, process_start_time};
pub use db::{StateDb, StateError};
pub use read::{FlowRunFilter, RunLookupError};
pub use writer::{Event, FlushError, Writer, WriterOptions};
