//! `weir runs …` against a real state database.

use std::path::Path;
use std::process::{Command, Output};

use weir_state::{Event, Writer};
use weir_types::{CacheStatus, FlowRunId, FlowRunRecord, LogRecord, State, StateEntry, TaskRunId, TaskRunRecord};

fn weir(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_HOME", home)
        .env_remove("WEIR_STATE_DB")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn record(home: &Path) -> (FlowRunId, TaskRunId) {
    let writer = Writer::start(&home.join("weir.db")).unwrap();
    let flow = FlowRunId::new();
    let task = TaskRunId::new();
    writer.send(Event::FlowRun(FlowRunRecord {
        id: flow,
        flow_name: "etl".into(),
        flow_path: "app::etl".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Completed,
        parameters: serde_json::json!({"day": "2026-11-22"}),
        created_at: 1_700_000_000_000_000,
        started_at: Some(1_700_000_000_000_000),
        ended_at: Some(1_700_000_003_000_000),
        error: None,
        hostname: "elsewhere".into(),
        pid: 1,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    }));
    writer.send(Event::TaskRun(TaskRunRecord {
        id: task,
        flow_run_id: Some(flow),
        task_name: "extract".into(),
        task_path: "app::extract".into(),
        state: State::Cached,
        attempt: 0,
        cache_status: CacheStatus::Hit,
        cache_key: Some("ab".repeat(32)),
        created_at: 1_700_000_000_000_000,
        started_at: None,
        ended_at: Some(1_700_000_000_000_100),
        error: None,
        history: vec![StateEntry {
            state: State::Cached,
            at: 1_700_000_000_000_100,
            message: None,
        }],
    }));
    writer.send(Event::Log(LogRecord {
        flow_run_id: Some(flow),
        task_run_id: Some(task),
        at: 1_700_000_000_000_050,
        level: "INFO".into(),
        target: "app".into(),
        message: "read 42 rows".into(),
    }));
    futures::executor::block_on(writer.flush()).unwrap();
    (flow, task)
}

#[test]
fn ls_show_and_logs_print_what_was_recorded() {
    let home = tempfile::tempdir().unwrap();
    let (flow, _) = record(home.path());

    let ls = stdout(&weir(home.path(), &["runs", "ls"]));
    assert!(
        ls.contains(&flow.short()) && ls.contains("etl") && ls.contains("Completed"),
        "{ls}"
    );

    let show = stdout(&weir(home.path(), &["runs", "show", &flow.short()]));
    assert!(
        show.contains("extract") && show.contains("Cached") && show.contains("hit"),
        "{show}"
    );
    assert!(show.contains("\"day\":\"2026-11-22\""), "{show}");
    assert!(show.contains("3.00s"), "{show}");

    let logs = stdout(&weir(home.path(), &["runs", "logs", &flow.to_string()]));
    assert!(logs.contains("extract[") && logs.contains("read 42 rows"), "{logs}");
}

#[test]
fn json_output_is_machine_readable() {
    let home = tempfile::tempdir().unwrap();
    let (flow, task) = record(home.path());
    let ls: serde_json::Value = serde_json::from_str(&stdout(&weir(home.path(), &["runs", "ls", "--json"]))).unwrap();
    assert_eq!(ls[0]["id"], flow.to_string());
    let show: serde_json::Value = serde_json::from_str(&stdout(&weir(
        home.path(),
        &["runs", "show", &flow.to_string(), "--json"],
    )))
    .unwrap();
    assert_eq!(show["task_runs"][0]["id"], task.to_string());
    assert_eq!(show["task_runs"][0]["cache_status"], "hit");
    assert_eq!(show["states"][0]["state"], "Cached");
    let logs: serde_json::Value =
        serde_json::from_str(&stdout(&weir(home.path(), &["runs", "logs", &flow.short(), "--json"]))).unwrap();
    assert_eq!(logs[0]["message"], "read 42 rows");
}

#[test]
fn unknown_ids_and_bad_input_get_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let none = weir(home.path(), &["runs", "ls"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no runs recorded yet"));

    record(home.path());
    let unknown = weir(home.path(), &["runs", "show", "deadbeef"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no flow run matches 'deadbeef'"));

    let bad = weir(home.path(), &["runs", "show", "'; DROP TABLE flow_runs; --"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a run id"));

    let state = weir(home.path(), &["runs", "ls", "--state", "Done"]);
    assert_eq!(state.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&state.stderr).contains("unknown state 'Done'"));

    // Nothing was lost to the bad input.
    assert!(stdout(&weir(home.path(), &["runs", "ls"])).contains("etl"));
}

#[test]
fn a_run_left_running_by_a_dead_process_shows_as_crashed() {
    let home = tempfile::tempdir().unwrap();
    let writer = Writer::start(&home.path().join("weir.db")).unwrap();
    // A real process that has exited: its pid is free.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let flow = FlowRunId::new();
    writer.send(Event::FlowRun(FlowRunRecord {
        id: flow,
        flow_name: "killed".into(),
        flow_path: "app::killed".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Running,
        parameters: serde_json::json!({}),
        created_at: 1,
        started_at: Some(1),
        ended_at: None,
        error: None,
        hostname: host,
        pid,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    }));
    // A run whose pid is alive (this test's own) but was recorded by an earlier process
    // with that pid, which started at another time: the pid was reused.
    let reused = FlowRunId::new();
    let me = std::process::id();
    writer.send(Event::FlowRun(FlowRunRecord {
        id: reused,
        flow_name: "reused".into(),
        flow_path: "app::reused".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Running,
        parameters: serde_json::json!({}),
        created_at: 2,
        started_at: Some(2),
        ended_at: None,
        error: None,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string(),
        pid: me,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    }));
    futures::executor::block_on(writer.flush()).unwrap();
    let conn = rusqlite::Connection::open(home.path().join("weir.db")).unwrap();
    conn.execute("UPDATE flow_runs SET pid_start = 1 WHERE id = ?1", [reused.to_string()])
        .unwrap();

    let show = stdout(&weir(home.path(), &["runs", "show", &flow.short()]));
    assert!(
        show.contains("Crashed") && show.contains(&format!("process {pid} exited")),
        "{show}"
    );
    // Recorded, not only displayed: a filter on the state finds both runs.
    let crashed = stdout(&weir(home.path(), &["runs", "ls", "--state", "Crashed"]));
    assert!(crashed.contains("killed") && crashed.contains("reused"), "{crashed}");
}
