//! State and log events: the `flow_run_states` rows they add and the `logs` table.

use sqlx::Row;
use weir_types::{FlowRunId, LogRecord, StateRecord};

use super::query::{bad_row, opt};
use super::{Db, DbError};

impl Db {
    pub async fn insert_state(&self, s: &StateRecord) -> Result<(), DbError> {
        let Some(flow) = s.flow_run_id else { return Ok(()) };
        if s.task_run_id.is_some() {
            // Task run states travel inside task run snapshots.
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(flow.to_string())
        .bind(s.state.as_str())
        .bind(s.at)
        .bind(s.message.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts a log line once: a client retrying a batch does not duplicate it.
    pub async fn insert_log(&self, l: &LogRecord) -> Result<(), DbError> {
        let dedupe = blake3::hash(serde_json::to_string(l).map_err(bad_row)?.as_bytes())
            .to_hex()
            .to_string();
        sqlx::query(
            "INSERT INTO logs (dedupe, flow_run_id, task_run_id, at, level, target, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedupe) DO NOTHING",
        )
        .bind(dedupe)
        .bind(l.flow_run_id.map(|i| i.to_string()))
        .bind(l.task_run_id.map(|i| i.to_string()))
        .bind(l.at)
        .bind(l.level.clone())
        .bind(l.target.clone())
        .bind(l.message.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Log lines of a flow run after sequence number `after`, oldest first.
    pub async fn logs(&self, flow_run: FlowRunId, after: i64, limit: usize) -> Result<Vec<(i64, LogRecord)>, DbError> {
        let rows = sqlx::query(
            "SELECT seq, flow_run_id, task_run_id, at, level, target, message FROM logs
             WHERE flow_run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(flow_run.to_string())
        .bind(after)
        .bind(limit.clamp(1, 5000) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("seq")?,
                    LogRecord {
                        flow_run_id: opt(r.try_get("flow_run_id")?)?,
                        task_run_id: opt(r.try_get("task_run_id")?)?,
                        at: r.try_get("at")?,
                        level: r.try_get("level")?,
                        target: r.try_get("target")?,
                        message: r.try_get("message")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
