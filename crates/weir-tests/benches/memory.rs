//! Peak memory and time of one flow of many trivial task runs, with each transport.
//!
//! ```text
//! cargo bench -p weir-tests --bench memory              # 1,000,000 task runs
//! cargo bench -p weir-tests --bench memory -- quick     # 100,000
//! cargo bench -p weir-tests --bench memory -- 250000    # any size
//! ```
//!
//! Each flow runs in a child process (this binary again), so its peak resident memory
//! (`VmHWM`) is the SDK's alone: with a server, the server runs here, in the parent, on
//! loopback, over SQLite. The child also reports how long the flow's end waited for its
//! records (total time minus the run's own duration).

use std::process::Command;
use std::time::Instant;

#[weir::task]
async fn noop(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

#[weir::flow]
async fn many(n: u64) -> anyhow::Result<u64> {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(noop(i).await?);
    }
    Ok(sum)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

/// The child: one flow of `n` task runs; prints `seconds flush_seconds peak_mib`.
fn child(n: u64, home: &str, api: Option<&str>) {
    let mut settings = weir::Settings::from_env();
    settings.results = format!("{home}/results");
    settings.state_db = Some(format!("{home}/weir.db").into());
    settings.api_url = api.map(str::to_string);
    settings.api_key = None;
    settings.log_filter = "warn".into();
    settings.progress = weir::ProgressMode::Never;
    weir::configure(settings).expect("configure");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (total, report) = rt.block_on(async {
        let start = Instant::now();
        let (r, report) = many(n).with_report().await;
        r.expect("the flow runs");
        (start.elapsed(), report)
    });
    let flush = total.saturating_sub(report.duration);
    println!(
        "{:.2} {:.3} {:.1}",
        total.as_secs_f64(),
        flush.as_secs_f64(),
        peak_rss_mib()
    );
}

fn run_child(n: u64, api: Option<&str>) -> String {
    let home = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.args(["child", &n.to_string(), &home.path().display().to_string()]);
    if let Some(a) = api {
        cmd.arg(a);
    }
    let out = cmd.output().expect("child runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let n = args[1].parse().expect("a count");
        child(n, &args[2], args.get(3).map(String::as_str));
        return;
    }
    let n: u64 = if args.iter().any(|a| a == "quick") {
        100_000
    } else {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(1_000_000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server_dir = tempfile::tempdir().expect("temp dir");
    let api = rt.block_on(async {
        let url = format!("sqlite://{}", server_dir.path().join("server.db").display());
        let db = weir_server::Db::connect(&url).await.expect("server database");
        let app = weir_server::app(db, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    });
    println!("| transport | task runs | wall time | flow end waits for records | peak RSS |");
    println!("|---|---|---|---|---|");
    for (name, api) in [
        ("embedded SQLite", None),
        ("server on loopback (SQLite)", Some(api.as_str())),
    ] {
        let line = run_child(n, api);
        let parts: Vec<&str> = line.split_whitespace().collect();
        println!(
            "| {name} | {n} | {} s | {} s | {} MiB |",
            parts.first().unwrap_or(&"?"),
            parts.get(1).unwrap_or(&"?"),
            parts.get(2).unwrap_or(&"?")
        );
    }
}
