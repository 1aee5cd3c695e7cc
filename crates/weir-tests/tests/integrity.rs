//! The result store keeps its promises under gc, races and lost data (issue 7, items 2, 3,
//! 5 and the one-read hit): each test drives the interleaving that used to break it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use weir_cache::backend::{Backend, BackendError, ObjectInfo, WriteMode, Written};
use weir_cache::folder::FolderBackend;
use weir_cache::object::ObjectBackend;
use weir_cache::{FileLookup, GcOptions, Lookup, PutMode, ResultStore, Store};
use weir_tests::s3::{ACCESS_KEY, S3sServer, SECRET_KEY, set_credentials};
use weir_tests::store_suite::{key, large, meta};

fn now_us() -> i64 {
    weir_types::time::now_micros()
}

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// The real folder backend, counting reads and running a hook just before one chosen
/// operation on one chosen path: how a test puts gc or a second writer exactly between
/// two steps of the store.
#[derive(Default)]
struct Probe {
    reads: AtomicUsize,
    hook: Mutex<Option<(Vec<&'static str>, String, Hook)>>,
}

#[derive(Clone)]
struct Probed {
    inner: Arc<dyn Backend>,
    probe: Arc<Probe>,
}

impl std::fmt::Debug for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Probed({})", self.inner.location())
    }
}

impl Probed {
    fn new(dir: &Path) -> Probed {
        Probed::over(Arc::new(FolderBackend::open(dir).unwrap().without_fsync()))
    }

    fn over(inner: Arc<dyn Backend>) -> Probed {
        Probed {
            inner,
            probe: Arc::default(),
        }
    }

    /// Runs `hook` before the next of `ops` on `path`.
    fn before(&self, ops: &[&'static str], path: String, hook: Hook) {
        *self.probe.hook.lock().unwrap() = Some((ops.to_vec(), path, hook));
    }

    async fn fire(&self, op: &str, path: &str) {
        let hook = {
            let mut h = self.probe.hook.lock().unwrap();
            match h.as_ref() {
                Some((ops, p, _)) if ops.contains(&op) && p == path => h.take().map(|(_, _, f)| f),
                _ => None,
            }
        };
        if let Some(f) = hook {
            f().await;
        }
    }
}

impl Backend for Probed {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn atomic_if_absent(&self) -> bool {
        true
    }
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        self.probe.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(path)
    }
    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(async move {
            self.fire("write", path).await;
            self.inner.write(path, bytes, mode).await
        })
    }
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.fire("delete", path).await;
            self.inner.delete(path).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>, BackendError>> {
        self.inner.list(prefix)
    }
    fn read_versioned<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<(Vec<u8>, String)>, BackendError>> {
        self.probe.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_versioned(path)
    }
    fn delete_if<'a>(&'a self, path: &'a str, version: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            self.fire("delete", path).await;
            self.inner.delete_if(path, version).await
        })
    }
    fn write_file<'a>(
        &'a self,
        path: &'a str,
        src: &'a Path,
        mode: WriteMode,
    ) -> BoxFuture<'a, Result<Written, BackendError>> {
        Box::pin(async move {
            self.fire("write", path).await;
            self.inner.write_file(path, src, mode).await
        })
    }
    fn read_to_file<'a>(
        &'a self,
        path: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<Option<(String, u64)>, BackendError>> {
        self.probe.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_to_file(path, dest)
    }
    fn local_path(&self, path: &str) -> Option<PathBuf> {
        self.inner.local_path(path)
    }
    fn touch<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.touch(path)
    }
    fn refresh<'a>(&'a self, path: &'a str, max_age: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.inner.refresh(path, max_age)
    }
    fn refreshes_in_place(&self) -> bool {
        self.inner.refreshes_in_place()
    }
    fn delete_if_unchanged<'a>(
        &'a self,
        path: &'a str,
        expected: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            self.fire("delete", path).await;
            self.inner.delete_if_unchanged(path, expected).await
        })
    }
    fn delete_if_older<'a>(&'a self, path: &'a str, cutoff: i64) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            self.fire("delete", path).await;
            self.inner.delete_if_older(path, cutoff).await
        })
    }
}

fn hit_bytes(l: Lookup) -> Vec<u8> {
    match l {
        Lookup::Hit { bytes, .. } => bytes,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn set_mtime(path: &Path, age: std::time::Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
}

// ---------- store level ----------

#[tokio::test]
async fn a_small_result_hit_is_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let probed = Probed::new(dir.path());
    let store = Store::new(Arc::new(probed.clone()));
    let k = key("one_read", 1);
    store.put(meta(&k), b"42".to_vec(), PutMode::IfAbsent).await.unwrap();
    let before = probed.probe.reads.load(Ordering::SeqCst);
    assert_eq!(hit_bytes(store.get(&k, 0).await.unwrap()), b"42");
    assert_eq!(
        probed.probe.reads.load(Ordering::SeqCst) - before,
        1,
        "one read per hit"
    );
}

/// A writer finds its blob already stored (an old one: its entry was removed) and gc runs
/// between its blob write and its manifest publish, with a grace of seconds: the blob must
/// survive, because the writer refreshed it.
#[tokio::test]
async fn gc_keeps_an_old_blob_a_writer_is_about_to_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let probed = Probed::new(dir.path());
    let store = Store::new(Arc::new(probed.clone()));
    let plain = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap()));
    let (old, new) = (key("reuse", 1), key("reuse", 2));
    let data = large(b"shared result");
    let (_, m) = store.put(meta(&old), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert!(store.remove(&old).await.unwrap());
    let blob = dir.path().join(store.blob_path(&m.blob));
    set_mtime(&blob, std::time::Duration::from_secs(3600));

    let gc_store = plain.clone();
    probed.before(
        &["write"],
        store.manifest_path(&new),
        Box::new(move || {
            Box::pin(async move {
                let opts = GcOptions {
                    grace_micros: 5_000_000,
                    ..Default::default()
                };
                gc_store.gc(opts, now_us()).await.unwrap();
            })
        }),
    );
    store.put(meta(&new), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert!(probed.probe.hook.lock().unwrap().is_none(), "gc ran mid-publish");
    assert_eq!(hit_bytes(plain.get(&new, now_us()).await.unwrap()), data);
}

/// Object storage has no "touch": a writer that finds its blob younger than
/// `BLOB_REFRESH_AGE_MICROS` reuses it as it is. gc run with a short grace between that
/// writer's check and its manifest must still keep the blob (a real S3 server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_with_a_short_grace_keeps_a_blob_a_writer_on_s3_is_about_to_reuse() {
    set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let b = opendal::services::S3::default()
        .bucket("weir")
        .root("/grace")
        .region("us-east-1")
        .endpoint(&server.endpoint())
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET_KEY);
    let backend: Arc<dyn Backend> = Arc::new(ObjectBackend::new(
        opendal::Operator::new(b).unwrap(),
        "s3://weir/grace",
    ));
    let probed = Probed::over(backend.clone());
    let store = Store::new(Arc::new(probed.clone()));
    let plain = Store::new(backend);
    let (old, new) = (key("s3-reuse", 1), key("s3-reuse", 2));
    let data = large(b"shared on s3");
    store.put(meta(&old), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert!(store.remove(&old).await.unwrap());
    // The blob must be older than the grace gc is given below: S3 keeps times in seconds.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let gc_store = plain.clone();
    probed.before(
        &["write"],
        store.manifest_path(&new),
        Box::new(move || {
            Box::pin(async move {
                let opts = GcOptions {
                    grace_micros: 1_000_000,
                    ..Default::default()
                };
                gc_store.gc(opts, now_us()).await.unwrap();
            })
        }),
    );
    store.put(meta(&new), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert!(probed.probe.hook.lock().unwrap().is_none(), "gc ran mid-publish");
    assert_eq!(hit_bytes(plain.get(&new, now_us()).await.unwrap()), data);
}

/// gc lists an old unreferenced blob, then a writer reuses it (refreshing it and publishing
/// its manifest), then gc deletes: the delete must notice the refresh.
#[tokio::test]
async fn gc_that_listed_a_blob_before_a_writer_reused_it_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let probed = Probed::new(dir.path());
    let store = Store::new(Arc::new(probed.clone()));
    let plain = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap()));
    let (old, new) = (key("listed", 1), key("listed", 2));
    let data = large(b"listed result");
    let (_, m) = store.put(meta(&old), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert!(store.remove(&old).await.unwrap());
    let bpath = store.blob_path(&m.blob);
    set_mtime(&dir.path().join(&bpath), std::time::Duration::from_secs(3600));

    let writer = plain.clone();
    let d = data.clone();
    probed.before(
        &["delete"],
        bpath,
        Box::new(move || {
            Box::pin(async move {
                writer.put(meta(&new), d, PutMode::IfAbsent).await.unwrap();
            })
        }),
    );
    let opts = GcOptions {
        grace_micros: 5_000_000,
        ..Default::default()
    };
    store.gc(opts, now_us()).await.unwrap();
    assert!(probed.probe.hook.lock().unwrap().is_none(), "the writer ran mid-gc");
    assert_eq!(hit_bytes(plain.get(&new, now_us()).await.unwrap()), data);
}

/// gc judges an entry expired; before it deletes it a writer replaces it with a fresh one:
/// the fresh entry must stay.
#[tokio::test]
async fn gc_does_not_delete_an_entry_replaced_after_it_was_judged() {
    let dir = tempfile::tempdir().unwrap();
    let probed = Probed::new(dir.path());
    let store = Store::new(Arc::new(probed.clone()));
    let plain = Store::new(Arc::new(FolderBackend::open(dir.path()).unwrap()));
    let k = key("replaced", 1);
    let mut expired = meta(&k);
    expired.expires_at = Some(now_us() - 1_000_000);
    store.put(expired, b"stale".to_vec(), PutMode::IfAbsent).await.unwrap();

    let writer = plain.clone();
    probed.before(
        &["delete"],
        store.manifest_path(&k),
        Box::new(move || {
            Box::pin(async move {
                writer.put(meta(&k), b"fresh".to_vec(), PutMode::Replace).await.unwrap();
            })
        }),
    );
    let report = store.gc(GcOptions::default(), now_us()).await.unwrap();
    assert!(probed.probe.hook.lock().unwrap().is_none(), "the writer ran mid-gc");
    assert_eq!(hit_bytes(plain.get(&k, now_us()).await.unwrap()), b"fresh");
    assert_eq!(report.entries_removed, 0, "nothing was removed: {report:?}");
}

/// Threads of one process download one blob at once (from a real S3 server, slow enough
/// for the downloads to overlap): every one gets a complete, verified file.
#[test]
fn concurrent_downloads_of_one_blob_never_hand_out_a_partial_file() {
    set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let b = opendal::services::S3::default()
        .bucket("weir")
        .root("/dl")
        .region("us-east-1")
        .endpoint(&server.endpoint())
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET_KEY);
    // Retrying temporary errors, as `weir_cache::open` does.
    let op = opendal::Operator::new(b)
        .unwrap()
        .layer(opendal::layers::RetryLayer::new());
    let store = Arc::new(Store::new(Arc::new(ObjectBackend::new(op, "s3://weir/dl"))));
    let src = tempfile::NamedTempFile::new().unwrap();
    let mut data = vec![0u8; 48 << 20];
    for (i, x) in data.iter_mut().enumerate() {
        *x = (i * 31 % 251) as u8;
    }
    std::fs::write(src.path(), &data).unwrap();
    let expected = blake3::hash(&data).to_hex().to_string();
    drop(data);
    let k = key("downloads", 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.put_file(meta(&k), src.path().to_path_buf(), PutMode::IfAbsent))
        .unwrap();

    const THREADS: usize = 4;
    let mut failures = Vec::new();
    for round in 0..3 {
        let dest = tempfile::tempdir().unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (store, barrier, dest) = (store.clone(), barrier.clone(), dest.path().to_path_buf());
                let expected = expected.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    match rt.block_on(store.get_file(&k, now_us(), &dest)) {
                        Ok(FileLookup::Hit { path, .. }) => {
                            let (h, _) = weir_cache::stream::hash_file(&path).unwrap();
                            (h != expected).then(|| format!("{} does not verify", path.display()))
                        }
                        Ok(other) => Some(format!("{other:?}")),
                        Err(e) => Some(format!("error: {e}")),
                    }
                })
            })
            .collect();
        for h in handles {
            if let Some(f) = h.join().unwrap() {
                failures.push(format!("round {round}: {f}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------- through the engine ----------

struct Env {
    results: PathBuf,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let env = Env {
            results: dir.join("results"),
        };
        let mut settings = weir::Settings::from_env();
        settings.results = env.results.display().to_string();
        settings.local_cache = None;
        settings.artifacts_dir = dir.join("artifacts");
        settings.state_db = None;
        settings.refresh_cache = false;
        settings.log_filter = "warn".into();
        settings.progress = weir::ProgressMode::Never;
        weir::configure(settings).unwrap();
        env
    })
}

/// The engine tests share one results folder and one of them runs gc over all of it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn runs() -> &'static Mutex<HashMap<String, u32>> {
    static RUNS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn bump(what: &str) {
    *runs().lock().unwrap().entry(what.to_string()).or_default() += 1;
}

fn count(what: &str) -> u32 {
    runs().lock().unwrap().get(what).copied().unwrap_or(0)
}

fn unique() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ ((std::process::id() as u64) << 32)
}

/// Large enough to be stored as a blob, not inside the manifest; different every time it
/// runs (as results with a timestamp are), so a recomputed result has a blob of its own.
#[weir::task(cache = "inputs")]
async fn big(x: u64) -> anyhow::Result<String> {
    let what = format!("big-{x}");
    bump(&what);
    Ok(format!("{x}:{}:", count(&what)).repeat(4096))
}

#[weir::flow]
async fn big_flow(x: u64) -> anyhow::Result<usize> {
    Ok(big(x).await?.len())
}

#[tokio::test]
async fn a_manifest_whose_blob_is_missing_is_repaired_by_the_next_run() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = env();
    let x = unique() % 1_000_000;
    let what = format!("big-{x}");
    big_flow(x).await.unwrap();
    assert_eq!(count(&what), 1);
    let store = Store::new(Arc::new(FolderBackend::open(&env.results).unwrap()));
    let k = big(x).cache_key().unwrap().unwrap();
    let meta = store.entry(&k).await.unwrap().unwrap();
    std::fs::remove_file(env.results.join(store.blob_path(&meta.blob))).unwrap();

    big_flow(x).await.unwrap();
    assert_eq!(count(&what), 2, "the broken entry is recomputed…");
    big_flow(x).await.unwrap();
    assert_eq!(count(&what), 2, "…and repaired: the next run is a hit");
}

#[weir::task(cache = "inputs")]
fn export(x: u64) -> anyhow::Result<weir::Artifact> {
    use std::io::Write;
    bump(&format!("export-{x}"));
    let mut out = weir::Artifact::create()?;
    for i in 0..10_000 {
        writeln!(out, "{x},{i}")?;
    }
    Ok(out.finish()?)
}

/// Takes a cached file result, lets `gc --older-than 0s` run, then reads the file.
#[weir::flow]
async fn export_then_gc(x: u64) -> anyhow::Result<String> {
    let file = export(x).await?;
    let store = Store::new(Arc::new(FolderBackend::open(&env().results)?));
    let opts = GcOptions {
        older_than_micros: Some(0),
        ..Default::default()
    };
    let report = store.gc(opts, now_us() + 1_000_000).await?;
    anyhow::ensure!(report.blobs_removed >= 1, "gc removed the stored file: {report:?}");
    Ok(std::fs::read_to_string(file.path())?)
}

#[tokio::test]
async fn a_hit_file_survives_gc_while_the_flow_reads_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    env();
    let x = unique() % 1_000_000;
    let expected: String = (0..10_000).map(|i| format!("{x},{i}\n")).collect();
    assert_eq!(export_then_gc(x).await.unwrap(), expected, "a computed result");
    assert_eq!(count(&format!("export-{x}")), 1);
    // gc removed the entry: compute again, then hit, then gc while reading the hit.
    export(x).await.unwrap();
    assert_eq!(count(&format!("export-{x}")), 2);
    assert_eq!(export_then_gc(x).await.unwrap(), expected, "a cache hit");
    assert_eq!(count(&format!("export-{x}")), 2, "the second was a hit");
}

/// 16 MiB: long enough to store (write, fsync, link, fsync) that a flow run returning
/// before its publish finished would be caught.
#[weir::task(cache = "inputs")]
async fn heavy(x: u64) -> anyhow::Result<Vec<u64>> {
    bump(&format!("heavy-{x}"));
    Ok((0..2_000_000).map(|i| i ^ x).collect())
}

#[weir::flow]
async fn heavy_flow(x: u64) -> anyhow::Result<usize> {
    Ok(heavy(x).await?.len())
}

#[tokio::test]
async fn a_flow_run_returns_only_after_its_results_are_published() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = env();
    let x = unique() % 1_000_000;
    heavy_flow(x).await.unwrap();
    let store = Store::new(Arc::new(FolderBackend::open(&env.results).unwrap()));
    let k = heavy(x).cache_key().unwrap().unwrap();
    assert!(
        matches!(store.get(&k, now_us()).await.unwrap(), Lookup::Hit { .. }),
        "published and readable when the flow run returned"
    );
}
