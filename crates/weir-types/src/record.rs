//! What is recorded about runs: the rows of the state database and, later, of the API.
//!
//! Times are microseconds since the Unix epoch (see [`crate::time`]).

use serde::{Deserialize, Serialize};

use crate::{FlowRunId, State, TaskRunId};

/// What the result cache did for one task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// The task is not cached.
    Disabled,
    /// The result came from the store.
    Hit,
    /// Not in the store (or expired, or unreadable): computed and stored.
    Miss,
    /// Recomputed on request (`refresh_cache` / `WEIR_REFRESH_CACHE`).
    Refreshed,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Disabled => "-",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Refreshed => "refresh",
        }
    }

    pub fn parse(s: &str) -> CacheStatus {
        match s {
            "hit" => CacheStatus::Hit,
            "miss" => CacheStatus::Miss,
            "refresh" => CacheStatus::Refreshed,
            _ => CacheStatus::Disabled,
        }
    }
}

/// One flow run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowRunRecord {
    pub id: FlowRunId,
    #[schema(max_length = 256, pattern = r"^[^\u0000]*$")]
    pub flow_name: String,
    /// Crate and module path of the flow function.
    #[schema(max_length = 1024, pattern = r"^[^\u0000]*$")]
    pub flow_path: String,
    pub parent_flow_run_id: Option<FlowRunId>,
    pub parent_task_run_id: Option<TaskRunId>,
    pub state: State,
    /// The parameters as JSON.
    pub parameters: serde_json::Value,
    #[serde(deserialize_with = "int::i64")]
    pub created_at: i64,
    #[serde(default, deserialize_with = "int::opt_i64")]
    pub started_at: Option<i64>,
    #[serde(default, deserialize_with = "int::opt_i64")]
    pub ended_at: Option<i64>,
    /// The error chain of a failed run.
    #[schema(max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub error: Option<String>,
    #[schema(max_length = 256, pattern = r"^[^\u0000]*$")]
    pub hostname: String,
    #[serde(deserialize_with = "int::u32")]
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    pub pid: u32,
    /// Labels for filtering (`tag=nightly`).
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: Vec<String>,
    /// The deployment this run belongs to (`None` for a run started by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// When a deployment run is due (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    /// The work pool whose workers run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_pool: Option<String>,
    /// The worker that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The run this one retries (a deployment's `retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<FlowRunId>,
    /// A cancel was asked for; its worker stops it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

/// One task run: one call of a task inside a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRunRecord {
    pub id: TaskRunId,
    pub flow_run_id: Option<FlowRunId>,
    #[schema(max_length = 256, pattern = r"^[^\u0000]*$")]
    pub task_name: String,
    #[schema(max_length = 1024, pattern = r"^[^\u0000]*$")]
    pub task_path: String,
    pub state: State,
    /// 1 for the first attempt.
    #[serde(deserialize_with = "int::u32")]
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    pub attempt: u32,
    pub cache_status: CacheStatus,
    /// Hex BLAKE3 cache key, for cached tasks.
    #[schema(max_length = 1024, pattern = r"^[^\u0000]*$")]
    pub cache_key: Option<String>,
    #[serde(deserialize_with = "int::i64")]
    pub created_at: i64,
    #[serde(default, deserialize_with = "int::opt_i64")]
    pub started_at: Option<i64>,
    #[serde(default, deserialize_with = "int::opt_i64")]
    pub ended_at: Option<i64>,
    #[schema(max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub error: Option<String>,
    /// Every state the task run went through, oldest first. Kept in the run's own record
    /// (one row write per task run instead of one per state: recording is most of the
    /// per-task overhead).
    #[serde(default)]
    pub history: Vec<StateEntry>,
}

/// One state a task run went through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateEntry {
    pub state: State,
    #[serde(deserialize_with = "int::i64")]
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One entry of a run's state history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateRecord {
    pub flow_run_id: Option<FlowRunId>,
    pub task_run_id: Option<TaskRunId>,
    pub state: State,
    #[serde(deserialize_with = "int::i64")]
    pub at: i64,
    #[schema(max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub message: Option<String>,
}

/// One log line emitted inside a flow or task run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    pub flow_run_id: Option<FlowRunId>,
    pub task_run_id: Option<TaskRunId>,
    #[serde(deserialize_with = "int::i64")]
    pub at: i64,
    #[schema(max_length = 16, pattern = r"^[^\u0000]*$")]
    pub level: String,
    #[schema(max_length = 256, pattern = r"^[^\u0000]*$")]
    pub target: String,
    #[schema(max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub message: String,
}

/// Something to record about a run: what the engine sends to the embedded database or to
/// the server. Run records are snapshots (the latest wins, unless the run already ended);
/// states and logs are appended. On the wire: `{"kind": "flow_run", "record": {…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Event {
    FlowRun(FlowRunRecord),
    TaskRun(TaskRunRecord),
    State(StateRecord),
    Log(LogRecord),
}

/// Tags: at most 128 characters each, no NUL (what the server keeps).
fn tags_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(128))
                .pattern(Some(r"^[^\u0000]*$")),
        )
        .build()
}

/// Integers as JSON Schema defines them: a number with no fractional part, so `3.0` is the
/// integer 3 (what a client generated from the API's document may send), while `3.5`, or a
/// number out of the field's range, is refused.
mod int {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    /// An integer within `min..=max`.
    struct Int {
        min: i64,
        max: i64,
    }

    impl Int {
        fn check<E: Error>(&self, v: i128) -> Result<i64, E> {
            if v < self.min as i128 || v > self.max as i128 {
                return Err(E::custom(format!(
                    "{v} is out of range (an integer from {} to {})",
                    self.min, self.max
                )));
            }
            Ok(v as i64)
        }
    }

    impl Visitor<'_> for Int {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an integer from {} to {}", self.min, self.max)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            self.check(v.into())
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            self.check(v.into())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // Within ±2^63 (`i64::MAX as f64` is 2^63) an f64 with no fraction converts
            // exactly; outside, it is out of range for every field here.
            if v.fract() == 0.0 && v.abs() < i64::MAX as f64 {
                self.check(v as i128)
            } else {
                Err(E::custom(format!(
                    "{v} is not an integer from {} to {}",
                    self.min, self.max
                )))
            }
        }
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        // `any`, not `i64`: inside a tagged enum serde buffers the value first, and its
        // buffer hands a float only to a visitor asked for anything.
        d.deserialize_any(Int {
            min: i64::MIN,
            max: i64::MAX,
        })
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = d.deserialize_any(Int {
            min: 0,
            max: u32::MAX.into(),
        })?;
        Ok(v as u32)
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<i64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or null")
            }
            fn visit_none<E: Error>(self) -> Result<Option<i64>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<i64>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
                i64(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_json_schema_integers_within_their_range() {
        let rec = |pid: &str, at: &str| {
            serde_json::from_str::<FlowRunRecord>(&format!(
                r#"{{"id":"0190d5c4-7f1e-7000-8000-000000000001","flow_name":"f","flow_path":"p","state":"Running",
                "parameters":null,"created_at":{at},"started_at":{at},"hostname":"h","pid":{pid}}}"#
            ))
        };
        let r = rec("4294967295", "-5.0").expect("3.0 is an integer");
        assert_eq!(
            (r.pid, r.created_at, r.started_at, r.ended_at),
            (u32::MAX, -5, Some(-5), None)
        );
        for (pid, at) in [
            ("4294967296", "1"),
            ("-1", "1"),
            ("1.5", "1"),
            ("1", "2.5"),
            ("1", "1e19"),
        ] {
            let e = rec(pid, at).expect_err(&format!("pid {pid}, at {at}")).to_string();
            assert!(e.contains("range") || e.contains("integer"), "{e}");
        }
    }
}
