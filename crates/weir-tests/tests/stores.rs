//! The store behaviour suite against every backend: a folder, a FUSE mount (bindfs), two
//! mounts of one real JuiceFS volume, memory, s3s-fs and moto.

use std::path::Path;
use std::sync::Arc;

use weir_cache::folder::FolderBackend;
use weir_cache::object::ObjectBackend;
use weir_cache::{OpenOptions, ResultStore, Store};
use weir_tests::mounts::{Bindfs, JuiceFs};
use weir_tests::s3::{S3sServer, moto_bucket, moto_endpoint, set_credentials};
use weir_tests::store_suite::{self, RACE_ROUNDS, RACE_ROUNDS_LOCAL};

fn folder_store(dir: &Path) -> Store {
    Store::new(Arc::new(FolderBackend::open(dir).unwrap().without_fsync()))
}

/// Opens a store through its URL, as users do, and unwraps the `Store` behind it.
fn url_store(url: &str) -> Store {
    // The URL must open as users open it…
    if let Err(e) = weir_cache::open(url, &OpenOptions::default()) {
        panic!("cannot open {url}: {e}");
    }
    // …and the suite needs raw backend access to damage files, so it builds the same Store by hand.
    let parsed = url::Url::parse(url).unwrap();
    let q = |n: &str| parsed.query_pairs().find(|(k, _)| k == n).map(|(_, v)| v.into_owned());
    let mut b = opendal::services::S3::default()
        .bucket(parsed.host_str().unwrap())
        .root(parsed.path())
        .region("us-east-1")
        .access_key_id(weir_tests::s3::ACCESS_KEY)
        .secret_access_key(weir_tests::s3::SECRET_KEY);
    if let Some(e) = q("endpoint") {
        b = b.endpoint(&e);
    }
    Store::new(Arc::new(ObjectBackend::new(opendal::Operator::new(b).unwrap(), url)))
}

#[tokio::test]
async fn folder_backend() {
    let dir = tempfile::tempdir().unwrap();
    store_suite::all(&folder_store(dir.path())).await;
    store_suite::races(RACE_ROUNDS_LOCAL, |_| folder_store(dir.path()));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no temp files left behind"
    );
}

#[tokio::test]
async fn memory_backend() {
    let store = Store::new(Arc::new(ObjectBackend::memory().unwrap()));
    store_suite::all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_server() {
    set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    store_suite::all(&url_store(&server.url("weir", "suite"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_wrong_credentials_is_a_clear_error() {
    let server = S3sServer::start(&["weir"]).unwrap();
    let parsed_endpoint = server.endpoint();
    let b = opendal::services::S3::default()
        .bucket("weir")
        .root("/x")
        .region("us-east-1")
        .endpoint(&parsed_endpoint)
        .access_key_id("nobody")
        .secret_access_key("wrong-secret");
    let store = Store::new(Arc::new(ObjectBackend::new(
        opendal::Operator::new(b).unwrap(),
        "s3://weir/x",
    )));
    let k = store_suite::key("creds", 1);
    let err = weir_cache::ResultStore::get(&store, &k, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("s3://weir/x"), "the error names the store: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_server() {
    let Some(endpoint) = moto_endpoint() else { return };
    set_credentials();
    let bucket = moto_bucket(&endpoint, "weir");
    let url = format!("s3://{bucket}/suite?endpoint={endpoint}");
    store_suite::all(&url_store(&url)).await;
    // Each request is a few ms on moto: fewer rounds.
    store_suite::races(8, |_| url_store(&url));
}

#[tokio::test]
async fn fuse_mounted_folder() {
    let Some(fuse) = Bindfs::mount() else { return };
    store_suite::all(&folder_store(fuse.path())).await;
    store_suite::races(RACE_ROUNDS, |_| folder_store(fuse.path()));
}

/// A folder store that fsyncs before publishing, as users run it (the default).
fn durable_folder_store(dir: &Path) -> Store {
    Store::new(Arc::new(FolderBackend::open(dir).unwrap()))
}

/// One JuiceFS volume, two clients: the suite through one, the races through both (even
/// writers on the first mount, odd on the second), as two machines sharing it would.
#[tokio::test]
async fn juicefs_volume_mounted_twice() {
    let Some(jfs) = JuiceFs::folder("stores") else { return };
    store_suite::all(&durable_folder_store(&jfs.dirs[0])).await;
    // What one client wrote, the other reads.
    let k = store_suite::key("juicefs-across", 1);
    let (a, b) = (durable_folder_store(&jfs.dirs[0]), durable_folder_store(&jfs.dirs[1]));
    a.put(
        store_suite::meta(&k),
        b"from the first".to_vec(),
        weir_cache::PutMode::IfAbsent,
    )
    .await
    .unwrap();
    assert_eq!(store_suite::hit_bytes(&b, &k).await, b"from the first");
    store_suite::races(16, |w| durable_folder_store(&jfs.dirs[w % 2]));
}

/// Without fsync (`WEIR_CACHE_FSYNC=0`) JuiceFS (like NFS) commits a file's data only on close:
/// the folder backend must close its temp file before linking it into place, or the other
/// client reads the just-published manifest (or lease) as empty.
#[tokio::test]
async fn juicefs_without_fsync_never_shows_another_client_an_empty_file() {
    let Some(jfs) = JuiceFs::folder("no-fsync") else { return };
    store_suite::races(16, |w| folder_store(&jfs.dirs[w % 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tier_serves_repeated_hits_and_evicts_least_recently_used() {
    use std::sync::atomic::Ordering;
    use weir_cache::ResultStore;
    use weir_cache::tier::Tiered;

    set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(url_store(&server.url("weir", "tier")));
    let local_dir = tempfile::tempdir().unwrap();
    // Room for about three 8 KiB results (stored as blobs: above the inline size) with
    // their manifests, which count towards the cap too.
    let tier = Tiered::new(
        FolderBackend::open(local_dir.path()).unwrap(),
        remote.clone(),
        3 * (8192 + 1024),
    );
    let keys: Vec<_> = (0..5).map(|i| store_suite::key("tier", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        // Written by "another machine": straight to the remote store.
        remote
            .put(store_suite::meta(k), vec![i as u8; 8192], weir_cache::PutMode::IfAbsent)
            .await
            .unwrap();
    }
    let hit = |l: weir_cache::Lookup| matches!(l, weir_cache::Lookup::Hit { .. });
    // First hits come from S3 and fill the local tier; repeated hits are local.
    for k in &keys[..3] {
        assert!(hit(tier.get(k, 0).await.unwrap()));
    }
    assert_eq!(tier.counters.remote_hits.load(Ordering::Relaxed), 3);
    assert!(hit(tier.get(&keys[0], 0).await.unwrap()));
    assert_eq!(tier.counters.local_hits.load(Ordering::Relaxed), 1, "served locally");
    // Keys 3 and 4 overflow the cap: the least recently used go (keys 1 and 2; key 0 was
    // just used).
    assert!(hit(tier.get(&keys[3], 0).await.unwrap()));
    assert!(hit(tier.get(&keys[4], 0).await.unwrap()));
    assert!(tier.counters.evictions.load(Ordering::Relaxed) >= 1);
    let local = tier.local();
    assert!(hit(local.get(&keys[0], 0).await.unwrap()), "recently used entry kept");
    assert!(
        !hit(local.get(&keys[1], 0).await.unwrap()),
        "least recently used entry evicted"
    );
    assert!(
        !hit(local.get(&keys[2], 0).await.unwrap()),
        "least recently used entry evicted"
    );
    // An evicted entry is still a hit, through the remote store.
    assert!(hit(tier.get(&keys[1], 0).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atomicity_probe_tells_a_check_then_write_server_from_an_atomic_one() {
    use weir_cache::ResultStore;
    set_credentials();
    // s3s-fs claims If-None-Match (and OpenDAL's S3 capability says so), but checks, then
    // writes: concurrent creators can both win.
    let server = S3sServer::start(&["weir"]).unwrap();
    let s3s = url_store(&server.url("weir", "probe"));
    assert!(s3s.backend().atomic_if_absent(), "the claimed capability");
    for _ in 0..5 {
        // Fresh stores, so each runs its own probe: it must be reliable, not lucky.
        let s3s = url_store(&server.url("weir", "probe"));
        assert!(
            !s3s.backend().probe_atomic().await.unwrap(),
            "s3s-fs measured as not atomic"
        );
    }
    assert!(!s3s.atomic_leases().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    assert!(
        folder_store(dir.path()).atomic_leases().await.unwrap(),
        "link(2) is atomic"
    );
    let memory = Store::new(Arc::new(ObjectBackend::memory().unwrap()));
    assert!(memory.atomic_leases().await.unwrap());
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = moto_bucket(&endpoint, "probe");
    for _ in 0..3 {
        let moto = url_store(&format!("s3://{bucket}/probe?endpoint={endpoint}"));
        assert!(moto.backend().probe_atomic().await.unwrap(), "moto measured as atomic");
    }
}
