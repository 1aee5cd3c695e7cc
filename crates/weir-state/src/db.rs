use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_tags.sql"),
    include_str!("../migrations/0003_pid_start.sql"),
];

/// A state database error.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("could not create the folder of the state database {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path} was written by a newer weir (schema version {found}, this weir knows {known})")]
    TooNew { path: PathBuf, found: usize, known: usize },
    #[error("state database query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("stored record is malformed: {0}")]
    Malformed(String),
}

/// A connection to the state database, for reading.
pub struct StateDb {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens the database at `path`, creating it and applying migrations as needed.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StateError::Folder {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        // FULL: a committed batch survives an OS crash, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(StateDb {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database; a missing file is an error rather than a new database.
    pub fn open_existing(path: &Path) -> Result<StateDb, StateError> {
        if !path.exists() {
            return Err(StateError::Open {
                path: path.to_path_buf(),
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let open_err = |source| StateError::Open {
        path: path.to_path_buf(),
        source,
    };
    let current: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(open_err)? as usize;
    if current > MIGRATIONS.len() {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    // IMMEDIATE takes the write lock first, so two processes creating the database at once
    // do not both run the migrations.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let current: usize = tx
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(open_err)? as usize;
    for sql in MIGRATIONS.iter().skip(current) {
        tx.execute_batch(sql).map_err(open_err)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)?;
    Ok(())
}
