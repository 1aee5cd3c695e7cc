//! Crash detection: a run left Pending or Running by a process that no longer exists.
//!
//! A process is identified by its pid *and* its start time (field 22 of `/proc/PID/stat`,
//! clock ticks since boot): a pid alone is reused by the kernel, so a dead run whose pid now
//! belongs to another process would otherwise stay Running forever. A run found dead is
//! marked `Crashed` in the database, not only in what the CLI prints, so `--state Crashed`
//! finds it.

use rusqlite::params;
use weir_types::{FlowRunId, State};

use crate::db::{StateDb, StateError};

/// Process `pid`'s state letter (field 3 of `/proc/PID/stat`) and start time (field 22,
/// clock ticks since boot), or `None` if there is no such process (or no `/proc`).
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // `rest` starts at field 3 (the state), so field 22 is its 20th word.
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// When process `pid` started (clock ticks since boot), or `None` if there is no such process
/// (or no `/proc` to ask).
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether the process that recorded a run (`pid`, started at `start`) still runs. A zombie
/// (killed or exited, not yet reaped by its parent, which may be never) does not.
/// Without a recorded start time (older records), a live pid counts as alive.
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    match (stat(pid), start) {
        (None, _) => false,
        (Some(('Z' | 'X' | 'x', _)), _) => false,
        (Some((_, now)), Some(then)) => now == then,
        (Some(_), None) => true,
    }
}

/// What made a run count as crashed (for its error text).
fn why(pid: u32, start: Option<u64>) -> String {
    match (process_start_time(pid), start) {
        (Some(now), Some(then)) if now != then => {
            format!("process {pid} exited before the run finished (its pid now belongs to another process)")
        }
        _ => format!("process {pid} exited before the run finished"),
    }
}

impl StateDb {
    /// Marks `Crashed` every flow run on `host` left Pending or Running by a process that no
    /// longer exists, with its unfinished task runs; returns the runs marked. Safe against a
    /// run that finishes meanwhile: only unfinished rows change.
    pub fn mark_crashed_runs(&mut self, host: &str) -> Result<Vec<FlowRunId>, StateError> {
        let candidates: Vec<(String, u32, Option<i64>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, pid, pid_start FROM flow_runs
                 WHERE state IN ('Pending', 'Running') AND hostname = ?1",
            )?;
            stmt.query_map([host], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        let dead: Vec<(String, String)> = candidates
            .into_iter()
            .filter(|(_, pid, start)| !process_alive(*pid, start.map(|s| s as u64)))
            .map(|(id, pid, start)| (id, why(pid, start.map(|s| s as u64))))
            .collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let now = weir_types::time::now_micros();
        let crashed = State::Crashed.as_str();
        let tx = self.conn.transaction()?;
        let mut marked = Vec::new();
        for (id, message) in &dead {
            let changed = tx.execute(
                "UPDATE flow_runs SET state = ?2, ended_at = ?3, error = coalesce(error, ?4)
                 WHERE id = ?1 AND state IN ('Pending', 'Running')",
                params![id, crashed, now, message],
            )?;
            if changed == 0 {
                continue;
            }
            tx.execute(
                "INSERT INTO states (flow_run_id, task_run_id, state, at, message) VALUES (?1, NULL, ?2, ?3, ?4)",
                params![id, crashed, now, message],
            )?;
            tx.execute(
                "UPDATE task_runs SET state = ?2, ended_at = ?3, error = coalesce(error, ?4),
                     history = json_insert(history, '$[#]', json_object('state', ?2, 'at', ?3, 'message', ?4))
                 WHERE flow_run_id = ?1 AND state IN ('Pending', 'Running', 'Retrying')",
                params![id, crashed, now, message],
            )?;
            marked.push(
                id.parse()
                    .map_err(|e| StateError::Malformed(format!("flow run id {id}: {e}")))?,
            );
        }
        tx.commit()?;
        Ok(marked)
    }
}
