//! Leases through the engine in one process: a waiter's deadline, and many threads (each
//! with its own runtime, released together by a barrier) meeting one damaged or refreshed
//! entry or one result name. The cross-process versions are in `processes.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir::State;
use weir_cache::folder::FolderBackend;
use weir_cache::{LeaseOutcome, Lookup, Renewal, ResultStore, Store};
use weir_state::StateDb;

struct Env {
    results: PathBuf,
    db: PathBuf,
}

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
        settings.lease_ttl = Duration::from_secs(2);
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
fn bodies() -> &'static Mutex<std::collections::HashMap<String, u32>> {
    static B: OnceLock<Mutex<std::collections::HashMap<String, u32>>> = OnceLock::new();
    B.get_or_init(Default::default)
}

/// Counts a body run and returns a result no other run returns.
async fn body(label: String) -> anyhow::Result<String> {
    let n = {
        let mut b = bodies().lock().unwrap();
        let n = b.entry(label.clone()).or_default();
        *n += 1;
        *n
    };
    // The work: long enough for every thread to meet the holder's lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(format!("{label}, run {n}"))
}

fn ran(label: &str) -> u32 {
    bodies().lock().unwrap().get(label).copied().unwrap_or(0)
}

/// Runs `f` on `n` threads at once, each on its own runtime (as separate programs sharing
/// the store would), and returns what each got.
fn in_threads<T: Send, F: Future<Output = T>>(n: usize, f: impl Fn() -> F + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(f())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[weir::task(cache = "inputs", timeout = "1s")]
async fn impatient(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

#[weir::flow]
async fn impatient_flow(x: u64) -> anyhow::Result<u64> {
    Ok(impatient(x).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gives_up_at_its_tasks_timeout() {
    env();
    let store = store();
    let x = unique();
    let key = impatient(x).cache_key().unwrap().unwrap();
    let now = weir_types::time::now_micros();
    let LeaseOutcome::Acquired(mut lease) = store.try_lease(&key, "another machine", 2_000_000, now).await.unwrap()
    else {
        panic!("the key is free");
    };
    // A live holder on another machine: it keeps renewing (a long computation).
    let holder_store = store.clone();
    let holder = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = weir_types::time::now_micros();
            match holder_store.renew(&lease, 2_000_000, now).await.unwrap() {
                Renewal::Renewed(l) => lease = l,
                Renewal::Lost(by) => panic!("the holder lost its lease to {by:?}"),
            }
        }
    });
    let started = Instant::now();
    let (result, report) = tokio::time::timeout(Duration::from_secs(60), impatient_flow(x).with_report())
        .await
        .expect("the waiter gave up by itself");
    let waited = started.elapsed();
    holder.abort();
    let text = format!("{:#}", anyhow::Error::from(result.unwrap_err()));
    assert!(
        text.contains("timed out after 1.00s waiting for another machine"),
        "{text}"
    );
    assert!(waited >= Duration::from_secs(1), "gave up early: {waited:?}");
    assert!(waited < Duration::from_secs(10), "gave up late: {waited:?}");
    let tasks = StateDb::open_existing(&env().db)
        .unwrap()
        .task_runs(report.flow_run_id)
        .unwrap();
    assert_eq!(tasks[0].state, State::TimedOut);
}

#[weir::task(cache = "inputs")]
async fn counted(x: u64) -> anyhow::Result<String> {
    body(format!("counted {x}")).await
}

#[weir::flow]
async fn counted_flow(x: u64, refresh: bool) -> anyhow::Result<String> {
    Ok(counted(x).refresh_cache(refresh).await?)
}

fn one_result(outs: Vec<Result<String, weir::FlowError>>) -> String {
    let outs: Vec<String> = outs.into_iter().map(|r| r.unwrap()).collect();
    assert!(
        outs.iter().all(|o| *o == outs[0]),
        "everyone got the one new result: {outs:?}"
    );
    outs[0].clone()
}

#[test]
fn threads_meeting_one_damaged_or_refreshed_entry_compute_it_once() {
    env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = store();
    let folder = FolderBackend::open(&env().results).unwrap();

    let x = unique();
    let label = format!("counted {x}");
    rt.block_on(counted_flow(x, false)).unwrap();
    let key = counted(x).cache_key().unwrap().unwrap();
    // A small result lives in its manifest: damage the bytes there.
    let manifest = folder.path_of(&store.manifest_path(&key));
    let mut meta: weir_cache::EntryMeta = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    meta.inline = meta.inline.map(|b| b.iter().map(|x| x ^ 1).collect());
    std::fs::write(&manifest, serde_json::to_vec(&meta).unwrap()).unwrap();
    let got = one_result(in_threads(6, || counted_flow(x, false)));
    assert_eq!(ran(&label), 2, "the damaged entry was computed again once");
    assert_eq!(got, format!("{label}, run 2"));

    let got = one_result(in_threads(6, || counted_flow(x, true)));
    assert_eq!(ran(&label), 3, "six refreshes at once computed it once");
    assert_eq!(got, format!("{label}, run 3"));
    let stored = match rt.block_on(store.get(&key, 0)).unwrap() {
        Lookup::Hit { bytes, .. } => serde_json::from_slice::<String>(&bytes).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(stored, got);
}

#[weir::task(result_key = "threads/{region}.json")]
async fn named_skip(region: String) -> anyhow::Result<String> {
    body(format!("skip {region}")).await
}

#[weir::task(result_key = "threads-strict/{region}.json", on_duplicate = "error")]
async fn named_error(region: String) -> anyhow::Result<String> {
    body(format!("error {region}")).await
}

#[weir::flow]
async fn named_flow(strict: bool, region: String) -> anyhow::Result<String> {
    Ok(if strict {
        named_error(region).await?
    } else {
        named_skip(region).await?
    })
}

#[test]
fn threads_writing_one_result_name_store_one_result() {
    env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = store();
    let region = format!("r{}", unique());
    let stored = |name: &str| -> String {
        match rt.block_on(store.get_named(name, 0)).unwrap() {
            // A hit: the data matches its manifest's checksum.
            Lookup::Hit { bytes, .. } => serde_json::from_slice(&bytes).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    };

    let got = one_result(in_threads(6, || named_flow(false, region.clone())));
    assert_eq!(
        ran(&format!("skip {region}")),
        1,
        "on_duplicate = \"skip\": one body ran"
    );
    assert_eq!(stored(&format!("threads/{region}.json")), got);

    let outs = in_threads(6, || named_flow(true, region.clone()));
    assert_eq!(
        ran(&format!("error {region}")),
        1,
        "on_duplicate = \"error\": one body ran"
    );
    let (won, lost): (Vec<_>, Vec<_>) = outs.into_iter().partition(|r| r.is_ok());
    assert_eq!(won.len(), 1, "one writer wins: {lost:?}");
    for e in lost {
        let text = format!("{:#}", anyhow::Error::from(e.unwrap_err()));
        assert!(text.contains("already has a result"), "{text}");
    }
    let winner = won.into_iter().next().unwrap().unwrap();
    assert_eq!(
        stored(&format!("threads-strict/{region}.json")),
        winner,
        "nothing of the losers was written"
    );
}

// ---------- a lease's generations starting again while someone stalled (ABA) ----------

/// A folder backend that can freeze the first create-if-absent write of one path (a process
/// stalled at exactly that point: the one fault here that cannot be caused from outside).
#[derive(Debug)]
struct Gated {
    inner: FolderBackend,
    gate: Mutex<Option<Gate>>,
}

#[derive(Debug)]
struct Gate {
    path: String,
    reached: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
}

impl Gated {
    /// A store over `inner` whose first write of `path` waits: returns the store, a
    /// receiver told when the write is reached, and the sender that lets it go on.
    fn store(
        inner: FolderBackend,
        path: String,
    ) -> (
        Store,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached, reached_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go) = tokio::sync::oneshot::channel();
        let gated = Gated {
            inner,
            gate: Mutex::new(Some(Gate { path, reached, go })),
        };
        (Store::new(Arc::new(gated)), reached_rx, go_tx)
    }
}

use weir_cache::backend::{Backend, BackendError, ObjectInfo, Versioned, WriteMode, Written};

impl Backend for Gated {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn atomic_if_absent(&self) -> bool {
        self.inner.atomic_if_absent()
    }
    fn read<'a>(&'a self, path: &'a str) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        self.inner.read(path)
    }
    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
        mode: WriteMode,
    ) -> futures::future::BoxFuture<'a, Result<Written, BackendError>> {
        let gate = {
            let mut g = self.gate.lock().unwrap();
            match &*g {
                Some(gate) if gate.path == path => g.take(),
                _ => None,
            }
        };
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.reached.send(());
                let _ = gate.go.await;
            }
            self.inner.write(path, bytes, mode).await
        })
    }
    fn delete<'a>(&'a self, path: &'a str) -> futures::future::BoxFuture<'a, Result<(), BackendError>> {
        self.inner.delete(path)
    }
    fn read_versioned<'a>(
        &'a self,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Versioned>, BackendError>> {
        self.inner.read_versioned(path)
    }
    fn delete_if<'a>(
        &'a self,
        path: &'a str,
        version: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<bool, BackendError>> {
        self.inner.delete_if(path, version)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> futures::future::BoxFuture<'a, Result<Vec<ObjectInfo>, BackendError>> {
        self.inner.list(prefix)
    }
    fn write_file<'a>(
        &'a self,
        path: &'a str,
        src: &'a std::path::Path,
        mode: WriteMode,
    ) -> futures::future::BoxFuture<'a, Result<Written, BackendError>> {
        self.inner.write_file(path, src, mode)
    }
    fn read_to_file<'a>(
        &'a self,
        path: &'a str,
        dest: &'a std::path::Path,
    ) -> futures::future::BoxFuture<'a, Result<Option<(String, u64)>, BackendError>> {
        self.inner.read_to_file(path, dest)
    }
}

fn acquired(outcome: LeaseOutcome) -> weir_cache::Lease {
    match outcome {
        LeaseOutcome::Acquired(l) => l,
        other => panic!("expected the lease, got {other:?}"),
    }
}

/// The path of a key's lease generation `n`, as the store lays it out.
fn generation_path(key: &weir_cache::CacheKey, n: u64) -> String {
    format!("v1/leases/{}/{n:020}", key.to_hex())
}

/// Whether `lease` is still its holder's: renewing it says.
async fn still_holds(store: &Store, lease: &weir_cache::Lease, now: i64) -> bool {
    matches!(store.renew(lease, 1_000, now).await.unwrap(), Renewal::Renewed(_))
}

/// `x` finds `a`'s lease expired and stalls just before taking it over. Meanwhile `a` wakes
/// and releases it, and `c` acquires the key afresh: its generation 1 is a new lease that
/// has the very path `x` read. When `x` goes on, it must not take `c`'s lease from under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_taker_does_not_take_over_a_lease_acquired_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap()));
    let key = weir_cache::named_lease_key(&format!("aba-take-{}", unique()));
    let (gated, reached, go) = Gated::store(FolderBackend::open(dir.path()).unwrap(), generation_path(&key, 2));
    let a = acquired(plain.try_lease(&key, "a", 1_000, 0).await.unwrap());
    let gated = Arc::new(gated);
    let x = tokio::spawn({
        let gated = gated.clone();
        async move { gated.try_lease(&key, "x", 1_000, 5_000).await.unwrap() }
    });
    reached.await.unwrap();
    assert!(plain.release(&a).await.unwrap(), "a still had its lease");
    let c = acquired(plain.try_lease(&key, "c", 1_000, 5_000).await.unwrap());
    go.send(()).unwrap();
    // `c` holds the key, unexpired: `x` must wait for it, and `c` keep it.
    match x.await.unwrap() {
        LeaseOutcome::Held(rec) => assert_eq!(rec.holder, "c"),
        other => panic!("x took the key while c held it: {other:?}"),
    }
    assert!(still_holds(&plain, &c, 5_001).await, "c kept its lease");
}

/// `a` stalls in the middle of renewing (it read its generation 1, and is about to create
/// generation 2). Its lease expires, `b` takes the key over, finishes and releases it, and
/// `c` acquires it afresh (generation 1 again). When `a` goes on, its renewal must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_mid_renewal_does_not_share_a_lease_acquired_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap()));
    let key = weir_cache::named_lease_key(&format!("aba-renew-{}", unique()));
    let (gated, reached, go) = Gated::store(FolderBackend::open(dir.path()).unwrap(), generation_path(&key, 2));
    let a = acquired(gated.try_lease(&key, "a", 1_000, 0).await.unwrap());
    let gated = Arc::new(gated);
    let renewal = tokio::spawn({
        let gated = gated.clone();
        async move { gated.renew(&a, 1_000, 500).await.unwrap() }
    });
    reached.await.unwrap();
    let b = acquired(plain.try_lease(&key, "b", 1_000, 5_000).await.unwrap());
    assert!(plain.release(&b).await.unwrap());
    let c = acquired(plain.try_lease(&key, "c", 1_000, 5_000).await.unwrap());
    go.send(()).unwrap();
    // `c` holds the key, unexpired: `a` lost it, and `c` keeps it.
    let renewal = renewal.await.unwrap();
    assert!(
        matches!(renewal, Renewal::Lost(_)),
        "a renewed a lease c holds: {renewal:?}"
    );
    assert!(still_holds(&plain, &c, 5_001).await, "c kept its lease");
}
