//! Run ids: UUIDv7, so ids sort by creation time and a short prefix is usually unique.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! run_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, ".")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The last eight hex digits: what people read in logs and tables. (The first
            /// digits of a UUIDv7 are its timestamp, shared by runs made close together;
            /// the last ones are random.)
            pub fn short(&self) -> String {
                let s = self.0.simple().to_string();
                s[s.len() - 8..].to_string()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

run_id!(FlowRunId, "flow run");
run_id!(TaskRunId, "task run");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_round_trip() {
        let a = FlowRunId::new();
        let b = FlowRunId::new();
        assert!(a < b, "v7 ids must sort by creation");
        let parsed: FlowRunId = a.to_string().parse().expect("round trip");
        assert_eq!(a, parsed);
        assert_eq!(a.short().len(), 8);
        assert!(a.to_string().ends_with(&a.short()));
        assert_ne!(a.short(), b.short(), "short ids of neighbouring runs differ");
    }
}
