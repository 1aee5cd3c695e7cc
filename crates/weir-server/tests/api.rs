//! The API against real databases: the same suite on SQLite and on PostgreSQL (a throwaway
//! cluster made in a temp dir with the machine's PostgreSQL 15 binaries).

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_types::{FlowRunId, TaskRunId};

#[path = "support/pg.rs"]
mod pg;
use pg::Pg;

/// The server on 127.0.0.1:0, in this process.
async fn start(db_url: &str, key: Option<&str>) -> String {
    let db = weir_server::Db::connect(db_url).await.unwrap();
    let app = weir_server::app(db, key.map(str::to_string));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api/v1")
}

fn flow(id: FlowRunId, name: &str, state: &str, created: i64, tags: &[&str]) -> Value {
    json!({
        "id": id, "flow_name": name, "flow_path": format!("app::{name}"), "parent_flow_run_id": null,
        "parent_task_run_id": null, "state": state, "parameters": {"day": "2026-11-22"}, "created_at": created,
        "started_at": created, "ended_at": null, "error": null, "hostname": "h", "pid": 7, "tags": tags
    })
}

fn task(id: TaskRunId, flow: FlowRunId, state: &str) -> Value {
    json!({
        "id": id, "flow_run_id": flow, "task_name": "load", "task_path": "app::load", "state": state,
        "attempt": 1, "cache_status": "miss", "cache_key": "ab", "created_at": 5, "started_at": 5,
        "ended_at": null, "error": null, "history": [{"state": state, "at": 5}]
    })
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(c: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let r = c.get(url).send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Bad query parameters get the same JSON 422 as bad bodies, naming the field as sent.
async fn query_errors(base: &str) {
    let c = reqwest::Client::new();
    let f = FlowRunId::new();
    post(&c, format!("{base}/flow_runs"), flow(f, "q", "Running", 1, &[])).await;
    for (url, field) in [
        ("/flow_runs?limit=abc", "limit"),
        ("/flow_runs?created_after=x", "created_after"),
        ("/flow_runs?bogus=1", "bogus"),
        ("/flow_runs?limit=0", "limit"),
        ("/flow_runs?limit=501", "limit"),
        ("/flow_runs?limit=-1", "limit"),
        ("/flow_runs?parent=nope", "parent"),
        ("/task_runs?flow_run_id=nope", "flow_run_id"),
        ("/task_runs?limit=1001", "limit"),
        ("/flow_runs/nope", "id"),
        ("/task_runs/nope", "id"),
        (&format!("/flow_runs/{f}/logs?follow=61"), "follow"),
        (&format!("/flow_runs/{f}/logs?after=-1"), "after"),
        (&format!("/flow_runs/{f}/logs?limit=x"), "limit"),
        ("/flows?limit=0", "limit"),
        ("/variables?cursor=a&extra=1", "extra"),
        // Path parameters too: bytes that are not UTF-8 once decoded.
        ("/flow_runs/%FF", "id"),
        ("/flow_runs/%C3%28/logs", "id"),
        ("/task_runs/%FF", "id"),
        ("/variables/%FF", "name"),
    ] {
        let r = c.get(format!("{base}{url}")).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
        assert_eq!(e["error"]["code"], "invalid", "{url}: {e}");
        assert_eq!(e["error"]["field"], field, "{url}: {e}");
    }
    let nul = flow(FlowRunId::new(), "bad\u{0}name", "Running", 3, &[]);
    let (s, e) = post(&c, format!("{base}/flow_runs"), nul).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("flow_name")),
        "{e}"
    );
}

async fn suite(base: &str) {
    let c = reqwest::Client::new();
    let f = FlowRunId::new();
    let t = TaskRunId::new();
    let log = json!({"kind": "log", "record": {"flow_run_id": f, "task_run_id": t, "at": 6, "level": "INFO",
        "target": "app", "message": "it's 'quoted'; DROP TABLE logs; --"}});
    let batch = json!({"events": [
        {"kind": "flow_run", "record": flow(f, "etl", "Pending", 1, &["nightly"])},
        {"kind": "flow_run", "record": flow(f, "etl", "Running", 1, &["nightly"])},
        {"kind": "task_run", "record": task(t, f, "Running")},
        {"kind": "task_run", "record": task(t, f, "Completed")},
        log,
        {"kind": "flow_run", "record": flow(f, "etl", "Completed", 1, &["nightly"])},
    ]});
    let (s, r) = post(&c, format!("{base}/events"), batch.clone()).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["accepted"], 6);
    // A client retrying after a lost response duplicates nothing.
    let (_, r) = post(&c, format!("{base}/events"), batch).await;
    let rejected: Vec<u64> = r["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rejected,
        vec![0, 1, 2],
        "stale Pending/Running snapshots of finished runs: {r}"
    );
    let (_, logs) = get(&c, format!("{base}/flow_runs/{f}/logs")).await;
    assert_eq!(logs["items"].as_array().unwrap().len(), 1, "{logs}");
    assert_eq!(logs["items"][0]["message"], "it's 'quoted'; DROP TABLE logs; --");
    let (_, states) = get(&c, format!("{base}/flow_runs/{f}/states")).await;
    let names: Vec<&str> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|s| **s == "Completed").count(), 1, "{states}");

    // Orchestration rules: a Completed run cannot run again; proposing its own state is a no-op.
    let (s, e) = post(&c, format!("{base}/flow_runs/{f}/state"), json!({"state": "Running"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "conflict");
    let (s, _) = post(&c, format!("{base}/flow_runs/{f}/state"), json!({"state": "Completed"})).await;
    assert_eq!(s, StatusCode::OK);
    let g = FlowRunId::new();
    post(&c, format!("{base}/flow_runs"), flow(g, "etl", "Running", 2, &[])).await;
    let (s, _) = post(
        &c,
        format!("{base}/flow_runs/{g}/state"),
        json!({"state": "Cancelled", "message": "by hand"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&c, format!("{base}/flow_runs/{g}/state"), json!({"state": "Running"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "a Cancelled run stays cancelled");

    // Reads, filters, 404s.
    let (s, run) = get(&c, format!("{base}/flow_runs/{f}")).await;
    assert_eq!((s, run["state"].as_str()), (StatusCode::OK, Some("Completed")));
    assert_eq!(run["tags"], json!(["nightly"]));
    let (s, e) = get(&c, format!("{base}/flow_runs/{}", FlowRunId::new())).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, e) = get(&c, format!("{base}/flow_runs/not-an-id")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (_, tasks) = get(&c, format!("{base}/task_runs?flow_run_id={f}")).await;
    assert_eq!(tasks["items"][0]["state"], "Completed");
    let (_, tagged) = get(&c, format!("{base}/flow_runs?tag=nightly")).await;
    assert_eq!(tagged["items"].as_array().unwrap().len(), 1);
    let (_, cancelled) = get(&c, format!("{base}/flow_runs?state=Cancelled")).await;
    assert_eq!(cancelled["items"][0]["id"], json!(g));
    let (s, e) = get(&c, format!("{base}/flow_runs?state=Done")).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("state"))
    );

    // Cursor pagination over many runs: every run exactly once, newest first.
    let mut events = Vec::new();
    for i in 0..120 {
        events.push(json!({"kind": "flow_run", "record": flow(FlowRunId::new(), "paged", "Completed", 1000 + i, &[])}));
    }
    post(&c, format!("{base}/events"), json!({ "events": events })).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/flow_runs?flow=paged&limit=50");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (_, page) = get(&c, url).await;
        for r in page["items"].as_array().unwrap() {
            seen.push(r["created_at"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 120);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats");
    let (_, window) = get(
        &c,
        format!("{base}/flow_runs?flow=paged&created_after=1100&created_before=1110"),
    )
    .await;
    assert_eq!(window["items"].as_array().unwrap().len(), 10);

    // Follow mode: a waiting reader gets a line as soon as it is written.
    let follow = {
        let c = c.clone();
        let url = format!("{base}/flow_runs/{f}/logs?after={}&follow=30", logs["last_seq"]);
        tokio::spawn(async move { get(&c, url).await })
    };
    let line = json!({"events": [{"kind": "log", "record": {"flow_run_id": f, "task_run_id": null, "at": 9,
        "level": "WARN", "target": "app", "message": "late line"}}]});
    let started = std::time::Instant::now();
    loop {
        // Post until the follower (which may not be waiting yet) has returned with it.
        post(&c, format!("{base}/events"), line.clone()).await;
        if follow.is_finished() || started.elapsed() > std::time::Duration::from_secs(20) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (_, followed) = follow.await.unwrap();
    assert_eq!(followed["items"][0]["message"], "late line", "{followed}");

    // Bad input: clear 4xx, nothing stored, the server stays up.
    let raw = |body: Vec<u8>| {
        let c = c.clone();
        let url = format!("{base}/events");
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, e) = raw(b"{\"events\": [".to_vec()).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid"))
    );
    let (s, e) = raw(br#"{"events": [{"kind": "flow_run", "record": {"id": 5}}]}"#.to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["error"]["field"].as_str().unwrap_or("").starts_with("events[0]"),
        "{e}"
    );
    let (s, e) = raw(br#"{"events": [], "extra": 1}"#.to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"]["message"].as_str().unwrap().contains("unknown field"), "{e}");
    let (s, _) = raw(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let mut huge = br#"{"events": [], "pad": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 5 << 20));
    huge.extend(br#""}"#);
    // The server answers 413 as soon as it sees the length; a client still sending may see
    // the connection close instead of reading that answer. Either way nothing is stored.
    match c
        .post(format!("{base}/events"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
    {
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "too_large");
        }
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let small_too_large = c
        .post(format!("{base}/events"))
        .header("content-type", "application/json")
        .header("content-length", (5u64 << 20).to_string())
        .body(vec![b' '; 16])
        .send()
        .await;
    if let Ok(r) = small_too_large {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let nul = flow(FlowRunId::new(), "bad\u{0}name", "Running", 3, &[]);
    let (s, e) = post(&c, format!("{base}/flow_runs"), nul).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (_, all) = get(&c, format!("{base}/flows")).await;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["etl", "paged"], "nothing from bad requests was stored");
    let (_, first) = get(&c, format!("{base}/flows?limit=1")).await;
    assert_eq!(
        (first["items"][0]["name"].as_str(), first["next_cursor"].as_str()),
        (Some("etl"), Some("etl"))
    );
    let (_, second) = get(&c, format!("{base}/flows?limit=1&cursor=etl")).await;
    assert_eq!(second["items"][0]["name"], "paged");
    assert!(second["next_cursor"].is_null());

    // SQL metacharacters in every string field are stored and returned verbatim.
    let evil = "x'); DROP TABLE flow_runs; -- \" $1 ? % _ \\";
    let e = FlowRunId::new();
    let mut rec = flow(e, evil, "Failed", 4, &[evil]);
    rec["flow_path"] = json!(evil);
    rec["hostname"] = json!(evil);
    rec["error"] = json!(evil);
    rec["parameters"] = json!({ evil: evil });
    let (s, back) = post(&c, format!("{base}/flow_runs"), rec).await;
    assert_eq!(s, StatusCode::OK, "{back}");
    for f in ["flow_name", "flow_path", "hostname", "error"] {
        assert_eq!(back[f], evil, "{f}");
    }
    assert_eq!(back["tags"], json!([evil]));
    assert_eq!(back["parameters"][evil], evil);
    let listed: Value = c
        .get(format!("{base}/flow_runs"))
        .query(&[("flow", evil), ("tag", evil)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], json!(e));

    // Variables.
    let (s, _) = c
        .put(format!("{base}/variables/bucket"))
        .json(&json!({"value": {"name": "s3://x"}}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let (_, v) = get(&c, format!("{base}/variables/bucket")).await;
    assert_eq!(v["value"]["name"], "s3://x");
    let (_, vars) = get(&c, format!("{base}/variables")).await;
    assert_eq!(vars["items"][0]["name"], "bucket");
    let (s, _) = get(&c, format!("{base}/variables/bad%20name")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let s = c
        .delete(format!("{base}/variables/bucket"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = get(&c, format!("{base}/variables/bucket")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The OpenAPI document describes these very routes.
    let (_, doc) = get(&c, format!("{base}/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/events",
        "/flow_runs",
        "/flow_runs/{id}",
        "/flow_runs/{id}/state",
        "/flow_runs/{id}/logs",
        "/task_runs",
        "/variables/{name}",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    suite(&start(&url, None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    suite(&start(&pg.url(), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set_and_compared_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let base = start(&url, Some("s3cret-key")).await;
    let c = reqwest::Client::new();
    let s = c.get(format!("{base}/flows")).send().await.unwrap().status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let s = c
        .get(format!("{base}/flows"))
        .bearer_auth("s3cret-kez")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let s = c
        .get(format!("{base}/flows"))
        .bearer_auth("s3cret-key")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn refuses_a_public_address_without_a_key() {
    let cfg = weir_server::ServerConfig {
        database_url: "sqlite::memory:".into(),
        api_key: None,
        tls: None,
        ..Default::default()
    };
    let err = weir_server::serve(cfg, "0.0.0.0:0".parse().unwrap(), false, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing to listen on 0.0.0.0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_gives_503_and_the_server_recovers_by_itself() {
    let Some(pg) = Pg::start() else { return };
    let base = start(&pg.url(), None).await;
    let c = reqwest::Client::new();
    let f = FlowRunId::new();
    let (s, _) = post(&c, format!("{base}/flow_runs"), flow(f, "etl", "Running", 1, &[])).await;
    assert_eq!(s, StatusCode::OK);

    pg.stop();
    let (s, e) = get(&c, format!("{base}/flow_runs/{f}")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["error"]["code"], "unavailable");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database is unavailable"),
        "{e}"
    );
    let (s, _) = post(
        &c,
        format!("{base}/flow_runs"),
        flow(FlowRunId::new(), "etl", "Running", 2, &[]),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "writes too, and nothing half-done");
    // The server itself is still up.
    let (s, _) = get(&c, format!("{base}/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    pg.start_again();
    // No restart of weir: the pool reconnects on the next request (give it a few tries).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, run) = get(&c, format!("{base}/flow_runs/{f}")).await;
        if s == StatusCode::OK {
            assert_eq!(run["state"], "Running");
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "the server did not recover");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = weir_server::ServerConfig {
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        api_key: Some(String::new()),
        tls: None,
        ..Default::default()
    };
    let served = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        weir_server::serve(cfg, "0.0.0.0:0".parse().unwrap(), false, |_| {}),
    )
    .await
    .expect("serve should refuse at once, not run");
    let err = served.unwrap_err();
    assert!(err.to_string().contains("API key is empty"), "{err}");
    // An app built with an empty key anyway fails closed.
    let base = start(&format!("sqlite://{}", dir.path().join("s.db").display()), Some("")).await;
    let c = reqwest::Client::new();
    for auth in [None, Some("Bearer "), Some("Bearer x")] {
        let mut r = c.get(format!("{base}/flows"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        assert_eq!(r.send().await.unwrap().status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
}

/// A database failure reaches the client as a generic message with an error id; the
/// database's own text (table names, SQL) does not.
async fn database_errors_are_not_sent(url: &str) {
    let db = weir_server::Db::connect(url).await.unwrap();
    let app = weir_server::app(db.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    sqlx::query("DROP TABLE variables").execute(&db.pool).await.unwrap();
    let c = reqwest::Client::new();
    let (s, e) = get(&c, format!("{base}/variables")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error"]["code"], "internal");
    let id = e["error"]["error_id"].as_str().expect("an error id");
    assert!(id.len() >= 8, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains(id), "{e}");
    for leak in ["variables", "table", "relation", "SELECT", "sqlx", "database error"] {
        assert!(!message.contains(leak), "'{leak}' leaked: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_not_sent_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    database_errors_are_not_sent(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_not_sent_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    database_errors_are_not_sent(&pg.url()).await;
}

/// `serve` with a certificate speaks HTTPS to a client that trusts it, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let cfg = weir_server::ServerConfig {
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        api_key: Some("k3y".into()),
        tls: Some(weir_server::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(weir_server::serve_until(
        cfg,
        "127.0.0.1:0".parse().unwrap(),
        false,
        move |addr| tx.send(addr).unwrap(),
        std::future::pending(),
    ));
    let addr = rx.await.unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = trusting
        .get(format!("https://127.0.0.1:{}/api/v1/flows", addr.port()))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP gets no answer, and a client that does not trust the certificate refuses.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/v1/flows", addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    let untrusting = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{}/api/v1/flows", addr.port()))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    // A key file that is not a key is a clear start error.
    std::fs::write(&key, "not a key").unwrap();
    let cfg = weir_server::ServerConfig {
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        api_key: None,
        tls: Some(weir_server::TlsFiles { cert, key }),
        ..Default::default()
    };
    let err = weir_server::serve(cfg, "127.0.0.1:0".parse().unwrap(), false, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot use the TLS certificate"), "{err}");
}

fn codes(r: &Value) -> Vec<(u64, String)> {
    r["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["index"].as_u64().unwrap(), x["code"].as_str().unwrap().to_string()))
        .collect()
}

/// A run only moves forward; a final state is kept, its error and end time too; states
/// and log lines of unknown runs are refused like snapshots.
async fn orchestration(base: &str) {
    let c = reqwest::Client::new();
    let f = FlowRunId::new();
    let mut failed = flow(f, "rules", "Failed", 10, &[]);
    failed["error"] = json!("boom");
    failed["ended_at"] = json!(100);
    let (s, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [
            {"kind": "flow_run", "record": flow(f, "rules", "Running", 10, &[])},
            {"kind": "flow_run", "record": failed.clone()},
        ]}),
    )
    .await;
    assert_eq!((s, codes(&r)), (StatusCode::OK, vec![]), "{r}");

    // The same final state again, with another error and end time: a true no-op.
    let mut again = failed.clone();
    again["error"] = json!("a different story");
    again["ended_at"] = json!(200);
    let state_again = json!({"kind": "state", "record": {"flow_run_id": f, "task_run_id": null, "state": "Failed", "at": 300, "message": "x"}});
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [{"kind": "flow_run", "record": again}, state_again]}),
    )
    .await;
    assert_eq!((r["accepted"].as_u64(), codes(&r)), (Some(2), vec![]), "{r}");
    let (s, _) = post(
        &c,
        format!("{base}/flow_runs/{f}/state"),
        json!({"state": "Failed", "message": "by hand"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, run) = get(&c, format!("{base}/flow_runs/{f}")).await;
    assert_eq!(
        (run["error"].as_str(), run["ended_at"].as_i64()),
        (Some("boom"), Some(100)),
        "{run}"
    );
    let (_, states) = get(&c, format!("{base}/flow_runs/{f}/states")).await;
    let failed_rows = states
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "Failed")
        .count();
    assert_eq!(failed_rows, 1, "{states}");

    // A state contradicting the final one, and states and lines of unknown runs: refused.
    let ghost = FlowRunId::new();
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [
            {"kind": "state", "record": {"flow_run_id": f, "task_run_id": null, "state": "Running", "at": 400, "message": null}},
            {"kind": "state", "record": {"flow_run_id": ghost, "task_run_id": null, "state": "Running", "at": 1, "message": null}},
            {"kind": "log", "record": {"flow_run_id": ghost, "task_run_id": null, "at": 1, "level": "INFO", "target": "app", "message": "hi"}},
            {"kind": "log", "record": {"flow_run_id": f, "task_run_id": null, "at": 2, "level": "INFO", "target": "app", "message": "kept"}},
        ]}),
    )
    .await;
    assert_eq!(
        codes(&r),
        vec![(0, "conflict".into()), (1, "not_found".into()), (2, "not_found".into())],
        "{r}"
    );
    let (_, states) = get(&c, format!("{base}/flow_runs/{f}/states")).await;
    assert!(
        states
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] != "Running" || s["at"] != 400),
        "{states}"
    );
    let (s, _) = get(&c, format!("{base}/flow_runs/{ghost}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was made up for the unknown run");

    // Log lines and states naming an unknown task run, or no run at all, are refused too;
    // a task run's state contradicting its final state is a conflict.
    let done = TaskRunId::new();
    let mut completed_task = task(done, f, "Completed");
    completed_task["ended_at"] = json!(6);
    let ghost_task = TaskRunId::new();
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [
            {"kind": "task_run", "record": completed_task},
            {"kind": "log", "record": {"flow_run_id": f, "task_run_id": ghost_task, "at": 3, "level": "INFO", "target": "app", "message": "ghost task"}},
            {"kind": "log", "record": {"flow_run_id": null, "task_run_id": ghost_task, "at": 3, "level": "INFO", "target": "app", "message": "ghost task"}},
            {"kind": "log", "record": {"flow_run_id": null, "task_run_id": null, "at": 3, "level": "INFO", "target": "app", "message": "nobody's"}},
            {"kind": "state", "record": {"flow_run_id": f, "task_run_id": done, "state": "Running", "at": 7, "message": null}},
            {"kind": "log", "record": {"flow_run_id": f, "task_run_id": done, "at": 3, "level": "INFO", "target": "app", "message": "task line"}},
        ]}),
    )
    .await;
    assert_eq!(
        codes(&r),
        vec![
            (1, "not_found".into()),
            (2, "not_found".into()),
            (3, "not_found".into()),
            (4, "conflict".into())
        ],
        "{r}"
    );
    let (_, logs) = get(&c, format!("{base}/flow_runs/{f}/logs")).await;
    let lines: Vec<&str> = logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(lines, vec!["kept", "task line"], "{logs}");
    let (_, logs) = get(&c, format!("{base}/flow_runs/{f}/logs")).await;
    assert_eq!(logs["items"][0]["message"], "kept");

    // A late non-final snapshot never moves a run backwards.
    let g = FlowRunId::new();
    let t = TaskRunId::new();
    let mut retrying = task(t, g, "Retrying");
    retrying["attempt"] = json!(1);
    let mut late_running = task(t, g, "Running");
    late_running["attempt"] = json!(1);
    let mut second = task(t, g, "Running");
    second["attempt"] = json!(2);
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [
            {"kind": "flow_run", "record": flow(g, "rules", "Running", 20, &[])},
            {"kind": "task_run", "record": retrying},
            {"kind": "flow_run", "record": flow(g, "rules", "Pending", 20, &[])},
            {"kind": "task_run", "record": late_running},
        ]}),
    )
    .await;
    assert_eq!(codes(&r), vec![(2, "stale".into()), (3, "stale".into())], "{r}");
    let (_, run) = get(&c, format!("{base}/flow_runs/{g}")).await;
    assert_eq!(run["state"], "Running");
    let (_, tr) = get(&c, format!("{base}/task_runs/{t}")).await;
    assert_eq!(tr["state"], "Retrying");
    // The same in a later request, and the next attempt does move it on.
    let (_, r) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [
            {"kind": "flow_run", "record": flow(g, "rules", "Pending", 20, &[])},
            {"kind": "task_run", "record": second},
        ]}),
    )
    .await;
    assert_eq!(codes(&r), vec![(0, "stale".into())], "{r}");
    let (_, tr) = get(&c, format!("{base}/task_runs/{t}")).await;
    assert_eq!(
        (tr["state"].as_str(), tr["attempt"].as_u64()),
        (Some("Running"), Some(2))
    );
    let (s, e) = post(&c, format!("{base}/flow_runs/{g}/state"), json!({"state": "Pending"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
}

/// Requests racing on one run: a late `Running` snapshot read the run before the final
/// state landed, so only the rule repeated in the upsert's `WHERE` can stop it.
async fn racing_snapshots(base: &str) {
    const ROUNDS: usize = 12;
    const RACERS: usize = 6;
    let c = reqwest::Client::new();
    let mut moved_back = 0;
    for round in 0..ROUNDS {
        let f = FlowRunId::new();
        let t = TaskRunId::new();
        let (s, _) = post(
            &c,
            format!("{base}/events"),
            json!({"events": [
                {"kind": "flow_run", "record": flow(f, "race", "Running", 1, &[])},
                {"kind": "task_run", "record": task(t, f, "Running")},
            ]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(RACERS));
        let threads: Vec<_> = (0..RACERS)
            .map(|i| {
                let (barrier, url) = (barrier.clone(), format!("{base}/events"));
                let (mut fr, mut tr) = (flow(f, "race", "Running", 1, &[]), task(t, f, "Running"));
                if i == 0 {
                    fr = flow(f, "race", "Completed", 1, &[]);
                    fr["ended_at"] = json!(9);
                    tr = task(t, f, "Completed");
                    tr["ended_at"] = json!(9);
                }
                let body = json!({"events": [{"kind": "flow_run", "record": fr}, {"kind": "task_run", "record": tr}]});
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let c = reqwest::Client::new();
                    // Connected before the barrier, so the requests themselves race.
                    rt.block_on(c.get(url.replace("/events", "/flows")).send()).unwrap();
                    barrier.wait();
                    rt.block_on(c.post(url).json(&body).send()).unwrap().status()
                })
            })
            .collect();
        for th in threads {
            assert_eq!(th.join().unwrap(), StatusCode::OK);
        }
        let (_, run) = get(&c, format!("{base}/flow_runs/{f}")).await;
        let (_, tr) = get(&c, format!("{base}/task_runs/{t}")).await;
        if run["state"] != "Completed" || tr["state"] != "Completed" {
            moved_back += 1;
            eprintln!("round {round}: flow {} task {}", run["state"], tr["state"]);
        }
    }
    assert_eq!(moved_back, 0, "a final state was overwritten by a late snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_snapshots_never_move_a_run_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    racing_snapshots(&start(&format!("sqlite://{}", dir.path().join("s.db").display()), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_snapshots_never_move_a_run_back_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    racing_snapshots(&start(&pg.url(), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_rules_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    orchestration(&start(&format!("sqlite://{}", dir.path().join("s.db").display()), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_rules_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    orchestration(&start(&pg.url(), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    query_errors(&start(&format!("sqlite://{}", dir.path().join("s.db").display()), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    query_errors(&start(&pg.url(), None).await).await;
}

/// The OpenAPI document says exactly what the server enforces (clients are generated from
/// it, and scripts/api-fuzz.sh holds the server to it): what the document allows is
/// accepted, what it forbids is refused, at the edges of every kind of limit.
async fn document_is_exact(base: &str) {
    let c = reqwest::Client::new();
    let (_, doc) = get(&c, format!("{base}/openapi.json")).await;
    for (path, name) in [
        ("/flow_runs", "limit"),
        ("/task_runs", "state"),
        ("/flow_runs/{id}/logs", "follow"),
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(
            (p["in"].as_str(), p["required"].as_bool()),
            (Some("query"), Some(false)),
            "{path} {name}: {p}"
        );
    }
    let rec = &doc["components"]["schemas"]["FlowRunRecord"]["properties"];
    assert_eq!(rec["pid"]["maximum"], 4294967295u64, "{}", rec["pid"]);
    assert_eq!(rec["flow_name"]["maxLength"], 256, "{}", rec["flow_name"]);
    assert_eq!(rec["flow_name"]["pattern"], "^[^\\u0000]*$");

    let id = FlowRunId::new();
    let ok = |body: Value| {
        let c = c.clone();
        async move {
            let (s, v) = post(&c, format!("{base}/flow_runs"), body).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    // Allowed by the document: the whole u32 range of pid, integers written as 3.0 (JSON
    // Schema's integers), 256 characters of two bytes each.
    let mut r = flow(id, &"é".repeat(256), "Running", 5, &[]);
    r["pid"] = json!(4294967295u64);
    r["created_at"] = json!(-5.0);
    r["started_at"] = json!(7.0);
    ok(r).await;
    let (_, got) = get(&c, format!("{base}/flow_runs/{id}")).await;
    assert_eq!(
        (got["pid"].as_u64(), got["created_at"].as_i64()),
        (Some(4294967295), Some(-5)),
        "{got}"
    );
    let t = TaskRunId::new();
    let mut tr = task(t, id, "Running");
    tr["attempt"] = json!(2.0);
    let (s, v) = post(
        &c,
        format!("{base}/events"),
        json!({"events": [{"kind": "task_run", "record": tr}]}),
    )
    .await;
    assert_eq!((s, &v["rejected"]), (StatusCode::OK, &json!([])), "{v}");

    // Forbidden by the document: each refused with a 422 naming the field.
    let bad = [
        ("pid", json!(4294967296u64)),
        ("pid", json!(-1)),
        ("created_at", json!(1.5)),
        ("flow_name", json!("é".repeat(257))),
        ("hostname", json!("a\u{0}b")),
        ("tags", json!(["x".repeat(129)])),
    ];
    for (field, value) in bad {
        let mut r = flow(FlowRunId::new(), "f", "Running", 5, &[]);
        r[field] = value;
        let (s, v) = post(&c, format!("{base}/flow_runs"), r).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {v}");
        assert!(
            v["error"]["field"].as_str().unwrap_or("").starts_with(field),
            "{field}: {v}"
        );
    }
    for (url, field) in [
        ("/flow_runs?state=failed", "state"),
        ("/flow_runs?flow=a%00b", "flow"),
        ("/flow_runs?cursor=%2B5:0190d5c4-7f1e-7000-8000-000000000001", "cursor"),
        ("/flows?cursor=a%00", "cursor"),
    ] {
        let (s, v) = get(&c, format!("{base}{url}")).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{url}: {v}"
        );
    }
    // A cursor time past i64 has the documented form: it is a page (from the start), not an error.
    let (s, v) = get(
        &c,
        format!("{base}/flow_runs?cursor=9999999999999999999:0190d5c4-7f1e-7000-8000-000000000001"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_exact_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    document_is_exact(&start(&url, None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_exact_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    document_is_exact(&start(&pg.url(), None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_with_a_key_says_every_operation_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let base = start(&url, Some("k3y")).await;
    let c = reqwest::Client::new();
    let doc: Value = c
        .get(format!("{base}/openapi.json"))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["responses"].get("401").is_some(), "{method} {path}: no 401");
        }
    }
}
