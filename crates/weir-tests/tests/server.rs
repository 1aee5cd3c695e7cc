//! Flows run in other processes report to a real server (WEIR_API_URL).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_types::State;

async fn server(key: Option<&str>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let db = weir_server::Db::connect(&url).await.unwrap();
    let app = weir_server::app(db, key.map(str::to_string));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), dir)
}

fn probe(home: &Path, api: &str, key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache_probe"));
    cmd.env("WEIR_HOME", home)
        .env("WEIR_API_URL", api)
        .env("WEIR_LOG", "warn")
        .env_remove("WEIR_RESULTS")
        .env_remove("WEIR_API_KEY")
        .args(["run", "8"]);
    if let Some(k) = key {
        cmd.env("WEIR_API_KEY", k);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_in_another_process_reports_its_runs_to_the_server() {
    let (api, _db) = server(None).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    let api2 = api.clone();
    let out = tokio::task::spawn_blocking(move || probe(&h, &api2, None))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[("flow", "probe")]).await.unwrap().items;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, State::Completed);
    assert_eq!(runs[0].parameters, serde_json::json!({"n": 8}));
    assert_eq!(runs[0].tags, vec!["nightly".to_string(), "probe".to_string()]);
    assert_eq!(client.flow_runs(&[("tag", "nightly")]).await.unwrap().items.len(), 1);
    assert!(client.flow_runs(&[("tag", "weekly")]).await.unwrap().items.is_empty());
    let tasks = client.task_runs(runs[0].id).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_name, "expensive");
    assert_eq!(tasks[0].state, State::Completed);
    let history: Vec<State> = tasks[0].history.iter().map(|h| h.state).collect();
    assert_eq!(history, vec![State::Pending, State::Running, State::Completed]);
    // One code path, two transports: with a server, nothing went to the local database.
    assert!(!home.path().join("weir.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_loses_the_record_but_not_the_flow() {
    let (api, _db) = server(Some("right-key")).await;
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, Some("wrong-key")))
        .await
        .unwrap();
    assert!(out.status.success(), "the flow itself still succeeds");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not recorded") && err.contains("401"),
        "the loss is reported: {err}"
    );

    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, Some("right-key")))
        .await
        .unwrap();
    assert!(out.status.success());
    let client = weir_client::Client::new(&api, Some("right-key".into())).unwrap();
    assert_eq!(client.flow_runs(&[]).await.unwrap().items.len(), 1);
    let anonymous = weir_client::Client::new(&api, None).unwrap();
    let e = anonymous.flow_runs(&[]).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
}

fn probe_args(home: &Path, api: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cache_probe"))
        .env("WEIR_HOME", home)
        .env("WEIR_API_URL", api)
        .env("WEIR_LOG", "warn")
        .env_remove("WEIR_RESULTS")
        .env_remove("WEIR_API_KEY")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_server_would_refuse_are_cleaned_and_big_batches_split_by_bytes() {
    let (api, _db) = server(None).await;
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    // 80 lines of 60 KiB: about 5 MiB of logs, more than one request may carry.
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["hostile", "80"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("not recorded"), "nothing lost: {stderr}");

    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[]).await.unwrap().items;
    assert_eq!(runs.len(), 1, "the run was recorded");
    let run = &runs[0];
    assert_eq!(run.state, State::Completed);
    assert!(run.flow_name.len() <= 256, "{}", run.flow_name.len());
    assert!(run.flow_name.starts_with("hostile-xxx") && run.flow_name.contains("truncated by weir"));
    let tasks = client.task_runs(run.id).await.unwrap();
    assert_eq!(tasks[0].state, State::Completed);

    let logs = client.logs(run.id).await.unwrap();
    let lines: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    let long = lines.iter().find(|l| l.starts_with("LLLL")).expect("the long line");
    assert!(
        long.len() <= 65536 && long.ends_with("more bytes]"),
        "{}",
        &long[long.len() - 60..]
    );
    assert!(lines.contains(&"before␀after"), "the NUL is replaced, the line kept");
    assert_eq!(lines.iter().filter(|l| l.starts_with("line ")).count(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_nested_too_deep_for_the_server_are_replaced_by_a_note() {
    let (api, _db) = server(None).await;
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    // Parameters nested 200 deep: the server's JSON parser would refuse them (422).
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["deep", "200", "5"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[("flow", "deep")]).await.unwrap().items;
    assert_eq!(runs.len(), 1, "the run itself was recorded: {stderr}");
    assert_eq!(runs[0].state, State::Completed);
    assert!(
        runs[0].parameters.as_str().unwrap_or("").contains("not recorded"),
        "{:?}",
        runs[0].parameters
    );
    let tasks = client.task_runs(runs[0].id).await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, State::Completed);
}

/// The server as its own process (`server_probe`), so it can really be stopped.
struct ServerProcess(Child);

impl ServerProcess {
    fn start(db: &Path, addr: &str) -> (ServerProcess, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server_probe"))
            .arg(db)
            .arg(addr)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("server address")
            .to_string();
        (ServerProcess(child), addr)
    }

    fn stop(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Non-empty spool files under `$WEIR_HOME/spool/<server>/`.
fn spool_files(home: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let servers = std::fs::read_dir(home.join("spool"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    servers
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .filter(|(_, len)| *len > 0)
        .collect()
}

/// The spool folder of the server at `api` (`http://127.0.0.1:4200`).
fn spool_dir(home: &Path, api: &str) -> std::path::PathBuf {
    let folder: String = format!("{}/api/v1", api.trim_start_matches("http://"))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    home.join("spool").join(folder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_down_runs_are_spooled_and_the_next_process_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let (server, addr) = ServerProcess::start(&db, "127.0.0.1:0");
    let api = format!("http://{addr}");
    server.stop();

    // The server is down: the flow still ends, within the flush wait, and says where its
    // records are.
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "31"]))
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(13), "the flow's exit waited {took:?}");
    assert!(stderr.contains("unreachable") && stderr.contains("spool"), "{stderr}");
    let spooled = spool_files(home.path());
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert!(spooled[0].0.starts_with(spool_dir(home.path(), &api)), "{spooled:?}");

    // Back on the same port. The next process delivers the first one's spool.
    let (_server, again) = ServerProcess::start(&db, &addr);
    assert_eq!(again, addr);
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "32"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("unreachable"), "{stderr}");

    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[("flow", "probe")]).await.unwrap().items;
    let mut params: Vec<serde_json::Value> = runs.iter().map(|r| r.parameters.clone()).collect();
    params.sort_by_key(|p| p["n"].as_u64());
    assert_eq!(params, vec![serde_json::json!({"n": 31}), serde_json::json!({"n": 32})]);
    for run in &runs {
        assert_eq!(run.state, State::Completed);
        let tasks = client.task_runs(run.id).await.unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].state, State::Completed);
    }
    assert!(spool_files(home.path()).is_empty(), "the spool was sent and removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_event_does_not_lose_the_rest_of_its_batch() {
    let (api, _db) = server(None).await;
    let home = tempfile::tempdir().unwrap();
    // A spool left by a process that died, written by an SDK that did not clean its events:
    // one log line has a NUL, which the server refuses (422) for the whole request.
    let flow = dead_spool(home.path(), &api, &["first", "bad\0line", "kept"]);

    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "41"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused one event"),
        "the refusal is reported: {stderr}"
    );

    let client = weir_client::Client::new(&api, None).unwrap();
    let run = client.flow_run(flow).await.unwrap();
    assert_eq!(run.state, State::Completed, "events after the refused one arrived");
    let logs = log_messages(&client, flow).await;
    assert_eq!(logs, vec!["first".to_string(), "kept".to_string()]);
    assert!(spool_files(home.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_faster_than_the_server_waits_for_room_and_loses_nothing() {
    let (api, _db) = server(None).await;
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    // 15,000 task runs produce ~45,000 events, far more than the reporter's queue holds:
    // the flow must wait for room (not hang, not grow memory, not drop anything).
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cache_probe"))
            .env("WEIR_HOME", &h)
            .env("WEIR_API_URL", &a)
            .env("WEIR_LOG", "warn")
            .env_remove("WEIR_API_KEY")
            .args(["flood", "15000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(240);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the flow hung or failed: {stderr}");
    assert!(!stderr.contains("not recorded"), "{stderr}");
    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[("flow", "flood")]).await.unwrap().items;
    assert_eq!(runs[0].state, State::Completed);
    let tasks = client.task_runs(runs[0].id).await.unwrap();
    assert_eq!(tasks.len(), 15_000);
    assert!(tasks.iter().all(|t| t.state == State::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_but_never_answers_holds_a_flow_s_exit_at_most_the_flush_wait() {
    // A hung server (a stuck proxy, a server whose database hangs): connections are
    // accepted (the kernel's backlog) but no request is ever answered.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", hung.local_addr().unwrap());
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "51"]))
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // README: a flow's end waits at most 10 s for an unreachable server (plus the
    // process's own start and a little slack, far less than another request timeout).
    assert!(
        took < Duration::from_secs(13),
        "the flow's exit waited {took:?}: {stderr}"
    );
    assert!(stderr.contains("unreachable") && stderr.contains("spool"), "{stderr}");
    let spooled = spool_files(home.path());
    assert_eq!(spooled.len(), 1, "every event is in the spool: {spooled:?}");
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_goes_to_the_server_it_was_meant_for_not_another() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let (x, x_addr) = ServerProcess::start(&db, "127.0.0.1:0");
    let x_api = format!("http://{x_addr}");
    x.stop();
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), x_api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "61"]))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));

    // The same home now reports to another server: it must not receive X's runs.
    let (y_api, _y_db) = server(None).await;
    let (h, a) = (home.path().to_path_buf(), y_api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "62"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let params = |runs: Vec<weir_types::FlowRunRecord>| {
        let mut p: Vec<u64> = runs.iter().map(|r| r.parameters["n"].as_u64().unwrap()).collect();
        p.sort();
        p
    };
    let y = weir_client::Client::new(&y_api, None).unwrap();
    assert_eq!(params(y.flow_runs(&[]).await.unwrap().items), vec![62]);

    // X is back: the next process reporting to it delivers X's spool.
    let (_x, again) = ServerProcess::start(&db, &x_addr);
    assert_eq!(again, x_addr);
    let (h, a) = (home.path().to_path_buf(), x_api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "63"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let x = weir_client::Client::new(&x_api, None).unwrap();
    assert_eq!(params(x.flow_runs(&[]).await.unwrap().items), vec![61, 63]);
}

/// Waits (bounded) for a file a child process writes.
fn wait_for_file(path: &Path, child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the process ended before {path:?}");
        assert!(Instant::now() < until, "no {path:?} within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_being_created_is_never_taken_for_a_dead_process_s() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let (server, addr) = ServerProcess::start(&db, "127.0.0.1:0");
    let api = format!("http://{addr}");
    server.stop();
    let home = tempfile::tempdir().unwrap();
    let gate = tempfile::tempdir().unwrap();

    // A starts spooling (the server is down) and stops right after creating its spool file.
    let (h, a, g) = (home.path().to_path_buf(), api.clone(), gate.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        let mut owner = Command::new(env!("CARGO_BIN_EXE_cache_probe"))
            .env("WEIR_HOME", &h)
            .env("WEIR_API_URL", &a)
            .env("WEIR_LOG", "warn")
            .env("WEIR_TEST_SPOOL_GATE", &g)
            .env_remove("WEIR_RESULTS")
            .env_remove("WEIR_API_KEY")
            .args(["run", "91"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&g.join("paused"), &mut owner);
        // Meanwhile the server is back and B, reporting to it, looks for dead processes' spools.
        let (server, again) = ServerProcess::start(&db, &addr);
        assert_eq!(again, addr);
        let other = probe_args(&h, &a, &["run", "92"]);
        assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
        std::fs::write(g.join("go"), b"").unwrap();
        (owner.wait_with_output().unwrap(), server)
    })
    .await
    .unwrap();
    let (owner, _server) = out;
    let stderr = String::from_utf8_lossy(&owner.stderr);
    assert!(owner.status.success(), "{stderr}");

    // A's events reached the server (through its spool): none went into a deleted file.
    let client = weir_client::Client::new(&api, None).unwrap();
    let mut params: Vec<u64> = client
        .flow_runs(&[("flow", "probe")])
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.parameters["n"].as_u64().unwrap())
        .collect();
    params.sort();
    assert_eq!(params, vec![91, 92], "A's runs were lost: {stderr}");
    assert!(spool_files(home.path()).is_empty(), "{:?}", spool_files(home.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_holds_at_most_its_bound_and_says_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = ServerProcess::start(&dir.path().join("server.db"), "127.0.0.1:0");
    let api = format!("http://{addr}");
    server.stop();
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    // 300 task runs make far more than 20,000 bytes of events.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cache_probe"))
            .env("WEIR_HOME", &h)
            .env("WEIR_API_URL", &a)
            .env("WEIR_LOG", "warn")
            .env("WEIR_SPOOL_MAX_BYTES", "20000")
            .env_remove("WEIR_RESULTS")
            .env_remove("WEIR_API_KEY")
            .args(["flood", "300"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let spooled = spool_files(home.path());
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let (path, len) = &spooled[0];
    assert!(*len <= 20_000, "the spool grew to {len} bytes");
    // Filled, not given up at the first batch that did not fit whole.
    assert!(*len > 10_000, "the spool holds only {len} bytes");
    assert!(
        stderr.contains("not recorded") && stderr.contains("is full"),
        "the loss is reported: {stderr}"
    );
    let lines = std::fs::read_to_string(path).unwrap();
    assert!(
        lines
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

/// A dead process's spool (`1-1-dead.jsonl`) of one flow run: Running, the log lines, then
/// Completed. Returns the run's id.
/// The messages of a flow run's log lines, in order.
async fn log_messages(client: &weir_client::Client, flow: weir_types::FlowRunId) -> Vec<String> {
    client
        .logs(flow)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect()
}

fn dead_spool(home: &Path, api: &str, logs: &[&str]) -> weir_types::FlowRunId {
    let flow = weir_types::FlowRunId::new();
    let rec = |state: State| {
        serde_json::json!({"kind": "flow_run", "record": {
            "id": flow, "flow_name": "spooled", "flow_path": "app::spooled",
            "parent_flow_run_id": null, "parent_task_run_id": null, "state": state,
            "parameters": {}, "created_at": 1, "started_at": 1, "ended_at": null, "error": null,
            "hostname": "h", "pid": 1, "tags": []}})
    };
    let mut lines = vec![rec(State::Running)];
    for (i, message) in logs.iter().enumerate() {
        lines.push(serde_json::json!({"kind": "log", "record": {
            "flow_run_id": flow, "task_run_id": null, "at": 2 + i as i64, "level": "INFO",
            "target": "app", "message": message}}));
    }
    let mut completed = rec(State::Completed);
    completed["record"]["ended_at"] = serde_json::json!(3);
    lines.push(completed);
    let spool = spool_dir(home, api);
    std::fs::create_dir_all(&spool).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(spool.join("1-1-dead.jsonl"), text).unwrap();
    flow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_server_always_fails_on_is_dropped_and_the_rest_delivered() {
    // The real server, with one fault no real input causes: every batch holding the word
    // "poison" gets a 500 (a server bug on one event), while the server answers the rest.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let db = weir_server::Db::connect(&url).await.unwrap();
    let poisoned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = std::sync::Arc::clone(&poisoned);
    let app = weir_server::app(db, None).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let hits = std::sync::Arc::clone(&hits);
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
                if body.windows(6).any(|w| w == b"poison") {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error",
                    ));
                }
                next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body)))
                    .await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let home = tempfile::tempdir().unwrap();
    let flow = dead_spool(home.path(), &api, &["first", "a poison pill", "kept"]);
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "71"]))
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not recorded") && stderr.contains("500"),
        "the loss is reported: {stderr}"
    );
    assert!(!stderr.contains("unreachable"), "{stderr}");
    // Bounded: a few tries of the batch, then of its halves, not a stall until the flush wait.
    assert!(took < Duration::from_secs(8), "took {took:?}: {stderr}");
    let tries = poisoned.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tries <= 10, "{tries} requests with the poisoned event");

    let client = weir_client::Client::new(&api, None).unwrap();
    let run = client.flow_run(flow).await.unwrap();
    assert_eq!(run.state, State::Completed, "events after the poisoned one arrived");
    let logs = log_messages(&client, flow).await;
    assert_eq!(logs, vec!["first".to_string(), "kept".to_string()]);
    assert!(spool_files(home.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_delivery_cut_partway_resumes_without_resending() {
    // A real spool of more than one request: a flow of 1500 tasks with the server down.
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("server.db");
    let (server, addr) = ServerProcess::start(&db_path, "127.0.0.1:0");
    server.stop();
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), format!("http://{addr}"));
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["flood", "1500"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spooled = spool_files(home.path());
    assert_eq!(spooled.len(), 1);
    let text = std::fs::read_to_string(&spooled[0].0).unwrap();
    assert!(text.lines().count() > 4000, "more than two requests' worth");
    let last = text.lines().last().unwrap().as_bytes().to_vec();

    // The server is back but goes away for a second when the spool's last request arrives
    // (after the first ones were delivered): it answers 503 to everything meanwhile.
    let url = format!("sqlite://{}", dir.path().join("back.db").display());
    let db = weir_server::Db::connect(&url).await.unwrap();
    let down_since = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let went_down = std::sync::Arc::clone(&down_since);
    let app = weir_server::app(db, None).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let (down_since, last) = (std::sync::Arc::clone(&down_since), last.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
                let down = {
                    let mut since = down_since.lock().unwrap();
                    if since.is_none() && body.windows(last.len()).any(|w| w == last.as_slice()) {
                        *since = Some(Instant::now());
                    }
                    since.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                };
                if down {
                    return axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "restarting",
                    ));
                }
                next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body)))
                    .await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The spool, moved to this server's folder (as if it had been spooled for it).
    let folder = spool_dir(home.path(), &api);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::rename(&spooled[0].0, folder.join("1-1-dead.jsonl")).unwrap();

    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe_args(&h, &a, &["run", "73"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let client = weir_client::Client::new(&api, None).unwrap();
    let runs = client.flow_runs(&[("flow", "flood")]).await.unwrap().items;
    assert_eq!(runs.len(), 1, "{stderr}");
    assert_eq!(runs[0].state, State::Completed, "{stderr}");
    assert_eq!(client.task_runs(runs[0].id).await.unwrap().len(), 1500);
    assert!(went_down.lock().unwrap().is_some(), "the delivery was cut");
    // Nothing delivered was sent again, so the server refused nothing.
    let warnings = stderr.lines().filter(|l| l.contains("refused")).count();
    assert_eq!(warnings, 0, "{stderr}");
    assert!(spool_files(home.path()).is_empty());
}
