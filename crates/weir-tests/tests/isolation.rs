//! Isolation's edges: writers of one result name racing at the store, a holder that loses its
//! lease mid-computation, a holder whose work outlasts its lease TTL, and the task timeout
//! as one deadline for the wait and the body.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use weir::State;
use weir_cache::folder::FolderBackend;
use weir_cache::{LeaseOutcome, Lookup, PutMode, PutOutcome, ResultStore, Store};
use weir_state::StateDb;

struct Env {
    results: PathBuf,
    db: PathBuf,
}

/// The lease TTL of every run here: short, so work of a few seconds outlasts it.
const TTL: Duration = Duration::from_secs(1);

/// One engine per test binary: a fresh results folder and database.
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
        settings.lease_ttl = TTL;
        settings.log_filter = "warn".into();
        settings.progress = weir::ProgressMode::Never;
        weir::configure(settings).unwrap();
        env
    })
}

fn store() -> Arc<Store> {
    Arc::new(Store::new(Arc::new(FolderBackend::open(&env().results).unwrap())))
}

/// A value no other test (or earlier run) uses.
fn unique() -> u64 {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ ((std::process::id() as u64) << 32) ^ N.fetch_add(1, Ordering::Relaxed) as u64) % 1_000_000_000
}

/// How often each body ran, by label.
fn bodies() -> std::sync::MutexGuard<'static, std::collections::HashMap<String, u32>> {
    static B: OnceLock<Mutex<std::collections::HashMap<String, u32>>> = OnceLock::new();
    B.get_or_init(Default::default).lock().unwrap()
}

/// Counts a body run; returns which run this is.
fn bump(label: &str) -> u32 {
    let mut b = bodies();
    let n = b.entry(label.to_string()).or_default();
    *n += 1;
    *n
}

fn ran(label: &str) -> u32 {
    bodies().get(label).copied().unwrap_or(0)
}

/// A body that says it started, then waits to be let go (the test acts in between).
struct Gate {
    started: Semaphore,
    go: Semaphore,
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            started: Semaphore::const_new(0),
            go: Semaphore::const_new(0),
        }
    }

    async fn pass(&self) {
        self.started.add_permits(1);
        self.go.acquire().await.unwrap().forget();
    }
}

async fn steal(store: &Store, key: &weir_cache::CacheKey) -> weir_cache::Lease {
    // As if an hour later: the holder's lease has expired by then, so it is taken over.
    let later = weir_types::time::now_micros() + 3_600_000_000;
    match store.try_lease(key, "a thief", 60_000_000, later).await.unwrap() {
        LeaseOutcome::Acquired(lease) => lease,
        LeaseOutcome::Held(rec) => panic!("not taken over: held by {rec:?}"),
    }
}

// ---------- item: named results, data written only by the manifest's winner ----------

/// Eight OS threads (each its own runtime and store, as eight programs would be) publish
/// eight different results under one name at once, 25 times: exactly one wins each name,
/// and what is readable under the name is the winner's bytes, never a loser's.
#[test]
fn racing_writers_of_one_name_leave_only_the_winners_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    const WRITERS: usize = 8;
    const ROUNDS: usize = 25;
    let barrier = Barrier::new(WRITERS);
    let outcomes: Vec<Vec<PutOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (barrier, root) = (&barrier, &root);
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let store = Store::new(Arc::new(FolderBackend::open(root).unwrap().without_fsync()));
                    (0..ROUNDS)
                        .map(|r| {
                            let name = format!("race/{r}.json");
                            let mut meta = weir_tests::store_suite::meta(&weir_tests::store_suite::key("n", r as u64));
                            meta.key = name;
                            // Big enough that writing it is not instant.
                            let bytes = format!("writer {w} round {r} ").repeat(4_000).into_bytes();
                            barrier.wait();
                            rt.block_on(store.put_named(meta, bytes, PutMode::IfAbsent)).unwrap().0
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let store = Store::new(Arc::new(FolderBackend::open(&root).unwrap()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in 0..ROUNDS {
        let winners: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o[r] == PutOutcome::Published)
            .map(|(w, _)| w)
            .collect();
        assert_eq!(winners.len(), 1, "round {r}: one writer publishes: {winners:?}");
        let expected = format!("writer {} round {r} ", winners[0]).repeat(4_000).into_bytes();
        let readable = std::fs::read(root.join(format!("named/race/{r}.json"))).unwrap();
        assert!(
            readable == expected,
            "round {r}: the name holds writer {}'s data, not {:?}",
            winners[0],
            String::from_utf8_lossy(&readable[..20])
        );
        match rt.block_on(store.get_named(&format!("race/{r}.json"), 0)).unwrap() {
            Lookup::Hit { bytes, .. } => assert!(bytes == expected, "round {r}: the hit is the winner's"),
            other => panic!("round {r}: {other:?}"),
        }
    }
}

/// Between a named result's manifest and the copy to its readable name (or after a writer
/// died there), readers find the data in the blob written before the manifest.
#[tokio::test]
async fn a_named_result_not_yet_copied_to_its_name_is_read_from_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap().without_fsync()));
    let mut meta = weir_tests::store_suite::meta(&weir_tests::store_suite::key("blob-first", 1));
    meta.key = "pending/data.json".into();
    let bytes = b"{\"rows\": 3}".to_vec();
    let (outcome, stored) = store.put_named(meta, bytes.clone(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(outcome, PutOutcome::Published);
    let named = dir.path().join("named/pending/data.json");
    std::fs::remove_file(&named).unwrap();
    match store.get_named("pending/data.json", 0).await.unwrap() {
        Lookup::Hit { bytes: got, .. } => assert_eq!(got, bytes),
        other => panic!("{other:?}"),
    }
    let out = tempfile::tempdir().unwrap();
    match store.get_named_file("pending/data.json", 0, out.path()).await.unwrap() {
        weir_cache::FileLookup::Hit { path, .. } => assert_eq!(std::fs::read(path).unwrap(), bytes),
        other => panic!("{other:?}"),
    }
    // With the blob gone too, the entry is damaged (replaced by the next writer).
    std::fs::remove_file(dir.path().join(store.blob_path(&stored.blob))).unwrap();
    assert!(matches!(
        store.get_named("pending/data.json", 0).await.unwrap(),
        Lookup::Corrupt { .. }
    ));
}

// ---------- item: a lost lease with on_duplicate = "error" ----------

static STRICT: Gate = Gate::new();

#[weir::task(result_key = "lost/{tag}.json", on_duplicate = "error")]
async fn strict_named(tag: u64) -> anyhow::Result<String> {
    bump(&format!("strict {tag}"));
    STRICT.pass().await;
    Ok(format!("strict {tag}"))
}

#[weir::flow]
async fn strict_flow(tag: u64) -> anyhow::Result<String> {
    Ok(strict_named(tag).await?)
}

/// A run that lost the name's lease while computing stores nothing and, with
/// `on_duplicate = "error"`, fails rather than hand out a result the name does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_named_run_that_lost_its_lease_fails_and_writes_nothing() {
    env();
    let store = store();
    let tag = unique();
    let name = format!("lost/{tag}.json");
    let run = tokio::spawn(strict_flow(tag).with_report());
    STRICT.started.acquire().await.unwrap().forget();
    let thief = steal(&store, &weir_cache::named_lease_key(&name)).await;
    STRICT.go.add_permits(1);
    let (result, report) = run.await.unwrap();
    let text = format!(
        "{:#}",
        anyhow::Error::from(result.expect_err("a lost lease is an error"))
    );
    assert!(text.contains("lost the name's lease"), "{text}");
    assert_eq!(ran(&format!("strict {tag}")), 1);
    assert!(
        matches!(store.get_named(&name, 0).await.unwrap(), Lookup::Miss),
        "nothing was stored under the name"
    );
    assert!(!env().results.join("named").join(&name).exists());
    let tasks = StateDb::open_existing(&env().db)
        .unwrap()
        .task_runs(report.flow_run_id)
        .unwrap();
    assert_eq!(tasks[0].state, State::Failed);
    assert!(store.release(&thief).await.unwrap());
}

// ---------- item: lease renewal ----------

static REFRESHING: Gate = Gate::new();

#[weir::task(cache = "inputs")]
async fn versioned(tag: u64) -> anyhow::Result<String> {
    let n = bump(&format!("versioned {tag}"));
    if n > 1 {
        REFRESHING.pass().await;
    }
    Ok(format!("versioned {tag}, run {n}"))
}

#[weir::flow]
async fn versioned_flow(tag: u64, refresh: bool) -> anyhow::Result<String> {
    Ok(versioned(tag).refresh_cache(refresh).await?)
}

/// A refresh whose lease is taken over while it computes is told (its renewal fails) and
/// does not replace the entry: what the key holds stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_renewal_fails_does_not_publish() {
    env();
    let store = store();
    let tag = unique();
    let first = versioned_flow(tag, false).await.unwrap();
    assert_eq!(first, format!("versioned {tag}, run 1"));
    let key = versioned(tag).cache_key().unwrap().unwrap();

    let run = tokio::spawn(versioned_flow(tag, true));
    REFRESHING.started.acquire().await.unwrap().forget();
    let thief = steal(&store, &key).await;
    REFRESHING.go.add_permits(1);
    let got = run.await.unwrap().unwrap();
    assert_eq!(ran(&format!("versioned {tag}")), 2, "the refresh computed");
    // Its publish was create-if-absent only, which found the entry: it adopts that.
    assert_eq!(got, first, "the caller gets what the key holds");
    let stored = match store.get(&key, 0).await.unwrap() {
        Lookup::Hit { bytes, .. } => serde_json::from_slice::<String>(&bytes).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        stored, first,
        "the holder that lost its lease did not replace the entry"
    );
    assert!(store.release(&thief).await.unwrap(), "the thief's lease was left alone");
}

#[weir::task(cache = "inputs")]
async fn long_work(tag: u64) -> anyhow::Result<String> {
    let n = bump(&format!("long {tag}"));
    // The work itself: several lease TTLs long, so only renewals keep the lease.
    tokio::time::sleep(TTL * 4).await;
    Ok(format!("long {tag}, run {n}"))
}

#[weir::flow]
async fn long_flow(tag: u64) -> anyhow::Result<String> {
    Ok(long_work(tag).await?)
}

/// Four threads (each its own runtime, as four programs) compute one key whose work takes
/// four lease TTLs: the holder keeps its lease by renewing it, so nobody else computes.
#[test]
fn a_holder_whose_work_outlasts_the_ttl_keeps_its_lease() {
    env();
    let tag = unique();
    const N: usize = 4;
    let barrier = Barrier::new(N);
    let outs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(long_flow(tag)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ran(&format!("long {tag}")), 1, "one body ran: {outs:?}");
    assert!(outs.iter().all(|o| *o == format!("long {tag}, run 1")), "{outs:?}");
}

// ---------- item: the timeout is one deadline for the wait and the body ----------

#[weir::task(cache = "inputs", timeout = "3s")]
async fn stuck(tag: u64) -> anyhow::Result<u64> {
    bump(&format!("stuck {tag}"));
    std::future::pending::<()>().await;
    Ok(tag)
}

#[weir::flow]
async fn stuck_flow(tag: u64) -> anyhow::Result<u64> {
    Ok(stuck(tag).await?)
}

/// Another process holds the key for half the timeout; then the body runs and never ends.
/// The run times out at its timeout, counted from when it started waiting — not a whole
/// timeout after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_covers_the_wait_and_the_body_together() {
    env();
    let store = store();
    let tag = unique();
    let key = stuck(tag).cache_key().unwrap().unwrap();
    let now = weir_types::time::now_micros();
    let LeaseOutcome::Acquired(lease) = store.try_lease(&key, "another machine", 60_000_000, now).await.unwrap() else {
        panic!("the key is free");
    };
    let holder_store = store.clone();
    let holder = tokio::spawn(async move {
        // Its computation, then it gives up without a result.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        holder_store.release(&lease).await.unwrap()
    });
    let started = Instant::now();
    let (result, report) = tokio::time::timeout(Duration::from_secs(30), stuck_flow(tag).with_report())
        .await
        .expect("the run ended by itself");
    let took = started.elapsed();
    assert!(holder.await.unwrap(), "the holder released its own lease");
    let text = format!("{:#}", anyhow::Error::from(result.unwrap_err()));
    assert!(text.contains("timed out after 3.00s"), "{text}");
    assert_eq!(ran(&format!("stuck {tag}")), 1, "the body ran after the wait");
    let tasks = StateDb::open_existing(&env().db)
        .unwrap()
        .task_runs(report.flow_run_id)
        .unwrap();
    assert_eq!(tasks[0].state, State::TimedOut);
    // One deadline: 3 s in all. Waiting (≥ 1.5 s) and then a whole timeout again would be
    // ≥ 4.5 s.
    assert!(took >= Duration::from_secs(3), "ended early: {took:?}");
    assert!(took < Duration::from_millis(4_300), "wait + a whole timeout: {took:?}");
}
