//! Run metadata in SQLite or PostgreSQL, through one set of queries.
//!
//! sqlx's `Any` driver runs the same SQL on both: `$n` parameters (SQLite reads them as
//! numbered parameters as long as each first appears in order), `ON CONFLICT` upserts,
//! BIGINT microsecond times, ids and JSON as TEXT. Only the migrations differ per database.
//!
//! One module per table, each an `impl Db` block: [`flow_runs`], [`task_runs`], [`events`]
//! (a batch of snapshots, states and log lines, written together), [`flows`], [`variables`],
//! [`blocks`] (configuration documents, secrets encrypted);
//! [`rules`] holds the orchestration rules, [`migrate`] runs the schema and [`query`] builds
//! list queries and decodes rows. Errors are [`DbError`]s, which
//! `crate::error` turns into HTTP answers.

mod blocks;
mod claims;
mod deployments;
mod events;
mod flow_runs;
mod flows;
mod migrate;
mod query;
mod rules;
mod task_runs;
mod variables;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

pub use blocks::{RotateError, StoredBlock, StoredBlockType, StoredSecret};
pub use claims::{CrashOutcome, WorkerSweep};
pub use deployments::{NewRun, PutOutcome};
pub use events::Refusal;
pub use flow_runs::FlowRunFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub kind: Kind,
    /// SQLite has one writer at a time; writers queue here instead of in SQLite's busy
    /// handler, which sleeps (milliseconds each) between its tries.
    pub(crate) write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Where it connected, for PostgreSQL's `LISTEN` connection.
    pub(crate) url: std::sync::Arc<str>,
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No such row (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be answered as given (a bad cursor): the client's mistake.
    #[error("{message}")]
    Invalid { message: String, field: &'static str },
    /// The request conflicts with the database's state (the message says how).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// The final states, as an SQL list.
pub(crate) const FINAL: &str = "('Completed','Cached','Failed','TimedOut','Cancelled','Crashed')";
/// The states of a claimed run that has not ended, as an SQL list.
pub(crate) const CLAIMED: &str = "('Pending','Running','Retrying')";
/// The states of a run waiting for a worker, as an SQL list.
pub(crate) const WAITING: &str = "('Scheduled','Late')";

impl Db {
    /// The lock every SQLite writer takes (SQLite has one writer at a time); none on PostgreSQL.
    pub(crate) async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.kind {
            Kind::Sqlite => Some(self.write_lock.lock().await),
            Kind::Postgres => None,
        }
    }

    /// Connects to `url` (`sqlite://path` or `postgres://…`) and migrates the schema.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Kind::Postgres
        } else if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL '{url}' (expected sqlite://PATH or postgres://…)").into(),
            ));
        };
        let original = url;
        let url = match kind {
            // Create the file if it does not exist.
            Kind::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == Kind::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == Kind::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: a commit survives a
                        // killed server (the WAL is written before the commit returns).
                        sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous=NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout=10000").execute(&mut *conn).await?;
                        // 64 MiB of page cache per connection (the default is 2 MiB): the
                        // task-run indexes an ingest batch updates stay in memory.
                        sqlx::query("PRAGMA cache_size=-65536").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA temp_store=MEMORY").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = Db {
            pool,
            kind,
            write_lock: Default::default(),
            url: original.into(),
        };
        db.migrate().await?;
        Ok(db)
    }
}
