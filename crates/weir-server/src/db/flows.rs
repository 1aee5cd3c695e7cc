//! The `flows` table: every flow name the server has seen.

use sqlx::Row;

use super::{Db, DbError};

impl Db {
    /// Flows by name, `limit` after `after` (a name).
    pub async fn flows(&self, after: &str, limit: usize) -> Result<Vec<(String, String, i64)>, DbError> {
        let rows = sqlx::query("SELECT name, path, created_at FROM flows WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("path")?, r.try_get("created_at")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
