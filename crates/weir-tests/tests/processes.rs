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
    assert_eq!(computed.lines().collect::<Vec<_>>(), vec!["computed 21", "computed 22"]);
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
    let results = home.path().join("results/v1");
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
        files_in(&results.join("manifests")).is_empty(),
        "a manifest was published"
    );
    // …and the next run computes and publishes a complete one.
    let len = ok(probe(home.path())
        .args(["big", &(1024 * 1024).to_string()])
        .output()
        .unwrap());
    assert_eq!(len, (1024 * 1024).to_string());
}
