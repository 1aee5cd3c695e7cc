//! The local tier in front of a shared store: every local hit is revalidated against the
//! remote manifest, so a refresh, a removal or an expiry on another machine is seen at once;
//! downloaded file results count towards the size cap; a folder can have a tier too.
//!
//! "Machines" here are two `Tiered` stores, each with its own local folder, over one remote.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use weir_cache::folder::FolderBackend;
use weir_cache::object::ObjectBackend;
use weir_cache::tier::Tiered;
use weir_cache::{CacheKey, FileLookup, Lookup, OpenOptions, PutMode, ResultStore, Store, StoredFiles};
use weir_tests::s3::{ACCESS_KEY, S3sServer, SECRET_KEY};
use weir_tests::store_suite::{key, meta};

fn folder_store(dir: &Path) -> Store {
    Store::new(Arc::new(FolderBackend::open(dir).unwrap().without_fsync()))
}

fn s3_store(server: &S3sServer, prefix: &str) -> Store {
    let b = opendal::services::S3::default()
        .bucket("weir")
        .root(&format!("/{prefix}"))
        .region("us-east-1")
        .endpoint(&server.endpoint())
        .access_key_id(ACCESS_KEY)
        .secret_access_key(SECRET_KEY);
    Store::new(Arc::new(ObjectBackend::new(
        opendal::Operator::new(b).unwrap(),
        format!("s3://weir/{prefix}"),
    )))
}

fn machine(local: &Path, remote: &Arc<dyn ResultStore>, cap: u64) -> Tiered {
    Tiered::new(FolderBackend::open(local).unwrap().without_fsync(), remote.clone(), cap)
}

async fn hit(store: &dyn ResultStore, k: &CacheKey, now: i64) -> Vec<u8> {
    match store.get(k, now).await.expect("get") {
        Lookup::Hit { bytes, .. } => bytes,
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// Machine A caches a key; machine B refreshes it, then removes it, then writes one that
/// expires: A's next lookup sees each change, never its old local copy.
async fn another_machine_changes_what_a_key_holds(remote: Arc<dyn ResultStore>) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = machine(dir_a.path(), &remote, 1 << 30);
    let b = machine(dir_b.path(), &remote, 1 << 30);
    let k = key("tier-revalidate", 1);

    a.put(meta(&k), b"old".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(hit(&a, &k, 2_000).await, b"old");
    assert_eq!(
        a.counters.local_hits.load(Ordering::Relaxed),
        1,
        "A serves its own copy"
    );

    // B refreshes the key (WEIR_REFRESH_CACHE=1 there): A's next hit is B's value.
    assert_eq!(hit(&b, &k, 2_000).await, b"old");
    b.put(meta(&k), b"new from B".to_vec(), PutMode::Replace).await.unwrap();
    assert_eq!(hit(&a, &k, 2_000).await, b"new from B", "A saw B's refresh");
    assert_eq!(a.counters.stale.load(Ordering::Relaxed), 1, "A dropped its stale copy");
    // …and keeps the new value locally from then on.
    let local_before = a.counters.local_hits.load(Ordering::Relaxed);
    assert_eq!(hit(&a, &k, 2_000).await, b"new from B");
    assert_eq!(a.counters.local_hits.load(Ordering::Relaxed), local_before + 1);

    // B removes the entry (`weir cache rm` there): A misses.
    assert!(b.remove(&k).await.unwrap());
    assert!(
        matches!(a.get(&k, 2_000).await.unwrap(), Lookup::Miss),
        "A's local copy of a removed entry is not served"
    );
    assert!(
        a.local().entry(&k).await.unwrap().is_none(),
        "and A dropped it from its local folder"
    );

    // B writes an entry that expires at 5_000: A serves it before, and says Expired after.
    let mut m = meta(&k);
    m.expires_at = Some(5_000);
    b.put(m, b"short-lived".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(hit(&a, &k, 2_000).await, b"short-lived");
    assert!(matches!(a.get(&k, 6_000).await.unwrap(), Lookup::Expired { .. }));
}

#[tokio::test]
async fn a_refresh_or_removal_on_another_machine_is_seen_over_a_folder() {
    let shared = tempfile::tempdir().unwrap();
    another_machine_changes_what_a_key_holds(Arc::new(folder_store(shared.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_or_removal_on_another_machine_is_seen_over_s3() {
    weir_tests::s3::set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    another_machine_changes_what_a_key_holds(Arc::new(s3_store(&server, "revalidate"))).await;
}

/// A remote that cannot be reached is a store error (the task then computes without the
/// cache), not a hit on a copy that may be stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_is_an_error_not_a_stale_hit() {
    weir_tests::s3::set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(s3_store(&server, "gone"));
    let dir = tempfile::tempdir().unwrap();
    let a = machine(dir.path(), &remote, 1 << 30);
    let k = key("tier-unreachable", 1);
    a.put(meta(&k), b"v".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(hit(&a, &k, 2_000).await, b"v");
    drop(server);
    let err = a.get(&k, 2_000).await.expect_err("the remote is down");
    assert!(
        err.to_string().contains("s3://weir/gone"),
        "the error names the store: {err}"
    );
}

/// Downloaded file results live in the tier's `files/` and are evicted with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_file_results_count_towards_the_cap_and_are_evicted() {
    weir_tests::s3::set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(s3_store(&server, "files"));
    let src = tempfile::tempdir().unwrap();
    let keys: Vec<CacheKey> = (0..6).map(|i| key("tier-files", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        let p = src.path().join(format!("f{i}"));
        std::fs::write(&p, vec![i as u8; 10_000]).unwrap();
        remote.put_file(meta(k), p, PutMode::IfAbsent).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for three of the six files.
    let cap = 35_000;
    let a = machine(dir.path(), &remote, cap);
    let unused = tempfile::tempdir().unwrap();
    for k in &keys {
        match a.get_file(k, 2_000, unused.path()).await.unwrap() {
            FileLookup::Hit { path, .. } => {
                assert!(
                    path.starts_with(dir.path()),
                    "downloaded into the tier: {}",
                    path.display()
                );
                assert_eq!(std::fs::read(&path).unwrap().len(), 10_000);
            }
            other => panic!("expected a hit, got {other:?}"),
        }
    }
    let files: Vec<u64> = std::fs::read_dir(dir.path().join("files"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        files.len() <= 3 && files.iter().sum::<u64>() <= cap,
        "the tier holds at most its cap of downloaded files: {files:?}"
    );
    assert!(a.counters.evictions.load(Ordering::Relaxed) >= 3);
    assert!(
        std::fs::read_dir(unused.path()).unwrap().next().is_none(),
        "nothing went to the caller's folder"
    );
    // The last file used is still local; an evicted one comes back from S3.
    for k in [&keys[5], &keys[0]] {
        assert!(matches!(
            a.get_file(k, 2_000, unused.path()).await.unwrap(),
            FileLookup::Hit { .. }
        ));
    }
}

/// Files inside results (artifacts a result refers to) downloaded into the tier count
/// towards its cap too, like file results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_files_inside_results_count_towards_the_cap() {
    weir_tests::s3::set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(s3_store(&server, "nested"));
    let src = tempfile::tempdir().unwrap();
    let keys: Vec<CacheKey> = (0..6).map(|i| key("tier-nested", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        let p = src.path().join(format!("part{i}"));
        std::fs::write(&p, vec![i as u8; 10_000]).unwrap();
        let mut m = meta(k);
        m.files = remote.put_blobs(vec![p], PutMode::IfAbsent).await.unwrap();
        remote.put(m, b"{}".to_vec(), PutMode::IfAbsent).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for three of the six files.
    let cap = 35_000;
    let a = machine(dir.path(), &remote, cap);
    let unused = tempfile::tempdir().unwrap();
    for k in &keys {
        let Lookup::Hit { meta, .. } = a.get(k, 2_000).await.unwrap() else {
            panic!("expected a hit")
        };
        match a.get_blobs(&meta, unused.path()).await.unwrap() {
            StoredFiles::Present(paths) => {
                assert!(paths[0].starts_with(dir.path()), "{}", paths[0].display());
                assert_eq!(std::fs::read(&paths[0]).unwrap().len(), 10_000);
            }
            other => panic!("expected the files, got {other:?}"),
        }
    }
    let files: Vec<u64> = std::fs::read_dir(dir.path().join("files"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        files.iter().sum::<u64>() <= cap,
        "the tier holds at most its cap of downloaded files: {files:?}"
    );
}

/// A file larger than the whole tier is still handed out whole: eviction never deletes the
/// files the lookup that triggered it is handing out (a file result, or every file of one
/// result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_larger_than_the_tier_are_not_evicted_by_their_own_download() {
    weir_tests::s3::set_credentials();
    let server = S3sServer::start(&["weir"]).unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(s3_store(&server, "oversized"));
    let src = tempfile::tempdir().unwrap();
    let (file_key, nested_key) = (key("tier-oversized", 1), key("tier-oversized", 2));
    let big = src.path().join("big");
    std::fs::write(&big, vec![1u8; 30_000]).unwrap();
    remote.put_file(meta(&file_key), big, PutMode::IfAbsent).await.unwrap();
    let parts: Vec<_> = (0..3u8)
        .map(|i| {
            let p = src.path().join(format!("part{i}"));
            std::fs::write(&p, vec![i + 2; 20_000]).unwrap();
            p
        })
        .collect();
    let mut m = meta(&nested_key);
    m.files = remote.put_blobs(parts, PutMode::IfAbsent).await.unwrap();
    remote.put(m, b"{}".to_vec(), PutMode::IfAbsent).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let a = machine(dir.path(), &remote, 25_000);
    let unused = tempfile::tempdir().unwrap();
    let FileLookup::Hit { path, .. } = a.get_file(&file_key, 2_000, unused.path()).await.unwrap() else {
        panic!("expected a hit")
    };
    assert_eq!(std::fs::read(&path).expect("the file handed out").len(), 30_000);
    let Lookup::Hit { meta, .. } = a.get(&nested_key, 2_000).await.unwrap() else {
        panic!("expected a hit")
    };
    let StoredFiles::Present(paths) = a.get_blobs(&meta, unused.path()).await.unwrap() else {
        panic!("expected the files")
    };
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(
            std::fs::read(p).unwrap_or_default(),
            vec![i as u8 + 2; 20_000],
            "file {i} of the result was handed out whole"
        );
    }
}

/// `WEIR_LOCAL_CACHE` in front of a folder (a JuiceFS or NFS mount): opened from a
/// `file://` URL, hits are served from the local folder and still revalidated.
#[tokio::test]
async fn a_folder_store_can_have_a_local_tier() {
    let shared = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let opts = OpenOptions {
        fsync: false,
        local_tier: Some((local.path().to_path_buf(), 1 << 30)),
        ..OpenOptions::default()
    };
    let a = weir_cache::open(&url, &opts).unwrap();
    assert!(a.location().contains("local tier"), "{}", a.location());
    let other_machine = folder_store(shared.path());
    let k = key("tier-folder", 1);
    other_machine
        .put(meta(&k), b"one".to_vec(), PutMode::IfAbsent)
        .await
        .unwrap();
    assert_eq!(hit(a.as_ref(), &k, 2_000).await, b"one");
    let local_store = folder_store(local.path());
    assert!(
        local_store.entry(&k).await.unwrap().is_some(),
        "the hit was kept in the local folder"
    );
    other_machine
        .put(meta(&k), b"two".to_vec(), PutMode::Replace)
        .await
        .unwrap();
    assert_eq!(hit(a.as_ref(), &k, 2_000).await, b"two");

    // The tier must not be the store's own folder.
    let same = OpenOptions {
        local_tier: Some((shared.path().to_path_buf(), 1 << 30)),
        ..OpenOptions::default()
    };
    let err = weir_cache::open(&url, &same).unwrap_err().to_string();
    assert!(err.contains("WEIR_LOCAL_CACHE"), "{err}");
}

/// Small results live inside their manifests (no blob file): those count towards the cap
/// too, and go least recently used first like the rest.
#[tokio::test]
async fn inline_results_count_towards_the_cap_and_are_evicted() {
    let shared = tempfile::tempdir().unwrap();
    let remote: Arc<dyn ResultStore> = Arc::new(folder_store(shared.path()));
    let dir = tempfile::tempdir().unwrap();
    let cap = 20_000;
    let a = machine(dir.path(), &remote, cap);
    let keys: Vec<CacheKey> = (0..40).map(|i| key("tier-inline", i)).collect();
    for (i, k) in keys.iter().enumerate() {
        // Incompressible-looking and under INLINE_MAX: stored in the manifest.
        let bytes: Vec<u8> = (0..3_000u32).map(|j| (j * 31 + i as u32 * 7) as u8).collect();
        a.put(meta(k), bytes, PutMode::IfAbsent).await.unwrap();
    }
    let local = FolderBackend::open(dir.path()).unwrap();
    use weir_cache::backend::Backend;
    assert!(
        local.list("v1/blobs/").await.unwrap().is_empty(),
        "the results are inline: no blob files"
    );
    let manifests = local.list("v1/manifests/").await.unwrap();
    let held: u64 = manifests.iter().map(|m| m.size).sum();
    assert!(
        held <= cap,
        "the tier holds at most its cap of inline results: {held} bytes in {} manifests",
        manifests.len()
    );
    assert!(a.counters.evictions.load(Ordering::Relaxed) > 0);
    // The last one put is still local; an evicted one comes back from the remote.
    assert_eq!(hit(&a, &keys[39], 2_000).await.len(), 3_000);
    assert_eq!(a.counters.local_hits.load(Ordering::Relaxed), 1);
    assert_eq!(hit(&a, &keys[0], 2_000).await.len(), 3_000);
    assert_eq!(a.counters.remote_hits.load(Ordering::Relaxed), 1);
}
