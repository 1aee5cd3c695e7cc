//! Server speed, on SQLite and on PostgreSQL:
//! - state updates per second with 32 concurrent clients, one event per request;
//! - batched ingest: task-run state changes per second through `POST /events` (batches of
//!   1,000, 4 clients), the path flows report through;
//! - every list at 100,000 flow runs (10 % tagged) and 1,000,000 task runs: p50 and p99 of
//!   flow runs (unfiltered, by state, by tag), task runs (unfiltered, by state, of one flow
//!   run), and page 200 of the task runs reached by cursor.
//!
//! ```text
//! cargo bench -p weir-server --bench api
//! cargo bench -p weir-server --bench api -- ingest     # the two ingest rates only
//! cargo bench -p weir-server --bench api -- sqlite     # one database (or `postgres`)
//! ```

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use serde_json::json;
use weir_types::{FlowRunId, TaskRunId};

const CLIENTS: usize = 32;
const UPDATES_PER_CLIENT: usize = 300;

async fn serve(url: &str) -> (String, weir_server::Db) {
    let db = weir_server::Db::connect(url).await.expect("database");
    let app = weir_server::app(db.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/v1"), db)
}

fn task(id: TaskRunId, flow: FlowRunId, state: &str, n: usize) -> serde_json::Value {
    json!({"kind": "task_run", "record": {
        "id": id, "flow_run_id": flow, "task_name": "t", "task_path": "b::t", "state": state, "attempt": n,
        "cache_status": "disabled", "cache_key": null, "created_at": 1, "started_at": 1, "ended_at": null, "error": null,
        "history": []}})
}

/// 32 clients, each proposing state changes of its own task run, one per request.
async fn updates_per_second(base: &str) -> f64 {
    let c = reqwest::Client::new();
    let flow = FlowRunId::new();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CLIENTS {
        let c = c.clone();
        let url = format!("{base}/events");
        handles.push(tokio::spawn(async move {
            let id = TaskRunId::new();
            for n in 0..UPDATES_PER_CLIENT {
                let state = if n % 2 == 0 { "Running" } else { "Retrying" };
                let r = c
                    .post(&url)
                    .json(&json!({"events": [task(id, flow, state, n)]}))
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                assert!(status.is_success(), "{status}: {}", r.text().await.unwrap_or_default());
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    (CLIENTS * UPDATES_PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
}

const BATCH: usize = 1000;
const INGEST_CLIENTS: usize = 4;
const BATCHES_PER_CLIENT: usize = 25;

/// Task-run state changes per second through batched `POST /events`: each client walks
/// its own 1,000 task runs through Pending → Running → … → Completed, a batch per step.
async fn batched_ingest(base: &str) -> f64 {
    let c = reqwest::Client::new();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..INGEST_CLIENTS {
        let c = c.clone();
        let url = format!("{base}/events");
        handles.push(tokio::spawn(async move {
            let flow = FlowRunId::new();
            let ids: Vec<TaskRunId> = (0..BATCH).map(|_| TaskRunId::new()).collect();
            for step in 0..BATCHES_PER_CLIENT {
                let state = match step {
                    0 => "Pending",
                    s if s + 1 == BATCHES_PER_CLIENT => "Completed",
                    s if s % 2 == 1 => "Running",
                    _ => "Retrying",
                };
                let events: Vec<_> = ids.iter().map(|id| task(*id, flow, state, step.div_ceil(2))).collect();
                let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
                let r = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                assert!(status.is_success(), "{status}: {text}");
                assert!(text.contains("\"rejected\":[]"), "{text}");
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    (INGEST_CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / start.elapsed().as_secs_f64()
}

/// Loads 100,000 flow runs (10 % Failed, 10 % tagged) and 1,000,000 task runs (1 % Failed)
/// straight into the tables.
async fn load(db: &weir_server::Db) -> weir_types::FlowRunId {
    let busy = FlowRunId::new();
    let mut tx = db.pool.begin().await.expect("tx");
    let base = 1_700_000_000_000_000i64;
    let mut tags = Vec::new();
    for chunk in 0..100 {
        let mut sql = String::from(
            "INSERT INTO flow_runs (id, flow_name, flow_path, state, parameters, created_at, hostname, pid) VALUES ",
        );
        for i in 0..1000 {
            let n = chunk * 1000 + i;
            let state = if n % 10 == 0 { "Failed" } else { "Completed" };
            if i > 0 {
                sql.push(',');
            }
            let id = FlowRunId::new();
            sql.push_str(&format!(
                "('{id}', 'etl', 'b::etl', '{state}', '{{}}', {}, 'h', 1)",
                base + n
            ));
            if n % 10 == 3 {
                tags.push(id);
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("flow runs");
    }
    for chunk in tags.chunks(1000) {
        let rows: Vec<String> = chunk.iter().map(|id| format!("('{id}', 'nightly')")).collect();
        let sql = format!("INSERT INTO flow_run_tags (flow_run_id, tag) VALUES {}", rows.join(","));
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("tags");
    }
    for chunk in 0..1000 {
        let mut sql = String::from(
            "INSERT INTO task_runs (id, flow_run_id, task_name, task_path, state, attempt, cache_status, created_at, history) VALUES ",
        );
        for i in 0..1000 {
            if i > 0 {
                sql.push(',');
            }
            // Every 1000th task run belongs to one busy flow run; 1 % failed.
            let flow = if i == 500 { busy } else { FlowRunId::new() };
            let state = if i % 100 == 7 { "Failed" } else { "Completed" };
            sql.push_str(&format!(
                "('{}', '{flow}', 't', 'b::t', '{state}', 1, 'miss', {}, '[]')",
                TaskRunId::new(),
                base + chunk * 1000 + i
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("task runs");
    }
    tx.commit().await.expect("commit");
    if db.kind == weir_server::db::Kind::Postgres {
        sqlx::query("ANALYZE").execute(&db.pool).await.expect("analyze");
    }
    busy
}

/// p50 and p99 of 300 GETs of `url`, each answering `want` items.
async fn p99(c: &reqwest::Client, url: &str, want: usize) -> (Duration, Duration) {
    let mut samples = Vec::new();
    for _ in 0..300 {
        let start = Instant::now();
        let r = c.get(url).send().await.expect("send");
        let page: serde_json::Value = r.json().await.expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(want), "{url}");
        samples.push(start.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// The cursor of page `n` of `url`, walking the pages before it.
async fn cursor_of_page(c: &reqwest::Client, url: &str, n: usize) -> String {
    let mut cursor = String::new();
    for _ in 1..n {
        let sep = if url.contains('?') { '&' } else { '?' };
        let u = if cursor.is_empty() {
            url.to_string()
        } else {
            format!("{url}{sep}cursor={cursor}")
        };
        let page: serde_json::Value = c.get(&u).send().await.expect("send").json().await.expect("json");
        cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    }
    cursor
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn run(name: &str, url: &str, ingest_only: bool) {
    let (base, db) = serve(url).await;
    let ups = updates_per_second(&base).await;
    let ingest = batched_ingest(&base).await;
    if ingest_only {
        println!("| {name} | single updates, 32 clients | {ups:.0} /s | |");
        println!("| {name} | batched ingest (task-run state changes) | {ingest:.0} /s | |");
        return;
    }
    let t = Instant::now();
    let busy = load(&db).await;
    let loaded = t.elapsed();
    println!("| {name} | single updates, 32 clients | {ups:.0} /s | |");
    println!("| {name} | batched ingest (task-run state changes) | {ingest:.0} /s | |");
    let c = reqwest::Client::new();
    let deep = cursor_of_page(&c, &format!("{base}/task_runs?limit=100"), 200).await;
    let lists = [
        ("flow runs, newest 50", format!("{base}/flow_runs?limit=50"), 50),
        (
            "flow runs, Failed",
            format!("{base}/flow_runs?state=Failed&limit=50"),
            50,
        ),
        ("flow runs, tag", format!("{base}/flow_runs?tag=nightly&limit=50"), 50),
        ("task runs, newest 100", format!("{base}/task_runs?limit=100"), 100),
        (
            "task runs, Failed",
            format!("{base}/task_runs?state=Failed&limit=100"),
            100,
        ),
        (
            "task runs of a flow run",
            format!("{base}/task_runs?flow_run_id={busy}&limit=100"),
            100,
        ),
        (
            "task runs, page 200",
            format!("{base}/task_runs?limit=100&cursor={deep}"),
            100,
        ),
    ];
    for (what, url, want) in lists {
        let (p50, p99) = p99(&c, &url, want).await;
        println!("| {name} | {what} | p50 {} | p99 {} |", ms(p50), ms(p99));
    }
    println!("| {name} | (1.1M rows loaded in {:.0} s) | | |", loaded.as_secs_f64());
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |a: &str| args.iter().any(|x| x == a);
    let ingest_only = has("ingest");
    let (sqlite, postgres) = match (has("sqlite"), has("postgres")) {
        (false, false) => (true, true),
        pick => pick,
    };
    rt.block_on(async {
        println!("| database | case | result | |");
        println!("|---|---|---|---|");
        let dir = tempfile::tempdir().expect("temp dir");
        if sqlite {
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            run("SQLite", &url, ingest_only).await;
        }
        if postgres {
            match pg::Pg::start() {
                Some(pg) => run("PostgreSQL 15", &pg.url(), ingest_only).await,
                None => println!("| PostgreSQL 15 | skipped: no binaries | | |"),
            }
        }
    });
}
