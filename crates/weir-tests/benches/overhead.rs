//! Orchestration overhead, cache-hit latency and the demo's whole-process time.
//!
//! ```text
//! cargo bench -p weir-tests --bench overhead            # all
//! cargo bench -p weir-tests --bench overhead -- quick   # fewer repetitions
//! ```
//!
//! A bench binary rather than criterion: each sample is a whole flow run of 10,000 task
//! runs with its state committed to SQLite, which is what users pay; we report the median
//! of several runs per task.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weir::prelude::*;

const TASKS: u64 = 10_000;

#[weir::task]
async fn noop(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

#[weir::task(cache = "inputs")]
async fn cached_noop(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

#[weir::flow]
async fn sequential(n: u64) -> anyhow::Result<u64> {
    let mut sum = 0;
    for i in 0..n {
        sum += noop(i).await?;
    }
    Ok(sum)
}

#[weir::flow]
async fn mapped(n: u64) -> anyhow::Result<u64> {
    Ok(noop.map(0..n).await?.into_iter().sum())
}

#[weir::flow]
async fn cached(n: u64) -> anyhow::Result<u64> {
    let mut sum = 0;
    for i in 0..n {
        sum += cached_noop(i).await?;
    }
    Ok(sum)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn per_task(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6 / TASKS as f64
}

async fn time_flow<F, Fut>(reps: usize, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, weir::FlowError>>,
{
    let mut samples = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        f().await.expect("benchmark flow failed");
        samples.push(start.elapsed());
    }
    median(samples)
}

fn demo_hit_wall_time(reps: usize, home: &Path) -> Option<Duration> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?; // target/release/deps -> target/release
    let demo = target.join("examples/cached_inputs");
    if !demo.exists() {
        eprintln!("(skipping the demo timing: build it with `cargo build --release --example cached_inputs`)");
        return None;
    }
    let run = || {
        Command::new(&demo)
            .args(["--input", "1", "2", "3"])
            .env("WEIR_HOME", home)
            .env("WEIR_LOG", "warn")
            .output()
            .expect("demo runs")
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut samples = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        let out = run();
        samples.push(start.elapsed());
        assert!(String::from_utf8_lossy(&out.stdout).contains("cache hit"));
    }
    Some(median(samples))
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let reps = if quick { 3 } else { 9 };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = weir::Settings::from_env();
    settings.results = dir.path().join("results").display().to_string();
    settings.state_db = (!std::env::args().any(|a| a == "norecord")).then(|| dir.path().join("weir.db"));
    settings.log_filter = "warn".into();
    settings.progress = weir::ProgressMode::Never;
    // Populating the cache is not what is measured; fsync per entry would dominate it.
    settings.fsync = false;
    weir::configure(settings).expect("configure");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Warm up: the database, the store, the allocator.
        sequential(1000).await.expect("warm-up");
        cached(TASKS).await.expect("populate the cache");

        let seq = time_flow(reps, || sequential(TASKS)).await;
        let map = time_flow(reps, || mapped(TASKS)).await;
        let hit = time_flow(reps, || cached(TASKS)).await;
        println!("| benchmark | per task (median of {reps} runs of {TASKS} tasks) | target |");
        println!("|---|---|---|");
        println!(
            "| orchestration, sequential awaits | {:.1} µs | ≤ 20 µs |",
            per_task(seq)
        );
        println!("| orchestration, `.map` | {:.1} µs | ≤ 20 µs |", per_task(map));
        println!("| cache hit, local disk | {:.1} µs | ≤ 30 µs |", per_task(hit));
    });
    let home = tempfile::tempdir().expect("temp dir");
    if let Some(d) = demo_hit_wall_time(if quick { 5 } else { 21 }, home.path()) {
        println!(
            "| demo cache-hit run, whole process | {:.1} ms | ≤ 20 ms |",
            d.as_secs_f64() * 1e3
        );
    }
}
