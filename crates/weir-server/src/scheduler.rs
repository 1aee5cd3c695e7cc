//! The scheduler: what the server does by itself, once per tick (1 s by default).
//!
//! - **Materializes schedule slots ahead**: for every schedule of every deployment that is
//!   not paused, the runs due in the next hour, at least the next [`MIN_AHEAD`] and at most
//!   [`MAX_AHEAD`] per schedule, are created `Scheduled`. The key of a slot is (deployment
//!   name, slot time), a UNIQUE index: a restart, a clock jump, a redeploy or a second server
//!   on the same PostgreSQL makes the same keys, and the database keeps one run per key.
//! - **Marks late runs** (`Scheduled` and still unclaimed [`Options::late_after`] after they
//!   were due) and applies each deployment's late policy.
//! - **Sweeps dead workers**: a worker silent for [`Options::heartbeat_timeout`] has its
//!   claimed runs end `Crashed` and its claim tokens cleared.
//! - **Retries** deployment runs that ended Crashed or Failed (the deployment's `retries`).
//!
//! Waiting claimers are woken ([`Wake`]) when runs are created or end: in-process by a tokio
//! `Notify`, and across servers on PostgreSQL by `NOTIFY weir_runs`, which every server
//! `LISTEN`s to.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use weir_types::FlowRunId;
use weir_types::deployment::{Deployment, Schedule};

use crate::db::{Db, DbError, Kind, NewRun};

/// Slots made ahead per schedule: at least this many, whatever the horizon.
pub const MIN_AHEAD: usize = 3;
/// Slots made ahead per schedule: at most this many, whatever the horizon.
pub const MAX_AHEAD: usize = 10;
/// How far ahead slots are made (beyond the first [`MIN_AHEAD`]).
pub const HORIZON: Duration = Duration::from_secs(3600);
/// Ended runs looked at for retries per tick.
const RETRY_BATCH: usize = 500;
/// The PostgreSQL channel servers wake each other's claimers on.
const CHANNEL: &str = "weir_runs";

/// The scheduler's and claims' settings (server options).
#[derive(Clone, Debug)]
pub struct Options {
    /// A worker silent this long is dead: its runs end Crashed (default 15 s).
    pub heartbeat_timeout: Duration,
    /// A scheduled run still unclaimed this long after it was due is Late (default 30 s).
    pub late_after: Duration,
    /// How often the scheduler runs (default 1 s).
    pub tick: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat_timeout: Duration::from_secs(15),
            late_after: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}

/// Wakes claimers waiting for work, here and (on PostgreSQL) on the other servers.
#[derive(Clone, Default)]
pub struct Wake {
    pub notify: Arc<Notify>,
}

impl Wake {
    /// Wakes this server's waiting claimers and, on PostgreSQL, every other server's.
    pub async fn wake(&self, db: &Db) {
        self.notify.notify_waiters();
        if db.kind == Kind::Postgres
            && let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&db.pool)
                .await
        {
            tracing::warn!("cannot notify the other servers of new runs: {e}");
        }
    }
}

/// Why a schedule cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("'{cron}' is not a cron expression: {message}")]
    Cron { cron: String, message: String },
    #[error("'{0}' is not an IANA time zone (such as UTC or Europe/Paris)")]
    TimeZone(String),
    #[error("every_seconds must be at least 1")]
    Interval,
}

/// A parsed schedule.
pub enum Parsed {
    Cron(Box<croner::Cron>, jiff::tz::TimeZone),
    Every { every_ms: i64, anchor_ms: i64 },
}

pub fn parse(s: &Schedule) -> Result<Parsed, ScheduleError> {
    match s {
        Schedule::Cron { cron, timezone } => {
            let c = croner::Cron::from_str(cron).map_err(|e| ScheduleError::Cron {
                cron: cron.clone(),
                message: e.to_string(),
            })?;
            let tz = jiff::tz::TimeZone::get(timezone).map_err(|_| ScheduleError::TimeZone(timezone.clone()))?;
            Ok(Parsed::Cron(Box::new(c), tz))
        }
        Schedule::Interval {
            every_seconds,
            anchor_ms,
        } => {
            if *every_seconds == 0 {
                return Err(ScheduleError::Interval);
            }
            let every_ms = i64::try_from(*every_seconds)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .ok_or(ScheduleError::Interval)?;
            Ok(Parsed::Every {
                every_ms,
                anchor_ms: *anchor_ms,
            })
        }
    }
}

/// The slots (ms) of a schedule strictly after `now_ms`: the first [`MIN_AHEAD`], then more
/// up to [`MAX_AHEAD`] while within [`HORIZON`].
pub fn slots(p: &Parsed, now_ms: i64) -> Vec<i64> {
    let horizon = now_ms.saturating_add(HORIZON.as_millis() as i64);
    let keep = |n: usize, t: i64| n < MIN_AHEAD || (n < MAX_AHEAD && t <= horizon);
    let mut out = Vec::new();
    match p {
        Parsed::Every { every_ms, anchor_ms } => {
            let k = (now_ms - anchor_ms).div_euclid(*every_ms) + 1;
            let mut t = anchor_ms.saturating_add(k.saturating_mul(*every_ms));
            while keep(out.len(), t) {
                out.push(t);
                t = t.saturating_add(*every_ms);
            }
        }
        Parsed::Cron(cron, tz) => {
            let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms) else {
                return out;
            };
            let start = ts.to_zoned(tz.clone());
            for z in cron.iter_after(start) {
                let t = z.timestamp().as_millisecond();
                if !keep(out.len(), t) {
                    break;
                }
                out.push(t);
            }
        }
    }
    out
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickReport {
    pub created: usize,
    pub late: usize,
    pub late_cancelled: usize,
    pub crashed: Vec<FlowRunId>,
    pub retries: usize,
}

/// One scheduler tick at `now` (µs since the epoch).
pub async fn tick(db: &Db, opts: &Options, now: i64) -> Result<TickReport, DbError> {
    let mut report = TickReport {
        created: materialize(db, now).await?,
        ..Default::default()
    };
    let late_cutoff = now / 1000 - opts.late_after.as_millis() as i64;
    (report.late, report.late_cancelled) = db.mark_late(late_cutoff, now).await?;
    let hb = opts.heartbeat_timeout;
    let sweep = db
        .sweep_dead_workers(now - hb.as_micros() as i64, now, hb.as_secs_f64())
        .await?;
    for w in &sweep.workers {
        tracing::warn!("worker {w} stopped heartbeating: its runs are marked Crashed");
    }
    report.crashed = sweep.crashed;
    report.retries = db.retry_ended(now, RETRY_BATCH).await?;
    Ok(report)
}

/// The runs every active schedule needs next that were not made yet, made now.
pub async fn materialize(db: &Db, now: i64) -> Result<usize, DbError> {
    let now_ms = now / 1000;
    let mut batches: Vec<(Deployment, i64, Vec<NewRun>)> = Vec::new();
    for (d, through) in db.scheduled_deployments().await? {
        let mut new: Vec<i64> = Vec::new();
        for s in &d.spec.schedules {
            match parse(s) {
                Ok(p) => new.extend(slots(&p, now_ms)),
                // Checked when deployed; a time zone database change could still break one.
                Err(e) => tracing::warn!("deployment '{}': schedule skipped: {e}", d.spec.name),
            }
        }
        new.sort_unstable();
        new.dedup();
        new.retain(|t| through.is_none_or(|th| *t > th));
        let Some(&last) = new.last() else { continue };
        let runs = new
            .into_iter()
            .map(|slot| NewRun {
                id: FlowRunId::new(),
                deployment: d.spec.name.clone(),
                flow_name: d.spec.flow.clone(),
                work_pool: d.spec.work_pool.clone(),
                parameters: d.spec.parameters.clone(),
                tags: d.spec.tags.clone(),
                scheduled_at: slot,
                schedule_slot: Some(slot),
                retry_of: None,
                retry_count: 0,
                created_at: now,
            })
            .collect();
        batches.push((d, last, runs));
    }
    db.materialize(&batches).await
}

/// Runs the scheduler every `opts.tick` until `stop` says so, waking claimers when it made
/// or ended runs. Errors (a database away) are logged and the next tick tries again.
pub async fn run(db: Db, opts: Options, wake: Wake, stop: Arc<crate::api::Stopping>, kick: Arc<Notify>) {
    let mut every = tokio::time::interval(opts.tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = kick.notified() => {}
            _ = stop.wait() => return,
        }
        match tick(&db, &opts, weir_types::time::now_micros()).await {
            Ok(r) => {
                if r.created + r.late + r.late_cancelled + r.retries + r.crashed.len() > 0 {
                    wake.wake(&db).await;
                }
            }
            Err(e) => tracing::warn!("scheduler tick failed (trying again next tick): {e}"),
        }
    }
}

/// On PostgreSQL: listens for other servers' `NOTIFY weir_runs` and wakes this server's
/// claimers; reconnects with backoff (1 s doubling to 30 s) when the connection drops.
pub async fn listen(db: Db, wake: Wake, stop: Arc<crate::api::Stopping>) {
    if db.kind != Kind::Postgres {
        return;
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&db.url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            l = listener => l,
            _ = stop.wait() => return,
        };
        match &mut l {
            Ok(l) => loop {
                backoff = Duration::from_secs(1);
                let n = tokio::select! {
                    n = l.try_recv() => n,
                    _ = stop.wait() => return,
                };
                match n {
                    // Also wake after a reconnect: notifications sent meanwhile were lost.
                    Ok(_) => wake.notify.notify_waiters(),
                    Err(e) => {
                        tracing::warn!("LISTEN {CHANNEL}: {e}");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!("cannot LISTEN {CHANNEL} (claims wake only for this server's runs): {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_slots_follow_the_anchor_and_horizon() {
        let p = parse(&Schedule::Interval {
            every_seconds: 60,
            anchor_ms: 30_000,
        })
        .unwrap();
        let s = slots(&p, 100_000);
        assert_eq!(s[..3], [150_000, 210_000, 270_000]);
        assert_eq!(s.len(), MAX_AHEAD);
        let daily = parse(&Schedule::Interval {
            every_seconds: 86_400,
            anchor_ms: 0,
        })
        .unwrap();
        assert_eq!(slots(&daily, 1).len(), MIN_AHEAD, "at least three, beyond the horizon");
    }

    #[test]
    fn cron_slots_are_in_the_time_zone() {
        let p = parse(&Schedule::Cron {
            cron: "0 9 * * *".into(),
            timezone: "Europe/Paris".into(),
        })
        .unwrap();
        // 2026-01-01T00:00:00Z: 09:00 in Paris (winter, UTC+1) is 08:00Z.
        let now = 1_767_225_600_000;
        let s = slots(&p, now);
        assert_eq!(s[0] - now, 8 * 3_600_000);
        assert!(
            parse(&Schedule::Cron {
                cron: "0 9 * *".into(),
                timezone: "UTC".into()
            })
            .is_err()
        );
        assert!(matches!(
            parse(&Schedule::Cron {
                cron: "* * * * *".into(),
                timezone: "Mars/Base".into()
            }),
            Err(ScheduleError::TimeZone(_))
        ));
    }
}
