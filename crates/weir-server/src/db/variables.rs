//! The `variables` table: small named JSON values.

use sqlx::Row;

use super::{Db, DbError};

impl Db {
    pub async fn put_variable(&self, name: &str, value: &serde_json::Value, now: i64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO variables (name, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(value.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn variable(&self, name: &str) -> Result<(serde_json::Value, i64), DbError> {
        let row = sqlx::query("SELECT value, updated_at FROM variables WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("no variable '{name}'")))?;
        let raw: String = row.try_get("value")?;
        Ok((
            serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
            row.try_get("updated_at")?,
        ))
    }

    /// Variables by name, `limit` after `after` (a name).
    pub async fn variables(&self, after: &str, limit: usize) -> Result<Vec<(String, serde_json::Value, i64)>, DbError> {
        let rows = sqlx::query("SELECT name, value, updated_at FROM variables WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let raw: String = r.try_get("value")?;
                Ok((
                    r.try_get("name")?,
                    serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
                    r.try_get("updated_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    pub async fn delete_variable(&self, name: &str) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM variables WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
