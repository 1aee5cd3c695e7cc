use weir_state::{Event, FlowRunFilter, RunLookupError, StateDb, Writer};
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
