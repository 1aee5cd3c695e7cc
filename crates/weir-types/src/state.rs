//! The states a flow run or task run moves through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of a flow run or a task run.
///
/// `Pending → Running → Completed` is the happy path; `Cached` replaces running when the
/// result store already holds the result; `Retrying` sits between failed attempts.
/// A run of a deployment starts earlier: `Scheduled` (created, waiting for a worker), then
/// `Late` if no worker claimed it within the server's grace period; a claim makes it
/// `Pending`. Order: Scheduled < Late < Pending < Running < Retrying < the final states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum State {
    Scheduled,
    Late,
    Pending,
    Running,
    Completed,
    Cached,
    Failed,
    Retrying,
    TimedOut,
    Cancelled,
    Crashed,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Scheduled,
        State::Late,
        State::Pending,
        State::Running,
        State::Completed,
        State::Cached,
        State::Failed,
        State::Retrying,
        State::TimedOut,
        State::Cancelled,
        State::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "Scheduled",
            State::Late => "Late",
            State::Pending => "Pending",
            State::Running => "Running",
            State::Completed => "Completed",
            State::Cached => "Cached",
            State::Failed => "Failed",
            State::Retrying => "Retrying",
            State::TimedOut => "TimedOut",
            State::Cancelled => "Cancelled",
            State::Crashed => "Crashed",
        }
    }

    /// A final state: the run will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Completed | State::Cached | State::Failed | State::TimedOut | State::Cancelled | State::Crashed
        )
    }

    /// A final state that produced a value.
    pub fn is_success(self) -> bool {
        matches!(self, State::Completed | State::Cached)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown state '{0}' (expected one of: Scheduled, Late, Pending, Running, Completed, Cached, Failed, Retrying, TimedOut, Cancelled, Crashed)"
)]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_case_insensitive_and_rejects_unknown() {
        for st in State::ALL {
            assert_eq!(st.as_str().to_lowercase().parse::<State>().unwrap(), st);
        }
        let err = "Done".parse::<State>().unwrap_err().to_string();
        assert!(err.contains("unknown state 'Done'"), "{err}");
    }
}
