//! A second process for the cross-process tests.
//!
//! ```text
//! cache_probe key forward|reverse   print the cache key of a call with a HashMap input
//! cache_probe run N                 run a flow with one cached task; print hit|miss
//! cache_probe big BYTES             run a flow whose cached task returns BYTES bytes
//! ```
//! `run` appends a line to `$PROBE_MARKER` each time the task body really runs.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, bail};
use weir::prelude::*;

#[weir::task(cache = "inputs")]
async fn weigh(labels: HashMap<String, f64>, scale: Vec<i64>) -> anyhow::Result<f64> {
    Ok(labels.values().sum::<f64>() * scale.iter().sum::<i64>() as f64)
}

#[weir::task(cache = "inputs")]
async fn expensive(n: u64) -> anyhow::Result<u64> {
    // Tells the test (reading stderr) that this process is inside the task body.
    eprintln!("computing {n}");
    if std::env::var_os("PROBE_HANG").is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    if let Some(ms) = std::env::var("PROBE_WORK_MS").ok().and_then(|v| v.parse().ok()) {
        // The "work": long enough that concurrent processes really overlap.
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Ok(marker) = std::env::var("PROBE_MARKER") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&marker)?;
        writeln!(f, "computed {n} by {}", std::process::id())?;
    }
    Ok(n * 2)
}

#[weir::flow]
async fn many(n: u64) -> anyhow::Result<u64> {
    Ok(expensive.map(0..n).await?.into_iter().sum())
}

#[weir::task(cache = "inputs")]
async fn big(bytes: usize) -> anyhow::Result<String> {
    Ok("x".repeat(bytes))
}

#[weir::flow]
async fn probe(n: u64) -> anyhow::Result<u64> {
    Ok(expensive(n).await?)
}

#[weir::flow]
async fn probe_big(bytes: usize) -> anyhow::Result<usize> {
    Ok(big(bytes).await?.len())
}

fn labels(reverse: bool) -> HashMap<String, f64> {
    let mut pairs: Vec<(String, f64)> = (0..200).map(|i| (format!("label-{i}"), i as f64 * 0.5)).collect();
    pairs.push(("negative zero".into(), -0.0));
    if reverse {
        pairs.reverse();
    }
    let mut map = HashMap::new();
    for (k, v) in pairs {
        map.insert(k, v);
    }
    map
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["key", order] => {
            let call = weigh(labels(*order == "reverse"), vec![1, 2, 3]);
            let key = call
                .cache_key()
                .context("weigh is cached")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{key}");
        }
        ["run", n] => {
            let (r, report) = probe(n.parse()?).with_report().await;
            r?;
            println!("{}", if report.cached > 0 { "hit" } else { "miss" });
        }
        ["many", n] => {
            let (r, report) = many(n.parse()?).with_report().await;
            r?;
            println!("{} computed {} cached", report.completed, report.cached);
        }
        ["big", bytes] => {
            let len = probe_big(bytes.parse()?).await?;
            println!("{len}");
        }
        _ => bail!("usage: cache_probe key forward|reverse | run N | big BYTES"),
    }
    Ok(())
}
