//! Claims, workers and what only the server decides about a run of a deployment: claiming
//! runs for a worker (atomically, within concurrency limits, fenced by a token), heartbeats,
//! reports fenced by the token, cancels, and the scheduler's sweeps (late runs, dead workers,
//! retries, materialized schedule slots).

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use weir_types::deployment::{ClaimToken, ClaimedRun, Deployment, HeartbeatReply, RunningClaim, WorkerRecord};
use weir_types::{FlowRunId, FlowRunRecord};

use super::deployments::{NewRun, deployment_row, ensure_pool, history, history_many, insert_runs, values};
use super::flow_runs::{FLOW_COLS, flow_run};
use super::query::parse;
use super::{CLAIMED, Db, DbError, FINAL, Kind, WAITING};

/// What a worker's `/crash` or `/cancelled` report did.
#[derive(Debug)]
pub enum CrashOutcome {
    /// The run ended in the reported state.
    Ended(FlowRunRecord),
    /// The run had already ended: nothing changed.
    AlreadyFinal(FlowRunRecord),
}

/// Runs a dead-worker sweep ended.
#[derive(Debug, Default)]
pub struct WorkerSweep {
    pub workers: Vec<String>,
    pub crashed: Vec<FlowRunId>,
}

fn conflict_stale(id: FlowRunId) -> DbError {
    DbError::Conflict(format!(
        "run {id}: this claim token is not the run's current claim (the claim was taken over, or it expired \
         when its worker stopped heartbeating); the report is refused"
    ))
}

async fn upsert_worker(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    pool: &str,
    hostname: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (name, pool, hostname, last_heartbeat, dead) VALUES ($1, $2, $3, $4, 0) \
         ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, last_heartbeat = excluded.last_heartbeat, dead = 0, \
         hostname = CASE WHEN excluded.hostname = '' THEN workers.hostname ELSE excluded.hostname END",
    )
    .bind(name.to_string())
    .bind(pool.to_string())
    .bind(hostname.unwrap_or("").to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Db {
    /// Claims up to `limit` due runs of `pool` for `worker` (times: `now` µs). Each run moves
    /// `Scheduled`/`Late` → `Pending` with a fresh token by one conditional `UPDATE`, so two
    /// claimers never both get it; on PostgreSQL, `FOR UPDATE SKIP LOCKED` keeps claimers off
    /// each other's candidates. Concurrency limits: when the pool or one of its deployments
    /// has one, claims of that pool take turns (a transaction-scoped advisory lock), so two
    /// claimers cannot both see the last free slot.
    pub async fn claim(&self, pool: &str, worker: &str, limit: u32, now: i64) -> Result<Vec<ClaimedRun>, DbError> {
        let now_ms = now / 1000;
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        upsert_worker(&mut tx, worker, pool, None, now).await?;
        let row = sqlx::query(
            "SELECT (SELECT concurrency_limit FROM work_pools WHERE name = $1) AS pool_limit, \
             (SELECT COUNT(*) FROM deployments WHERE work_pool = $1 AND concurrency_limit IS NOT NULL) AS limited",
        )
        .bind(pool.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let pool_limit: Option<i64> = row.try_get("pool_limit")?;
        let limited = pool_limit.is_some() || row.try_get::<i64, _>("limited")? > 0;
        if limited && self.kind == Kind::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 9))")
                .bind(format!("weir-claim:{pool}"))
                .execute(&mut *tx)
                .await?;
        }
        let mut want = i64::from(limit.clamp(1, 64));
        if let Some(pl) = pool_limit {
            let sql = format!("SELECT COUNT(*) FROM flow_runs WHERE work_pool = $1 AND state IN {CLAIMED}");
            let running: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(pool.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            want = want.min(pl - running);
        }
        if want <= 0 {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // Runs of a deployment already at its limit are left out here, so they never hide
        // the claimable runs behind them.
        let at_limit = format!(
            "NOT EXISTS (SELECT 1 FROM deployments d WHERE d.name = r.deployment AND d.concurrency_limit IS NOT NULL \
             AND d.concurrency_limit <= (SELECT COUNT(*) FROM flow_runs x WHERE x.deployment = d.name \
             AND x.state IN {CLAIMED}))"
        );
        let lock = if self.kind == Kind::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "SELECT r.id, r.deployment FROM flow_runs r WHERE r.work_pool = $1 AND r.state IN {WAITING} \
             AND r.scheduled_at <= $2 AND {} ORDER BY r.scheduled_at, r.id LIMIT $3{lock}",
            if limited { at_limit.as_str() } else { "1 = 1" }
        );
        let candidates: Vec<(String, Option<String>)> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pool.to_string())
            .bind(now_ms)
            .bind(if limited { want * 4 } else { want })
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        // Free slots per deployment with a limit, among the candidates.
        let mut free: HashMap<String, i64> = HashMap::new();
        if limited {
            let names: HashSet<&String> = candidates.iter().filter_map(|c| c.1.as_ref()).collect();
            for name in names {
                let sql = format!(
                    "SELECT d.concurrency_limit, (SELECT COUNT(*) FROM flow_runs x WHERE x.deployment = d.name \
                     AND x.state IN {CLAIMED}) FROM deployments d WHERE d.name = $1"
                );
                if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(name.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    && let Some(l) = row.try_get::<Option<i64>, _>(0)?
                {
                    free.insert(name.clone(), l - row.try_get::<i64, _>(1)?);
                }
            }
        }
        let update = format!(
            "UPDATE flow_runs SET state = 'Pending', worker = $1, claim_token = $2, cancel_requested = 0 \
             WHERE id = $3 AND state IN {WAITING} RETURNING {FLOW_COLS}"
        );
        let mut claimed: Vec<(FlowRunRecord, ClaimToken)> = Vec::new();
        for (id, dep) in candidates {
            if claimed.len() as i64 >= want {
                break;
            }
            if let Some(d) = &dep
                && let Some(f) = free.get_mut(d)
            {
                if *f <= 0 {
                    continue;
                }
                *f -= 1;
            }
            let token = ClaimToken(uuid::Uuid::now_v7());
            let row = sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                .bind(worker.to_string())
                .bind(token.0.to_string())
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                claimed.push((flow_run(&row)?, token));
            }
        }
        let why = format!("claimed by worker {worker}");
        let lines: Vec<_> = claimed
            .iter()
            .map(|(r, _)| (r.id.to_string(), "Pending", now, why.clone()))
            .collect();
        history_many(&mut tx, &lines).await?;
        let mut deployments: HashMap<String, Option<Deployment>> = HashMap::new();
        for name in claimed.iter().filter_map(|(r, _)| r.deployment.clone()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = deployments.entry(name) {
                let d = sqlx::query("SELECT * FROM deployments WHERE name = $1")
                    .bind(slot.key().clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| deployment_row(&row))
                    .transpose()?;
                slot.insert(d);
            }
        }
        let mut out = Vec::with_capacity(claimed.len());
        for (run, token) in claimed {
            match run
                .deployment
                .as_ref()
                .and_then(|n| deployments.get(n).cloned().flatten())
            {
                Some(deployment) => {
                    let parameters = run.parameters.clone();
                    out.push(ClaimedRun {
                        flow_run: run,
                        token,
                        deployment,
                        parameters,
                    });
                }
                // Deleted between the claim's look and its update: nobody can run it.
                None => {
                    let why = "its deployment was deleted as it was claimed";
                    sqlx::query(
                        "UPDATE flow_runs SET state = 'Crashed', ended_at = $1, error = $2, claim_token = NULL \
                         WHERE id = $3",
                    )
                    .bind(now)
                    .bind(why)
                    .bind(run.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    history(&mut tx, &run.id.to_string(), "Crashed", now, Some(why)).await?;
                }
            }
        }
        tx.commit().await?;
        drop(_w);
        let mut runs: Vec<FlowRunRecord> = out.iter().map(|c| c.flow_run.clone()).collect();
        self.fill_tags(&mut runs).await?;
        for (c, r) in out.iter_mut().zip(runs) {
            c.flow_run.tags = r.tags;
        }
        Ok(out)
    }

    /// When the next waiting run of `pool` is due (ms), if any.
    pub async fn next_due(&self, pool: &str) -> Result<Option<i64>, DbError> {
        let sql = format!("SELECT MIN(scheduled_at) FROM flow_runs WHERE work_pool = $1 AND state IN {WAITING}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pool.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Records a heartbeat and answers which of the worker's runs to cancel and which
    /// claims it lost (the token is no longer the run's: taken over, or expired).
    pub async fn heartbeat(
        &self,
        worker: &str,
        pool: &str,
        hostname: &str,
        running: &[RunningClaim],
        now: i64,
    ) -> Result<HeartbeatReply, DbError> {
        {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            upsert_worker(&mut tx, worker, pool, Some(hostname), now).await?;
            ensure_pool(&mut tx, pool, now).await?;
            tx.commit().await?;
        }
        let mut reply = HeartbeatReply::default();
        for c in running {
            let row = sqlx::query("SELECT state, claim_token, cancel_requested FROM flow_runs WHERE id = $1")
                .bind(c.flow_run_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else {
                reply.lost.push(c.flow_run_id);
                continue;
            };
            let token: Option<String> = row.try_get(1)?;
            if token.as_deref() != Some(c.token.0.to_string().as_str()) {
                reply.lost.push(c.flow_run_id);
                continue;
            }
            let state: weir_types::State = parse(row.try_get(0)?)?;
            if !state.is_final() && row.try_get::<i64, _>(2)? != 0 {
                reply.cancel.push(c.flow_run_id);
            }
        }
        Ok(reply)
    }

    /// A worker's report that a run ended `state` (`Crashed` with `reason`, or `Cancelled`),
    /// fenced by the claim token: a stale token is a conflict; a run already final is left as
    /// it is.
    pub async fn report_end(
        &self,
        id: FlowRunId,
        token: ClaimToken,
        state: weir_types::State,
        reason: Option<&str>,
        now: i64,
    ) -> Result<CrashOutcome, DbError> {
        {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            let sql = format!(
                "UPDATE flow_runs SET state = $1, ended_at = $2, error = $3, cancel_requested = 0 \
                 WHERE id = $4 AND claim_token = $5 AND state NOT IN {FINAL}"
            );
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(state.as_str())
                .bind(now)
                .bind(reason.map(str::to_string))
                .bind(id.to_string())
                .bind(token.0.to_string())
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 1 {
                history(&mut tx, &id.to_string(), state.as_str(), now, reason).await?;
                tx.commit().await?;
                return Ok(CrashOutcome::Ended(self.flow_run(id).await?));
            }
        }
        let row = sqlx::query("SELECT claim_token FROM flow_runs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::NotFound(format!("no flow run {id}")))?;
        let current: Option<String> = row.try_get(0)?;
        if current.as_deref() != Some(token.0.to_string().as_str()) {
            return Err(conflict_stale(id));
        }
        Ok(CrashOutcome::AlreadyFinal(self.flow_run(id).await?))
    }

    /// Cancels a run: one not yet claimed ends `Cancelled` at once; a claimed one gets
    /// `cancel_requested`, which its worker reads in its next heartbeat reply. A final run is
    /// a conflict.
    pub async fn cancel(&self, id: FlowRunId, now: i64) -> Result<FlowRunRecord, DbError> {
        let run = self.flow_run(id).await?;
        if run.state.is_final() {
            return Err(DbError::Conflict(format!(
                "run {id} is {}, a final state: there is nothing to cancel",
                run.state
            )));
        }
        {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            let why = "cancelled before a worker claimed it";
            let sql = format!(
                "UPDATE flow_runs SET state = 'Cancelled', ended_at = $1, error = $2 WHERE id = $3 AND state IN {WAITING}"
            );
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(why)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 1 {
                history(&mut tx, &id.to_string(), "Cancelled", now, Some(why)).await?;
            } else {
                let sql = format!("UPDATE flow_runs SET cancel_requested = 1 WHERE id = $1 AND state NOT IN {FINAL}");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        let run = self.flow_run(id).await?;
        if run.state.is_final() && run.state != weir_types::State::Cancelled {
            return Err(DbError::Conflict(format!(
                "run {id} ended {} before the cancel landed",
                run.state
            )));
        }
        Ok(run)
    }

    /// Workers by name (`online_since`: µs; a worker heard from since then is online).
    pub async fn workers(&self, online_since: i64) -> Result<Vec<WorkerRecord>, DbError> {
        let sql = format!(
            "SELECT w.name, w.pool, w.hostname, w.last_heartbeat, w.dead, \
             (SELECT COUNT(*) FROM flow_runs r WHERE r.worker = w.name AND r.state IN {CLAIMED}) AS running \
             FROM workers w ORDER BY w.name LIMIT 10000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let last: i64 = r.try_get("last_heartbeat")?;
                Ok(WorkerRecord {
                    name: r.try_get("name")?,
                    pool: r.try_get("pool")?,
                    hostname: r.try_get("hostname")?,
                    last_heartbeat: last,
                    running: r.try_get::<i64, _>("running")? as u32,
                    online: r.try_get::<i64, _>("dead")? == 0 && last >= online_since,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Workers silent since `cutoff` (µs) are dead: their claimed, unfinished runs end
    /// `Crashed` and their tokens are cleared (a late report from them is refused).
    pub async fn sweep_dead_workers(&self, cutoff: i64, now: i64, timeout_s: f64) -> Result<WorkerSweep, DbError> {
        let names: Vec<String> = sqlx::query("SELECT name FROM workers WHERE dead = 0 AND last_heartbeat < $1")
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut sweep = WorkerSweep::default();
        for name in names {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            // A heartbeat in between keeps it alive.
            let r = sqlx::query("UPDATE workers SET dead = 1 WHERE name = $1 AND dead = 0 AND last_heartbeat < $2")
                .bind(name.clone())
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                continue;
            }
            let why = format!("worker {name} stopped heartbeating (none for {timeout_s} s)");
            let sql = format!(
                "UPDATE flow_runs SET state = 'Crashed', ended_at = $1, error = $2, claim_token = NULL, \
                 cancel_requested = 0 WHERE worker = $3 AND state IN {CLAIMED} RETURNING id"
            );
            let ids: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(why.clone())
                .bind(name.clone())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            for id in &ids {
                history(&mut tx, id, "Crashed", now, Some(&why)).await?;
                sweep.crashed.push(parse(id.clone())?);
            }
            tx.commit().await?;
            sweep.workers.push(name);
        }
        Ok(sweep)
    }

    /// Waiting runs due before `cutoff` (ms) become `Late`; then each deployment's late
    /// policy applies to its late schedule-made runs (`newest`: all but the newest end
    /// Cancelled; `skip`: all do; `all`: none). Runs made by hand or by retries stay Late and
    /// run. Returns how many runs became Late and how many were cancelled.
    pub async fn mark_late(&self, cutoff: i64, now: i64) -> Result<(usize, usize), DbError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query(
            "UPDATE flow_runs SET state = 'Late' WHERE state = 'Scheduled' AND scheduled_at < $1 RETURNING id",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let lines: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    "Late",
                    now,
                    "not claimed within the grace period".to_string(),
                )
            })
            .collect();
        history_many(&mut tx, &lines).await?;
        let mut cancelled = 0;
        for (policy, extra, why) in [
            ("skip", "", "late, and the deployment's late policy is `skip`"),
            (
                "newest",
                " AND EXISTS (SELECT 1 FROM flow_runs n WHERE n.deployment = flow_runs.deployment AND n.state = 'Late' \
                 AND n.schedule_slot IS NOT NULL AND n.scheduled_at > flow_runs.scheduled_at)",
                "late, and a newer late run of the deployment runs instead (late policy `newest`)",
            ),
        ] {
            let sql = format!(
                "UPDATE flow_runs SET state = 'Cancelled', ended_at = $1, error = $2 WHERE state = 'Late' \
                 AND schedule_slot IS NOT NULL AND deployment IN (SELECT name FROM deployments WHERE late_policy = $3){extra} \
                 RETURNING id"
            );
            let gone: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(why)
                .bind(policy)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let lines: Vec<_> = gone
                .iter()
                .map(|id| (id.clone(), "Cancelled", now, why.to_string()))
                .collect();
            history_many(&mut tx, &lines).await?;
            cancelled += gone.len();
        }
        tx.commit().await?;
        Ok((ids.len(), cancelled))
    }

    /// Deployment runs that ended Crashed or Failed get a retry (a new `Scheduled` run with
    /// `retry_of`) while fewer than the deployment's `retries` came before; the unique index
    /// on `retry_of` makes this safe to run on several servers at once. At most `batch` runs
    /// per call. Returns the retries created.
    pub async fn retry_ended(&self, now: i64, batch: usize) -> Result<usize, DbError> {
        let rows = sqlx::query(
            "SELECT id, deployment, flow_name, work_pool, parameters, retry_count FROM flow_runs \
             WHERE retry_checked = 0 AND state IN ('Crashed', 'Failed') LIMIT $1",
        )
        .bind(batch as i64)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut specs: HashMap<String, Option<Deployment>> = HashMap::new();
        let mut checked = Vec::new();
        let mut retries = Vec::new();
        for r in &rows {
            let id: String = r.try_get("id")?;
            checked.push(id.clone());
            let Some(dep) = r.try_get::<Option<String>, _>("deployment")? else {
                continue;
            };
            if !specs.contains_key(&dep) {
                let d = match self.deployment(&dep).await {
                    Ok(d) => Some(d),
                    Err(DbError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                specs.insert(dep.clone(), d);
            }
            let Some(d) = &specs[&dep] else { continue };
            let count: i64 = r.try_get("retry_count")?;
            if count >= i64::from(d.spec.retries) {
                continue;
            }
            let params: String = r.try_get("parameters")?;
            let run_id: FlowRunId = parse(id.clone())?;
            let mut tags = self.flow_run(run_id).await?.tags;
            tags.extend(d.spec.tags.iter().cloned());
            retries.push(NewRun {
                id: FlowRunId::new(),
                deployment: dep.clone(),
                flow_name: r.try_get("flow_name")?,
                work_pool: r
                    .try_get::<Option<String>, _>("work_pool")?
                    .unwrap_or_else(|| d.spec.work_pool.clone()),
                parameters: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
                tags,
                scheduled_at: now / 1000,
                schedule_slot: None,
                retry_of: Some(run_id),
                retry_count: count + 1,
                created_at: now,
            });
        }
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let made = insert_runs(&mut tx, &retries).await?;
        for id in &checked {
            sqlx::query("UPDATE flow_runs SET retry_checked = 1 WHERE id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(made.len())
    }

    /// Deployments the scheduler looks at: not paused, with schedules; with how far their
    /// schedule slots were made (ms).
    pub async fn scheduled_deployments(&self) -> Result<Vec<(Deployment, Option<i64>)>, DbError> {
        let rows = sqlx::query("SELECT * FROM deployments WHERE paused = 0 AND has_schedules = 1 ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((deployment_row(r)?, r.try_get::<Option<i64>, _>("scheduled_through")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Inserts the schedule slots the scheduler computed, per deployment, in one transaction.
    /// Each deployment's row is updated first, guarded by "not paused and not changed since
    /// read" (a pause or redeploy in between wins; on PostgreSQL the row lock orders this
    /// against them); slots that exist already are skipped by the unique key. Returns the
    /// number of runs created.
    pub async fn materialize(&self, batches: &[(Deployment, i64, Vec<NewRun>)]) -> Result<usize, DbError> {
        if batches.is_empty() {
            return Ok(0);
        }
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        if self.kind == Kind::Postgres {
            // Servers materialize one at a time (the unique key would keep their runs apart
            // anyway; this keeps their row locks from deadlocking).
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('weir-materialize', 9))")
                .execute(&mut *tx)
                .await?;
        }
        let mut live: HashSet<String> = HashSet::new();
        for chunk in batches.chunks(1000) {
            let sql = format!(
                "UPDATE deployments SET scheduled_through = CASE WHEN scheduled_through IS NULL \
                 OR scheduled_through < v.column2 THEN v.column2 ELSE scheduled_through END \
                 FROM (VALUES {}) AS v WHERE deployments.name = v.column1 AND deployments.paused = 0 \
                 AND deployments.updated_at = v.column3 RETURNING deployments.name",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (d, through, _) in chunk {
                q = q.bind(d.spec.name.clone()).bind(*through).bind(d.updated_at);
            }
            for row in q.fetch_all(&mut *tx).await? {
                live.insert(row.try_get(0)?);
            }
        }
        let runs: Vec<NewRun> = batches
            .iter()
            .filter(|(d, _, _)| live.contains(&d.spec.name))
            .flat_map(|(_, _, new)| new.iter().cloned())
            .collect();
        let made = insert_runs(&mut tx, &runs).await?;
        tx.commit().await?;
        Ok(made.len())
    }
}
