//! The `blocks`, `block_types` and `block_secret_key` tables: every saved version of every
//! block (secret fields encrypted, see `crate::secrets`), registered block types, and the
//! fingerprint of the key the secrets are encrypted with.
//!
//! Every block write and a key rotation first lock the one `block_secret_key` row (an
//! `UPDATE` that changes nothing, on PostgreSQL a row lock held to commit; SQLite has one
//! writer anyway). So saves of one block get consecutive versions, and a save never lands
//! encrypted with a key that a rotation has just replaced.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Db, DbError, Kind};
use crate::secrets::{SecretError, SecretKey, aad};

/// One encrypted secret field of a stored version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSecret {
    /// JSON Pointer into the document.
    pub path: String,
    /// base64 of nonce ‖ ciphertext of the field's JSON.
    pub ct: String,
}

/// A stored version of a block: its document with secret fields masked, and their
/// encrypted values.
#[derive(Clone, Debug)]
pub struct StoredBlock {
    pub block_type: String,
    pub name: String,
    pub version: i64,
    pub data: serde_json::Value,
    pub secrets: Vec<StoredSecret>,
    pub created_at: i64,
}

/// A registered block type.
#[derive(Clone, Debug)]
pub struct StoredBlockType {
    pub name: String,
    pub schema: serde_json::Value,
    pub description: Option<String>,
}

/// Why a key rotation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "the stored secrets are not encrypted with the current key (its fingerprint {given}; the database's is {stored}): nothing was changed"
    )]
    WrongKey { given: String, stored: String },
    #[error("block {block}: {source}; nothing was changed")]
    Secret { block: String, source: SecretError },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLS: &str = "block_type, name, version, data, secrets, created_at";

fn decode(r: &sqlx::any::AnyRow) -> Result<StoredBlock, sqlx::Error> {
    let data: String = r.try_get("data")?;
    let secrets: String = r.try_get("secrets")?;
    Ok(StoredBlock {
        block_type: r.try_get("block_type")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        data: serde_json::from_str(&data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        secrets: serde_json::from_str(&secrets).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        created_at: r.try_get("created_at")?,
    })
}

impl Db {
    /// Records `key` as the secrets' key if none is recorded yet; false when another key is.
    pub async fn check_secret_key(&self, key: &SecretKey) -> Result<bool, sqlx::Error> {
        let fp = key.fingerprint();
        sqlx::query("INSERT INTO block_secret_key (id, fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(fp.clone())
            .execute(&self.pool)
            .await?;
        let stored: String = sqlx::query("SELECT fingerprint FROM block_secret_key WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(stored == fp)
    }

    /// The fingerprint of the key the stored secrets are encrypted with, if recorded.
    pub async fn stored_key_fingerprint(&self) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT fingerprint FROM block_secret_key WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()
    }

    /// Locks the key row inside `tx`, if it holds `fingerprint`; else returns the stored one.
    async fn lock_key(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        fingerprint: &str,
    ) -> Result<Result<(), String>, sqlx::Error> {
        sqlx::query("INSERT INTO block_secret_key (id, fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(fingerprint.to_string())
            .execute(&mut **tx)
            .await?;
        let locked =
            sqlx::query("UPDATE block_secret_key SET fingerprint = fingerprint WHERE id = 1 AND fingerprint = $1")
                .bind(fingerprint.to_string())
                .execute(&mut **tx)
                .await?
                .rows_affected();
        if locked == 1 {
            return Ok(Ok(()));
        }
        let stored: String = sqlx::query("SELECT fingerprint FROM block_secret_key WHERE id = 1")
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
        Ok(Err(stored))
    }

    /// Saves the next version of `block_type/name`. `build` gets the latest version (if
    /// any) and the new version's number, and returns the masked document and encrypted
    /// secrets to store; its error aborts the save.
    pub async fn save_block<E: From<DbError>>(
        &self,
        block_type: &str,
        name: &str,
        key: &SecretKey,
        now: i64,
        build: impl FnOnce(Option<&StoredBlock>, i64) -> Result<(serde_json::Value, Vec<StoredSecret>), E>,
    ) -> Result<StoredBlock, E> {
        let db = |e: sqlx::Error| E::from(DbError::from(e));
        let _one_writer = match self.kind {
            Kind::Sqlite => Some(self.write_lock.lock().await),
            Kind::Postgres => None,
        };
        let mut tx = self.pool.begin().await.map_err(db)?;
        if let Err(stored) = Db::lock_key(&mut tx, &key.fingerprint()).await.map_err(db)? {
            return Err(E::from(DbError::Conflict(format!(
                "the stored secrets are encrypted with another key (fingerprint {stored}; this server's is {}): the key was rotated while this server ran; restart it with the current key",
                key.fingerprint()
            ))));
        }
        let latest = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM blocks WHERE block_type = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
        )))
        .bind(block_type.to_string())
        .bind(name.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|r| decode(&r))
        .transpose()
        .map_err(db)?;
        let version = latest.as_ref().map_or(1, |b| b.version + 1);
        let (data, secrets) = build(latest.as_ref(), version)?;
        let secrets_json = serde_json::to_string(&secrets).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO blocks (block_type, name, version, data, secrets, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(block_type.to_string())
        .bind(name.to_string())
        .bind(version)
        .bind(data.to_string())
        .bind(secrets_json)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(StoredBlock {
            block_type: block_type.to_string(),
            name: name.to_string(),
            version,
            data,
            secrets,
            created_at: now,
        })
    }

    /// One version of a block (the latest when `version` is `None`).
    pub async fn block(&self, block_type: &str, name: &str, version: Option<i64>) -> Result<StoredBlock, DbError> {
        let row = match version {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM blocks WHERE block_type = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
                )))
                .bind(block_type.to_string())
                .bind(name.to_string())
                .fetch_optional(&self.pool)
                .await?
            }
            Some(v) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM blocks WHERE block_type = $1 AND name = $2 AND version = $3"
                )))
                .bind(block_type.to_string())
                .bind(name.to_string())
                .bind(v)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        match row {
            Some(r) => Ok(decode(&r)?),
            None => {
                let any = version.is_some()
                    && sqlx::query("SELECT 1 FROM blocks WHERE block_type = $1 AND name = $2 LIMIT 1")
                        .bind(block_type.to_string())
                        .bind(name.to_string())
                        .fetch_optional(&self.pool)
                        .await?
                        .is_some();
                Err(DbError::NotFound(match (version, any) {
                    (Some(v), true) => format!("block {block_type}/{name} has no version {v}"),
                    _ => format!("no block {block_type}/{name}"),
                }))
            }
        }
    }

    /// The latest version of each block, by type then name, after the `(type, name)` given;
    /// of one type when `only_type` is set.
    pub async fn blocks(
        &self,
        only_type: Option<&str>,
        after: (&str, &str),
        limit: usize,
    ) -> Result<Vec<StoredBlock>, DbError> {
        let type_filter = if only_type.is_some() {
            "AND b.block_type = $4"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLS} FROM blocks b WHERE (b.block_type, b.name) > ($1, $2) {type_filter} \
             AND b.version = (SELECT MAX(m.version) FROM blocks m WHERE m.block_type = b.block_type AND m.name = b.name) \
             ORDER BY b.block_type, b.name LIMIT $3"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.0.to_string())
            .bind(after.1.to_string())
            .bind(limit as i64);
        if let Some(t) = only_type {
            q = q.bind(t.to_string());
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// A block's versions, newest first, older than `before`.
    pub async fn block_versions(
        &self,
        block_type: &str,
        name: &str,
        before: i64,
        limit: usize,
    ) -> Result<Vec<StoredBlock>, DbError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM blocks WHERE block_type = $1 AND name = $2 AND version < $3 ORDER BY version DESC LIMIT $4"
        )))
        .bind(block_type.to_string())
        .bind(name.to_string())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Deletes a block with all its versions; false if there was none.
    pub async fn delete_block(&self, block_type: &str, name: &str) -> Result<bool, DbError> {
        let _one_writer = match self.kind {
            Kind::Sqlite => Some(self.write_lock.lock().await),
            Kind::Postgres => None,
        };
        let r = sqlx::query("DELETE FROM blocks WHERE block_type = $1 AND name = $2")
            .bind(block_type.to_string())
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn block_type(&self, name: &str) -> Result<Option<StoredBlockType>, DbError> {
        let row = sqlx::query("SELECT name, schema, description FROM block_types WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| decode_type(&r)).transpose()?)
    }

    /// Registered types, by name (at most `limit`).
    pub async fn block_types(&self, limit: usize) -> Result<Vec<StoredBlockType>, DbError> {
        let rows = sqlx::query("SELECT name, schema, description FROM block_types ORDER BY name LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(decode_type).collect::<Result<_, _>>()?)
    }

    pub async fn put_block_type(
        &self,
        name: &str,
        schema: &serde_json::Value,
        description: Option<&str>,
        now: i64,
    ) -> Result<(), DbError> {
        let _one_writer = match self.kind {
            Kind::Sqlite => Some(self.write_lock.lock().await),
            Kind::Postgres => None,
        };
        sqlx::query(
            "INSERT INTO block_types (name, schema, description, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (name) DO UPDATE SET schema = excluded.schema, description = excluded.description,
             updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(schema.to_string())
        .bind(description.map(str::to_string))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Re-encrypts every stored secret from `old` to `new` in one transaction, and records
    /// `new` as the key. Returns how many secret fields were re-encrypted.
    pub async fn rotate_secret_key(&self, old: &SecretKey, new: &SecretKey) -> Result<usize, RotateError> {
        let _one_writer = match self.kind {
            Kind::Sqlite => Some(self.write_lock.lock().await),
            Kind::Postgres => None,
        };
        let mut tx = self.pool.begin().await?;
        if let Err(stored) = Db::lock_key(&mut tx, &old.fingerprint()).await? {
            return Err(RotateError::WrongKey {
                given: old.fingerprint(),
                stored,
            });
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM blocks WHERE secrets <> '[]'"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let mut count = 0;
        for row in &rows {
            let mut b = decode(row)?;
            for s in &mut b.secrets {
                let place = aad(&b.block_type, &b.name, b.version, &s.path);
                let plain = old.decrypt(&s.ct, &place).map_err(|source| RotateError::Secret {
                    block: format!("{}/{} version {}", b.block_type, b.name, b.version),
                    source,
                })?;
                s.ct = new.encrypt(&plain, &place);
                count += 1;
            }
            sqlx::query("UPDATE blocks SET secrets = $1 WHERE block_type = $2 AND name = $3 AND version = $4")
                .bind(serde_json::to_string(&b.secrets).unwrap_or_else(|_| "[]".into()))
                .bind(b.block_type.clone())
                .bind(b.name.clone())
                .bind(b.version)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE block_secret_key SET fingerprint = $1 WHERE id = 1")
            .bind(new.fingerprint())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(count)
    }
}

fn decode_type(r: &sqlx::any::AnyRow) -> Result<StoredBlockType, sqlx::Error> {
    let schema: String = r.try_get("schema")?;
    Ok(StoredBlockType {
        name: r.try_get("name")?,
        schema: serde_json::from_str(&schema).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        description: r.try_get("description")?,
    })
}
