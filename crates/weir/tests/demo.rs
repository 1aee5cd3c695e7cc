//! The README's first command, run for real: miss, then hit, then a clear usage error.

use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds the package's examples next to the test binaries.
fn demo() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps -> target/<profile>
    let path = dir.join("examples").join("cached_inputs");
    assert!(path.exists(), "{} was not built", path.display());
    path
}

#[test]
fn the_cached_demo_misses_then_hits_and_rejects_bad_arguments() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(demo())
            .args(args)
            .env("WEIR_HOME", home.path())
            .env_remove("WEIR_RESULTS_DIR")
            .env_remove("WEIR_STATE_DB")
            .env_remove("WEIR_REFRESH_CACHE")
            .output()
            .unwrap()
    };
    let first = run(&["--input", "1", "2", "3"]);
    let first_out = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(first_out.contains("= 6 (cache miss"), "{first_out}");

    let second = run(&["--input", "1", "2", "3"]);
    let second_out = String::from_utf8_lossy(&second.stdout);
    assert!(second_out.contains("= 6 (cache hit"), "{second_out}");
    // Plain log lines (stderr is not a terminal here) name the flow and the task.
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(log.contains("slow_sum[") && log.contains("Cached"), "{log}");

    let other = run(&["--input", "-4", "5"]);
    assert!(String::from_utf8_lossy(&other.stdout).contains("= 1 (cache miss"));

    let bad = run(&["--input", "1", "two"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid value 'two'") && !err.contains("panicked"),
        "{err}"
    );

    let missing = run(&[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--input"));
}
