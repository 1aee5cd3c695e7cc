//! Byte-buffer results: a cached task returning a 64 MiB and a 512 MiB `Vec<u8>`, stored
//! raw (how weir stores byte buffers now) against the same bytes as JSON (how a `Vec<u8>`
//! was stored before: an array of numbers). Each cell runs in a process of its own, so its
//! peak RSS is its own.
//!
//! ```text
//! cargo bench -p weir-tests --bench bytes           # add `-- quick` for 64 MiB only
//! ```
//! Files go to `BENCH_DIR` (default `/var/tmp`).

use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

const MIB: usize = 1 << 20;

#[weir::task(cache = "inputs")]
fn raw_blob(len: usize, fill: u8) -> anyhow::Result<Vec<u8>> {
    Ok(vec![fill; len])
}

/// Serializes exactly as `Vec<u8>` does (a sequence of numbers), without being one.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct AsJson(Vec<u8>);

#[weir::task(cache = "inputs")]
fn json_blob(len: usize, fill: u8) -> anyhow::Result<AsJson> {
    Ok(AsJson(vec![fill; len]))
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0)
        / 1024
}

/// One call in this process: prints seconds and peak RSS in MiB.
fn child(mode: &str, mib: usize, results: &str) {
    let mut settings = weir::Settings::from_env();
    settings.results = results.to_string();
    settings.local_cache = None;
    settings.state_db = None;
    settings.progress = weir::ProgressMode::Never;
    settings.log_filter = "warn".into();
    weir::configure(settings).expect("configure");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let len = mib * MIB;
    let start = Instant::now();
    let got = rt.block_on(async {
        match mode {
            "raw" => raw_blob(len, 7).await.map(|v| v.len()),
            _ => json_blob(len, 7).await.map(|v| v.0.len()),
        }
    });
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got.expect("task"), len);
    println!("{secs:.3} {}", peak_rss_mib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "child") {
        child(&args[i + 1], args[i + 2].parse().expect("size"), &args[i + 3]);
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let me = std::env::current_exe().expect("current exe");
    let sizes: &[usize] = if quick { &[64] } else { &[64, 512] };
    println!("| result | stored as | miss: compute + publish | peak RSS | hit | peak RSS | stored size |");
    println!("|---|---|---|---|---|---|---|");
    for &mib in sizes {
        for mode in ["json", "raw"] {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let results = dir.path().join("results").display().to_string();
            let run = || {
                let out = Command::new(&me)
                    .args(["child", mode, &mib.to_string(), &results])
                    .output()
                    .expect("spawn");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let line = text.lines().last().unwrap_or_default().to_string();
                let mut it = line.split_whitespace();
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).expect("seconds");
                let rss: u64 = it.next().and_then(|s| s.parse().ok()).expect("rss");
                (secs, rss)
            };
            let (miss, miss_rss) = run();
            let (hit, hit_rss) = run();
            let stored: u64 = walk_size(&dir.path().join("results"));
            println!(
                "| `Vec<u8>`, {mib} MiB | {mode} | {miss:.2} s | {miss_rss} MiB | {hit:.2} s | {hit_rss} MiB | {} MiB |",
                stored / MIB as u64
            );
        }
    }
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
