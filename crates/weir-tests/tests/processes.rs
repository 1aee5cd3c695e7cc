//! The cache across real OS processes sharing one folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn probe(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache_probe"));
    cmd.env("WEIR_HOME", home)
        .env_remove("WEIR_RESULTS_DIR")
        .env_remove("WEIR_STATE_DB")
        .env_remove("WEIR_REFRESH_CACHE")
        .env("WEIR_LOG", "warn");
    cmd
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "probe failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn same_inputs_give_the_same_key_in_separate_processes() {
    let home = tempfile::tempdir().unwrap();
    // Each process seeds its HashMap differently, and the two insert in opposite orders.
    let forward = ok(probe(home.path()).args(["key", "forward"]).output().unwrap());
    let reverse = ok(probe(home.path()).args(["key", "reverse"]).output().unwrap());
    let again = ok(probe(home.path()).args(["key", "forward"]).output().unwrap());
    assert_eq!(forward.len(), 64, "a hex BLAKE3 key: {forward}");
    assert_eq!(forward, reverse);
    assert_eq!(forward, again);
}

#[test]
fn a_result_computed_by_one_process_is_a_hit_in_another() {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("marker");
    let first = ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .args(["run", "21"])
        .output()
        .unwrap());
    let second = ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .args(["run", "21"])
        .output()
        .unwrap());
    let other = ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .args(["run", "22"])
        .output()
        .unwrap());
    assert_eq!(
        (first.as_str(), second.as_str(), other.as_str()),
        ("miss", "hit", "miss")
    );
    let computed = std::fs::read_to_string(&marker).unwrap();
    let computed: Vec<&str> = computed.lines().map(|l| l.split(" by ").next().unwrap_or("")).collect();
    assert_eq!(computed, vec!["computed 21", "computed 22"]);
}

#[test]
fn weir_refresh_cache_recomputes_a_whole_run() {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("marker");
    ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .args(["run", "5"])
        .output()
        .unwrap());
    let refreshed = ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .env("WEIR_REFRESH_CACHE", "1")
        .args(["run", "5"])
        .output()
        .unwrap());
    let after = ok(probe(home.path())
        .env("PROBE_MARKER", &marker)
        .args(["run", "5"])
        .output()
        .unwrap());
    assert_eq!(refreshed, "miss");
    assert_eq!(after, "hit", "the refreshed entry is used by later runs");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_writer_killed_mid_write_leaves_no_readable_partial_entry() {
    let home = tempfile::tempdir().unwrap();
    let results = home.path().join("results");
    let bytes: usize = 256 * 1024 * 1024;
    let mut child = probe(home.path())
        .args(["big", &bytes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Kill it the moment a temp file has bytes in it: it is mid-write.
    let deadline = Instant::now() + Duration::from_secs(120);
    let partial = loop {
        let tmp = files_in(&results.join("tmp"));
        if let Some(f) = tmp
            .iter()
            .find(|f| std::fs::metadata(f).map(|m| m.len() > 0).unwrap_or(false))
        {
            child.kill().unwrap();
            break f.clone();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the writer never started writing");
        std::thread::yield_now();
    };
    child.wait().unwrap();
    let partial_len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        partial_len < bytes as u64 + 2,
        "killed mid-write ({partial_len} bytes written)"
    );

    // No manifest was published, so nobody can read the partial result…
    assert!(
        files_in(&results.join("v1/manifests")).is_empty(),
        "a manifest was published"
    );
    // …and the next run computes and publishes a complete one.
    let len = ok(probe(home.path())
        .args(["big", &(1024 * 1024).to_string()])
        .output()
        .unwrap());
    assert_eq!(len, (1024 * 1024).to_string());
}

// ---------- one cache for every machine: S3 ----------

use std::io::{BufRead, BufReader};

use weir_tests::s3::{S3sServer, credentials_env, moto_endpoint};

fn probe_s3(home: &Path, url: &str) -> Command {
    let mut cmd = probe(home);
    cmd.env("WEIR_RESULTS", url);
    for (k, v) in credentials_env() {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn two_processes_on_two_homes_share_one_s3_store() {
    let server = S3sServer::start(&["results"]).unwrap();
    let url = server.url("results", "team");
    // Two "machines": separate WEIR_HOMEs (databases, local tiers), one bucket.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let marker = a.path().join("marker");
    let first = ok(probe_s3(a.path(), &url)
        .env("PROBE_MARKER", &marker)
        .args(["run", "31"])
        .output()
        .unwrap());
    let second = ok(probe_s3(b.path(), &url)
        .env("PROBE_MARKER", &marker)
        .args(["run", "31"])
        .output()
        .unwrap());
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
    // The second machine kept a local copy: its local tier now answers without S3.
    let local = files_in(&b.path().join("local-cache/v1/manifests"));
    assert_eq!(local.len(), 1, "{local:?}");
    drop(server);
    let offline = probe_s3(b.path(), &url).args(["run", "31"]).output().unwrap();
    assert_eq!(ok(offline), "hit", "served from the local tier with the S3 server gone");
}

#[test]
fn eight_processes_computing_one_key_compute_it_once() {
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = format!("race-{}", std::process::id());
    let made = Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request as u; u.urlopen(u.Request('{endpoint}/{bucket}', method='PUT')).read()"),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let url = format!("s3://{bucket}/race?endpoint={endpoint}");
    let marker = tempfile::NamedTempFile::new().unwrap();
    let homes: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = homes
        .iter()
        .map(|h| {
            probe_s3(h.path(), &url)
                .env("PROBE_MARKER", marker.path())
                .env("PROBE_WORK_MS", "1500")
                .args(["run", "77"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let logs: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    let outs: Vec<String> = outputs.into_iter().map(ok).collect();
    let computed = std::fs::read_to_string(marker.path()).unwrap();
    assert_eq!(
        computed.lines().count(),
        1,
        "computed more than once: {computed}\nlogs: {logs:#?}"
    );
    assert_eq!(outs.iter().filter(|o| *o == "miss").count(), 1, "{outs:?}");
    assert_eq!(outs.iter().filter(|o| *o == "hit").count(), 7, "{outs:?}");
}

#[test]
fn a_lease_holder_killed_with_sigkill_is_taken_over_after_the_lease_expires() {
    let server = S3sServer::start(&["results"]).unwrap();
    let url = server.url("results", "lease");
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("marker");
    let mut holder = probe_s3(home.path(), &url)
        .env("PROBE_HANG", "1")
        .env("WEIR_LEASE_TTL", "3s")
        .args(["run", "55"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the holder is inside the task body, so it holds the lease.
    let mut lines = BufReader::new(holder.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("holder exited early").unwrap();
        if line.contains("computing 55") {
            break;
        }
    }
    holder.kill().unwrap(); // SIGKILL: no cleanup, the lease stays behind
    holder.wait().unwrap();

    let started = Instant::now();
    let taker = probe_s3(home.path(), &url)
        .env("PROBE_MARKER", &marker)
        .env("WEIR_LEASE_TTL", "3s")
        .env("WEIR_LOG", "info")
        .args(["run", "55"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&taker.stderr).to_string();
    assert_eq!(ok(taker), "miss");
    assert!(
        log.contains("waiting for"),
        "the taker first saw the dead holder's lease: {log}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
}

#[test]
fn gc_while_a_flow_writes_loses_nothing_live() {
    let home = tempfile::tempdir().unwrap();
    let results = home.path().join("results");
    let writer = probe(home.path())
        .env("WEIR_CACHE_FSYNC", "0")
        .args(["many", "300"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect garbage over and over while the flow publishes.
    let store = weir_cache::Store::new(std::sync::Arc::new(
        weir_cache::folder::FolderBackend::open(&results).unwrap(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut child = writer;
    let mut rounds = 0;
    while child.try_wait().unwrap().is_none() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        rt.block_on(weir_cache::ResultStore::gc(
            &store,
            weir_cache::GcOptions {
                grace_micros: 3_600_000_000,
                ..Default::default()
            },
            now,
        ))
        .unwrap();
        rounds += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(rounds > 0);
    // Every result the flow wrote is still there: a second run computes nothing.
    let again = ok(probe(home.path()).args(["many", "300"]).output().unwrap());
    assert_eq!(again, "0 computed 300 cached");
}

// ---------- large results ----------

/// Runs `cache_probe file BYTES` and returns (hit/miss, bytes read back, peak RSS KiB).
fn file_run(cmd: &mut Command, bytes: u64, dir: &Path) -> (String, u64, u64) {
    let out = ok(cmd
        .args(["file", &bytes.to_string(), &dir.display().to_string()])
        .output()
        .unwrap());
    let parts: Vec<&str> = out.split_whitespace().collect();
    (
        parts[0].to_string(),
        parts[1].parse().unwrap(),
        parts[3].parse().unwrap(),
    )
}

#[test]
fn a_2_gib_file_result_is_written_and_read_with_bounded_memory() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_, _, baseline) = file_run(&mut probe(home.path()), 1024, work.path());
    let big: u64 = 2 << 30;
    let (first, len1, peak1) = file_run(&mut probe(home.path()), big, work.path());
    std::fs::remove_file(work.path().join(format!("made-{big}"))).unwrap(); // the hit must not need it
    let (second, len2, peak2) = file_run(&mut probe(home.path()), big, work.path());
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!((len1, len2), (big, big));
    let extra_mib = (peak1.max(peak2).saturating_sub(baseline)) / 1024;
    assert!(
        extra_mib <= 64,
        "peak memory grew by {extra_mib} MiB for a 2 GiB result"
    );
}

#[test]
fn a_large_file_result_goes_to_s3_in_parts_and_comes_back_through_the_local_tier() {
    let server = S3sServer::start(&["results"]).unwrap();
    let url = server.url("results", "files");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let work = tempfile::tempdir().unwrap();
    let size: u64 = 200 << 20; // 25 parts of 8 MiB
    let (_, _, baseline) = file_run(&mut probe_s3(a.path(), &url), 1024, work.path());
    let (first, _, peak1) = file_run(&mut probe_s3(a.path(), &url), size, work.path());
    std::fs::remove_file(work.path().join(format!("made-{size}"))).unwrap();
    let (second, len, peak2) = file_run(&mut probe_s3(b.path(), &url), size, work.path());
    assert_eq!((first.as_str(), second.as_str(), len), ("miss", "hit", size));
    let extra_mib = (peak1.max(peak2).saturating_sub(baseline)) / 1024;
    assert!(extra_mib <= 64, "peak memory grew by {extra_mib} MiB");
    // The second machine downloaded it once into its local tier.
    let local = files_in(&b.path().join("local-cache/files"));
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(std::fs::metadata(&local[0]).unwrap().len(), size);
}

#[test]
fn a_flow_outside_a_tokio_runtime_is_a_clear_error_in_a_terminal_and_out_of_one() {
    let home = tempfile::tempdir().unwrap();
    // Not a terminal: plain log lines.
    let plain = ok(probe(home.path()).arg("no-runtime").output().unwrap());
    assert!(plain.contains("error:") && plain.contains("tokio runtime"), "{plain}");

    // A terminal (`script` from util-linux makes a pseudo-terminal): the live progress line
    // would start here, and must not panic for want of a runtime.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping the terminal half: no `script` command to make a terminal");
        return;
    }
    let cmd = format!("{} no-runtime", env!("CARGO_BIN_EXE_cache_probe"));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("WEIR_HOME", home.path())
        .env("WEIR_LOG", "warn")
        .env_remove("WEIR_RESULTS_DIR")
        .env_remove("WEIR_STATE_DB")
        .env_remove("WEIR_PROGRESS")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("error:") && screen.contains("tokio runtime") && !screen.contains("panicked"),
        "{screen}"
    );
}

#[test]
fn a_process_exits_even_if_a_timed_out_blocking_task_still_runs() {
    let home = tempfile::tempdir().unwrap();
    let mut child = probe(home.path())
        .arg("abandon")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The task's thread sleeps for an hour; main returns after the 100 ms timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.is_some(), "the process hung on the abandoned thread: {stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("endless started"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("timed out"));
}
