//! Orchestration overhead, cache-hit latency and the demo's whole-process time.
//!
//! ```text
//! cargo bench -p weir-tests --bench overhead            # all
//! cargo bench -p weir-tests --bench overhead -- quick   # fewer repetitions
//! cargo bench -p weir-tests --bench overhead -- miss    # only the cache-miss rows
//! ```
//!
//! The cache-miss rows run in a child process (this binary again, with `miss-child`): they
//! need fsync on, as users have it, while the other rows fill the cache without it.
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

/// A trivial task whose every call misses (the salt is new each sample).
#[weir::task(cache = "inputs")]
async fn miss_noop(salt: u64, x: u64) -> anyhow::Result<u64> {
    Ok(x ^ salt)
}

#[weir::flow]
async fn missing(salt: u64, n: u64) -> anyhow::Result<u64> {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(miss_noop(salt, i).await?);
    }
    Ok(sum)
}

#[weir::flow]
async fn missing_mapped(salt: u64, n: u64) -> anyhow::Result<u64> {
    let calls: Vec<_> = (0..n).map(|i| miss_noop(salt, i)).collect();
    let mut sum = 0u64;
    for r in futures::future::join_all(calls).await {
        sum = sum.wrapping_add(r?);
    }
    Ok(sum)
}

const MISSES: u64 = 300;

/// The cost of a cache miss of a trivial task with results made durable (fsync on, as
/// users have it): key, lookup, lease, the run, publish (write + fsync + link + directory
/// fsync), release. Per task, median of `reps` flow runs of `MISSES` misses each.
fn miss_child(reps: usize, record: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = weir::Settings::from_env();
    settings.results = dir.path().join("results").display().to_string();
    settings.state_db = record.then(|| dir.path().join("weir.db"));
    settings.log_filter = "warn".into();
    settings.progress = weir::ProgressMode::Never;
    settings.local_cache = None;
    settings.fsync = true;
    weir::configure(settings).expect("configure");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let salt = std::sync::atomic::AtomicU64::new(1);
        let next = || salt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        missing(next(), 20).await.expect("warm-up");
        let per = |d: Duration| d.as_secs_f64() * 1e6 / MISSES as f64;
        let seq = time_flow(reps, || missing(next(), MISSES)).await;
        let conc = time_flow(reps, || missing_mapped(next(), MISSES)).await;
        println!(
            "| cache miss, local disk, fsync on, sequential awaits | {:.0} µs | report |",
            per(seq)
        );
        println!(
            "| cache miss, local disk, fsync on, {MISSES} at once | {:.0} µs | report |",
            per(conc)
        );
    });
}

fn miss_rows(quick: bool, record: bool) {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.arg("miss-child");
    if quick {
        cmd.arg("quick");
    }
    if !record {
        cmd.arg("norecord");
    }
    let out = cmd.output().expect("bench child runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    print!("{}", String::from_utf8_lossy(&out.stdout));
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
    let record = !std::env::args().any(|a| a == "norecord");
    if std::env::args().any(|a| a == "miss-child") {
        miss_child(reps, record);
        return;
    }
    if std::env::args().any(|a| a == "miss") {
        miss_rows(quick, record);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = weir::Settings::from_env();
    settings.results = dir.path().join("results").display().to_string();
    settings.state_db = record.then(|| dir.path().join("weir.db"));
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
    miss_rows(quick, record);
    let home = tempfile::tempdir().expect("temp dir");
    if let Some(d) = demo_hit_wall_time(if quick { 5 } else { 21 }, home.path()) {
        println!(
            "| demo cache-hit run, whole process | {:.1} ms | ≤ 20 ms |",
            d.as_secs_f64() * 1e3
        );
    }
}
