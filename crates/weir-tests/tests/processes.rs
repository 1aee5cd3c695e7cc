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

use weir_tests::mounts::{Bindfs, JuiceFs};
use weir_tests::s3::{S3sServer, credentials_env, moto_bucket, moto_endpoint};

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
    // The second machine kept a local copy…
    let local = files_in(&b.path().join("local-cache/v1/manifests"));
    assert_eq!(local.len(), 1, "{local:?}");
    // …but never trusts it without S3's manifest: with the server gone the task computes
    // without the cache (the copy may be stale), and says so.
    drop(server);
    let offline = probe_s3(b.path(), &url)
        .env("PROBE_MARKER", &marker)
        .args(["run", "31"])
        .output()
        .unwrap();
    let warning = String::from_utf8_lossy(&offline.stderr).into_owned();
    assert_eq!(ok(offline), "miss", "computed, not served from an unconfirmed copy");
    assert!(warning.contains("without the cache"), "{warning}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
}

/// Eight processes (separate homes: eight "machines") run one cached task with the same
/// input at once, process `i` on the store `locations[i % len]`: the body runs once, one
/// process misses and seven hit.
fn eight_processes_compute_one_key_once(locations: &[String]) {
    let marker = tempfile::NamedTempFile::new().unwrap();
    let homes: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            probe_s3(h.path(), &locations[i % locations.len()])
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
fn eight_processes_computing_one_key_compute_it_once() {
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = moto_bucket(&endpoint, "race");
    eight_processes_compute_one_key_once(&[format!("s3://{bucket}/race?endpoint={endpoint}")]);
}

#[test]
fn eight_processes_on_two_juicefs_mounts_compute_one_key_once() {
    let Some(jfs) = JuiceFs::folder("compute-once") else {
        return;
    };
    let mounts: Vec<String> = jfs.dirs.iter().map(|d| d.display().to_string()).collect();
    eight_processes_compute_one_key_once(&mounts);
}

// ---------- races between processes ----------

const PROCESS_WRITERS: usize = 8;
const PROCESS_ROUNDS: u64 = 8;

/// One writer process of a race (`cache_probe race`), driven line by line.
struct Racer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Racer {
    fn next_line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(l)) => l,
            _ => {
                let status = self.child.wait().unwrap();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("racer exited ({status}): {err}");
            }
        }
    }
}

/// [`PROCESS_WRITERS`] processes race for one key per round, [`PROCESS_ROUNDS`] rounds, writer
/// `w` on the store `locations[w % len]`; each round every writer is released at once (all
/// ready, then `go` to each), puts if absent and reads back, then asks for the round's lease.
/// Exactly one wins each, and every writer reads the winner's bytes and sees the winner
/// holding the lease.
fn processes_race(locations: &[String]) {
    use std::io::Write;
    use weir_tests::store_suite::{RaceOutcome, check_round, fresh_salt, most_at_once, race_bytes, race_holder};
    let home = tempfile::tempdir().unwrap();
    let salt = fresh_salt("process-races");
    let mut racers: Vec<Racer> = (0..PROCESS_WRITERS)
        .map(|w| {
            let mut child = probe_s3(home.path(), "unused")
                .args([
                    "race",
                    &locations[w % locations.len()],
                    &salt,
                    &w.to_string(),
                    &PROCESS_ROUNDS.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            Racer { child, stdin, lines }
        })
        .collect();
    let mut overlapped = 0;
    for r in 0..PROCESS_ROUNDS {
        for what in ["put", "lease"] {
            for racer in &mut racers {
                assert_eq!(racer.next_line(), "ready");
            }
            // Everyone is ready: release them together.
            for racer in &mut racers {
                racer.stdin.write_all(b"go\n").unwrap();
                racer.stdin.flush().unwrap();
            }
            let mut outcomes = Vec::new();
            let mut spans = Vec::new();
            for (w, racer) in racers.iter_mut().enumerate() {
                let line = racer.next_line();
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!((f.len(), f[0], f[1]), (6, what, r.to_string().as_str()), "{line}");
                spans.push((f[3].parse::<u128>().unwrap(), f[4].parse::<u128>().unwrap()));
                outcomes.push(RaceOutcome {
                    writer: w,
                    won: f[2] == "won",
                    seen: f[5].to_string(),
                });
            }
            if what == "put" {
                check_round("put if absent across processes", r, &outcomes, |w| race_bytes(w, r));
                overlapped = overlapped.max(most_at_once(&spans));
            } else {
                check_round("lease across processes", r, &outcomes, race_holder);
            }
        }
    }
    for mut racer in racers {
        drop(racer.stdin);
        assert!(racer.child.wait().unwrap().success());
    }
    assert!(overlapped >= 2, "the writer processes never overlapped");
}

#[test]
fn writers_in_separate_processes_race_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    processes_race(&[dir.path().display().to_string()]);
}

#[test]
fn writers_in_separate_processes_race_on_a_fuse_mount() {
    let Some(fuse) = Bindfs::mount() else { return };
    processes_race(&[fuse.path().display().to_string()]);
}

#[test]
fn writers_in_separate_processes_race_on_moto() {
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = moto_bucket(&endpoint, "process-race");
    processes_race(&[format!("s3://{bucket}/race?endpoint={endpoint}")]);
}

#[test]
fn writers_in_separate_processes_race_on_two_juicefs_mounts() {
    let Some(jfs) = JuiceFs::folder("process-races") else {
        return;
    };
    let mounts: Vec<String> = jfs.dirs.iter().map(|d| d.display().to_string()).collect();
    processes_race(&mounts);
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

/// gc with a grace of one second, over and over, while another process publishes results
/// stored as blobs (most of their own, some shared) for seconds: every blob a live entry
/// names, or is about to, stays.
#[test]
fn gc_while_a_flow_writes_loses_nothing_live() {
    let home = tempfile::tempdir().unwrap();
    let results = home.path().join("results");
    let writer = probe(home.path())
        .env("WEIR_CACHE_FSYNC", "0")
        .args(["chunky", "600"])
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
                grace_micros: 1_000_000,
                ..Default::default()
            },
            now,
        ))
        .unwrap();
        rounds += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(rounds > 1, "gc ran while the flow wrote ({rounds} rounds)");
    // Every result the flow wrote is still there: a second run computes nothing.
    let again = ok(probe(home.path()).args(["chunky", "600"]).output().unwrap());
    assert_eq!(again, "0 computed 600 cached");
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
    // It went up in parts (8 MiB each), not as one request holding the whole file.
    assert_eq!(server.requests("CreateMultipartUpload"), 1, "one multipart upload");
    assert_eq!(server.requests("CompleteMultipartUpload"), 1, "one multipart upload");
    assert!(
        server.requests("UploadPart") >= size / (8 << 20),
        "{} parts for {size} bytes",
        server.requests("UploadPart")
    );
    let extra_mib = (peak1.max(peak2).saturating_sub(baseline)) / 1024;
    assert!(extra_mib <= 64, "peak memory grew by {extra_mib} MiB");
    // The second machine downloaded it once into its local tier.
    let local = files_in(&b.path().join("local-cache/files"));
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(std::fs::metadata(&local[0]).unwrap().len(), size);
}

/// Two "machines" (own homes, own working folders) share one store; the first computes a
/// result holding files it wrote under its working folder, then those files are deleted. The
/// second must get a hit whose files exist and hold the right bytes.
fn artifacts_inside_results_reach_another_machine(store_env: &[(String, String)]) {
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (work_a, work_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let marker = home_a.path().join("marker");
    let run = |home: &Path, work: &Path| {
        let mut cmd = probe(home);
        cmd.current_dir(work)
            .env("PROBE_MARKER", &marker)
            .envs(store_env.iter().cloned());
        ok(cmd.args(["parts", "3"]).output().unwrap())
    };
    let expected = "part 0 of 3\npart 1 of 3\npart 2 of 3\n3 parts";
    assert_eq!(run(home_a.path(), work_a.path()), format!("miss\n{expected}"));
    std::fs::remove_dir_all(work_a.path().join("parts")).unwrap();
    assert_eq!(run(home_b.path(), work_b.path()), format!("hit\n{expected}"));
    assert!(!work_b.path().join("parts").exists(), "the hit did not run the task");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
}

#[test]
fn artifacts_inside_a_result_reach_another_machine_through_s3() {
    let server = S3sServer::start(&["results"]).unwrap();
    let mut store_env: Vec<(String, String)> = credentials_env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    store_env.push(("WEIR_RESULTS".into(), server.url("results", "nested")));
    artifacts_inside_results_reach_another_machine(&store_env);
}

#[test]
fn artifacts_inside_a_result_reach_another_machine_through_a_shared_folder() {
    let shared = tempfile::tempdir().unwrap();
    let store_env = vec![("WEIR_RESULTS".to_string(), shared.path().display().to_string())];
    artifacts_inside_results_reach_another_machine(&store_env);
}

// ---------- leases: one computation per key, and holders that stalled ----------

/// A `WEIR_RESULTS` URL for a fresh bucket on the moto server, if there is one.
fn moto_results(name: &str) -> Option<String> {
    let endpoint = moto_endpoint()?;
    let bucket = moto_bucket(&endpoint, name);
    Some(format!("s3://{bucket}/leases?endpoint={endpoint}"))
}

fn marks(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn signal(child: &std::process::Child, sig: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig}");
}

/// Starts `n` probes at once (each with its own home, like separate machines) and returns
/// each one's stdout.
fn race(n: usize, mut cmd: impl FnMut(&Path) -> Command) -> Vec<String> {
    let homes: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = homes
        .iter()
        .map(|h| {
            cmd(h.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| ok(c.wait_with_output().unwrap()))
        .collect()
}

/// A holder frozen (SIGSTOP) inside the task body stops renewing its lease; another process
/// takes the key over and publishes. When the first one wakes up it must not replace that
/// result with its own: both refresh the key, so both would publish with replace.
fn a_stalled_holder_does_not_publish_over_the_next_holder(results: &str) {
    let homes: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let marker = homes[0].path().join("marker");
    let cmd = |home: &Path| {
        let mut c = probe_s3(home, results);
        c.env("PROBE_MARKER", &marker).env("WEIR_LEASE_TTL", "1s");
        c
    };
    let mut a = cmd(homes[0].path())
        .env("WEIR_REFRESH_CACHE", "1")
        .env("PROBE_WORK_MS", "300")
        .args(["stamp", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_log = BufReader::new(a.stderr.take().unwrap()).lines();
    loop {
        let line = a_log.next().expect("the holder exited early").unwrap();
        if line.contains("computing 40") {
            break;
        }
    }
    signal(&a, "STOP");
    let b = cmd(homes[1].path())
        .env("WEIR_REFRESH_CACHE", "1")
        .env("WEIR_LOG", "info")
        .args(["stamp", "40"])
        .output()
        .unwrap();
    let b_log = String::from_utf8_lossy(&b.stderr).to_string();
    let b_out = ok(b);
    let b_value = b_out
        .strip_prefix("miss ")
        .expect("the second process computed")
        .to_string();
    assert!(
        b_log.contains("waiting for"),
        "the second process waited for the first one's lease: {b_log}"
    );
    signal(&a, "CONT");
    let a_rest: Vec<String> = a_log.map(|l| l.unwrap()).collect();
    assert!(a.wait().unwrap().success());
    assert!(
        a_rest.iter().any(|l| l.contains("lost the lease")),
        "the first process was told it lost its lease: {a_rest:?}"
    );
    assert_eq!(marks(&marker).len(), 2, "both bodies ran");
    let now = ok(cmd(homes[2].path()).args(["stamp", "40"]).output().unwrap());
    assert_eq!(now, format!("hit {b_value}"), "the new holder's result stands");
}

#[test]
fn a_stalled_holder_does_not_publish_over_the_next_holder_on_a_folder() {
    let results = tempfile::tempdir().unwrap();
    a_stalled_holder_does_not_publish_over_the_next_holder(&results.path().display().to_string());
}

#[test]
fn a_stalled_holder_does_not_publish_over_the_next_holder_on_s3() {
    let Some(url) = moto_results("stalled") else { return };
    a_stalled_holder_does_not_publish_over_the_next_holder(&url);
}

#[test]
fn processes_meeting_one_expired_damaged_or_refreshed_entry_compute_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let url = results.display().to_string();
    for (n, case) in [(50, "expired"), (51, "damaged"), (52, "refreshed")] {
        let marker = dir.path().join(format!("marker-{n}"));
        let seed = tempfile::tempdir().unwrap();
        let first = ok(probe_s3(seed.path(), &url)
            .env("PROBE_MARKER", &marker)
            .args(["stamp", &n.to_string()])
            .output()
            .unwrap());
        assert!(first.starts_with("miss"), "{first}");
        let env: &[(&str, &str)] = match case {
            // Two hours on: the entry (valid for one) has expired for every racer.
            "expired" => &[("PROBE_CLOCK_AHEAD_S", "7200")],
            "refreshed" => &[("WEIR_REFRESH_CACHE", "1")],
            _ => {
                for blob in files_in(&results.join("v1/blobs")) {
                    std::fs::write(blob, b"damaged").unwrap();
                }
                // Small results live in their manifest: damage the bytes there too.
                for manifest in files_in(&results.join("v1/manifests")) {
                    let mut meta: weir_cache::EntryMeta =
                        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
                    meta.inline = meta.inline.map(|b| b.iter().map(|x| x ^ 1).collect());
                    std::fs::write(&manifest, serde_json::to_vec(&meta).unwrap()).unwrap();
                }
                &[]
            }
        };
        let outs = race(6, |home| {
            let mut c = probe_s3(home, &url);
            c.env("PROBE_MARKER", &marker)
                .env("PROBE_WORK_MS", "800")
                .envs(env.iter().copied())
                .args(["stamp", &n.to_string()]);
            c
        });
        let computed = marks(&marker);
        assert_eq!(computed.len(), 2, "{case}: computed again more than once: {computed:?}");
        assert_eq!(
            outs.iter().filter(|o| o.starts_with("miss")).count(),
            1,
            "{case}: {outs:?}"
        );
        let values: std::collections::BTreeSet<&str> =
            outs.iter().filter_map(|o| o.split_once(' ')).map(|(_, v)| v).collect();
        assert_eq!(values.len(), 1, "{case}: everyone got the one new result: {outs:?}");
    }
}

#[test]
fn processes_writing_one_result_name_store_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let url = results.display().to_string();
    let store = weir_cache::Store::new(std::sync::Arc::new(
        weir_cache::folder::FolderBackend::open(&results).unwrap(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (mode, name) in [("skip", "race/eu.json"), ("error", "strict-race/eu.json")] {
        let marker = dir.path().join(format!("marker-{mode}"));
        let outs = race(6, |home| {
            let mut c = probe_s3(home, &url);
            c.env("PROBE_MARKER", &marker)
                .env("PROBE_WORK_MS", "500")
                .args(["named", mode, "eu"]);
            c
        });
        assert_eq!(marks(&marker).len(), 1, "{mode}: one body ran: {outs:?}");
        let winners: Vec<&String> = outs.iter().filter(|o| o.starts_with("miss")).collect();
        assert_eq!(winners.len(), 1, "{mode}: {outs:?}");
        let value = winners[0].strip_prefix("miss ").unwrap();
        let others = if mode == "skip" {
            format!("hit {value}")
        } else {
            "error".to_string()
        };
        for o in outs.iter().filter(|o| !o.starts_with("miss")) {
            assert!(o.starts_with(&others), "{mode}: {outs:?}");
            if mode == "error" {
                assert!(o.contains("already has a result"), "{o}");
            }
        }
        // The readable file holds the winner's result, and its manifest agrees.
        let stored: String = serde_json::from_slice(&std::fs::read(results.join("named").join(name)).unwrap()).unwrap();
        assert_eq!(stored, value, "{mode}");
        let found = rt
            .block_on(weir_cache::ResultStore::get_named(&store, name, 0))
            .unwrap();
        assert!(matches!(found, weir_cache::Lookup::Hit { .. }), "{mode}: {found:?}");
    }
}

/// Machines may set `WEIR_LEASE_TTL` differently. A holder with a long TTL renews rarely
/// (every third of its TTL); a waiter with a short one must still see it as alive, not take
/// the key over after two of its own TTLs and compute it a second time.
#[test]
fn a_waiter_with_a_shorter_lease_ttl_waits_for_a_live_holder() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results").display().to_string();
    let marker = dir.path().join("marker");
    let homes: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = probe_s3(homes[0].path(), &results)
        .env("PROBE_MARKER", &marker)
        .env("WEIR_LEASE_TTL", "30s")
        .env("PROBE_WORK_MS", "5000")
        .args(["stamp", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_log = BufReader::new(a.stderr.take().unwrap()).lines();
    loop {
        let line = a_log.next().expect("the holder exited early").unwrap();
        if line.contains("computing 60") {
            break;
        }
    }
    let b = ok(probe_s3(homes[1].path(), &results)
        .env("PROBE_MARKER", &marker)
        .env("WEIR_LEASE_TTL", "1s")
        .args(["stamp", "60"])
        .output()
        .unwrap());
    let a_out = a.wait_with_output().unwrap();
    let a_value = ok(a_out);
    assert_eq!(marks(&marker).len(), 1, "computed twice: {:?}", marks(&marker));
    let a_value = a_value.strip_prefix("miss ").unwrap();
    assert_eq!(b, format!("hit {a_value}"));
}

#[test]
fn a_flow_outside_a_tokio_runtime_is_a_clear_error_in_a_terminal_and_out_of_one() {
    let home = tempfile::tempdir().unwrap();
    // Not a terminal: plain log lines.
    let plain = ok(probe(home.path()).arg("no-runtime").output().unwrap());
    assert!(plain.contains("error:") && plain.contains("tokio runtime"), "{plain}");
    // The live line forced on (`WEIR_PROGRESS=always`): no terminal needed to reach the
    // code that would spawn its ticker, so this half never skips.
    let forced = ok(probe(home.path())
        .arg("no-runtime")
        .env("WEIR_PROGRESS", "always")
        .output()
        .unwrap());
    assert!(
        forced.contains("tokio runtime") && !forced.contains("panicked"),
        "{forced}"
    );

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

#[test]
fn a_broken_profile_stops_a_flow_at_its_start_with_the_reason() {
    // A malformed profiles.toml: the flow must not run on settings that lack the profile.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("profiles.toml"), "active = [\"prod\"\n").unwrap();
    let out = probe(home.path()).args(["run", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the flow ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("profiles.toml"), "{stderr}");

    // A well-formed file, but WEIR_PROFILE names a profile it does not have.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("profiles.toml"),
        "[profiles.dev]\napi_url = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = probe(home.path())
        .args(["run", "1"])
        .env("WEIR_PROFILE", "prod")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the flow ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("no profile named 'prod'") && stderr.contains("dev"),
        "{stderr}"
    );

    // The same file with a profile that exists runs (the check is not a blanket refusal).
    let out = probe(home.path()).args(["run", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
