//! Claims and the scheduler, on SQLite and on PostgreSQL:
//! - 8 workers claiming from one server over HTTP (one run per claim, no waiting), until
//!   4,000 runs are gone: claims per second, and a check that none was claimed twice;
//! - a scheduler tick with 1,000 active deployments (each a cron schedule every minute and
//!   an interval of 30 s): the first tick (which makes 20,000 runs) and a steady tick (which
//!   makes the few new slots), median of 5.
//!
//! ```text
//! cargo bench -p weir-server --bench claims
//! ```

#[path = "../tests/support/pg.rs"]
mod pg;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_server::scheduler;
use weir_types::FlowRunId;

const WORKERS: usize = 8;
const RUNS: usize = 4000;
const DEPLOYMENTS: usize = 1000;

async fn serve(url: &str) -> (String, weir_server::Db) {
    let db = weir_server::Db::connect(url).await.expect("database");
    // The bench drives ticks itself.
    let opts = scheduler::Options {
        tick: Duration::from_secs(3600),
        ..Default::default()
    };
    let app = weir_server::app_with_options(db.clone(), None, opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/v1"), db)
}

fn spec(name: &str, schedules: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "flow": "f", "entrypoint": ["f"], "source": {"type": "local", "path": "."},
        "work_pool": "bench", "schedules": schedules})
}

async fn claims_per_second(base: &str, db: &weir_server::Db) -> (f64, usize) {
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{base}/deployments/claimed"))
        .json(&spec("claimed", json!([])))
        .send()
        .await
        .expect("deploy");
    assert!(r.status().is_success());
    let now = weir_types::time::now_micros();
    let runs: Vec<weir_server::db::NewRun> = (0..RUNS)
        .map(|i| weir_server::db::NewRun {
            id: FlowRunId::new(),
            deployment: "claimed".into(),
            flow_name: "f".into(),
            work_pool: "bench".into(),
            parameters: json!({"i": i}),
            tags: vec![],
            scheduled_at: now / 1000,
            schedule_slot: None,
            retry_of: None,
            retry_count: 0,
            created_at: now,
        })
        .collect();
    db.create_runs(&runs).await.expect("runs");
    let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, base, barrier) = (c.clone(), base.to_string(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut got = Vec::new();
                loop {
                    let r: serde_json::Value = c
                        .post(format!("{base}/work_pools/bench/claim"))
                        .json(&json!({"worker": format!("w{w}"), "limit": 1, "wait_ms": 0}))
                        .send()
                        .await
                        .expect("claim")
                        .json()
                        .await
                        .expect("json");
                    let r = r.as_array().expect("a list").clone();
                    if r.is_empty() {
                        return got;
                    }
                    got.extend(r.iter().map(|c| c["flow_run"]["id"].as_str().unwrap_or("").to_string()));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("claimer"));
    }
    let secs = start.elapsed().as_secs_f64();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a run was claimed twice");
    assert_eq!(all.len(), RUNS, "every run claimed");
    (all.len() as f64 / secs, all.len() - distinct.len())
}

/// On a database of its own, with no server (no scheduler of its own ticking meanwhile).
async fn ticks(db: &weir_server::Db) -> (Duration, usize, Duration) {
    let now = weir_types::time::now_micros();
    for i in 0..DEPLOYMENTS {
        let s = spec(
            &format!("d{i:04}"),
            json!([{"type": "cron", "cron": "* * * * *", "timezone": "Europe/Paris"},
                {"type": "interval", "every_seconds": 30}]),
        );
        let s: weir_types::deployment::DeploymentSpec = serde_json::from_value(s).expect("spec");
        db.put_deployment(&s, now).await.expect("deploy");
    }
    let opts = scheduler::Options::default();
    let t = Instant::now();
    let first = scheduler::tick(db, &opts, now).await.expect("tick");
    let first_time = t.elapsed();
    let mut steady = Vec::new();
    for k in 1..=5 {
        let t = Instant::now();
        scheduler::tick(db, &opts, now + k * 15_000_000).await.expect("tick");
        steady.push(t.elapsed());
    }
    steady.sort();
    (first_time, first.created, steady[2])
}

async fn run(name: &str, url: &str, ticks_url: &str) {
    let (base, db) = serve(url).await;
    let (rate, _) = claims_per_second(&base, &db).await;
    println!("| {name} | {WORKERS} workers claiming {RUNS} runs (1 per claim) | {rate:.0} claims/s | none twice |");
    let db = weir_server::Db::connect(ticks_url).await.expect("database");
    let (first, made, steady) = ticks(&db).await;
    println!(
        "| {name} | scheduler tick, {DEPLOYMENTS} deployments: first (makes {made} runs) | {:.0} ms | |",
        first.as_secs_f64() * 1000.0
    );
    println!(
        "| {name} | scheduler tick, {DEPLOYMENTS} deployments: steady (median of 5) | {:.0} ms | |",
        steady.as_secs_f64() * 1000.0
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| database | case | result | |");
        println!("|---|---|---|---|");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |n: &str| format!("sqlite://{}", dir.path().join(n).display());
        run("SQLite", &file("bench.db"), &file("ticks.db")).await;
        match pg::Pg::start() {
            Some(pg) => {
                sqlx::any::install_default_drivers();
                let admin = sqlx::AnyPool::connect(&pg.url()).await.expect("connect");
                sqlx::query("CREATE DATABASE ticks")
                    .execute(&admin)
                    .await
                    .expect("create");
                admin.close().await;
                let ticks = format!("{}ticks", pg.url().trim_end_matches("postgres"));
                run("PostgreSQL 15", &pg.url(), &ticks).await
            }
            None => println!("| PostgreSQL 15 | skipped: no binaries | | |"),
        }
    });
}
