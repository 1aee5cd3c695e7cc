//! The `deployments` and `work_pools` tables, and making runs of a deployment (by hand, by
//! a schedule, as a retry): each run row starts `Scheduled`.

use std::collections::HashSet;

use sqlx::Row;
use sqlx::any::AnyRow;
use weir_types::deployment::{Deployment, DeploymentSpec, LatePolicy, WorkPool};
use weir_types::{FlowRunId, FlowRunRecord};

use super::query::bad_row;
use super::{CLAIMED, Db, DbError, Kind, WAITING};

/// A run of a deployment to create.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: FlowRunId,
    pub deployment: String,
    pub flow_name: String,
    pub work_pool: String,
    pub parameters: serde_json::Value,
    pub tags: Vec<String>,
    /// When it is due (ms since the epoch).
    pub scheduled_at: i64,
    /// The schedule slot (ms) for runs a schedule makes: the idempotency key with the name.
    pub schedule_slot: Option<i64>,
    pub retry_of: Option<FlowRunId>,
    pub retry_count: i64,
    /// µs since the epoch.
    pub created_at: i64,
}

/// What `PUT /deployments/{name}` did.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// The same spec again: nothing changed.
    Unchanged,
}

const RUN_COLS: &[&str] = &[
    "id",
    "flow_name",
    "flow_path",
    "state",
    "parameters",
    "created_at",
    "hostname",
    "pid",
    "deployment",
    "scheduled_at",
    "work_pool",
    "retry_of",
    "schedule_slot",
    "retry_count",
];

pub(super) fn late_policy_str(p: LatePolicy) -> &'static str {
    match p {
        LatePolicy::All => "all",
        LatePolicy::Newest => "newest",
        LatePolicy::Skip => "skip",
    }
}

pub(super) fn deployment_row(row: &AnyRow) -> Result<Deployment, sqlx::Error> {
    let spec: String = row.try_get("spec")?;
    Ok(Deployment {
        spec: serde_json::from_str(&spec).map_err(bad_row)?,
        paused: row.try_get::<i64, _>("paused")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// Inserts runs (skipping any whose schedule slot or retry already exists: the unique
/// indexes decide, not a read before the write), with their tags and first history line.
/// Returns the ids inserted.
pub(super) async fn insert_runs(tx: &mut Tx<'_>, runs: &[NewRun]) -> Result<HashSet<String>, sqlx::Error> {
    let mut inserted = HashSet::new();
    for chunk in runs.chunks(500) {
        let sql = format!(
            "INSERT INTO flow_runs ({}) VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            RUN_COLS.join(", "),
            values(chunk.len(), RUN_COLS.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.id.to_string())
                .bind(r.flow_name.clone())
                .bind(String::new())
                .bind("Scheduled")
                .bind(r.parameters.to_string())
                .bind(r.created_at)
                .bind(String::new())
                .bind(0i64)
                .bind(r.deployment.clone())
                .bind(r.scheduled_at)
                .bind(r.work_pool.clone())
                .bind(r.retry_of.map(|i| i.to_string()))
                .bind(r.schedule_slot)
                .bind(r.retry_count);
        }
        for row in q.fetch_all(&mut **tx).await? {
            inserted.insert(row.try_get::<String, _>(0)?);
        }
    }
    let mut tags: Vec<(String, &str)> = Vec::new();
    let mut lines: Vec<(String, &str, i64, String)> = Vec::new();
    for r in runs.iter().filter(|r| inserted.contains(&r.id.to_string())) {
        let id = r.id.to_string();
        let mut mine: Vec<&str> = r.tags.iter().map(String::as_str).collect();
        mine.sort_unstable();
        mine.dedup();
        tags.extend(mine.into_iter().map(|t| (id.clone(), t)));
        let why = match (r.schedule_slot, r.retry_of) {
            (Some(_), _) => "scheduled by a schedule".to_string(),
            (_, Some(of)) => format!("retry {} of run {of}", r.retry_count),
            _ => "created by a request".to_string(),
        };
        lines.push((id, "Scheduled", r.created_at, why));
    }
    for chunk in tags.chunks(2000) {
        let sql = format!(
            "INSERT INTO flow_run_tags (flow_run_id, tag) VALUES {} ON CONFLICT DO NOTHING",
            values(chunk.len(), 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, t) in chunk {
            q = q.bind(id.clone()).bind(t.to_string());
        }
        q.execute(&mut **tx).await?;
    }
    history_many(tx, &lines).await?;
    Ok(inserted)
}

/// `($1, $2), ($3, $4), …`: `rows` tuples of `cols` placeholders.
pub(super) fn values(rows: usize, cols: usize) -> String {
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let p: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
        out.push(format!("({})", p.join(", ")));
    }
    out.join(", ")
}

/// Lines of runs' state histories (run id, state, µs, message), in multi-row statements.
pub(super) async fn history_many(tx: &mut Tx<'_>, lines: &[(String, &str, i64, String)]) -> Result<(), sqlx::Error> {
    for chunk in lines.chunks(1000) {
        let sql = format!(
            "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES {} ON CONFLICT DO NOTHING",
            values(chunk.len(), 4)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, state, at, message) in chunk {
            q = q
                .bind(id.clone())
                .bind(state.to_string())
                .bind(*at)
                .bind(message.clone());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// One line of a run's state history.
pub(super) async fn history(
    tx: &mut Tx<'_>,
    id: &str,
    state: &str,
    at: i64,
    message: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO flow_run_states (flow_run_id, state, at, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(id.to_string())
    .bind(state.to_string())
    .bind(at)
    .bind(message.map(str::to_string))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes runs and their tags and history (only unclaimed schedule-made runs are deleted).
async fn delete_runs(tx: &mut Tx<'_>, ids: &[String]) -> Result<(), sqlx::Error> {
    for id in ids {
        for sql in [
            "DELETE FROM flow_run_tags WHERE flow_run_id = $1",
            "DELETE FROM flow_run_states WHERE flow_run_id = $1",
            "DELETE FROM flow_runs WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id.clone()).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Removes a deployment's unclaimed schedule-made runs (all of them, or only those due after
/// `after` ms), so that what the scheduler makes next follows the deployment as it is now.
/// The `state IN waiting` condition is checked by the `DELETE` itself, so a run a worker
/// claims at the same moment is either claimed or deleted, never both.
async fn drop_unclaimed_scheduled(tx: &mut Tx<'_>, name: &str, after: Option<i64>) -> Result<(), sqlx::Error> {
    let sql = format!(
        "SELECT id FROM flow_runs WHERE deployment = $1 AND schedule_slot IS NOT NULL AND state IN {WAITING} \
         AND scheduled_at > $2"
    );
    let ids: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name.to_string())
        .bind(after.unwrap_or(i64::MIN))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut gone = Vec::new();
    for id in ids {
        let sql = format!("DELETE FROM flow_runs WHERE id = $1 AND state IN {WAITING}");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.clone())
            .execute(&mut **tx)
            .await?;
        if r.rows_affected() > 0 {
            gone.push(id);
        }
    }
    delete_runs(tx, &gone).await
}

impl Db {
    /// Creates or replaces a deployment. A changed spec drops its future unclaimed scheduled
    /// runs (the scheduler makes them again from the new spec, under the same keys); the same
    /// spec again changes nothing.
    pub async fn put_deployment(&self, spec: &DeploymentSpec, now: i64) -> Result<(Deployment, PutOutcome), DbError> {
        let json = serde_json::to_string(spec).map_err(bad_row)?;
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let existing = if self.kind == Kind::Postgres {
            "SELECT * FROM deployments WHERE name = $1 FOR UPDATE"
        } else {
            "SELECT * FROM deployments WHERE name = $1"
        };
        let old = sqlx::query(existing)
            .bind(spec.name.clone())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| deployment_row(&r))
            .transpose()?;
        let outcome = match &old {
            Some(d) if &d.spec == spec => return Ok((d.clone(), PutOutcome::Unchanged)),
            Some(_) => PutOutcome::Updated,
            None => PutOutcome::Created,
        };
        sqlx::query(
            "INSERT INTO deployments (name, flow_name, work_pool, spec, paused, late_policy, concurrency_limit, \
             has_schedules, scheduled_through, created_at, updated_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, NULL, $8, $8) \
             ON CONFLICT (name) DO UPDATE SET flow_name = excluded.flow_name, work_pool = excluded.work_pool, \
             spec = excluded.spec, late_policy = excluded.late_policy, concurrency_limit = excluded.concurrency_limit, \
             has_schedules = excluded.has_schedules, scheduled_through = NULL, updated_at = excluded.updated_at",
        )
        .bind(spec.name.clone())
        .bind(spec.flow.clone())
        .bind(spec.work_pool.clone())
        .bind(json)
        .bind(late_policy_str(spec.late_policy))
        .bind(spec.concurrency_limit.map(i64::from))
        .bind(i64::from(!spec.schedules.is_empty()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if outcome == PutOutcome::Updated {
            drop_unclaimed_scheduled(&mut tx, &spec.name, Some(now / 1000)).await?;
        }
        ensure_pool(&mut tx, &spec.work_pool, now).await?;
        tx.commit().await?;
        drop(_w);
        Ok((self.deployment(&spec.name).await?, outcome))
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment, DbError> {
        let row = sqlx::query("SELECT * FROM deployments WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("no deployment '{name}'")))?;
        Ok(deployment_row(&row)?)
    }

    /// Deployments by name, `limit` after `after`.
    pub async fn deployments(&self, after: &str, limit: usize) -> Result<Vec<Deployment>, DbError> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment_row).collect::<Result<_, _>>()?)
    }

    /// Deletes a deployment. Its runs stay, except unclaimed ones: future schedule-made ones
    /// are deleted, the others end Cancelled (no worker could run them without it).
    pub async fn delete_deployment(&self, name: &str, now: i64) -> Result<(), DbError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM deployments WHERE name = $1")
            .bind(name.to_string())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("no deployment '{name}'")));
        }
        drop_unclaimed_scheduled(&mut tx, name, Some(now / 1000)).await?;
        let sql = format!(
            "UPDATE flow_runs SET state = 'Cancelled', ended_at = $2, error = $3 WHERE deployment = $1 \
             AND state IN {WAITING} RETURNING id"
        );
        let why = format!("deployment '{name}' was deleted before a worker claimed this run");
        let ids: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name.to_string())
            .bind(now)
            .bind(why.clone())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for id in ids {
            history(&mut tx, &id, "Cancelled", now, Some(&why)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pauses or resumes a deployment. Pausing drops its unclaimed schedule-made runs (a
    /// paused deployment creates nothing); resuming lets the scheduler start again from now.
    pub async fn set_paused(&self, name: &str, paused: bool, now: i64) -> Result<Deployment, DbError> {
        {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            let r = sqlx::query(
                "UPDATE deployments SET paused = $2, scheduled_through = NULL, updated_at = $3 WHERE name = $1",
            )
            .bind(name.to_string())
            .bind(i64::from(paused))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                return Err(DbError::NotFound(format!("no deployment '{name}'")));
            }
            if paused {
                drop_unclaimed_scheduled(&mut tx, name, None).await?;
            }
            tx.commit().await?;
        }
        self.deployment(name).await
    }

    /// Creates runs in `Scheduled`. Returns the ids actually inserted (a schedule slot or a
    /// retry that already exists is skipped).
    pub async fn create_runs(&self, runs: &[NewRun]) -> Result<HashSet<String>, DbError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let ids = insert_runs(&mut tx, runs).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// A run by id, with its tags.
    pub async fn created_run(&self, id: FlowRunId) -> Result<FlowRunRecord, DbError> {
        self.flow_run(id).await
    }

    /// Sets a pool's concurrency limit (creating the pool).
    pub async fn put_pool(&self, name: &str, limit: Option<u32>, now: i64) -> Result<(), DbError> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO work_pools (name, concurrency_limit, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET concurrency_limit = excluded.concurrency_limit",
        )
        .bind(name.to_string())
        .bind(limit.map(i64::from))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Work pools with their running runs and online workers (`online_since`: µs).
    pub async fn pools(&self, online_since: i64) -> Result<Vec<WorkPool>, DbError> {
        let sql = format!(
            "SELECT p.name, p.concurrency_limit, \
             (SELECT COUNT(*) FROM flow_runs r WHERE r.work_pool = p.name AND r.state IN {CLAIMED}) AS running, \
             (SELECT COUNT(*) FROM workers w WHERE w.pool = p.name AND w.dead = 0 AND w.last_heartbeat >= $1) AS online \
             FROM work_pools p ORDER BY p.name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(online_since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkPool {
                    name: r.try_get("name")?,
                    concurrency_limit: r
                        .try_get::<Option<i64>, _>("concurrency_limit")?
                        .map(|l| l.clamp(0, u32::MAX as i64) as u32),
                    running: r.try_get::<i64, _>("running")? as u32,
                    workers_online: r.try_get::<i64, _>("online")? as u32,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

pub(super) async fn ensure_pool(tx: &mut Tx<'_>, name: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO work_pools (name, concurrency_limit, created_at) VALUES ($1, NULL, $2) ON CONFLICT DO NOTHING",
    )
    .bind(name.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
