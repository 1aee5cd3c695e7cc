//! `weir server start` as a real process: `weir runs …` against it, and a SIGKILL while
//! clients write.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use weir_types::{Event, FlowRunId, FlowRunRecord, LogRecord, State};

fn start_server(home: &Path, port: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["server", "start", "--port", &port.to_string()])
        .env("WEIR_HOME", home)
        .env_remove("WEIR_DATABASE_URL")
        .env_remove("WEIR_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (child, url)
}

fn flow(id: FlowRunId, n: i64) -> FlowRunRecord {
    FlowRunRecord {
        id,
        flow_name: "ingest".into(),
        flow_path: "app::ingest".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Completed,
        parameters: serde_json::json!({ "n": n }),
        created_at: 1_700_000_000_000_000 + n,
        started_at: Some(1_700_000_000_000_000 + n),
        ended_at: Some(1_700_000_001_000_000 + n),
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
    }
}

fn weir(home: &Path, api: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_HOME", home)
        .env("WEIR_API_URL", api)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_runs_reads_from_the_server() {
    let home = tempfile::tempdir().unwrap();
    let (mut server, api) = start_server(home.path(), 0);
    let client = weir_client::Client::new(&api, None).unwrap();
    let id = FlowRunId::new();
    let log = LogRecord {
        flow_run_id: Some(id),
        task_run_id: None,
        at: 1_700_000_000_500_000,
        level: "INFO".into(),
        target: "app".into(),
        message: "ingested 12 files".into(),
    };
    client
        .post_events(&[Event::FlowRun(flow(id, 1)), Event::Log(log)])
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap(); // no local database at all
    let (o, a) = (other.path().to_path_buf(), api.clone());
    let (ls, show, logs) = tokio::task::spawn_blocking(move || {
        (
            weir(&o, &a, &["runs", "ls"]),
            weir(&o, &a, &["runs", "show", &id.short()]),
            weir(&o, &a, &["runs", "logs", &id.to_string()]),
        )
    })
    .await
    .unwrap();
    assert!(ls.contains(&id.short()) && ls.contains("ingest"), "{ls}");
    assert!(show.contains("Completed") && show.contains("\"n\":1"), "{show}");
    assert!(logs.contains("ingested 12 files"), "{logs}");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_sigkill_and_retries_duplicate_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (mut server, api) = start_server(home.path(), 0);
    let port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
    let client = weir_client::Client::new(&api, None).unwrap();

    // A client writes batches until the server dies under it.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..10_000i64 {
                let batch: Vec<FlowRunId> = (0..5).map(|_| FlowRunId::new()).collect();
                let events: Vec<Event> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, id)| Event::FlowRun(flow(*id, n * 5 + i as i64)))
                    .collect();
                match client.post_events(&events).await {
                    Ok(_) => acked.extend(batch),
                    Err(_) => return (acked, events),
                }
            }
            panic!("the server was never killed");
        })
    };
    // Let some writes land, then SIGKILL.
    loop {
        let page = client.flow_runs(&[("limit", "500")]).await.unwrap();
        if page.items.len() >= 200 {
            break;
        }
        tokio::task::yield_now().await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let (acked, unacked_batch) = writer.await.unwrap();
    assert!(acked.len() >= 200);

    // Restart on the same database and port: every acknowledged run is there.
    let (mut server, api) = start_server(home.path(), port);
    let client = weir_client::Client::new(&api, None).unwrap();
    for id in &acked {
        let run = client.flow_run(*id).await.unwrap();
        assert_eq!(run.state, State::Completed);
    }
    // The client retries the batch whose answer it never got, twice: no duplicates.
    client.post_events(&unacked_batch).await.unwrap();
    client.post_events(&unacked_batch).await.unwrap();
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "500")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let page = client.flow_runs(&q).await.unwrap();
        total += page.items.len();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(total, acked.len() + unacked_batch.len());
    server.kill().unwrap();
    server.wait().unwrap();
}
