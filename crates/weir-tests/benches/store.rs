//! Result store speed: hit latency on a folder, through the local tier (which revalidates
//! every hit against the remote manifest) in front of S3 and of a folder, and straight from
//! S3, for small and 1 MiB results; 1 GiB file results against `dd` on the same disk.
//!
//! ```text
//! cargo bench -p weir-tests --bench store            # add `-- quick` for fewer repetitions
//! cargo bench -p weir-tests --bench store -- hits    # only the hit rows
//! ```
//! S3 is `s3s-fs` on loopback in this process (the same server the tests use).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_cache::folder::FolderBackend;
use weir_cache::object::ObjectBackend;
use weir_cache::tier::Tiered;
use weir_cache::{FileLookup, Lookup, PutMode, ResultStore, Store};
use weir_tests::s3::{ACCESS_KEY, S3sServer, SECRET_KEY};
use weir_tests::store_suite::{key, meta};

const KEYS: u64 = 2_000;
/// Keys of the 1 MiB rows.
const BIG_KEYS: u64 = 64;
const BIG: usize = 1 << 20;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Small results under `salt`, and 1 MiB results under `big-{salt}`.
async fn fill(store: &dyn ResultStore, salt: &str) {
    for i in 0..KEYS {
        store
            .put(
                meta(&key(salt, i)),
                format!("{{\"value\":{i}}}").into_bytes(),
                PutMode::IfAbsent,
            )
            .await
            .expect("put");
    }
    for i in 0..BIG_KEYS {
        let mut bytes = vec![(i % 251) as u8; BIG];
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        store
            .put(meta(&key(&format!("big-{salt}"), i)), bytes, PutMode::IfAbsent)
            .await
            .expect("put");
    }
}

/// Median over `reps` passes of the per-key time to get `n` keys.
async fn hit_latency(store: &dyn ResultStore, salt: &str, n: u64, reps: usize) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        for i in 0..n {
            match store.get(&key(salt, i), 0).await.expect("get") {
                Lookup::Hit { .. } => {}
                other => panic!("expected a hit, got {other:?}"),
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0)
        / 1024
}

fn dd(args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new("dd").args(args).output().expect("dd");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    start.elapsed()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let hits_only = std::env::args().any(|a| a == "hits");
    let reps = if quick { 3 } else { 7 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).expect("temp dir");
    rt.block_on(async {
        // Folder.
        let folder = Store::new(Arc::new(
            FolderBackend::open(dir.path().join("folder"))
                .expect("folder")
                .without_fsync(),
        ));
        fill(&folder, "bench").await;
        let folder_hit = hit_latency(&folder, "bench", KEYS, reps).await;
        let folder_big = hit_latency(&folder, "big-bench", BIG_KEYS, reps).await;

        // S3 (s3s-fs on loopback) with a local tier.
        let server = S3sServer::start(&["bench"]).expect("s3s");
        let b = opendal::services::S3::default()
            .bucket("bench")
            .root("/r")
            .region("us-east-1")
            .endpoint(&server.endpoint())
            .access_key_id(ACCESS_KEY)
            .secret_access_key(SECRET_KEY);
        let s3: Arc<dyn ResultStore> = Arc::new(Store::new(Arc::new(ObjectBackend::new(
            opendal::Operator::new(b).expect("op"),
            "s3://bench/r",
        ))));
        fill(s3.as_ref(), "bench").await;
        let tier = Tiered::new(
            FolderBackend::open(dir.path().join("tier"))
                .expect("tier")
                .without_fsync(),
            s3.clone(),
            10 << 30,
        );
        let start = Instant::now();
        for i in 0..KEYS {
            assert!(matches!(
                tier.get(&key("bench", i), 0).await.expect("get"),
                Lookup::Hit { .. }
            ));
        }
        let first_from_s3 = start.elapsed().as_secs_f64() * 1e6 / KEYS as f64;
        hit_latency(&tier, "big-bench", BIG_KEYS, 1).await; // fills the tier
        let tier_hit = hit_latency(&tier, "bench", KEYS, reps).await;
        let tier_big = hit_latency(&tier, "big-bench", BIG_KEYS, reps).await;
        let s3_direct = hit_latency(s3.as_ref(), "bench", KEYS, 1).await;
        let s3_big = hit_latency(s3.as_ref(), "big-bench", BIG_KEYS, reps).await;
        assert_eq!(
            tier.counters.remote_hits.load(std::sync::atomic::Ordering::Relaxed),
            KEYS + BIG_KEYS,
            "repeated hits were all served locally"
        );

        // A local tier in front of a folder (as in front of an NFS or JuiceFS mount; here
        // the "remote" folder is on the same disk, so this shows the tier's own cost).
        let folder_remote: Arc<dyn ResultStore> = Arc::new(folder.clone());
        let folder_tier = Tiered::new(
            FolderBackend::open(dir.path().join("folder-tier"))
                .expect("tier")
                .without_fsync(),
            folder_remote,
            10 << 30,
        );
        hit_latency(&folder_tier, "bench", KEYS, 1).await; // fills the tier
        let folder_tier_hit = hit_latency(&folder_tier, "bench", KEYS, reps).await;

        println!("| store operation (median per key) | small result ({KEYS} keys) | 1 MiB result ({BIG_KEYS} keys) |");
        println!("|---|---|---|");
        println!("| hit, folder (`file://`) | {folder_hit:.1} µs | {folder_big:.0} µs |");
        println!(
            "| hit through the local tier in front of S3, revalidated | {tier_hit:.0} µs ({:.2}× S3) | {tier_big:.0} µs ({:.2}× S3) |",
            tier_hit / s3_direct,
            tier_big / s3_big
        );
        println!("| hit from S3 without a local tier | {s3_direct:.0} µs | {s3_big:.0} µs |");
        println!("| first hit from S3 on loopback (fetch + fill local tier) | {first_from_s3:.0} µs | |");
        println!(
            "| hit through a local tier in front of a same-disk folder, revalidated | {folder_tier_hit:.1} µs ({:.2}× folder) | |",
            folder_tier_hit / folder_hit
        );
        drop(server);
        if hits_only {
            return;
        }

        // 1 GiB file results against dd.
        let gib: u64 = 1 << 30;
        let src = dir.path().join("src.bin");
        let before = peak_rss_mib();
        dd(&[
            "if=/dev/urandom",
            &format!("of={}", src.display()),
            "bs=8M",
            "count=128",
            "status=none",
        ]);
        let dd_write = dd(&[
            "if=/dev/zero",
            &format!("of={}", dir.path().join("dd.bin").display()),
            "bs=8M",
            "count=128",
            "conv=fsync",
            "status=none",
        ]);
        let dd_read = dd(&[&format!("if={}", src.display()), "of=/dev/null", "bs=8M", "status=none"]);
        let store = Store::new(Arc::new(FolderBackend::open(dir.path().join("files")).expect("files")));
        let k = key("file", 1);
        let start = Instant::now();
        store
            .put_file(meta(&k), src.clone(), PutMode::IfAbsent)
            .await
            .expect("put_file");
        let put = start.elapsed();
        let start = Instant::now();
        match store.get_file(&k, now_us(), dir.path()).await.expect("get_file") {
            FileLookup::Hit { .. } => {}
            other => panic!("expected a hit, got {other:?}"),
        }
        let get = start.elapsed();
        let after = peak_rss_mib();
        println!();
        println!("| 1 GiB file result, folder on the same disk | weir | dd | weir / dd |");
        println!("|---|---|---|---|");
        println!(
            "| write (hash + copy + fsync + publish) vs `dd conv=fsync` | {:.0} MiB/s | {:.0} MiB/s | {:.0} % |",
            mib_s(gib, put),
            mib_s(gib, dd_write),
            100.0 * dd_write.as_secs_f64() / put.as_secs_f64()
        );
        println!(
            "| read (verify hash, hand out the file) vs `dd` read | {:.0} MiB/s | {:.0} MiB/s | {:.0} % |",
            mib_s(gib, get),
            mib_s(gib, dd_read),
            100.0 * dd_read.as_secs_f64() / get.as_secs_f64()
        );
        println!("| peak memory of the bench process | {after} MiB (was {before} MiB before the 1 GiB runs) | | |");
        let _ = Path::new("");
    });
}
