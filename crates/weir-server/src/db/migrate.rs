//! The schema, migrated at start: numbered SQL files run once each, in one transaction.

use sqlx::Row;

use super::{Db, Kind};

impl Db {
    pub(super) async fn migrate(&self) -> Result<(), sqlx::Error> {
        let sequence_key = match self.kind {
            Kind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Kind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let migrations = [
            (
                1,
                include_str!("../../migrations/0001_init.sql").replace("{{SEQUENCE_KEY}}", sequence_key),
            ),
            (2, include_str!("../../migrations/0002_list_indexes.sql").to_string()),
            (3, include_str!("../../migrations/0003_deployments.sql").to_string()),
            (4, include_str!("../../migrations/0004_blocks.sql").to_string()),
        ];
        sqlx::query("CREATE TABLE IF NOT EXISTS weir_migrations (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        if self.kind == Kind::Postgres {
            // One migrating server at a time.
            sqlx::query("LOCK TABLE weir_migrations IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let done: Vec<i64> = sqlx::query("SELECT version FROM weir_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for (version, sql) in &migrations {
            if done.contains(version) {
                continue;
            }
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // Our own migration text with a fixed substitution: no outside input.
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO weir_migrations (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}
