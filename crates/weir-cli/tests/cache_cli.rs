//! `weir cache …` against a real folder store and state database.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use weir_cache::folder::FolderBackend;
use weir_cache::{EntryMeta, InputDigest, PutMode, ResultStore, Store};
use weir_state::{Event, Writer};
use weir_types::{CacheStatus, FlowRunId, FlowRunRecord, State, TaskRunId, TaskRunRecord};

fn weir(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_HOME", home)
        .env_remove("WEIR_RESULTS")
        .env_remove("WEIR_RESULTS_DIR")
        .env_remove("WEIR_STATE_DB")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn entry(key: &str, created_at: i64, source: &str, inputs: &[(&str, &str)]) -> EntryMeta {
    EntryMeta {
        format: 1,
        key: key.into(),
        task: "app::etl::load".into(),
        flow: Some("etl".into()),
        flow_run_id: None,
        task_run_id: "t".into(),
        serializer: "json".into(),
        created_at,
        expires_at: None,
        size: 0,
        raw_size: 0,
        compression: None,
        blob: String::new(),
        cache_version: "1".into(),
        source_hash: Some(source.into()),
        code_hash: Some(source.into()),
        inputs: inputs
            .iter()
            .map(|(n, d)| InputDigest {
                name: (*n).into(),
                digest: d.repeat(64 / d.len()),
            })
            .collect(),
        files: Vec::new(),
        inline: None,
    }
}

/// Two entries of one task, and a flow run whose task run missed on the second.
async fn setup(home: &Path, second_source: &str, second_inputs: &[(&str, &str)]) -> FlowRunId {
    let (flow, events) = records(home, second_source, second_inputs).await;
    let writer = Writer::start(&home.join("weir.db")).unwrap();
    for e in events {
        writer.send(e);
    }
    writer.flush().await.unwrap();
    flow
}

/// The store entries of [`setup`], and the run records to report.
async fn records(home: &Path, second_source: &str, second_inputs: &[(&str, &str)]) -> (FlowRunId, Vec<Event>) {
    let store = Store::new(Arc::new(FolderBackend::open(home.join("results")).unwrap()));
    let (k1, k2) = ("a".repeat(64), "b".repeat(64));
    let now = weir_types::time::now_micros();
    store
        .put(
            entry(&k1, now - 5_000_000, "s1", &[("day", "1"), ("region", "e")]),
            vec![b'1'; 5000], // above the inline size: stored as a blob
            PutMode::IfAbsent,
        )
        .await
        .unwrap();
    store
        .put(
            entry(&k2, now, second_source, second_inputs),
            vec![b'2'; 5000],
            PutMode::IfAbsent,
        )
        .await
        .unwrap();
    let flow = FlowRunId::new();
    let mut events = vec![Event::FlowRun(FlowRunRecord {
        id: flow,
        flow_name: "etl".into(),
        flow_path: "app::etl".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Completed,
        parameters: serde_json::json!({}),
        created_at: now,
        started_at: Some(now),
        ended_at: Some(now),
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
    })];
    for (status, key) in [(CacheStatus::Hit, k1.clone()), (CacheStatus::Miss, k2.clone())] {
        events.push(Event::TaskRun(TaskRunRecord {
            id: TaskRunId::new(),
            flow_run_id: Some(flow),
            task_name: "load".into(),
            task_path: "app::etl::load".into(),
            state: State::Completed,
            attempt: 1,
            cache_status: status,
            cache_key: Some(key),
            created_at: now,
            started_at: Some(now),
            ended_at: Some(now),
            error: None,
            history: vec![],
        }));
    }
    (flow, events)
}

/// With `WEIR_API_URL` set, `cache explain` and `cache stats` read the runs from the server
/// (this machine has no run database at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_stats_read_runs_from_a_server() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    let server_home = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["server", "start", "--port", "0"])
        .env("WEIR_HOME", server_home.path())
        .env_remove("WEIR_DATABASE_URL")
        .env_remove("WEIR_API_KEY")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let (flow, events) = records(home.path(), "s1", &[("day", "2"), ("region", "e")]).await;
    let client = weir_client::Client::new(&api, None).unwrap();
    client.post_events(&events).await.unwrap();
    assert!(!home.path().join("weir.db").exists());
    let home_path = home.path().to_path_buf();
    let api_url = api.clone();
    let remote = move |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .env("WEIR_HOME", &home_path)
            .env("WEIR_API_URL", &api_url)
            .env_remove("WEIR_API_KEY")
            .env_remove("WEIR_RESULTS")
            .env_remove("WEIR_RESULTS_DIR")
            .env_remove("WEIR_STATE_DB")
            .output()
            .unwrap()
    };
    let a = flow.short();
    let (explained, stats) = tokio::task::spawn_blocking(move || {
        (
            stdout(&remote(&["cache", "explain", &a, "load"])),
            stdout(&remote(&["cache", "stats", "--json"])),
        )
    })
    .await
    .unwrap();
    assert!(explained.contains("input `day` changed"), "{explained}");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn explain_names_the_input_that_changed() {
    let home = tempfile::tempdir().unwrap();
    let flow = setup(home.path(), "s1", &[("day", "2"), ("region", "e")]).await;
    let out = stdout(&weir(home.path(), &["cache", "explain", &flow.short(), "load"]));
    assert!(out.contains("input `day` changed"), "{out}");
    assert!(!out.contains("region"), "unchanged inputs are not blamed: {out}");
    assert!(!out.contains("code changed"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&weir(
        home.path(),
        &["cache", "explain", &flow.short(), "load", "--json"],
    )))
    .unwrap();
    assert_eq!(json["changed_inputs"], serde_json::json!(["day"]));
    assert_eq!(json["compared_with"], "a".repeat(64));
}

#[tokio::test]
async fn explain_names_a_code_change_and_new_inputs() {
    let home = tempfile::tempdir().unwrap();
    let flow = setup(home.path(), "s2", &[("day", "1"), ("region", "e"), ("limit", "9")]).await;
    let out = stdout(&weir(home.path(), &["cache", "explain", &flow.to_string(), "load"]));
    assert!(out.contains("the task's code changed"), "{out}");
    assert!(out.contains("input `limit` is new"), "{out}");
    assert!(!out.contains("`day`"), "{out}");
}

#[tokio::test]
async fn ls_show_rm_stats_and_gc() {
    let home = tempfile::tempdir().unwrap();
    setup(home.path(), "s1", &[("day", "2")]).await;
    let ls = stdout(&weir(home.path(), &["cache", "ls", "--task", "load"]));
    assert!(ls.contains("aaaaaaaaaaaa") && ls.contains("bbbbbbbbbbbb"), "{ls}");
    assert!(stdout(&weir(home.path(), &["cache", "ls", "--flow", "other"])).contains("no cache entries match"));

    let show = stdout(&weir(home.path(), &["cache", "show", "aaaa"]));
    assert!(show.contains("app::etl::load") && show.contains("region"), "{show}");

    let stats: serde_json::Value =
        serde_json::from_str(&stdout(&weir(home.path(), &["cache", "stats", "--json"]))).unwrap();
    assert_eq!(
        (
            stats["entries"].as_u64(),
            stats["hits"].as_u64(),
            stats["misses"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );

    let unknown = weir(home.path(), &["cache", "show", "cccc"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no cache entry matches 'cccc'"));
    let bad = weir(home.path(), &["cache", "rm", "../../etc"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a cache key"));

    assert!(stdout(&weir(home.path(), &["cache", "rm", "bbbb"])).contains("removed"));
    let dry = stdout(&weir(
        home.path(),
        &["cache", "gc", "--older-than", "0s", "--dry-run", "--grace", "0s"],
    ));
    assert!(dry.contains("would remove 1 entries and 2 blobs"), "{dry}");
    assert!(
        stdout(&weir(home.path(), &["cache", "ls"])).contains("aaaaaaaaaaaa"),
        "dry run kept it"
    );
    let gc = stdout(&weir(
        home.path(),
        &["cache", "gc", "--older-than", "0s", "--grace", "0s"],
    ));
    assert!(gc.contains("removed 1 entries and 2 blobs"), "{gc}");
    assert!(stdout(&weir(home.path(), &["cache", "ls"])).contains("no cache entries"));
    let bad_size = weir(home.path(), &["cache", "gc", "--max-size", "lots"]);
    assert!(String::from_utf8_lossy(&bad_size.stderr).contains("invalid --max-size 'lots'"));
}

/// `weir cache rm` opens the store as the SDK does, local tier included: this machine's
/// copy goes with the shared entry, and its next lookup misses.
#[tokio::test]
async fn rm_also_clears_the_local_tier() {
    use weir_cache::tier::Tiered;
    let home = tempfile::tempdir().unwrap();
    let (shared, local) = (home.path().join("shared"), home.path().join("local"));
    let remote: Arc<dyn ResultStore> = Arc::new(Store::new(Arc::new(FolderBackend::open(&shared).unwrap())));
    let machine = Tiered::new(FolderBackend::open(&local).unwrap(), remote, 1 << 30);
    let key_hex = "c".repeat(64);
    let key: weir_cache::CacheKey = key_hex.parse().unwrap();
    let now = weir_types::time::now_micros();
    machine
        .put(entry(&key_hex, now, "s", &[]), b"cached".to_vec(), PutMode::IfAbsent)
        .await
        .unwrap();
    assert!(machine.local().entry(&key).await.unwrap().is_some(), "kept locally");

    let rm = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["cache", "rm", "cccc"])
        .env("WEIR_HOME", home.path())
        .env("WEIR_RESULTS", &shared)
        .env("WEIR_LOCAL_CACHE", &local)
        .env_remove("WEIR_RESULTS_DIR")
        .env_remove("WEIR_STATE_DB")
        .output()
        .unwrap();
    assert!(stdout(&rm).contains("removed"));
    assert!(
        machine.local().entry(&key).await.unwrap().is_none(),
        "the local copy went too"
    );
    assert!(matches!(
        machine.get(&key, now).await.unwrap(),
        weir_cache::Lookup::Miss
    ));
}
