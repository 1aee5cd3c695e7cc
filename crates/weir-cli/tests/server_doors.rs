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

fn weir(home: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(args).env("WEIR_HOME", home);
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
    c.output().unwrap()
}

#[test]
fn profiles_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mode = || std::fs::metadata(h.join("profiles.toml")).unwrap().permissions().mode() & 0o777;
    let out = weir(h, &[], &["profile", "create", "prod", "--api-key", "k3y"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(), 0o600, "a new profiles file");
    // A file made readable by hand (or by an older weir) is tightened on the next write.
    std::fs::set_permissions(h.join("profiles.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(weir(h, &[], &["profile", "create", "dev"]).status.success());
    assert_eq!(mode(), 0o600, "rewritten");
}

#[test]
fn config_show_masks_the_database_password() {
    let home = tempfile::tempdir().unwrap();
    let url = "postgres://weir:hunter2@db.internal:5432/weir";
    let out = weir(
        home.path(),
        &[("WEIR_DATABASE_URL", url)],
        &["config", "show", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["database_url"]["value"], "postgres://weir:***@db.internal:5432/weir");
}

#[test]
fn a_key_sent_over_plain_http_to_another_host_is_warned_about_once() {
    let home = tempfile::tempdir().unwrap();
    // TEST-NET-1 (RFC 5737): never a real host, so the command fails after the warning.
    let remote = [("WEIR_API_URL", "http://192.0.2.1:9"), ("WEIR_API_KEY", "k3y")];
    let out = weir(home.path(), &remote, &["runs", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("over plain HTTP").count(), 1, "{err}");
    // Loopback, or no key: nothing to warn about.
    let (mut server, line) = start(home.path(), &[], &[]).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
    let out = weir(
        home.path(),
        &[("WEIR_API_URL", url), ("WEIR_API_KEY", "k3y")],
        &["runs", "ls"],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("plain HTTP"));
    let out = weir(home.path(), &[("WEIR_API_URL", "http://192.0.2.1:9")], &["runs", "ls"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("plain HTTP"));
    server.kill().unwrap();
    server.wait().unwrap();
}
