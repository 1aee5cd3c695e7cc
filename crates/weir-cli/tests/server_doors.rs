//! `weir server start` as a real process: it refuses to start with a key it cannot trust,
//! keeps secrets out of files others can read and out of answers, speaks TLS, logs, and
//! drains on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `weir server start ARGS` with only `env` set of weir's variables. `Ok` with the
/// child and its first stdout line once it listens; `Err(stderr)` if it exits instead.
fn start(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<(Child, String), String> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(["server", "start", "--port", "0"])
        .args(args)
        .env("WEIR_HOME", home);
    for v in [
        "WEIR_API_URL",
        "WEIR_API_KEY",
        "WEIR_PROFILE",
        "WEIR_DATABASE_URL",
        "WEIR_LOG",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.contains("listening") {
        return Ok((child, line));
    }
    child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    Err(err)
}

fn refused(home: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    match start(home, env, args) {
        Ok((mut child, line)) => {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started: {line}");
        }
        Err(e) => e,
    }
}

#[test]
fn an_empty_key_or_a_broken_profile_never_starts_a_server_without_its_key() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let profiles = h.join("profiles.toml");

    std::fs::write(&profiles, "active = \"prod\"\n[profiles.prod]\napi_key = \"\"\n").unwrap();
    let e = refused(h, &[], &["--host", "0.0.0.0"]);
    assert!(e.contains("API key from profile 'prod' is empty"), "{e}");

    let e = refused(h, &[("WEIR_API_KEY", "")], &[]);
    assert!(e.contains("API key from environment (WEIR_API_KEY) is empty"), "{e}");
    let e = refused(h, &[("WEIR_API_KEY", "  ")], &[]);
    assert!(e.contains("is empty"), "{e}");

    std::fs::write(
        &profiles,
        "active = \"prod\"\n[profiles.prod]\napi_key = \"k3y\"\nbroken",
    )
    .unwrap();
    let e = refused(h, &[], &[]);
    assert!(e.contains("profiles.toml"), "{e}");

    std::fs::write(&profiles, "active = \"prod\"\n[profiles.prod]\napi_key = \"k3y\"\n").unwrap();
    let e = refused(h, &[("WEIR_PROFILE", "staging")], &[]);
    assert!(e.contains("no profile named 'staging'"), "{e}");

    // `profile create` does not write an empty key in the first place.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["profile", "create", "dev", "--api-key", ""])
        .env("WEIR_HOME", h)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key is empty"));

    // The good profile still starts, and its key is required.
    let (mut child, line) = start(h, &[], &[]).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let anonymous = weir_client::Client::new(url, None).unwrap();
    match rt.block_on(anonymous.flow_runs(&[])) {
        Err(weir_client::ClientError::Api { status, .. }) => assert_eq!(status, 401),
        other => panic!("{other:?}"),
    }
    let keyed = weir_client::Client::new(url, Some("k3y".into())).unwrap();
    rt.block_on(keyed.flow_runs(&[])).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
