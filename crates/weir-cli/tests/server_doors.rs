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

/// Reads the server's stderr to the end in the background, so its request log never fills
/// the pipe and stalls it.
fn drain_stderr(child: &mut Child) {
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut e, &mut std::io::sink()));
    }
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
    drain_stderr(&mut child);
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
fn passwords_in_a_url_query_or_in_an_api_url_are_never_printed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // PostgreSQL (and sqlx) also take the password as a query parameter.
    let url = "postgres://weir@db.internal/weir?sslmode=require&password=hunter2";
    let out = weir(h, &[("WEIR_DATABASE_URL", url)], &["config", "show", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["database_url"]["value"],
        "postgres://weir@db.internal/weir?sslmode=require&password=***"
    );
    // An API URL behind a proxy with basic auth: masked in `config show` and `profile ls`.
    let api = "https://team:s3cret@weir.example.com";
    let out = weir(h, &[], &["profile", "create", "prod", "--api-url", api]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for args in [&["profile", "ls"][..], &["config", "show"][..]] {
        let out = weir(h, &[], args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("s3cret"), "{args:?}: {text}");
        assert!(text.contains("team:***@weir.example.com"), "{args:?}: {text}");
    }
    // Nor in the error that the server cannot be reached (nothing listens on port 1).
    let out = weir(
        h,
        &[("WEIR_API_URL", "http://team:s3cret@127.0.0.1:1")],
        &["runs", "ls"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("127.0.0.1:1") && !err.contains("s3cret"), "{err}");
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
    drain_stderr(&mut server);
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

/// SIGTERM: the server stops taking connections, answers the request it is serving, logs
/// both, and exits 0.
#[test]
fn sigterm_drains_the_request_in_flight_and_requests_are_logged() {
    use std::sync::mpsc;
    let home = tempfile::tempdir().unwrap();
    let (mut server, line) = start(home.path(), &[("WEIR_LOG", "info,tower_http=debug")], &[]).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = server.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = weir_client::Client::new(&url, None).unwrap();
    let id = weir_types::FlowRunId::new();
    let run = weir_types::FlowRunRecord {
        id,
        flow_name: "drain".into(),
        flow_path: "app::drain".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: weir_types::State::Running,
        parameters: serde_json::json!({}),
        created_at: 1,
        started_at: Some(1),
        ended_at: None,
        error: None,
        hostname: "h".into(),
        pid: 1,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    };
    rt.block_on(client.post_events(&[weir_types::Event::FlowRun(run)]))
        .unwrap();

    // A log follower waits on the server (up to 60 s) when the SIGTERM comes.
    let follow_url = format!("{url}/api/v1/flow_runs/{id}/logs?follow=60");
    let follower = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", &follow_url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    let mut seen = Vec::new();
    loop {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the server logs the request start");
        let started = l.contains("started processing request") && l.contains("follow=60");
        seen.push(l);
        if started {
            break;
        }
    }
    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let answer = follower.join().unwrap();
    assert!(
        answer.ends_with("\n200"),
        "the request in flight was answered: {answer}"
    );
    assert!(answer.contains("\"items\":[]"), "{answer}");
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < weir_server::DRAIN_LIMIT,
        "the follower did not hold the drain open"
    );
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let log = seen.join("\n");
    assert!(log.contains("stopping"), "{log}");
    assert!(log.contains("/api/v1/events") && log.contains("status=200"), "{log}");
    // Stopped means stopped: nothing listens any more.
    assert!(rt.block_on(client.flow_run(id)).is_err());
}

/// `weir runs …` against a server reads every page: all runs with `--limit 0`, an old run
/// by its short id, and every log line of a long run.
#[test]
fn runs_commands_page_through_everything_on_a_server() {
    use weir_types::{Event, FlowRunId, FlowRunRecord, LogRecord, State};
    let home = tempfile::tempdir().unwrap();
    let (mut server, line) = start(home.path(), &[], &[]).unwrap();
    drain_stderr(&mut server);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = weir_client::Client::new(&url, None).unwrap();
    let run = |id, n: i64| FlowRunRecord {
        id,
        flow_name: "paged".into(),
        flow_path: "app::paged".into(),
        parent_flow_run_id: None,
        parent_task_run_id: None,
        state: State::Completed,
        parameters: serde_json::json!({}),
        created_at: 1_700_000_000_000_000 + n,
        started_at: Some(1_700_000_000_000_000 + n),
        ended_at: Some(1_700_000_000_000_001 + n),
        error: None,
        hostname: "elsewhere".into(),
        pid: 1,
        tags: vec![],
        deployment: None,
        scheduled_at: None,
        work_pool: None,
        worker: None,
        retry_of: None,
        cancel_requested: false,
    };
    let oldest = FlowRunId::new();
    let mut events = vec![Event::FlowRun(run(oldest, 0))];
    events.extend((1..1200).map(|n| Event::FlowRun(run(FlowRunId::new(), n))));
    for chunk in events.chunks(1000) {
        rt.block_on(client.post_events(chunk)).unwrap();
    }
    let lines: Vec<Event> = (0..6000)
        .map(|n| {
            Event::Log(LogRecord {
                flow_run_id: Some(oldest),
                task_run_id: None,
                at: 1_700_000_000_000_000 + n,
                level: "INFO".into(),
                target: "app".into(),
                message: format!("line {n}"),
            })
        })
        .collect();
    for chunk in lines.chunks(2000) {
        rt.block_on(client.post_events(chunk)).unwrap();
    }
    let env = [("WEIR_API_URL", url.as_str())];
    let ls = weir(home.path(), &env, &["runs", "ls", "--limit", "0", "--json"]);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(all.len(), 1200);
    let ls = weir(home.path(), &env, &["runs", "ls", "--limit", "700", "--json"]);
    let some: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(some.len(), 700);
    let show = weir(home.path(), &env, &["runs", "show", &oldest.short()]);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    assert!(String::from_utf8_lossy(&show.stdout).contains(&oldest.to_string()));
    let logs = weir(home.path(), &env, &["runs", "logs", &oldest.to_string(), "--json"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    let logs: Vec<serde_json::Value> = serde_json::from_slice(&logs.stdout).unwrap();
    assert_eq!(logs.len(), 6000);
    assert_eq!(logs[5999]["message"], "line 5999");
    server.kill().unwrap();
    server.wait().unwrap();
}
