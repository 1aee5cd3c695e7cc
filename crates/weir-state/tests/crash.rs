//! Crash detection with real processes: a killed one, and a pid that now names another.

use std::process::Command;

use weir_state::{Event, FlowRunFilter, StateDb, Writer, process_start_time};
use weir_types::{CacheStatus, FlowRunId, FlowRunRecord, State, StateEntry, TaskRunId, TaskRunRecord};

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn running(id: FlowRunId, pid: u32) -> FlowRunRecord {
    FlowRunRecord {
        id,
        flow_name: "long".into(),
        flow_path: "app::long".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Running,
        parameters: serde_json::json!({}),
        created_at: 1,
        started_at: Some(1),
        ended_at: None,
        error: None,
        hostname: host(),
        pid,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    }
}

fn crashed(db: &StateDb) -> Vec<FlowRunId> {
    let filter = FlowRunFilter {
        state: Some(State::Crashed),
        ..Default::default()
    };
    db.list_flow_runs(&filter).unwrap().iter().map(|r| r.id).collect()
}

#[test]
fn the_writer_records_the_start_time_of_its_own_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let writer = Writer::start(&path).unwrap();
    let id = FlowRunId::new();
    writer.send(Event::FlowRun(running(id, std::process::id())));
    futures::executor::block_on(writer.flush()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let start: Option<i64> = conn
        .query_row("SELECT pid_start FROM flow_runs WHERE id = ?1", [id.to_string()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(start.map(|s| s as u64), process_start_time(std::process::id()));
    assert!(start.is_some());

    // This process is alive with that start time: its run is not crashed.
    let mut db = StateDb::open_existing(&path).unwrap();
    assert!(db.mark_crashed_runs(&host()).unwrap().is_empty());
    assert_eq!(db.flow_run(id).unwrap().unwrap().state, State::Running);
}

#[test]
fn a_run_of_a_killed_process_is_persisted_as_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = child.id();
    let start = process_start_time(pid).expect("the child runs");
    let writer = Writer::start(&path).unwrap();
    let id = FlowRunId::new();
    writer.send(Event::FlowRun(running(id, pid)));
    let task = TaskRunId::new();
    writer.send(Event::TaskRun(TaskRunRecord {
        id: task,
        flow_run_id: Some(id),
        task_name: "step".into(),
        task_path: "app::step".into(),
        state: State::Running,
        attempt: 1,
        cache_status: CacheStatus::Disabled,
        cache_key: None,
        created_at: 1,
        started_at: Some(1),
        ended_at: None,
        error: None,
        history: vec![StateEntry {
            state: State::Running,
            at: 1,
            message: None,
        }],
    }));
    futures::executor::block_on(writer.flush()).unwrap();
    // As the child's own writer would have recorded it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE flow_runs SET pid_start = ?2 WHERE id = ?1",
        rusqlite::params![id.to_string(), start as i64],
    )
    .unwrap();

    let mut db = StateDb::open_existing(&path).unwrap();
    assert!(db.mark_crashed_runs(&host()).unwrap().is_empty(), "alive: not crashed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(db.mark_crashed_runs(&host()).unwrap(), vec![id]);

    // Persisted: a fresh connection filtering by state finds it, with the reason.
    let db = StateDb::open_existing(&path).unwrap();
    assert_eq!(crashed(&db), vec![id]);
    let run = db.flow_run(id).unwrap().unwrap();
    assert!(run.ended_at.is_some());
    assert!(run.error.unwrap().contains(&format!("process {pid} exited")));
    assert_eq!(db.states(id).unwrap().last().unwrap().state, State::Crashed);
    let task = db.task_run(task).unwrap().unwrap();
    assert_eq!(task.state, State::Crashed);
    let history: Vec<State> = task.history.iter().map(|h| h.state).collect();
    assert_eq!(history, vec![State::Running, State::Crashed]);
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_run_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let writer = Writer::start(&path).unwrap();
    // The pid is alive (it is this test process), but the run was recorded by an earlier
    // process that had the same pid: its start time differs.
    let me = std::process::id();
    let (reused, ours) = (FlowRunId::new(), FlowRunId::new());
    writer.send(Event::FlowRun(running(reused, me)));
    writer.send(Event::FlowRun(running(ours, me)));
    futures::executor::block_on(writer.flush()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let earlier = process_start_time(me).unwrap() as i64 - 1;
    conn.execute(
        "UPDATE flow_runs SET pid_start = ?2 WHERE id = ?1",
        rusqlite::params![reused.to_string(), earlier],
    )
    .unwrap();

    let mut db = StateDb::open_existing(&path).unwrap();
    assert_eq!(db.mark_crashed_runs(&host()).unwrap(), vec![reused]);
    assert_eq!(crashed(&db), vec![reused]);
    assert_eq!(db.flow_run(ours).unwrap().unwrap().state, State::Running);
    let run = db.flow_run(reused).unwrap().unwrap();
    assert!(run.error.unwrap().contains("now belongs to another process"));
}

#[test]
fn a_killed_process_not_yet_reaped_by_its_parent_is_dead() {
    // A zombie keeps its /proc entry, start time included, until its parent waits for it
    // (forever under an init that never reaps, as in many containers): it runs no more.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = child.id();
    let start = process_start_time(pid).expect("the child runs");
    let writer = Writer::start(&path).unwrap();
    let id = FlowRunId::new();
    writer.send(Event::FlowRun(running(id, pid)));
    futures::executor::block_on(writer.flush()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE flow_runs SET pid_start = ?2 WHERE id = ?1",
        rusqlite::params![id.to_string(), start as i64],
    )
    .unwrap();
    let mut db = StateDb::open_existing(&path).unwrap();
    assert!(db.mark_crashed_runs(&host()).unwrap().is_empty(), "alive: not crashed");

    child.kill().unwrap();
    // Killed, not reaped: wait until the kernel shows it as a zombie.
    let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stat().contains(") Z ") {
        assert!(std::time::Instant::now() < deadline, "{}", stat());
        std::thread::yield_now();
    }
    assert_eq!(process_start_time(pid), Some(start), "a zombie keeps its start time");
    assert_eq!(db.mark_crashed_runs(&host()).unwrap(), vec![id]);
    assert_eq!(crashed(&db), vec![id]);
    let error = db.flow_run(id).unwrap().unwrap().error.unwrap();
    assert!(!error.contains("another process"), "its own pid still: {error}");
    child.wait().unwrap();
}
