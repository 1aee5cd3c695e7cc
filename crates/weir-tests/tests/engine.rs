//! The flow/task engine in one process: states, retries, timeouts, concurrency, the cache,
//! and what lands in the state database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use weir::prelude::*;
use weir::{CachePolicy, FlowRunId, State};
use weir_cache::folder::FolderBackend;
use weir_cache::{CacheKey, ResultStore, Store};
use weir_state::StateDb;

struct Env {
    results: PathBuf,
    db: PathBuf,
}

/// One engine per test binary: a fresh results folder and database, kept for the run.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let env = Env {
            results: dir.join("results"),
            db: dir.join("weir.db"),
        };
        let mut settings = weir::Settings::from_env();
        settings.results = env.results.display().to_string();
        settings.local_cache = None;
        settings.state_db = Some(env.db.clone());
        settings.refresh_cache = false;
        settings.log_filter = "info".into();
        settings.progress = weir::ProgressMode::Never;
        weir::configure(settings).unwrap();
        env
    })
}

fn db() -> StateDb {
    StateDb::open_existing(&env().db).unwrap()
}

/// A value no other test (or earlier run) uses, so cache entries never collide.
fn unique() -> u64 {
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id() as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (pid << 32) ^ N.fetch_add(1, Ordering::Relaxed) as u64
}

/// How often each keyed body really ran.
fn runs() -> &'static Mutex<HashMap<String, u32>> {
    static RUNS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn bump(what: &str) -> u32 {
    let mut m = runs().lock().unwrap();
    let n = m.entry(what.to_string()).or_default();
    *n += 1;
    *n
}

fn count(what: &str) -> u32 {
    runs().lock().unwrap().get(what).copied().unwrap_or(0)
}

// ---------- retries, timeouts, failures ----------

#[weir::task(retries = 2, retry_delay = "10ms")]
async fn flaky(id: u64) -> anyhow::Result<u64> {
    let attempt = bump(&format!("flaky-{id}"));
    if attempt < 3 {
        anyhow::bail!("transient failure {attempt}");
    }
    Ok(attempt as u64)
}

#[weir::flow]
async fn retry_flow(id: u64) -> anyhow::Result<u64> {
    Ok(flaky(id).await?)
}

#[tokio::test]
async fn a_task_that_fails_twice_then_succeeds_is_retried() {
    env();
    let id = unique();
    let (result, report) = retry_flow(id).with_report().await;
    assert_eq!(result.unwrap(), 3);
    assert_eq!(count(&format!("flaky-{id}")), 3);

    let tasks = db().task_runs(report.flow_run_id).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, State::Completed);
    assert_eq!(tasks[0].attempt, 3);
    let history: Vec<State> = db()
        .states(report.flow_run_id)
        .unwrap()
        .into_iter()
        .filter(|s| s.task_run_id == Some(tasks[0].id))
        .map(|s| s.state)
        .collect();
    use State::*;
    assert_eq!(
        history,
        vec![Pending, Running, Retrying, Running, Retrying, Running, Completed]
    );
}

#[weir::task(retries = 1, retry_delay = "1ms")]
async fn always_fails(msg: String) -> anyhow::Result<()> {
    Err(anyhow::anyhow!("disk quota exceeded").context(format!("writing {msg}")))
}

#[weir::flow]
async fn failing_flow(msg: String) -> anyhow::Result<()> {
    always_fails(msg).await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_task_fails_its_flow_with_the_whole_error_chain() {
    env();
    let (result, report) = failing_flow("report.csv".into()).with_report().await;
    let err = result.unwrap_err();
    assert_eq!(err.state, State::Failed);
    let err = anyhow::Error::from(err);
    let text = format!("{err:#}");
    assert!(text.contains("always_fails"), "{text}");
    assert!(text.contains("failed after 2 attempts"), "{text}");
    assert!(text.contains("writing report.csv: disk quota exceeded"), "{text}");
    assert_eq!(report.failed, 1);

    let run = db().flow_run(report.flow_run_id).unwrap().unwrap();
    assert_eq!(run.state, State::Failed);
    assert!(run.error.unwrap().contains("disk quota exceeded"));
}

#[weir::task(timeout = "50ms")]
async fn hangs() -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[weir::flow]
async fn timeout_flow() -> anyhow::Result<()> {
    Ok(hangs().await?)
}

#[tokio::test]
async fn a_task_past_its_timeout_is_timed_out() {
    env();
    let (result, report) = timeout_flow().with_report().await;
    let text = format!("{:#}", anyhow::Error::from(result.unwrap_err()));
    assert!(text.contains("timed out"), "{text}");
    let tasks = db().task_runs(report.flow_run_id).unwrap();
    assert_eq!(tasks[0].state, State::TimedOut);
}

#[weir::task]
async fn panics(x: u64) -> anyhow::Result<u64> {
    if x > 0 {
        panic!("index out of bounds in task");
    }
    Ok(x)
}

#[weir::flow]
async fn panic_flow() -> anyhow::Result<u64> {
    Ok(panics(1).await?)
}

#[tokio::test]
async fn a_panicking_task_is_crashed_not_a_crashed_process() {
    env();
    let (result, report) = panic_flow().with_report().await;
    let text = format!("{:#}", anyhow::Error::from(result.unwrap_err()));
    assert!(text.contains("index out of bounds in task"), "{text}");
    assert_eq!(db().task_runs(report.flow_run_id).unwrap()[0].state, State::Crashed);
}

// ---------- concurrency ----------

#[weir::task]
async fn echo_after(x: u64) -> anyhow::Result<u64> {
    // Later items finish first, so ordering is up to the engine.
    tokio::time::sleep(Duration::from_millis(50 - x * 8)).await;
    Ok(x)
}

#[weir::flow]
async fn map_flow(xs: Vec<u64>) -> anyhow::Result<Vec<u64>> {
    Ok(echo_after.map(xs).await?)
}

#[tokio::test]
async fn map_keeps_input_order() {
    env();
    let xs = vec![0, 1, 2, 3, 4, 5];
    let (result, report) = map_flow(xs.clone()).with_report().await;
    assert_eq!(result.unwrap(), xs);
    assert_eq!(report.completed, 6);
}

#[weir::task]
async fn meet(barrier: Arc<tokio::sync::Barrier>) -> anyhow::Result<()> {
    // Returns only once both calls are inside their bodies at the same time.
    barrier.wait().await;
    Ok(())
}

#[weir::flow]
async fn overlap_flow(barrier: Barrier) -> anyhow::Result<()> {
    let a = meet(barrier.0.clone()).submit();
    let b = meet(barrier.0.clone()).submit();
    a.await?;
    b.await?;
    let (c, d) = tokio::join!(meet(barrier.0.clone()), meet(barrier.0.clone()));
    c?;
    d?;
    weir::all([meet(barrier.0.clone()), meet(barrier.0.clone())]).await?;
    Ok(())
}

/// A flow parameter that is not data: skipped when recorded, no schema.
#[derive(Clone)]
struct Barrier(Arc<tokio::sync::Barrier>);
impl serde::Serialize for Barrier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> serde::Deserialize<'de> for Barrier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Barrier(Arc::new(tokio::sync::Barrier::new(2))))
    }
}
impl schemars::JsonSchema for Barrier {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Barrier".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "null"})
    }
}

#[tokio::test]
async fn submitted_joined_and_mapped_tasks_really_overlap() {
    env();
    let barrier = Barrier(Arc::new(tokio::sync::Barrier::new(2)));
    // If the two calls of any pair ran one after the other, the first would wait forever.
    tokio::time::timeout(Duration::from_secs(20), overlap_flow(barrier))
        .await
        .expect("tasks started together must overlap")
        .unwrap();
}

#[weir::task]
fn blocking_recv(rx: Arc<Mutex<std::sync::mpsc::Receiver<u64>>>) -> anyhow::Result<u64> {
    // Blocks its thread until the async side sends.
    let v = rx.lock().unwrap().recv_timeout(Duration::from_secs(20))?;
    Ok(v)
}

#[weir::task]
async fn async_send(tx: std::sync::mpsc::Sender<u64>) -> anyhow::Result<()> {
    tx.send(42)?;
    Ok(())
}

#[weir::flow]
async fn blocking_flow(_n: u64) -> anyhow::Result<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = blocking_recv(Arc::new(Mutex::new(rx))).submit();
    async_send(tx).await?;
    Ok(waiting.await?)
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_tasks_do_not_stall_the_runtime() {
    env();
    // One runtime thread: if the blocking task ran on it, the sender could never run.
    assert_eq!(blocking_flow(1).await.unwrap(), 42);
}

#[weir::task]
async fn slow_ok(x: u64) -> anyhow::Result<u64> {
    if x == 0 {
        anyhow::bail!("item 0 is bad");
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(x)
}

#[weir::flow]
async fn fail_fast_flow() -> anyhow::Result<Vec<u64>> {
    Ok(slow_ok.map([5, 6, 0]).await?)
}

#[tokio::test]
async fn a_failing_map_item_cancels_the_rest_at_once() {
    env();
    let (result, report) = tokio::time::timeout(Duration::from_secs(20), fail_fast_flow().with_report())
        .await
        .expect("the map must not wait for the slow items");
    assert!(format!("{:#}", anyhow::Error::from(result.unwrap_err())).contains("item 0 is bad"));
    let mut states: Vec<State> = db()
        .task_runs(report.flow_run_id)
        .unwrap()
        .into_iter()
        .map(|t| t.state)
        .collect();
    states.sort_by_key(|s| s.as_str());
    assert_eq!(states, vec![State::Cancelled, State::Cancelled, State::Failed]);
}

#[weir::task]
async fn note(flag: Arc<AtomicU32>) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    flag.store(1, Ordering::SeqCst);
    Ok(())
}

#[weir::flow]
async fn forgetful_flow(flag: Barrier2) -> anyhow::Result<()> {
    // Submitted and never awaited: the flow run still waits for it.
    drop(note(flag.0).submit());
    Ok(())
}

#[derive(Clone)]
struct Barrier2(Arc<AtomicU32>);
impl serde::Serialize for Barrier2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> serde::Deserialize<'de> for Barrier2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Barrier2(Arc::default()))
    }
}
impl schemars::JsonSchema for Barrier2 {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "null"})
    }
}

#[tokio::test]
async fn a_flow_run_waits_for_tasks_it_submitted_and_dropped() {
    env();
    let flag = Arc::new(AtomicU32::new(0));
    let (result, report) = forgetful_flow(Barrier2(flag.clone())).with_report().await;
    result.unwrap();
    assert_eq!(flag.load(Ordering::SeqCst), 1);
    assert_eq!(report.completed, 1);
}

// ---------- blocking tasks past their timeout ----------

static SLOW_NOW: AtomicU32 = AtomicU32::new(0);
static SLOW_MAX: AtomicU32 = AtomicU32::new(0);

/// The first attempt overruns its timeout by 100 ms (a blocking body cannot be stopped).
#[weir::task(timeout = "200ms", retries = 1, retry_delay = "10ms")]
fn slow_then_fast(key: u64) -> anyhow::Result<u32> {
    let attempt = bump(&format!("slow-{key}"));
    let now = SLOW_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    SLOW_MAX.fetch_max(now, Ordering::SeqCst);
    if attempt == 1 {
        std::thread::sleep(Duration::from_millis(300));
    }
    SLOW_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(attempt)
}

#[weir::flow]
async fn slow_flow(key: u64) -> anyhow::Result<u32> {
    Ok(slow_then_fast(key).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_blocking_attempt_is_not_overlapped_by_its_retry() {
    env();
    let key = unique();
    let attempt = slow_flow(key).await.unwrap();
    assert_eq!(attempt, 2, "the retry produced the value");
    assert_eq!(count(&format!("slow-{key}")), 2);
    assert_eq!(SLOW_MAX.load(Ordering::SeqCst), 1, "two attempts ran at once");
}

static STUCK: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());

#[weir::task(timeout = "100ms", retries = 2, retry_delay = "10ms")]
fn stuck() -> anyhow::Result<()> {
    bump("stuck");
    let mut open = STUCK.0.lock().unwrap();
    while !*open {
        open = STUCK.1.wait(open).unwrap();
    }
    Ok(())
}

#[weir::flow]
async fn stuck_flow() -> anyhow::Result<()> {
    Ok(stuck().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_attempt_that_never_ends_fails_its_retry_clearly() {
    env();
    let (result, report) = stuck_flow().with_report().await;
    let err = result.unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("not retried") && text.contains("still running"), "{text}");
    assert_eq!(count("stuck"), 1, "no second attempt started beside the first");
    let task = &db().task_runs(report.flow_run_id).unwrap()[0];
    assert_eq!(task.state, State::TimedOut);
    *STUCK.0.lock().unwrap() = true;
    STUCK.1.notify_all();
}

// ---------- subflows, logs, parameters ----------

#[weir::task]
async fn chatty(word: String) -> anyhow::Result<usize> {
    tracing::info!(word = %word, "saying {word}");
    Ok(word.len())
}

#[weir::flow]
async fn child(word: String) -> anyhow::Result<usize> {
    Ok(chatty(word).await?)
}

#[weir::flow(name = "parent-flow", tags = ["demo"])]
async fn parent(words: Vec<String>) -> anyhow::Result<usize> {
    let mut total = 0;
    for w in words {
        total += child(w).await?;
    }
    Ok(total)
}

#[tokio::test]
async fn subflows_are_linked_runs_and_task_logs_are_recorded_with_their_task_run() {
    env();
    let word = format!("hello-{}", unique());
    let (result, report) = parent(vec![word.clone(), "x".into()]).with_report().await;
    assert_eq!(result.unwrap(), word.len() + 1);

    let db = db();
    let run = db.flow_run(report.flow_run_id).unwrap().unwrap();
    assert_eq!(run.flow_name, "parent-flow");
    assert_eq!(run.tags, vec!["demo".to_string()]);
    assert_eq!(run.parameters, serde_json::json!({ "words": [word.clone(), "x"] }));
    let children = db.subflow_runs(report.flow_run_id).unwrap();
    assert_eq!(children.len(), 2);
    assert!(
        children
            .iter()
            .all(|c| c.flow_name == "child" && c.state == State::Completed)
    );

    let first: FlowRunId = children[0].id;
    let task = &db.task_runs(first).unwrap()[0];
    let logs = db.logs(first).unwrap();
    let line = logs
        .iter()
        .find(|l| l.message.contains(&word))
        .expect("the task's log line is recorded");
    assert_eq!(line.task_run_id, Some(task.id));
    assert_eq!(line.level, "INFO");
    assert!(line.message.contains(&format!("word={word}")), "{}", line.message);
}

#[weir::task]
async fn weirdata_logger(word: String) -> anyhow::Result<()> {
    // A user crate whose name merely starts with "weir" (a crate called `weirdata`).
    tracing::info!(target: "weirdata::loader", "loaded {word}");
    tracing::info!(target: "weir_datasets", "indexed {word}");
    Ok(())
}

#[weir::flow]
async fn weirdata_flow(word: String) -> anyhow::Result<()> {
    Ok(weirdata_logger(word).await?)
}

#[tokio::test]
async fn info_lines_of_user_crates_named_like_weir_are_recorded() {
    env();
    let word = format!("w{}", unique());
    let (result, report) = weirdata_flow(word.clone()).with_report().await;
    result.unwrap();
    let logs = db().logs(report.flow_run_id).unwrap();
    let mine: Vec<&str> = logs
        .iter()
        .filter(|l| l.message.contains(&word))
        .map(|l| l.target.as_str())
        .collect();
    assert_eq!(mine, vec!["weirdata::loader", "weir_datasets"], "{logs:?}");
    // weir's own INFO chatter (task and flow states) is still not recorded as log lines.
    assert!(logs.iter().all(|l| l.target != "weir::task"), "{logs:?}");
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Region {
    name: String,
    zoom: Option<u8>,
}

#[weir::flow]
async fn typed_params(region: Region, days: u32) -> anyhow::Result<u32> {
    Ok(days + region.zoom.unwrap_or(0) as u32 + region.name.len() as u32)
}

#[test]
fn flows_expose_the_json_schema_of_their_parameters() {
    let schema = typed_params::schema();
    let props = &schema["properties"];
    assert_eq!(props["days"]["type"], "integer");
    assert!(props["region"].is_object(), "{schema}");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["region", "days"]);
    assert_eq!(typed_params::SPEC.parameters_schema(), schema);
    // Parameters from JSON are checked by the same types.
    let bad = serde_json::from_value::<typed_params::Params>(serde_json::json!({"region": {"name": "x"}, "days": "3"}));
    assert!(bad.err().unwrap().to_string().contains("invalid type"));
    let unknown = serde_json::from_value::<typed_params::Params>(
        serde_json::json!({"region": {"name": "x"}, "days": 3, "dayz": 1}),
    );
    assert!(unknown.err().unwrap().to_string().contains("unknown field"));
}

// ---------- the cache ----------

#[weir::task(cache = "inputs")]
async fn double(x: u64) -> anyhow::Result<u64> {
    bump(&format!("double-{x}"));
    Ok(x * 2)
}

#[weir::flow]
async fn double_flow(x: u64) -> anyhow::Result<u64> {
    Ok(double(x).await?)
}

fn folder() -> FolderBackend {
    FolderBackend::open(&env().results).unwrap()
}

fn store() -> Store {
    Store::new(std::sync::Arc::new(folder()))
}

fn key_of(call: weir::TaskCall<u64>) -> CacheKey {
    call.cache_key().unwrap().unwrap()
}

#[tokio::test]
async fn a_second_call_with_the_same_inputs_is_a_hit() {
    env();
    let x = unique() % 1_000_000;
    let (a, ra) = double_flow(x).with_report().await;
    let (b, rb) = double_flow(x).with_report().await;
    assert_eq!((a.unwrap(), b.unwrap()), (x * 2, x * 2));
    assert_eq!((ra.cached, rb.cached), (0, 1));
    assert_eq!(count(&format!("double-{x}")), 1);
    let tasks = db().task_runs(rb.flow_run_id).unwrap();
    assert_eq!(tasks[0].state, State::Cached);
    assert_eq!(tasks[0].cache_status, weir::CacheStatus::Hit);
    assert_eq!(tasks[0].cache_key.as_deref(), Some(key_of(double(x)).to_hex().as_str()));
}

#[tokio::test]
async fn corrupted_truncated_or_mistyped_entries_are_recomputed() {
    env();
    let x = unique() % 1_000_000 + 1_000_000;
    let what = format!("double-{x}");
    double_flow(x).await.unwrap();
    let key = key_of(double(x));
    let store = store();
    let folder = folder();
    let manifest = folder.path_of(&store.manifest_path(&key));
    let meta: weir_cache::EntryMeta = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(meta.task, double::SPEC.path);
    assert_eq!(meta.inputs[0].name, "x");

    // A damaged result (small: inside the manifest, as base64).
    let inline = meta.inline.clone().expect("a small result lives in its manifest");
    let mut damaged = meta.clone();
    damaged.inline = Some(inline.iter().map(|b| b ^ 1).collect());
    std::fs::write(&manifest, serde_json::to_vec(&damaged).unwrap()).unwrap();
    assert_eq!(double_flow(x).await.unwrap(), x * 2);
    assert_eq!(count(&what), 2);
    assert_eq!(double_flow(x).await.unwrap(), x * 2);
    assert_eq!(count(&what), 2, "the repaired entry is a hit again");

    // A truncated manifest.
    let raw = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &raw[..raw.len() / 2]).unwrap();
    assert_eq!(double_flow(x).await.unwrap(), x * 2);
    assert_eq!(count(&what), 3);

    // A well-formed entry holding another type (the task's return type changed).
    store
        .put(
            meta.clone(),
            br#""not a number""#.to_vec(),
            weir_cache::PutMode::Replace,
        )
        .await
        .unwrap();
    let (r, report) = double_flow(x).with_report().await;
    assert_eq!(r.unwrap(), x * 2);
    assert_eq!(count(&what), 4);
    let logs = db().logs(report.flow_run_id).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.level == "WARN" && l.message.contains("cannot be read")),
        "the recompute is explained in the run's logs: {logs:?}"
    );
}

#[weir::task(cache = "inputs", cache_expiration = "1h")]
async fn expiring(x: u64) -> anyhow::Result<u64> {
    bump(&format!("expiring-{x}"));
    Ok(x)
}

#[weir::flow]
async fn expiring_flow(x: u64) -> anyhow::Result<u64> {
    Ok(expiring(x).await?)
}

#[tokio::test]
async fn an_entry_past_its_expiration_is_recomputed() {
    env();
    let x = unique();
    let what = format!("expiring-{x}");
    expiring_flow(x).await.unwrap();
    expiring_flow(x).await.unwrap();
    assert_eq!(count(&what), 1);
    weir::testing::advance_clock(Duration::from_secs(2 * 3600));
    expiring_flow(x).await.unwrap();
    assert_eq!(count(&what), 2, "expired after an hour");
    expiring_flow(x).await.unwrap();
    assert_eq!(count(&what), 2, "the fresh entry is used again");
}

#[weir::task(cache = "inputs", refresh_cache = true)]
async fn always_fresh(x: u64) -> anyhow::Result<u64> {
    bump(&format!("fresh-{x}"));
    Ok(x)
}

#[weir::flow]
async fn refresh_flow(x: u64) -> anyhow::Result<u64> {
    always_fresh(x).await?;
    // Per call, too.
    Ok(double(x).refresh_cache(true).await?)
}

#[tokio::test]
async fn refresh_forces_a_recompute() {
    env();
    let x = unique() % 1_000_000 + 2_000_000;
    refresh_flow(x).await.unwrap();
    let (_, report) = refresh_flow(x).with_report().await;
    assert_eq!(count(&format!("fresh-{x}")), 2);
    assert_eq!(count(&format!("double-{x}")), 2);
    assert_eq!(report.cached, 0);
    let statuses: Vec<_> = db()
        .task_runs(report.flow_run_id)
        .unwrap()
        .into_iter()
        .map(|t| t.cache_status)
        .collect();
    assert_eq!(statuses, vec![weir::CacheStatus::Refreshed; 2]);
}

mod left {
    #[weir::task(cache = "inputs")]
    pub async fn same_body(x: u64) -> anyhow::Result<u64> {
        Ok(x + 1)
    }

    #[weir::task(cache = "inputs+source")]
    pub async fn versioned(x: u64) -> anyhow::Result<u64> {
        Ok(x + 1)
    }
}

mod right {
    #[weir::task(cache = "inputs")]
    pub async fn same_body(x: u64) -> anyhow::Result<u64> {
        Ok(x + 1)
    }

    #[weir::task(cache = "inputs+source")]
    pub async fn versioned(x: u64) -> anyhow::Result<u64> {
        Ok(x + 2)
    }
}

#[test]
fn two_tasks_with_identical_bodies_in_different_modules_get_different_keys() {
    assert_eq!(left::same_body::SPEC.source_hash, right::same_body::SPEC.source_hash);
    assert_ne!(key_of(left::same_body(1)), key_of(right::same_body(1)));
    assert_eq!(key_of(left::same_body(1)), key_of(left::same_body(1)));
    assert_ne!(key_of(left::same_body(1)), key_of(left::same_body(2)));
}

#[test]
fn inputs_plus_source_keys_change_when_the_body_changes() {
    let (l, r) = (&left::versioned::SPEC, &right::versioned::SPEC);
    assert_eq!(l.cache, CachePolicy::InputsAndSource);
    assert_ne!(
        l.source_hash, r.source_hash,
        "different bodies, different source hashes"
    );

    // The same task (same path) before and after an edit of its body:
    let digest = [("x", weir_cache::canonical::digest(&1u64).unwrap())];
    let before = weir_cache::KeyParts {
        task_path: l.path,
        cache_version: "",
        source_hash: Some(l.source_hash),
        inputs: &digest,
        custom: None,
    };
    let after = weir_cache::KeyParts {
        source_hash: Some(r.source_hash),
        ..before.clone()
    };
    assert_eq!(
        before.key(),
        key_of(left::versioned(1)),
        "the task's key includes its source"
    );
    assert_ne!(before.key(), after.key());
    // With plain `inputs`, the source is not part of the key.
    let plain = weir_cache::KeyParts {
        task_path: left::same_body::SPEC.path,
        source_hash: None,
        ..before.clone()
    };
    assert_eq!(plain.key(), key_of(left::same_body(1)));
}

#[weir::task(cache = "inputs", cache_version = "2")]
async fn bumped(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

fn region_key(region: &str, _day: &u32) -> String {
    region.to_lowercase()
}

#[weir::task(key = region_key)]
async fn by_region(region: String, day: u32) -> anyhow::Result<u64> {
    Ok(region.len() as u64 + day as u64)
}

#[test]
fn cache_version_and_custom_keys_shape_the_key() {
    let digest = [("x", weir_cache::canonical::digest(&1u64).unwrap())];
    let unbumped = weir_cache::KeyParts {
        task_path: bumped::SPEC.path,
        cache_version: "",
        source_hash: None,
        inputs: &digest,
        custom: None,
    };
    assert_ne!(unbumped.key(), key_of(bumped(1)));
    assert_eq!(
        weir_cache::KeyParts {
            cache_version: "2",
            ..unbumped
        }
        .key(),
        key_of(bumped(1))
    );

    // The custom key ignores `day` and case.
    assert_eq!(key_of(by_region("EU".into(), 1)), key_of(by_region("eu".into(), 2)));
    assert_ne!(key_of(by_region("eu".into(), 1)), key_of(by_region("us".into(), 1)));
}

#[weir::task(cache = "inputs", serializer = "msgpack")]
async fn packed(xs: Vec<f64>) -> anyhow::Result<HashMap<String, f64>> {
    bump(&format!("packed-{}", xs[0]));
    Ok(xs.iter().enumerate().map(|(i, x)| (format!("k{i}"), *x)).collect())
}

#[weir::flow]
async fn packed_flow(xs: Vec<f64>) -> anyhow::Result<usize> {
    Ok(packed(xs).await?.len())
}

#[tokio::test]
async fn msgpack_results_round_trip_through_the_cache() {
    env();
    let first = unique() as f64;
    let xs = vec![first, -0.0, 2.5];
    assert_eq!(packed_flow(xs.clone()).await.unwrap(), 3);
    let (r, report) = packed_flow(xs).with_report().await;
    assert_eq!(r.unwrap(), 3);
    assert_eq!(report.cached, 1);
    assert_eq!(count(&format!("packed-{first}")), 1);
}

#[weir::task(cache = "inputs")]
async fn shared(x: u64) -> anyhow::Result<u64> {
    bump(&format!("shared-{x}"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A different value every time the body runs: a caller that got its own result rather
    // than the one stored shows.
    Ok(unique())
}

#[weir::flow]
async fn racing_flow(x: u64) -> anyhow::Result<Vec<u64>> {
    Ok(shared.map(vec![x; 16]).await?)
}

#[tokio::test]
async fn concurrent_writers_of_one_key_all_return_one_result() {
    env();
    let x = unique() % 1_000_000 + 3_000_000;
    let out = racing_flow(x).await.unwrap();
    assert_eq!(
        count(&format!("shared-{x}")),
        1,
        "the body ran once for 16 concurrent calls"
    );
    assert_eq!(out, vec![out[0]; 16], "every caller got the one result");
    let store = store();
    let key = key_of(shared(x));
    match store.get(&key, 0).await.unwrap() {
        weir_cache::Lookup::Hit { bytes, .. } => {
            assert_eq!(
                serde_json::from_slice::<u64>(&bytes).unwrap(),
                out[0],
                "the stored result"
            )
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    // (That no temp files are left behind is checked in weir-cache, where no other test
    // shares the folder.)
}

// ---------- templated result keys ----------

#[weir::task(result_key = "{flow_name}/{task_name}/{region}-{day}.json")]
async fn report(region: String, day: u64) -> anyhow::Result<String> {
    bump(&format!("report-{region}-{day}"));
    Ok(format!("report for {region} on day {day}"))
}

#[weir::task(result_key = "strict/{region}.json", on_duplicate = "error")]
async fn strict(region: String) -> anyhow::Result<u64> {
    Ok(region.len() as u64)
}

#[weir::task(result_key = "latest/{region}.json", on_duplicate = "overwrite")]
async fn latest(region: String, value: u64) -> anyhow::Result<u64> {
    tracing::debug!("latest value for {region}");
    Ok(value)
}

#[weir::flow]
async fn reports(region: String, day: u64) -> anyhow::Result<String> {
    Ok(report(region, day).await?)
}

#[weir::flow]
async fn strict_flow(region: String) -> anyhow::Result<u64> {
    Ok(strict(region).await?)
}

#[weir::flow]
async fn latest_flow(region: String, value: u64) -> anyhow::Result<u64> {
    Ok(latest(region, value).await?)
}

#[tokio::test]
async fn templated_result_keys_are_readable_files_and_hit_by_name() {
    env();
    let day = unique();
    let out = reports("eu".into(), day).await.unwrap();
    let path = env().results.join(format!("named/reports/report/eu-{day}.json"));
    let on_disk: String = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, out, "the result is where its name says, as JSON");
    let (again, report) = reports("eu".into(), day).with_report().await;
    assert_eq!(again.unwrap(), out);
    assert_eq!(report.cached, 1);
    assert_eq!(count(&format!("report-eu-{day}")), 1);
    let tasks = db().task_runs(report.flow_run_id).unwrap();
    assert_eq!(
        tasks[0].cache_key.as_deref(),
        Some(format!("reports/report/eu-{day}.json").as_str())
    );
}

#[tokio::test]
async fn a_templated_key_that_leaves_the_store_is_refused() {
    env();
    for evil in ["../../../escaped", "/etc/passwd-weir", "a/../../b"] {
        let (r, report) = reports(evil.into(), 1).with_report().await;
        let text = format!("{:#}", anyhow::Error::from(r.unwrap_err()));
        assert!(text.contains("result key"), "{evil}: {text}");
        assert_eq!(db().task_runs(report.flow_run_id).unwrap()[0].state, State::Failed);
    }
    let root = env().results.parent().unwrap();
    assert!(!root.join("escaped").exists() && !root.parent().unwrap().join("escaped").exists());
    assert!(!std::path::Path::new("/etc/passwd-weir").exists());
}

#[tokio::test]
async fn on_duplicate_error_and_overwrite() {
    env();
    let region = format!("r{}", unique());
    strict_flow(region.clone()).await.unwrap();
    let err = format!(
        "{:#}",
        anyhow::Error::from(strict_flow(region.clone()).await.unwrap_err())
    );
    assert!(err.contains("already has a result"), "{err}");

    assert_eq!(latest_flow(region.clone(), 1).await.unwrap(), 1);
    assert_eq!(latest_flow(region.clone(), 2).await.unwrap(), 2, "overwrite recomputes");
    let on_disk: u64 =
        serde_json::from_slice(&std::fs::read(env().results.join(format!("named/latest/{region}.json"))).unwrap())
            .unwrap();
    assert_eq!(on_disk, 2);
}

// ---------- streamed file results ----------

#[weir::task(cache = "inputs")]
fn streamed(rows: u64) -> anyhow::Result<weir::Artifact> {
    use std::io::Write;
    bump(&format!("streamed-{rows}"));
    let mut out = weir::Artifact::create()?;
    for i in 0..rows {
        writeln!(out, "{i},{}", i * i)?;
    }
    Ok(out.finish()?)
}

#[weir::flow]
async fn streamed_flow(rows: u64) -> anyhow::Result<u64> {
    use tokio::io::AsyncBufReadExt;
    let file = streamed(rows).await?;
    let mut lines = tokio::io::BufReader::new(file.open_async().await?).lines();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        anyhow::ensure!(line == format!("{n},{}", n * n), "line {n} is {line}");
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn a_result_written_as_a_stream_is_read_back_as_a_stream_from_the_cache() {
    env();
    let rows = 200_000 + unique() % 1000;
    assert_eq!(streamed_flow(rows).await.unwrap(), rows);
    let (again, report) = streamed_flow(rows).with_report().await;
    assert_eq!(again.unwrap(), rows);
    assert_eq!(report.cached, 1);
    assert_eq!(count(&format!("streamed-{rows}")), 1);
}

#[weir::task(result_key = "exports/{region}.csv")]
fn export_csv(region: String) -> anyhow::Result<weir::Artifact> {
    use std::io::Write;
    bump(&format!("export-{region}"));
    let mut out = weir::Artifact::create()?;
    writeln!(out, "region,value")?;
    writeln!(out, "{region},42")?;
    Ok(out.finish()?)
}

#[weir::flow]
async fn export_flow(region: String) -> anyhow::Result<String> {
    let file = export_csv(region).await?;
    Ok(std::fs::read_to_string(file.path())?)
}

#[tokio::test]
async fn a_named_file_result_is_the_file_itself_and_edits_to_it_are_noticed() {
    env();
    let region = format!("r{}", unique());
    let what = format!("export-{region}");
    let first = export_flow(region.clone()).await.unwrap();
    let named = env().results.join(format!("named/exports/{region}.csv"));
    assert_eq!(
        std::fs::read_to_string(&named).unwrap(),
        first,
        "the named path holds the CSV itself"
    );
    assert_eq!(first, format!("region,value\n{region},42\n"));
    let (again, report) = export_flow(region.clone()).with_report().await;
    assert_eq!(again.unwrap(), first);
    assert_eq!((report.cached, count(&what)), (1, 1));

    // Someone edits the stored file: it no longer matches its checksum, so it is recomputed.
    let mut perms = std::fs::metadata(&named).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&named, perms).unwrap();
    std::fs::write(&named, "region,value\nhacked,0\n").unwrap();
    assert_eq!(export_flow(region.clone()).await.unwrap(), first);
    assert_eq!(count(&what), 2);
}

// ---------- files as inputs, artifacts inside results ----------

/// Counts lines; never reads anything but its input file.
#[weir::task(cache = "inputs")]
fn line_count(file: weir::Artifact, tag: u64) -> anyhow::Result<u64> {
    bump(&format!("lines-{tag}"));
    Ok(std::fs::read_to_string(file.path())?.lines().count() as u64)
}

#[weir::flow]
async fn lines_flow(path: String, tag: u64) -> anyhow::Result<u64> {
    Ok(line_count(weir::Artifact::from_path(path), tag).await?)
}

/// Returns `tag` without opening its input: whatever happens to the file is the key's doing.
#[weir::task(cache = "inputs")]
async fn untouched(file: weir::Artifact, tag: u64) -> anyhow::Result<u64> {
    let _ = file;
    bump(&format!("untouched-{tag}"));
    Ok(tag)
}

#[weir::flow]
async fn untouched_flow(path: String, tag: u64) -> anyhow::Result<u64> {
    Ok(untouched(weir::Artifact::from_path(path), tag).await?)
}

#[tokio::test]
async fn a_file_input_rewritten_in_place_is_a_new_key_and_runs_again() {
    env();
    let tag = unique();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.csv");
    std::fs::write(&path, "a\nb\n").unwrap();
    let p = path.display().to_string();
    assert_eq!(lines_flow(p.clone(), tag).await.unwrap(), 2);
    let (again, report) = lines_flow(p.clone(), tag).with_report().await;
    assert_eq!((again.unwrap(), report.cached), (2, 1), "unchanged: a hit");
    // Same path, same size, other contents.
    std::fs::write(&path, "a\nb\nc").unwrap();
    std::fs::write(&path, "a\nbc\n").unwrap();
    std::fs::write(&path, "a\nb\nc\n").unwrap();
    let (changed, report) = lines_flow(p, tag).with_report().await;
    assert_eq!((changed.unwrap(), report.cached), (3, 0), "a stale hit would say 2");
    assert_eq!(count(&format!("lines-{tag}")), 2);
}

/// Keys its call (the input as it is now), then rewrites the input before the call runs: the
/// body reads the new contents.
#[weir::flow]
async fn rewritten_before_run_flow(path: String, tag: u64, rewrite: String) -> anyhow::Result<u64> {
    let call = line_count(weir::Artifact::from_path(&path), tag);
    std::fs::write(&path, rewrite)?;
    Ok(call.await?)
}

#[tokio::test]
async fn a_file_input_rewritten_after_it_was_keyed_is_not_cached_under_its_old_contents() {
    env();
    let tag = unique();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.csv");
    std::fs::write(&path, "a\nb\n").unwrap();
    let p = path.display().to_string();
    // Keyed with two lines, computed from three (rewritten while the call waited to run, to
    // the same size, most likely within the same clock tick).
    let three = rewritten_before_run_flow(p.clone(), tag, "a\n\n\n".into())
        .await
        .unwrap();
    assert_eq!(three, 3, "the body read what the file held when it ran");
    // The two-line file again: its key is the one the call above was keyed with.
    std::fs::write(&path, "a\nb\n").unwrap();
    let (two, report) = lines_flow(p, tag).with_report().await;
    assert_eq!(
        (two.unwrap(), report.cached),
        (2, 0),
        "a result computed from other contents was cached under this file's key"
    );
    assert_eq!(count(&format!("lines-{tag}")), 2);
}

#[tokio::test]
async fn the_same_contents_at_two_paths_are_one_key() {
    env();
    let tag = unique();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("copy-of-a.csv"));
    std::fs::write(&a, format!("{tag}\n")).unwrap();
    std::fs::copy(&a, &b).unwrap();
    assert_eq!(untouched_flow(a.display().to_string(), tag).await.unwrap(), tag);
    let (r, report) = untouched_flow(b.display().to_string(), tag).with_report().await;
    assert_eq!((r.unwrap(), report.cached), (tag, 1));
    assert_eq!(count(&format!("untouched-{tag}")), 1);
}

#[tokio::test]
async fn a_missing_input_file_fails_the_task_run_naming_the_input_and_the_file() {
    env();
    let tag = unique();
    let path = format!("/nonexistent/weir-{tag}/input.csv");
    let err = untouched_flow(path.clone(), tag).await.unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("input `file`") && msg.contains(&path) && msg.contains("No such file"),
        "{msg}"
    );
    assert_eq!(count(&format!("untouched-{tag}")), 0, "the body never ran");
}

#[weir::task(cache = "inputs")]
fn temp_result(tag: u64) -> anyhow::Result<weir::Artifact> {
    use std::io::Write;
    bump(&format!("temp-{tag}"));
    let mut out = weir::Artifact::create()?;
    write!(out, "made for {tag}")?;
    Ok(out.finish()?)
}

#[weir::flow]
async fn temp_flow(tag: u64) -> anyhow::Result<(String, String)> {
    let file = temp_result(tag).await?;
    let text = std::fs::read_to_string(file.path())?;
    Ok((file.path().display().to_string(), text))
}

#[tokio::test]
async fn artifact_create_files_are_gone_once_stored_and_dropped() {
    env();
    let tag = unique();
    let (path, text) = temp_flow(tag).await.unwrap();
    assert_eq!(text, format!("made for {tag}"), "the caller read its result");
    assert!(!std::path::Path::new(&path).exists(), "{path} was left behind");
    let (again, report) = temp_flow(tag).with_report().await;
    let (stored, text) = again.unwrap();
    assert_eq!((text, report.cached), (format!("made for {tag}"), 1));
    assert!(
        std::path::Path::new(&stored).exists(),
        "a hit hands out the stored copy, kept"
    );
    assert_eq!(count(&format!("temp-{tag}")), 1);
}

/// Hands a temporary artifact (gone with its last clone, which the next task's body drops)
/// to a cached task.
#[weir::flow]
async fn temp_then_lines_flow(tag: u64) -> anyhow::Result<u64> {
    let file = temp_result(tag).await?;
    Ok(line_count(file, tag).await?)
}

#[tokio::test]
async fn a_task_given_a_temporary_artifact_is_cached() {
    env();
    let tag = unique();
    assert_eq!(temp_then_lines_flow(tag).await.unwrap(), 1);
    let (again, report) = temp_then_lines_flow(tag).with_report().await;
    assert_eq!((again.unwrap(), report.cached), (1, 2), "both tasks were hits");
    assert_eq!(count(&format!("lines-{tag}")), 1);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Summary {
    rows: u64,
    extra: Option<weir::Artifact>,
    missing: Option<weir::Artifact>,
}

/// Writes `n` files into `dir` (user files, not temporary) and returns them.
#[weir::task(cache = "inputs")]
fn parts(n: u64, dir: String, tag: u64) -> anyhow::Result<(Vec<weir::Artifact>, Summary)> {
    bump(&format!("parts-{tag}"));
    let mut files = Vec::new();
    for i in 0..n {
        let p = std::path::Path::new(&dir).join(format!("part-{i}.csv"));
        std::fs::write(&p, format!("part {i} of {tag}\n"))?;
        files.push(weir::Artifact::from_path(p));
    }
    let extra = std::path::Path::new(&dir).join("summary.txt");
    std::fs::write(&extra, format!("{n} parts of {tag}"))?;
    let summary = Summary {
        rows: n,
        extra: Some(weir::Artifact::from_path(extra)),
        missing: None,
    };
    Ok((files, summary))
}

#[weir::flow]
async fn parts_flow(n: u64, dir: String, tag: u64) -> anyhow::Result<Vec<String>> {
    let (files, summary) = parts(n, dir, tag).await?;
    anyhow::ensure!(summary.missing.is_none() && summary.rows == n);
    let mut out = Vec::new();
    for f in files.iter().chain(summary.extra.iter()) {
        out.push(std::fs::read_to_string(f.path())?);
    }
    Ok(out)
}

#[tokio::test]
async fn artifacts_inside_a_result_are_stored_and_come_back_as_files() {
    env();
    let tag = unique();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display().to_string();
    let first = parts_flow(3, dir.clone(), tag).await.unwrap();
    let expected: Vec<String> = (0..3)
        .map(|i| format!("part {i} of {tag}\n"))
        .chain([format!("3 parts of {tag}")])
        .collect();
    assert_eq!(first, expected);
    // The task's own files are gone: only the store can answer now.
    drop(work);
    let (again, report) = parts_flow(3, dir, tag).with_report().await;
    assert_eq!(report.cached, 1);
    assert_eq!(again.unwrap(), expected);
    assert_eq!(count(&format!("parts-{tag}")), 1);
}

#[tokio::test]
async fn a_result_whose_stored_file_is_gone_is_recomputed_and_repaired() {
    env();
    let tag = unique();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display().to_string();
    let first = parts_flow(2, dir.clone(), tag).await.unwrap();
    let key = parts(2, dir.clone(), tag).cache_key().unwrap().unwrap();
    let store = Store::new(Arc::new(FolderBackend::open(&env().results).unwrap()));
    let meta = store.entry(&key).await.unwrap().expect("stored");
    assert_eq!(meta.files.len(), 3, "{meta:?}");
    let gone = env().results.join(store.blob_path(&meta.files[1]));
    std::fs::remove_file(&gone).unwrap();

    let (again, report) = parts_flow(2, dir.clone(), tag).with_report().await;
    assert_eq!((again.unwrap(), report.cached), (first.clone(), 0));
    assert!(gone.exists(), "the entry was replaced, its file stored again");
    let (third, report) = parts_flow(2, dir, tag).with_report().await;
    assert_eq!((third.unwrap(), report.cached), (first, 1));
    assert_eq!(count(&format!("parts-{tag}")), 2);
}
