//! Server speed: state updates per second with 32 concurrent clients, and listing the
//! newest 50 flow runs filtered by state with 100,000 flow runs and 1,000,000 task runs
//! stored — on SQLite and on PostgreSQL.
//!
//! ```text
//! cargo bench -p weir-server --bench api
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

/// Loads 100,000 flow runs (10 % Failed) and 1,000,000 task runs straight into the tables.
async fn load(db: &weir_server::Db) {
    let mut tx = db.pool.begin().await.expect("tx");
    let base = 1_700_000_000_000_000i64;
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
            sql.push_str(&format!(
                "('{}', 'etl', 'b::etl', '{state}', '{{}}', {}, 'h', 1)",
                FlowRunId::new(),
                base + n
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("flow runs");
    }
    for chunk in 0..1000 {
        let mut sql = String::from(
            "INSERT INTO task_runs (id, flow_run_id, task_name, task_path, state, attempt, cache_status, created_at, history) VALUES ",
        );
        for i in 0..1000 {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{}', '{}', 't', 'b::t', 'Completed', 1, 'miss', {}, '[]')",
                TaskRunId::new(),
                FlowRunId::new(),
                base + chunk * 1000 + i
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect("task runs");
    }
    tx.commit().await.expect("commit");
}

async fn list_p99(base: &str) -> (Duration, Duration) {
    let c = reqwest::Client::new();
    let url = format!("{base}/flow_runs?state=Failed&limit=50");
    let mut samples = Vec::new();
    for _ in 0..300 {
        let start = Instant::now();
        let r = c.get(&url).send().await.expect("send");
        let page: serde_json::Value = r.json().await.expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(50));
        samples.push(start.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

async fn run(name: &str, url: &str) {
    let (base, db) = serve(url).await;
    let ups = updates_per_second(&base).await;
    let t = Instant::now();
    load(&db).await;
    let loaded = t.elapsed();
    let (p50, p99) = list_p99(&base).await;
    println!(
        "| {name} | {ups:.0} /s | {:.1} ms | {:.1} ms | (loaded in {:.0} s) |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        loaded.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| database | state updates, 32 clients | list newest 50 Failed, p50 | p99 | |");
        println!("|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("temp dir");
        run("SQLite", &format!("sqlite://{}", dir.path().join("bench.db").display())).await;
        match pg::Pg::start() {
            Some(pg) => run("PostgreSQL 15", &pg.url()).await,
            None => println!("| PostgreSQL 15 | skipped: no binaries | | | |"),
        }
    });
}
