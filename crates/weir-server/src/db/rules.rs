//! The orchestration rules: which snapshot of a run may replace the stored one.
//!
//! A run moves forward only: (`Scheduled` → `Late` →, for runs of a deployment) `Pending` → `Running` → (`Retrying` → `Running` of the next
//! attempt)* → a final state, which it keeps for good. A snapshot behind the stored one (a
//! late `Running` after `Retrying` of the same attempt) is refused as stale; one that
//! contradicts a final state is refused as a conflict; the same final state again is a
//! no-op that changes nothing (not the error, not the end time, no history row).
//!
//! The rule exists twice, on purpose: [`decide_flow`]/[`decide_task`] walk a batch in
//! order to give each event its verdict, and [`flow_guard`]/[`task_guard`] repeat it in the
//! upsert's `WHERE`, so a concurrent request can never move a run backwards either.

use weir_types::State;

use super::FINAL;

/// How far along a run in `state` is.
pub(crate) fn progress(state: State) -> u8 {
    match state {
        State::Scheduled => 0,
        State::Late => 1,
        State::Pending => 2,
        State::Running => 3,
        State::Retrying => 4,
        State::Completed | State::Cached | State::Failed | State::TimedOut | State::Cancelled | State::Crashed => 5,
    }
}

fn progress_sql(col: &str) -> String {
    format!(
        "(CASE {col} WHEN 'Scheduled' THEN 0 WHEN 'Late' THEN 1 WHEN 'Pending' THEN 2 WHEN 'Running' THEN 3 \
         WHEN 'Retrying' THEN 4 ELSE 5 END)"
    )
}

/// The `WHERE` of the flow run upsert.
pub(crate) fn flow_guard() -> String {
    format!(
        "flow_runs.state NOT IN {FINAL} AND {} >= {}",
        progress_sql("excluded.state"),
        progress_sql("flow_runs.state")
    )
}

/// The `WHERE` of the task run upsert: a final state always wins over a non-final one;
/// otherwise the later attempt, then the further state.
pub(crate) fn task_guard() -> String {
    format!(
        "task_runs.state NOT IN {FINAL} AND (excluded.state IN {FINAL} OR excluded.attempt > task_runs.attempt \
         OR (excluded.attempt = task_runs.attempt AND {} >= {}))",
        progress_sql("excluded.state"),
        progress_sql("task_runs.state")
    )
}

/// What to do with one snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Write,
    /// The run already is exactly there: accepted, nothing written.
    NoOp,
    Reject {
        code: &'static str,
        message: String,
    },
}

fn final_conflict(current: State, proposed: State) -> Decision {
    Decision::Reject {
        code: "conflict",
        message: format!("the run is {current}, a final state; it cannot become {proposed}"),
    }
}

fn stale(current: State, proposed: State) -> Decision {
    Decision::Reject {
        code: "stale",
        message: format!("the run is already {current}; this {proposed} snapshot is older and changes nothing"),
    }
}

pub(crate) fn decide_flow(current: Option<State>, proposed: State) -> Decision {
    match current {
        None => Decision::Write,
        Some(c) if c.is_final() && c == proposed => Decision::NoOp,
        Some(c) if c.is_final() => final_conflict(c, proposed),
        Some(c) if progress(proposed) >= progress(c) => Decision::Write,
        Some(c) => stale(c, proposed),
    }
}

pub(crate) fn decide_task(current: Option<(State, u32)>, proposed: (State, u32)) -> Decision {
    match current {
        None => Decision::Write,
        Some((c, _)) if c.is_final() && c == proposed.0 => Decision::NoOp,
        Some((c, _)) if c.is_final() => final_conflict(c, proposed.0),
        Some(_) if proposed.0.is_final() => Decision::Write,
        Some((c, a)) if (proposed.1, progress(proposed.0)) >= (a, progress(c)) => Decision::Write,
        Some((c, _)) => stale(c, proposed.0),
    }
}

/// A state event (a line of a flow run's history) against the run's current state.
pub(crate) fn decide_state(current: Option<State>, proposed: State) -> Decision {
    match current {
        None => Decision::Reject {
            code: "not_found",
            message: "no such run (send its snapshot first)".into(),
        },
        Some(c) if c.is_final() && c == proposed => Decision::NoOp,
        Some(c) if c.is_final() => final_conflict(c, proposed),
        Some(_) => Decision::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn runs_only_move_forward() {
        assert_eq!(decide_flow(None, Running), Decision::Write);
        assert_eq!(decide_flow(Some(Pending), Running), Decision::Write);
        assert_eq!(decide_flow(Some(Scheduled), Late), Decision::Write);
        assert_eq!(decide_flow(Some(Late), Pending), Decision::Write);
        assert_eq!(decide_flow(Some(Scheduled), Running), Decision::Write);
        assert!(matches!(
            decide_flow(Some(Pending), Scheduled),
            Decision::Reject { code: "stale", .. }
        ));
        assert!(matches!(
            decide_flow(Some(Late), Scheduled),
            Decision::Reject { code: "stale", .. }
        ));
        assert_eq!(decide_flow(Some(Running), Running), Decision::Write);
        assert!(matches!(
            decide_flow(Some(Running), Pending),
            Decision::Reject { code: "stale", .. }
        ));
        assert_eq!(decide_flow(Some(Completed), Completed), Decision::NoOp);
        assert!(matches!(
            decide_flow(Some(Completed), Failed),
            Decision::Reject { code: "conflict", .. }
        ));
        assert_eq!(decide_task(Some((Retrying, 1)), (Running, 2)), Decision::Write);
        assert!(matches!(
            decide_task(Some((Retrying, 1)), (Running, 1)),
            Decision::Reject { code: "stale", .. }
        ));
        assert_eq!(decide_task(Some((Retrying, 2)), (Failed, 2)), Decision::Write);
        assert!(matches!(
            decide_state(None, Running),
            Decision::Reject { code: "not_found", .. }
        ));
    }
}
