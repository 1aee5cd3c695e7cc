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

#[test]
fn in_a_terminal_a_running_flow_shows_live_progress() {
    // `script` (util-linux) runs the demo on a pseudo-terminal, as a person would.
    if Command::new("script").arg("--version").output().is_err() {
        // scripts/test.sh makes this test mandatory.
        assert!(
            std::env::var("WEIR_TEST_REQUIRE_TERMINAL").as_deref() != Ok("1"),
            "WEIR_TEST_REQUIRE_TERMINAL=1 but there is no `script` command to make a terminal"
        );
        eprintln!("skipping: no `script` command to make a terminal");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let cmd = format!("{} --input 7 8 9", demo().display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("WEIR_HOME", home.path())
        .env_remove("WEIR_PROGRESS")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    // The live line, redrawn while the 3 s task runs: counts and elapsed time.
    assert!(
        screen.contains("cached_inputs") && screen.contains("1 running"),
        "{screen}"
    );
    assert!(screen.contains("00:00:0"), "elapsed time on the live line: {screen}");
    assert!(screen.contains("= 24 (cache miss"), "{screen}");
}
