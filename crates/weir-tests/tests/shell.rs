//! Shell tasks with real child processes: logs, failures, timeouts and cancellation of the
//! whole process group, the cache key, and what the child is told about its run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use weir::{FlowRunId, State};
use weir_state::StateDb;

struct Env {
    db: PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let env = Env {
            db: dir.join("weir.db"),
        };
        let mut settings = weir::Settings::from_env();
        settings.results = dir.join("results").display().to_string();
        settings.local_cache = None;
        settings.state_db = Some(env.db.clone());
        settings.refresh_cache = false;
        settings.log_filter = "info".into();
        settings.progress = weir::ProgressMode::Never;
        settings.api_url = None;
        settings.api_key = None;
        weir::configure(settings).unwrap();
        env
    })
}

fn db() -> StateDb {
    StateDb::open_existing(&env().db).unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

/// Whether a process is gone (a zombie waiting for a reaper counts as gone: it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

/// Waits (at most `limit`) for a process to be gone; whether it went.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    gone(pid)
}

/// Waits (at most 10 s) for a file the child writes.
async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[weir::flow]
async fn run_shell(command: String) -> anyhow::Result<String> {
    Ok(weir::shell(command).await?)
}

#[tokio::test]
async fn output_lines_stream_into_the_task_runs_logs_in_order() {
    env();
    // The pause between the lines shows they were recorded as they came, not at the end.
    let cmd = "echo out1; echo err1 >&2; sleep 0.5; echo out2; echo err2 >&2; printf out3".to_string();
    let (result, report) = run_shell(cmd).with_report().await;
    assert_eq!(result.unwrap(), "out1\nout2\nout3");
    let db = db();
    let task = &db.task_runs(report.flow_run_id).unwrap()[0];
    assert_eq!(task.task_name, "echo");
    let logs = db.logs(report.flow_run_id).unwrap();
    let of = |target: &str| {
        logs.iter()
            .filter(|l| l.target == target && l.task_run_id == Some(task.id))
            .collect::<Vec<_>>()
    };
    let out = of("shell::stdout");
    let err = of("shell::stderr");
    let texts = |v: &[&weir_types::LogRecord]| v.iter().map(|l| l.message.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&out), ["out1", "out2", "out3"]);
    assert_eq!(texts(&err), ["err1", "err2"]);
    assert!(
        out[1].at - out[0].at >= 400_000,
        "out1 was logged when it came, not at the end"
    );
}

#[tokio::test]
async fn a_failing_command_fails_its_task_with_the_exit_code_and_the_end_of_stderr() {
    env();
    let cmd = "for i in $(seq 1 50); do echo line$i >&2; done; exit 3".to_string();
    let (result, report) = run_shell(cmd).with_report().await;
    let text = format!("{:#}", anyhow::Error::new(result.unwrap_err()));
    assert!(text.contains("exited with code 3"), "{text}");
    assert!(text.contains("line50") && text.contains("line31"), "{text}");
    assert!(!text.contains("line30\n"), "only the last 20 lines: {text}");
    let task = &db().task_runs(report.flow_run_id).unwrap()[0];
    assert_eq!(task.state, State::Failed);
    assert!(task.error.as_deref().unwrap().contains("exited with code 3"));
}

#[tokio::test]
async fn a_command_killed_by_a_signal_says_which() {
    env();
    let (result, _) = run_shell("echo bye >&2; kill -9 $$".into()).with_report().await;
    let text = format!("{:#}", anyhow::Error::new(result.unwrap_err()));
    assert!(text.contains("killed by SIGKILL"), "{text}");
    assert!(text.contains("bye"), "{text}");
}

#[weir::flow]
async fn slow_shell(pidfile: String) -> anyhow::Result<String> {
    Ok(weir::shell(format!("sleep 300 & echo $! > {pidfile}; wait"))
        .timeout(Duration::from_millis(500))
        .kill_grace(Duration::from_secs(2))
        .await?)
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    env();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let (result, report) = slow_shell(pidfile.display().to_string()).with_report().await;
    let err = result.unwrap_err();
    assert_eq!(err.state, State::Failed);
    let task = &db().task_runs(report.flow_run_id).unwrap()[0];
    assert_eq!(task.state, State::TimedOut);
    let pid: u32 = wait_for_file(&pidfile).await.trim().parse().unwrap();
    assert!(wait_gone(pid, Duration::from_secs(10)), "grandchild {pid} still runs");
}

#[weir::flow]
async fn hanging_shell(pidfile: String) -> anyhow::Result<String> {
    Ok(weir::shell(format!("sleep 300 & echo $! > {pidfile}; wait"))
        .kill_grace(Duration::from_secs(2))
        .await?)
}

#[tokio::test]
async fn dropping_the_flow_kills_the_whole_process_group() {
    env();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let flow = tokio::spawn(hanging_shell(pidfile.display().to_string()).with_report());
    let pid: u32 = wait_for_file(&pidfile).await.trim().parse().unwrap();
    assert!(!gone(pid));
    flow.abort();
    let _ = flow.await;
    assert!(wait_gone(pid, Duration::from_secs(10)), "grandchild {pid} still runs");
}

#[weir::flow]
async fn counting_shell(dir: String, input: String, color: String) -> anyhow::Result<String> {
    Ok(weir::shell("echo ran >> count; cat \"$WEIR_INPUT_CONFIG\"")
        .current_dir(&dir)
        .env("COLOR", &color)
        .input_file("config", &input)
        .cache(true)
        .await?)
}

#[tokio::test]
async fn cached_shell_tasks_key_on_command_env_and_input_file_contents() {
    env();
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let input = dir.path().join("config.toml");
    std::fs::write(&input, "a = 1\n").unwrap();
    let (d, i) = (dir.path().display().to_string(), input.display().to_string());
    let go = |color: &str| counting_shell(d.clone(), i.clone(), color.to_string()).with_report();

    let (r, _) = go("red").await;
    assert_eq!(r.unwrap(), "a = 1\n");
    assert_eq!(lines(&count), 1);
    let (r, report) = go("red").await;
    assert_eq!(r.unwrap(), "a = 1\n");
    assert_eq!(lines(&count), 1, "the second run is a cache hit");
    assert_eq!(db().task_runs(report.flow_run_id).unwrap()[0].state, State::Cached);

    std::fs::write(&input, "a = 2\n").unwrap();
    let (r, _) = go("red").await;
    assert_eq!(r.unwrap(), "a = 2\n", "new input contents, new key");
    assert_eq!(lines(&count), 2);

    let (r, _) = go("blue").await;
    assert_eq!(r.unwrap(), "a = 2\n");
    assert_eq!(lines(&count), 3, "another env value, another key");
    let (_, _) = go("blue").await;
    assert_eq!(lines(&count), 3);
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Told {
    flow: String,
    task: String,
    params: serde_json::Value,
}

#[weir::flow]
async fn telling_shell(day: String) -> anyhow::Result<Told> {
    let _ = &day;
    Ok(weir::shell(
        r#"printf '{"flow":"%s","task":"%s","params":%s}' "$WEIR_FLOW_RUN_ID" "$WEIR_TASK_RUN_ID" "$WEIR_PARAMETERS""#,
    )
    .json::<Told>()
    .await?)
}

#[tokio::test]
async fn the_child_is_told_its_run_ids_and_parameters_and_json_output_is_parsed() {
    env();
    let (told, report) = telling_shell("2022-10-23".into()).with_report().await;
    let told = told.unwrap();
    assert_eq!(told.flow, report.flow_run_id.to_string());
    let task = &db().task_runs(report.flow_run_id).unwrap()[0];
    assert_eq!(told.task, task.id.to_string());
    assert_eq!(told.params, serde_json::json!({ "day": "2022-10-23" }));
    let _: FlowRunId = report.flow_run_id;
}

#[tokio::test]
async fn argv_runs_without_a_shell_and_a_missing_program_is_named() {
    env();
    let out = weir::Shell::argv(["echo", "$HOME", "a;b"]).await.unwrap();
    assert_eq!(out, "$HOME a;b\n");
    let err = weir::shell("no-such-program-weir --x").await.unwrap_err();
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(text.contains("could not start `no-such-program-weir --x`"), "{text}");
}
