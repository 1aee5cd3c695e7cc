use std::time::Duration;

use weir_state::{Event, FlowRunFilter, RunLookupError, StateDb, Writer, WriterOptions};
use weir_types::{
    CacheStatus, FlowRunId, FlowRunRecord, LogRecord, State, StateEntry, StateRecord, TaskRunId, TaskRunRecord,
};

fn flow(id: FlowRunId, name: &str, state: State) -> FlowRunRecord {
    FlowRunRecord {
        id,
        flow_name: name.into(),
        flow_path: format!("app::{name}"),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state,
        parameters: serde_json::json!({"input": [1, 2]}),
        created_at: 1,
        started_at: Some(2),
        ended_at: None,
        error: None,
        hostname: "h".into(),
        pid: 1,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    }
}

fn task(id: TaskRunId, flow: FlowRunId, history: &[State]) -> TaskRunRecord {
    let state = *history.last().unwrap();
    TaskRunRecord {
        id,
        flow_run_id: Some(flow),
        task_name: "t".into(),
        task_path: "app::t".into(),
        state,
        attempt: 1,
        cache_status: CacheStatus::Miss,
        cache_key: Some("ab".into()),
        created_at: 3,
        started_at: None,
        ended_at: None,
        error: None,
        history: history
            .iter()
            .enumerate()
            .map(|(i, s)| StateEntry {
                state: *s,
                at: 10 + i as i64,
                message: None,
            })
            .collect(),
    }
}

#[test]
fn flush_makes_everything_visible_and_latest_snapshot_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/weir.db");
    let writer = Writer::start(&path).unwrap();
    let f = FlowRunId::new();
    let t = TaskRunId::new();
    writer.send(Event::FlowRun(flow(f, "demo", State::Running)));
    let all = [State::Pending, State::Running, State::Completed];
    for n in 1..=all.len() {
        writer.send(Event::TaskRun(task(t, f, &all[..n])));
    }
    writer.send(Event::State(StateRecord {
        flow_run_id: Some(f),
        task_run_id: None,
        state: State::Running,
        at: 5,
        message: None,
    }));
    writer.send(Event::Log(LogRecord {
        flow_run_id: Some(f),
        task_run_id: Some(t),
        at: 6,
        level: "INFO".into(),
        target: "app".into(),
        message: "hello 'quoted'; DROP TABLE logs; --".into(),
    }));
    writer.send(Event::FlowRun(flow(f, "demo", State::Completed)));
    futures::executor::block_on(writer.flush()).unwrap();

    let db = StateDb::open_existing(&path).unwrap();
    let runs = db.list_flow_runs(&FlowRunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, State::Completed);
    assert_eq!(runs[0].parameters, serde_json::json!({"input": [1, 2]}));
    let tasks = db.task_runs(f).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, State::Completed);
    let states: Vec<State> = db.states(f).unwrap().into_iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![State::Running, State::Pending, State::Running, State::Completed]
    );
    let logs = db.logs(f).unwrap();
    assert_eq!(logs[0].message, "hello 'quoted'; DROP TABLE logs; --");
}

#[test]
fn lookup_by_prefix_reports_unknown_invalid_and_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let writer = Writer::start(&path).unwrap();
    let a = FlowRunId::new();
    let b = FlowRunId::new();
    writer.send(Event::FlowRun(flow(a, "one", State::Completed)));
    writer.send(Event::FlowRun(flow(b, "two", State::Failed)));
    futures::executor::block_on(writer.flush()).unwrap();
    let db = StateDb::open(&path).unwrap();

    assert_eq!(db.find_flow_run(&a.to_string()).unwrap().id, a);
    assert_eq!(db.find_flow_run(&a.0.simple().to_string()).unwrap().id, a);
    assert_eq!(
        db.find_flow_run(&a.short()).unwrap().id,
        a,
        "the short id shown in tables"
    );
    // Ids made in the same millisecond share a long prefix; one hex digit is surely ambiguous.
    let first = &a.to_string()[..1];
    assert!(matches!(db.find_flow_run(first), Err(RunLookupError::Ambiguous { .. })));
    assert!(matches!(db.find_flow_run("ffffffff"), Err(RunLookupError::NotFound(_))));
    assert!(matches!(db.find_flow_run("abc%"), Err(RunLookupError::Invalid(_))));
    assert!(matches!(
        db.find_flow_run("' OR 1=1 --"),
        Err(RunLookupError::Invalid(_))
    ));

    let failed = db
        .list_flow_runs(&FlowRunFilter {
            state: Some(State::Failed),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(failed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
}

#[test]
fn missing_database_is_an_error_not_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.db");
    assert!(StateDb::open_existing(&path).is_err());
    assert!(!path.exists());
}

#[test]
fn two_writers_on_one_database_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let w1 = Writer::start(&path).unwrap();
    let w2 = Writer::start(&path).unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = FlowRunId::new();
        ids.push(id);
        let w = if i % 2 == 0 { &w1 } else { &w2 };
        w.send(Event::FlowRun(flow(id, "many", State::Completed)));
    }
    futures::executor::block_on(async {
        w1.flush().await.unwrap();
        w2.flush().await.unwrap();
    });
    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.list_flow_runs(&FlowRunFilter::default()).unwrap().len(), 200);
}

fn log(flow: FlowRunId, message: String) -> Event {
    Event::Log(LogRecord {
        flow_run_id: Some(flow),
        task_run_id: None,
        at: 1,
        level: "INFO".into(),
        target: "app".into(),
        message,
    })
}

/// Holds the database's write lock from another connection, as another process would.
fn lock(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

fn short_waits(attempts: u32) -> WriterOptions {
    WriterOptions {
        busy_timeout: Duration::from_millis(50),
        attempts,
        ..WriterOptions::default()
    }
}

#[test]
fn a_batch_that_meets_a_locked_database_is_retried_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    // Attempts 100 ms, 200 ms, 400 ms… apart, each waiting 50 ms for the lock: the lock,
    // held for 400 ms, outlasts the first attempts but not all of them.
    let writer = Writer::start_with(&path, short_waits(6)).unwrap();
    let holder = lock(&path);
    let f = FlowRunId::new();
    writer.send_for(Some(f), Event::FlowRun(flow(f, "locked", State::Completed)));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        holder.execute_batch("COMMIT").unwrap();
    });
    let started = std::time::Instant::now();
    futures::executor::block_on(writer.flush_run(Some(f))).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the lock really blocked it"
    );
    release.join().unwrap();
    let db = StateDb::open_existing(&path).unwrap();
    assert_eq!(db.flow_run(f).unwrap().unwrap().state, State::Completed);
}

#[test]
fn a_lost_batch_is_reported_to_the_flow_that_lost_it_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let writer = Writer::start_with(&path, short_waits(2)).unwrap();
    let (a, b) = (FlowRunId::new(), FlowRunId::new());
    let holder = lock(&path);
    writer.send_for(Some(a), Event::FlowRun(flow(a, "unlucky", State::Completed)));
    writer.send_for(Some(a), log(a, "lost line".into()));
    // Another flow (or a caller outside any flow) flushing next lost nothing of its own.
    futures::executor::block_on(writer.flush()).unwrap();
    holder.execute_batch("COMMIT").unwrap();

    writer.send_for(Some(b), Event::FlowRun(flow(b, "lucky", State::Completed)));
    futures::executor::block_on(writer.flush_run(Some(b))).unwrap();
    let err = futures::executor::block_on(writer.flush_run(Some(a))).unwrap_err();
    assert!(err.to_string().contains("2 events lost"), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    // Reported once.
    futures::executor::block_on(writer.flush_run(Some(a))).unwrap();
    let db = StateDb::open_existing(&path).unwrap();
    assert!(db.flow_run(a).unwrap().is_none());
    assert_eq!(db.flow_run(b).unwrap().unwrap().state, State::Completed);
}

/// A tiny tmpfs, so the disk really fills up. Needs the right to mount (root).
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<TinyDisk> {
        let at = dir.join("disk");
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(TinyDisk(at))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_loses_only_the_batch_of_the_flow_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = TinyDisk::mount(dir.path(), "2m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root) to fill a disk");
        return;
    };
    let path = disk.0.join("weir.db");
    let writer = Writer::start_with(&path, short_waits(2)).unwrap();
    let (a, b) = (FlowRunId::new(), FlowRunId::new());
    writer.send_for(Some(b), Event::FlowRun(flow(b, "before", State::Running)));
    futures::executor::block_on(writer.flush_run(Some(b))).unwrap();
    // Fill what is left, then send more than fits.
    let filler = disk.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    for i in 0..64 {
        writer.send_for(Some(a), log(a, format!("{i} {}", "x".repeat(16 << 10))));
    }
    // Flow b flushes first (its flush waits behind a's lost batch) and lost nothing.
    futures::executor::block_on(writer.flush_run(Some(b))).unwrap();
    let err = futures::executor::block_on(writer.flush_run(Some(a))).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    // Space comes back: the writer carries on.
    std::fs::remove_file(&filler).unwrap();
    writer.send_for(Some(b), Event::FlowRun(flow(b, "before", State::Completed)));
    futures::executor::block_on(writer.flush_run(Some(b))).unwrap();
    let db = StateDb::open_existing(&path).unwrap();
    assert_eq!(db.flow_run(b).unwrap().unwrap().state, State::Completed);
    assert!(db.logs(a).unwrap().is_empty());
}
