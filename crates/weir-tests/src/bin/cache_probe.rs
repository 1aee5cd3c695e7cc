//! A second process for the cross-process tests.
//!
//! ```text
//! cache_probe key forward|reverse   print the cache key of a call with a HashMap input
//! cache_probe run N                 run a flow with one cached task; print hit|miss
//! cache_probe block NAME            load the s3-bucket block NAME; print bucket, secret, Debug
//! cache_probe block-json TYPE/NAME  load a block's document; print it
//! cache_probe big BYTES             run a flow whose cached task returns BYTES bytes
//! cache_probe chunky N              run N cached tasks one after another, each returning a
//!                                   result stored as a blob (a tenth of them one shared
//!                                   blob); print "C computed H cached"
//! cache_probe parts N               run a flow whose cached task writes N files (relative to
//!                                   the working folder) and returns them inside its result;
//!                                   print hit|miss, then each file's contents on a line
//! cache_probe stamp N                run a task returning "N by <pid>" (expires after 1 h);
//!                                   print hit|miss and the value
//! cache_probe named skip|error R    run a task with a result key and that on_duplicate;
//!                                   print hit|miss and the value, or "error" and why
//! cache_probe race STORE SALT W ROUNDS
//!                                   writer W of a cross-process race on the store STORE
//! ```
//! `run`, `stamp` and `named` append a line to `$PROBE_MARKER` each time the task body
//! really runs. `PROBE_CLOCK_AHEAD_S` moves weir's clock forward (to meet expired entries).
//!
//! `race` is one writer of a race between processes: for each round it prints `ready`,
//! waits for a line on stdin (the test sends `go` to every writer at once, once all are
//! ready), does a create-if-absent of the round's key and prints
//! `put R won|lost START END SEEN` (wall-clock µs; `SEEN`: the bytes it reads back), then the
//! same for the round's lease (`lease R won|lost START END HOLDER`).

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

/// Above the inline size, so it is stored as a blob: one of its own for each key, and one
/// shared by every key divisible by ten (reused, so refreshed, by later writers).
#[weir::task(cache = "inputs")]
async fn chunky(i: u64) -> anyhow::Result<String> {
    let tag = if i.is_multiple_of(10) {
        "shared".to_string()
    } else {
        i.to_string()
    };
    Ok(format!("{tag}-").repeat(4096))
}

/// One task after another (a few milliseconds apart), so the publishes spread over seconds.
#[weir::flow]
async fn chunky_flow(n: u64) -> anyhow::Result<usize> {
    let mut total = 0;
    for i in 0..n {
        total += chunky(i).await?.len();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(total)
}

#[weir::flow]
async fn many(n: u64) -> anyhow::Result<u64> {
    Ok(expensive.map(0..n).await?.into_iter().sum())
}

#[weir::task(cache = "inputs")]
async fn big(bytes: usize) -> anyhow::Result<String> {
    Ok("x".repeat(bytes))
}

/// Writes `bytes` bytes of a pattern to a file, in chunks (never all in memory).
#[weir::task(cache = "inputs")]
fn make_file(bytes: u64, dir: String) -> anyhow::Result<weir::Artifact> {
    eprintln!("computing file");
    let path = std::path::Path::new(&dir).join(format!("made-{bytes}"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(weir::Artifact::from_path(path))
}

#[weir::flow]
async fn probe_file(bytes: u64, dir: String) -> anyhow::Result<String> {
    let file = make_file(bytes, dir).await?;
    // Read it back in 1 MiB chunks (the pattern's period), comparing whole slices.
    let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut r = file.open()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = std::io::Read::read(&mut r, &mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        anyhow::ensure!(buf[..filled] == pattern[..filled], "wrong bytes after offset {total}");
        total += filled as u64;
    }
    Ok(format!("{total} {}", file.path().display()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Bundle {
    parts: Vec<weir::Artifact>,
    index: Option<weir::Artifact>,
    nothing: Option<weir::Artifact>,
}

/// Writes `n` small files under `./parts/` (relative paths, as a user might) and returns them
/// inside a struct.
#[weir::task(cache = "inputs")]
fn write_parts(n: u64) -> anyhow::Result<Bundle> {
    if let Ok(marker) = std::env::var("PROBE_MARKER") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&marker)?;
        writeln!(f, "wrote {n} parts in {}", std::process::id())?;
    }
    std::fs::create_dir_all("parts")?;
    let mut parts = Vec::new();
    for i in 0..n {
        let p = std::path::PathBuf::from(format!("parts/{i}.txt"));
        std::fs::write(&p, format!("part {i} of {n}"))?;
        parts.push(weir::Artifact::from_path(p));
    }
    std::fs::write("parts/index.txt", format!("{n} parts"))?;
    Ok(Bundle {
        parts,
        index: Some(weir::Artifact::from_path("parts/index.txt")),
        nothing: None,
    })
}

#[weir::flow]
async fn probe_parts(n: u64) -> anyhow::Result<Vec<String>> {
    let bundle = write_parts(n).await?;
    anyhow::ensure!(bundle.nothing.is_none(), "None came back as something");
    let mut out = Vec::new();
    for f in bundle.parts.iter().chain(bundle.index.iter()) {
        out.push(std::fs::read_to_string(f.path()).with_context(|| format!("reading {}", f.path().display()))?);
    }
    Ok(out)
}

/// The body of the stamped tasks: says it started, works, and leaves a mark.
async fn stamp_work(what: &str) -> anyhow::Result<String> {
    eprintln!("computing {what}");
    if let Some(ms) = std::env::var("PROBE_WORK_MS").ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Ok(marker) = std::env::var("PROBE_MARKER") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&marker)?;
        writeln!(f, "computed {what} by {}", std::process::id())?;
    }
    Ok(format!("{what} by {}", std::process::id()))
}

/// Who computed it is part of the result, so a test can tell whose result was stored.
#[weir::task(cache = "inputs", cache_expiration = "1h")]
async fn stamped(n: u64) -> anyhow::Result<String> {
    stamp_work(&n.to_string()).await
}

#[weir::flow]
async fn probe_stamped(n: u64) -> anyhow::Result<String> {
    Ok(stamped(n).await?)
}

#[weir::task(result_key = "race/{region}.json")]
async fn named_skip(region: String) -> anyhow::Result<String> {
    stamp_work(&region).await
}

#[weir::task(result_key = "strict-race/{region}.json", on_duplicate = "error")]
async fn named_error(region: String) -> anyhow::Result<String> {
    stamp_work(&region).await
}

#[weir::flow]
async fn probe_named(strict: bool, region: String) -> anyhow::Result<String> {
    Ok(if strict {
        named_error(region).await?
    } else {
        named_skip(region).await?
    })
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[weir::flow(tags = ["probe", "nightly"])]
async fn probe(n: u64) -> anyhow::Result<u64> {
    Ok(expensive(n).await?)
}

/// Log lines the server would refuse as they are: too long, a NUL, and together more than
/// one request may carry.
#[weir::task]
async fn noisy(lines: usize) -> anyhow::Result<usize> {
    tracing::warn!("{}", "L".repeat(100 << 10));
    tracing::warn!("before\0after");
    for i in 0..lines {
        tracing::warn!("line {i} {}", "y".repeat(60 << 10));
    }
    Ok(lines)
}

// A 300-byte flow name: over the server's 256.
#[weir::flow(
    name = "hostile-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
)]
async fn hostile(lines: usize) -> anyhow::Result<usize> {
    Ok(noisy(lines).await?)
}

/// Parameters nested deeper than the server's JSON parser accepts.
#[weir::flow]
async fn deep(tree: serde_json::Value, n: u64) -> anyhow::Result<u64> {
    let _ = tree;
    Ok(expensive(n).await?)
}

#[weir::task]
async fn trivial(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

/// Many trivial task runs one after another: records come faster than a server takes them.
#[weir::flow]
async fn flood(n: u64) -> anyhow::Result<u64> {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(trivial(i).await?);
    }
    Ok(sum)
}

/// Never ends by itself: only the process's exit stops it.
#[weir::task(timeout = "100ms")]
fn endless() -> anyhow::Result<()> {
    eprintln!("endless started");
    std::thread::sleep(std::time::Duration::from_secs(3600));
    Ok(())
}

#[weir::flow]
async fn abandon() -> anyhow::Result<()> {
    Ok(endless().await?)
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

/// Waits for the test's `go` (see the module docs).
fn ready() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    anyhow::ensure!(std::io::stdin().read_line(&mut line)? > 0, "stdin closed before go");
    Ok(())
}

async fn race(location: &str, salt: &str, writer: usize, rounds: u64) -> anyhow::Result<()> {
    use weir_tests::store_suite::{RaceOutcome, key, race_lease, race_put};
    // With fsync, as users run it: on JuiceFS and NFS a file is only whole for other
    // clients once flushed.
    let store = weir_cache::open(location, &weir_cache::OpenOptions::default())?;
    // Connect before the race, not during it.
    store.get(&key("warm-up", writer as u64), 0).await?;
    // The wall clock, so the test can tell whether writers in different processes overlapped.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    };
    let line = |what: &str, r: u64, start: u128, o: RaceOutcome| {
        let won = if o.won { "won" } else { "lost" };
        format!("{what} {r} {won} {start} {} {}", now(), o.seen)
    };
    for r in 0..rounds {
        ready()?;
        let start = now();
        let o = race_put(&*store, &key(salt, r), writer, r).await;
        println!("{}", line("put", r, start, o));
        ready()?;
        let start = now();
        let o = race_lease(&*store, &key(&format!("{salt}-lease"), r), writer).await;
        println!("{}", line("lease", r, start, o));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(s) = std::env::var("PROBE_CLOCK_AHEAD_S").ok().and_then(|v| v.parse().ok()) {
        weir::testing::advance_clock(std::time::Duration::from_secs(s));
    }
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
        ["block", name] => {
            // Prints the bucket, its secret (revealed for this client) and its Debug form.
            let b = weir::Block::load::<weir::blocks::S3Bucket>(name).await?;
            let secret = b
                .credentials
                .as_ref()
                .map(|c| c.secret_access_key.clone())
                .unwrap_or_default();
            println!("{} {secret} {b:?}", b.bucket);
        }
        ["block-json", address] => {
            println!("{}", weir::Block::load_json(address).await?);
        }
        ["run", n] => {
            let (r, report) = probe(n.parse()?).with_report().await;
            r?;
            println!("{}", if report.cached > 0 { "hit" } else { "miss" });
        }
        ["chunky", n] => {
            let (r, report) = chunky_flow(n.parse()?).with_report().await;
            r?;
            println!("{} computed {} cached", report.completed, report.cached);
        }
        ["many", n] => {
            let (r, report) = many(n.parse()?).with_report().await;
            r?;
            println!("{} computed {} cached", report.completed, report.cached);
        }
        ["file", bytes, dir] => {
            let (r, report) = probe_file(bytes.parse()?, dir.to_string()).with_report().await;
            let out = r?;
            println!(
                "{} {out} {}",
                if report.cached > 0 { "hit" } else { "miss" },
                peak_rss_kib()
            );
        }
        ["parts", n] => {
            let (r, report) = probe_parts(n.parse()?).with_report().await;
            let contents = r?;
            println!("{}", if report.cached > 0 { "hit" } else { "miss" });
            for c in contents {
                println!("{c}");
            }
        }
        ["stamp", n] => {
            let (r, report) = probe_stamped(n.parse()?).with_report().await;
            println!("{} {}", if report.cached > 0 { "hit" } else { "miss" }, r?);
        }
        ["named", mode @ ("skip" | "error"), region] => {
            let (r, report) = probe_named(*mode == "error", region.to_string()).with_report().await;
            match r {
                Ok(v) => println!("{} {v}", if report.cached > 0 { "hit" } else { "miss" }),
                Err(e) => println!("error {:#}", anyhow::Error::from(e)),
            }
        }
        ["big", bytes] => {
            let len = probe_big(bytes.parse()?).await?;
            println!("{len}");
        }
        ["hostile", lines] => {
            println!("{}", hostile(lines.parse()?).await?);
        }
        ["deep", depth, n] => {
            let mut tree = serde_json::json!("leaf");
            for _ in 0..depth.parse::<usize>()? {
                tree = serde_json::Value::Array(vec![tree]);
            }
            println!("{}", deep(tree, n.parse()?).await?);
        }
        ["flood", n] => {
            println!("{}", flood(n.parse()?).await?);
        }
        ["abandon"] => {
            let e = abandon().await.expect_err("the task times out");
            println!(
                "{}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            );
        }
        ["no-runtime"] => {
            // A flow awaited on a thread with no tokio runtime (a common first mistake).
            let outcome = std::thread::spawn(|| futures::executor::block_on(probe(1))).join();
            match outcome {
                Ok(Ok(_)) => println!("ran"),
                Ok(Err(e)) => {
                    let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
                    println!("error: {e}: {why}");
                }
                Err(_) => println!("panicked"),
            }
        }
        ["race", store, salt, writer, rounds] => race(store, salt, writer.parse()?, rounds.parse()?).await?,
        _ => bail!(
            "usage: cache_probe key forward|reverse | run N | big BYTES | race STORE SALT W ROUNDS | parts N | hostile LINES | deep DEPTH N | flood N | abandon | no-runtime"
        ),
    }
    Ok(())
}
