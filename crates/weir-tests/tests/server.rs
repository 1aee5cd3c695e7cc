//! Flows run in other processes report to a real server (WEIR_API_URL).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

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
