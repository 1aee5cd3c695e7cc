//! What every result store backend must do, as one suite run against each backend
//! (folder, FUSE mount, JuiceFS, memory, s3s-fs, moto), so no backend can quietly differ.

use weir_cache::backend::WriteMode;
use weir_cache::{
    CacheKey, Compression, EntryMeta, GcOptions, KeyParts, Lease, LeaseOutcome, Lookup, PutMode, PutOutcome, Renewal,
    ResultStore, Store,
};

/// A distinct key per `n` (and per suite run, through `salt`).
pub fn key(salt: &str, n: u64) -> CacheKey {
    let inputs = [("n", *blake3::hash(&n.to_le_bytes()).as_bytes())];
    KeyParts {
        task_path: salt,
        cache_version: "",
        source_hash: None,
        inputs: &inputs,
        custom: None,
    }
    .key()
}

pub fn meta(k: &CacheKey) -> EntryMeta {
    EntryMeta {
        format: 1,
        key: k.to_hex(),
        task: "suite::task".into(),
        flow: Some("suite".into()),
        flow_run_id: None,
        task_run_id: "r".into(),
        serializer: "json".into(),
        created_at: 1_000,
        expires_at: None,
        size: 0,
        raw_size: 0,
        compression: None,
        blob: String::new(),
        cache_version: String::new(),
        source_hash: None,
        code_hash: None,
        inputs: vec![],
        files: Vec::new(),
        inline: None,
    }
}

pub async fn hit_bytes(store: &dyn ResultStore, k: &CacheKey) -> Vec<u8> {
    match store.get(k, 2_000).await.expect("get") {
        Lookup::Hit { bytes, .. } => bytes,
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// Put, get, first writer wins, replace.
pub async fn round_trip(store: &Store) {
    let k = key("round_trip", 1);
    assert!(matches!(store.get(&k, 0).await.unwrap(), Lookup::Miss));
    let (o, stored) = store.put(meta(&k), b"41".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(o, PutOutcome::Published);
    assert_eq!(stored.size, 2);
    assert_eq!(stored.blob, blake3::hash(b"41").to_hex().to_string());
    let (o, _) = store.put(meta(&k), b"42".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(
        o,
        PutOutcome::AlreadyPresent,
        "a second writer does not replace the first"
    );
    assert_eq!(hit_bytes(store, &k).await, b"41");
    store.put(meta(&k), b"43".to_vec(), PutMode::Replace).await.unwrap();
    assert_eq!(hit_bytes(store, &k).await, b"43");
    assert_eq!(store.entry(&k).await.unwrap().unwrap().key, k.to_hex());
}

/// Damaged data is never returned; a manifest whose blob is missing is corrupt (so it is
/// replaced, not kept); a replace repairs. Small results live in their manifest and are
/// checked the same way.
pub async fn damage(store: &Store) {
    let b = store.backend().clone();
    let k = key("damage", 1);
    // Larger than INLINE_MAX: stored as a blob.
    let big = vec![7u8; weir_cache::store::INLINE_MAX + 1];
    let (_, m) = store.put(meta(&k), big.clone(), PutMode::IfAbsent).await.unwrap();
    let blob = store.blob_path(&m.blob);

    let mut changed = big.clone();
    changed[10] = 8;
    b.write(&blob, changed, WriteMode::Overwrite).await.unwrap();
    assert!(
        matches!(store.get(&k, 0).await.unwrap(), Lookup::Corrupt { .. }),
        "checksum mismatch"
    );

    b.write(&blob, big[..100].to_vec(), WriteMode::Overwrite).await.unwrap();
    assert!(
        matches!(store.get(&k, 0).await.unwrap(), Lookup::Corrupt { .. }),
        "truncated blob"
    );

    b.delete(&blob).await.unwrap();
    assert!(
        matches!(store.get(&k, 0).await.unwrap(), Lookup::Corrupt { .. }),
        "manifest without data"
    );

    store.put(meta(&k), big.clone(), PutMode::Replace).await.unwrap();
    assert_eq!(hit_bytes(store, &k).await, big);

    b.write(&store.manifest_path(&k), b"{ not json".to_vec(), WriteMode::Overwrite)
        .await
        .unwrap();
    assert!(
        matches!(store.get(&k, 0).await.unwrap(), Lookup::Corrupt { .. }),
        "garbage manifest"
    );

    // A small result: inside its manifest, no blob; a changed byte in it is noticed.
    let small = key("damage", 2);
    let (_, m) = store
        .put(meta(&small), b"hello".to_vec(), PutMode::IfAbsent)
        .await
        .unwrap();
    assert!(
        b.read(&store.blob_path(&m.blob)).await.unwrap().is_none(),
        "no blob file"
    );
    assert_eq!(hit_bytes(store, &small).await, b"hello");
    let path = store.manifest_path(&small);
    let raw = String::from_utf8(b.read(&path).await.unwrap().unwrap()).unwrap();
    assert!(!raw.contains('\n'), "compact JSON: {raw}");
    let tampered = raw.replace("aGVsbG8=", "aGVsbE8=");
    assert_ne!(raw, tampered, "the inline bytes are base64 in the manifest: {raw}");
    b.write(&path, tampered.into_bytes(), WriteMode::Overwrite)
        .await
        .unwrap();
    assert!(
        matches!(store.get(&small, 0).await.unwrap(), Lookup::Corrupt { .. }),
        "changed inline bytes"
    );
}

/// Expiry is decided by the caller's clock.
pub async fn expiry(store: &Store) {
    let k = key("expiry", 1);
    let mut m = meta(&k);
    m.expires_at = Some(100);
    store.put(m, b"1".to_vec(), PutMode::IfAbsent).await.unwrap();
    assert!(matches!(store.get(&k, 99).await.unwrap(), Lookup::Hit { .. }));
    assert!(matches!(store.get(&k, 100).await.unwrap(), Lookup::Expired { .. }));
}

/// A result too large to live inside its manifest (so it is stored as a blob).
pub fn large(tag: &[u8]) -> Vec<u8> {
    let mut v = tag.to_vec();
    v.resize(weir_cache::store::INLINE_MAX + 1, b'.');
    v
}

/// Identical results are stored once.
pub async fn dedup(store: &Store) {
    let (a, b) = (key("dedup", 1), key("dedup", 2));
    let (_, ma) = store.put(meta(&a), large(b"same"), PutMode::IfAbsent).await.unwrap();
    let (_, mb) = store.put(meta(&b), large(b"same"), PutMode::IfAbsent).await.unwrap();
    assert_eq!(ma.blob, mb.blob);
    let blobs = store.backend().list("v1/blobs/").await.unwrap();
    assert_eq!(blobs.iter().filter(|o| o.path.ends_with(&ma.blob)).count(), 1);
}

/// zstd shrinks compressible results and reads back exactly.
pub async fn compression(store: &Store) {
    let zstore = store.clone().with_compression(Compression::Zstd);
    let k = key("compression", 1);
    let data = "weir ".repeat(10_000).into_bytes();
    let (_, m) = zstore.put(meta(&k), data.clone(), PutMode::IfAbsent).await.unwrap();
    assert_eq!(m.compression.as_deref(), Some("zstd"));
    assert!(
        m.size < data.len() as u64 / 10,
        "{} bytes stored for {}",
        m.size,
        data.len()
    );
    assert_eq!(m.raw_size, data.len() as u64);
    // Any store reads it, compressed or not.
    assert_eq!(hit_bytes(store, &k).await, data);
}

/// ls, rm, stats, gc.
pub async fn maintenance(store: &Store) {
    // Real time: gc compares it with the files' modification times.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        + 1_000_000;
    let old = key("maintenance", 1);
    let expired = key("maintenance", 2);
    let live = key("maintenance", 3);
    let mut m = meta(&old);
    m.created_at = now - 8 * 86_400_000_000;
    store.put(m, large(b"old"), PutMode::IfAbsent).await.unwrap();
    let mut m = meta(&expired);
    m.created_at = now - 1_000;
    m.expires_at = Some(now - 1);
    store.put(m, large(b"expired"), PutMode::IfAbsent).await.unwrap();
    let mut m = meta(&live);
    m.created_at = now - 1_000;
    store.put(m, large(b"live"), PutMode::IfAbsent).await.unwrap();
    let gone = key("maintenance", 4);
    store.put(meta(&gone), large(b"gone"), PutMode::IfAbsent).await.unwrap();
    assert!(store.remove(&gone).await.unwrap());
    assert!(!store.remove(&gone).await.unwrap());

    let mine = |es: Vec<EntryMeta>| -> Vec<String> {
        let ours = [old.to_hex(), expired.to_hex(), live.to_hex(), gone.to_hex()];
        es.into_iter().map(|e| e.key).filter(|k| ours.contains(k)).collect()
    };
    assert_eq!(mine(store.entries().await.unwrap()).len(), 3);

    let opts = GcOptions {
        older_than_micros: Some(7 * 86_400_000_000),
        max_size: None,
        dry_run: true,
        grace_micros: 0,
    };
    // Later than the writes by the shortest grace object storage gives blobs (it cannot
    // refresh a reused blob in place), so unreferenced blobs are collectable everywhere.
    let later = now + weir_cache::MIN_REUPLOAD_GRACE_MICROS;
    let dry = store.gc(opts.clone(), later).await.unwrap();
    assert!(dry.entries_removed >= 2);
    assert_eq!(
        mine(store.entries().await.unwrap()).len(),
        3,
        "a dry run removes nothing"
    );

    store.gc(GcOptions { dry_run: false, ..opts }, later).await.unwrap();
    assert_eq!(mine(store.entries().await.unwrap()), vec![live.to_hex()]);
    assert_eq!(hit_bytes(store, &live).await, large(b"live"));
    let blobs: Vec<String> = store
        .backend()
        .list("v1/blobs/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect();
    for gone_blob in [b"old".as_slice(), b"expired", b"gone"] {
        let h = blake3::hash(&large(gone_blob)).to_hex().to_string();
        assert!(
            !blobs.iter().any(|p| p.ends_with(&h)),
            "unreferenced blob {h} was collected"
        );
    }
    let stats = store.stats(now).await.unwrap();
    assert!(stats.entries >= 1 && stats.bytes >= 4);
}

/// Leases: exclusive, released, taken over once expired.
pub async fn leases(store: &Store) {
    let k = key("leases", 1);
    let a = match store.try_lease(&k, "a", 1_000, 0).await.unwrap() {
        LeaseOutcome::Acquired(l) => l,
        other => panic!("expected the lease, got {other:?}"),
    };
    match store.try_lease(&k, "b", 1_000, 10).await.unwrap() {
        LeaseOutcome::Held(rec) => assert_eq!(rec.holder, "a"),
        other => panic!("a live lease is exclusive, got {other:?}"),
    }
    store.renew(&a, 1_000, 900).await.unwrap();
    assert!(
        matches!(
            store.try_lease(&k, "b", 1_000, 1_500).await.unwrap(),
            LeaseOutcome::Held(_)
        ),
        "renewed"
    );
    // Expired: the next asker takes over.
    let b = match store.try_lease(&k, "b", 1_000, 5_000).await.unwrap() {
        LeaseOutcome::Acquired(l) => l,
        other => panic!("an expired lease is taken over, got {other:?}"),
    };
    assert!(matches!(store.try_lease(&k, "c", 1_000, 5_001).await.unwrap(), LeaseOutcome::Held(r) if r.holder == "b"));
    store.release(&b).await.unwrap();
    assert!(
        matches!(
            store.try_lease(&k, "c", 1_000, 5_002).await.unwrap(),
            LeaseOutcome::Acquired(_)
        ),
        "released"
    );
}

/// A lease given back right after it was taken is gone (a run that fails at once must not
/// leave its waiters blocked until the lease expires), and one renewed at once is renewed.
/// (On FUSE and network filesystems a file's attributes are cached for a while after it is
/// created, so what identifies a file must not be read from them.)
pub async fn quick_release(store: &Store) {
    let k = key("quick_release", 1);
    for round in 0..5 {
        let a = acquired(store.try_lease(&k, "a", 1_000_000, round).await.unwrap());
        assert!(store.release(&a).await.unwrap(), "released at once (round {round})");
        let b = acquired(store.try_lease(&k, "b", 1_000_000, round).await.unwrap());
        let b = match store.renew(&b, 1_000_000, round).await.unwrap() {
            Renewal::Renewed(l) => l,
            other => panic!("renewed at once (round {round}), got {other:?}"),
        };
        assert!(
            store.release(&b).await.unwrap(),
            "released after a renewal (round {round})"
        );
    }
}

fn acquired(outcome: LeaseOutcome) -> Lease {
    match outcome {
        LeaseOutcome::Acquired(l) => l,
        other => panic!("expected the lease, got {other:?}"),
    }
}

async fn holder_of(store: &Store, k: &CacheKey, now: i64) -> Option<String> {
    match store.try_lease(k, "probe", 1_000, now).await.unwrap() {
        LeaseOutcome::Held(rec) => Some(rec.holder),
        // Asking took it: give it back so the caller's view of the store is unchanged.
        LeaseOutcome::Acquired(l) => {
            store.release(&l).await.unwrap();
            None
        }
    }
}

/// A holder that stalled past its lease's expiry, while another took the key over, can
/// neither extend nor delete the new holder's lease, even after the key's generations
/// started again from scratch (ABA).
pub async fn stalled_holder(store: &Store) {
    let k = key("stalled_holder", 1);
    let a = acquired(store.try_lease(&k, "a", 1_000, 0).await.unwrap());
    // `a` stalls; its lease expires and `b` takes over.
    let b = acquired(store.try_lease(&k, "b", 1_000, 5_000).await.unwrap());
    // `a` wakes up: its renewal finds the lease lost, and leaves b's alone.
    match store.renew(&a, 1_000, 5_001).await.unwrap() {
        Renewal::Lost(Some(rec)) => assert_eq!(rec.holder, "b"),
        other => panic!("a stalled holder's renewal must fail, got {other:?}"),
    }
    assert!(!store.release(&a).await.unwrap(), "a stalled holder releases nothing");
    assert_eq!(holder_of(store, &k, 5_002).await.as_deref(), Some("b"));
    // `b` renews and releases normally…
    let b = match store.renew(&b, 1_000, 5_500).await.unwrap() {
        Renewal::Renewed(l) => l,
        other => panic!("the holder renews, got {other:?}"),
    };
    assert_eq!(holder_of(store, &k, 6_000).await.as_deref(), Some("b"), "renewed");
    assert!(store.release(&b).await.unwrap());
    // …so the key's generations start again, and `c` gets the very generation `a` had.
    let c = acquired(store.try_lease(&k, "c", 1_000, 7_000).await.unwrap());
    assert!(
        matches!(store.renew(&a, 1_000, 7_001).await.unwrap(), Renewal::Lost(_)),
        "an old lease is not mistaken for a new one with the same generation"
    );
    assert!(!store.release(&a).await.unwrap());
    assert_eq!(holder_of(store, &k, 7_002).await.as_deref(), Some("c"));
    assert!(
        !store.release(&b).await.unwrap(),
        "a released lease is not released twice"
    );
    assert_eq!(holder_of(store, &k, 7_003).await.as_deref(), Some("c"));
    assert!(store.release(&c).await.unwrap());
    assert_eq!(holder_of(store, &k, 7_004).await, None, "released");
}

/// How many writers race for one key.
pub const RACE_WRITERS: usize = 16;
/// How many times they race on a fast store: one round can let a broken mechanism win by
/// luck (a check-then-rename "create if absent" on a local disk passed one round in three,
/// and never passed 64).
pub const RACE_ROUNDS: u64 = 64;
/// Rounds on a local disk, where one put takes microseconds: a check-then-rename placed
/// right before the rename (the narrowest window) passed 64 rounds in two runs of four on a
/// loaded machine, and no run of 256 (each failed within 60 rounds).
pub const RACE_ROUNDS_LOCAL: u64 = 256;

/// What one writer saw in one round of a race.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaceOutcome {
    pub writer: usize,
    /// Whether this writer's create-if-absent won (`Published`, or the lease `Acquired`).
    pub won: bool,
    /// What the writer read back right after: the stored bytes, or the lease's holder.
    pub seen: String,
}

/// The bytes writer `w` tries to store in round `r`: each writer's differ, so a loser that
/// adopted the winner's result is told apart from one that kept its own.
pub fn race_bytes(w: usize, r: u64) -> String {
    format!("writer-{w}-round-{r}")
}

/// The holder name writer `w` asks for a lease with.
pub fn race_holder(w: usize) -> String {
    format!("holder-{w}")
}

/// Writer `w`'s create-if-absent of `k`, then what it reads back.
pub async fn race_put(store: &dyn ResultStore, k: &CacheKey, w: usize, r: u64) -> RaceOutcome {
    let (o, _) = store
        .put(meta(k), race_bytes(w, r).into_bytes(), PutMode::IfAbsent)
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&hit_bytes(store, k).await).into_owned();
    RaceOutcome {
        writer: w,
        won: o == PutOutcome::Published,
        seen,
    }
}

/// Writer `w` asks for the lease of `k`; `seen` is the holder it got it from (itself or not).
pub async fn race_lease(store: &dyn ResultStore, k: &CacheKey, w: usize) -> RaceOutcome {
    let me = race_holder(w);
    match store.try_lease(k, &me, 3_600_000_000, 0).await.unwrap() {
        LeaseOutcome::Acquired(_) => RaceOutcome {
            writer: w,
            won: true,
            seen: me,
        },
        LeaseOutcome::Held(rec) => RaceOutcome {
            writer: w,
            won: false,
            seen: rec.holder,
        },
    }
}

/// One round of a race, from every writer: exactly one won, and every writer (the winner
/// too) saw the winner's value (`expected(winner)`).
pub fn check_round(what: &str, round: u64, outcomes: &[RaceOutcome], expected: impl Fn(usize) -> String) {
    let winners: Vec<usize> = outcomes.iter().filter(|o| o.won).map(|o| o.writer).collect();
    assert_eq!(
        winners.len(),
        1,
        "{what}, round {round}: exactly one of {} concurrent writers wins, not {winners:?}",
        outcomes.len()
    );
    let want = expected(winners[0]);
    for o in outcomes {
        assert_eq!(
            o.seen, want,
            "{what}, round {round}: writer {} sees the winner's value",
            o.writer
        );
    }
}

/// A salt no earlier run used, so races on a shared store start from absent keys.
pub fn fresh_salt(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{what}-{}-{nanos}", std::process::id())
}

/// Concurrent create-if-absent and lease requests from [`RACE_WRITERS`] OS threads, released
/// together by a barrier, each with its own runtime and its own store (`open(writer)`, so
/// writers can use different mounts or clients of one store), for `rounds` rounds:
/// exactly one writer wins each round and everyone reads the winner's result. Only for
/// backends whose conditional writes are atomic (not s3s-fs).
pub fn races(rounds: u64, open: impl Fn(usize) -> Store + Sync) {
    let salt = fresh_salt("races");
    let barrier = std::sync::Barrier::new(RACE_WRITERS);
    // Per writer: its outcomes per round, and when its puts started and ended.
    type Spans = Vec<(std::time::Instant, std::time::Instant)>;
    let per_writer: Vec<(Vec<RaceOutcome>, Vec<RaceOutcome>, Spans)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..RACE_WRITERS)
            .map(|w| {
                let (open, barrier, salt) = (&open, &barrier, &salt);
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let store = open(w);
                    // Connect (or warm the directory cache) before the race, not during it.
                    rt.block_on(store.get(&key("warm-up", w as u64), 0)).unwrap();
                    let (mut puts, mut leases, mut spans) = (Vec::new(), Vec::new(), Vec::new());
                    // A writer that fails still meets the others at the barrier (or they
                    // would wait forever); its failure shows in its outcome.
                    let run = |f: &mut dyn FnMut() -> RaceOutcome| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| RaceOutcome {
                            writer: w,
                            won: false,
                            seen: format!("(failed: {})", panic_text(&p)),
                        })
                    };
                    for r in 0..rounds {
                        barrier.wait();
                        let start = std::time::Instant::now();
                        puts.push(run(&mut || rt.block_on(race_put(&store, &key(salt, r), w, r))));
                        spans.push((start, std::time::Instant::now()));
                        barrier.wait();
                        let lease_key = key(&format!("{salt}-lease"), r);
                        leases.push(run(&mut || rt.block_on(race_lease(&store, &lease_key, w))));
                    }
                    (puts, leases, spans)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut overlapped = 0;
    for r in 0..rounds as usize {
        let puts: Vec<RaceOutcome> = per_writer.iter().map(|(p, _, _)| p[r].clone()).collect();
        check_round("put if absent", r as u64, &puts, |w| race_bytes(w, r as u64));
        let leases: Vec<RaceOutcome> = per_writer.iter().map(|(_, l, _)| l[r].clone()).collect();
        check_round("lease", r as u64, &leases, race_holder);
        let spans: Vec<_> = per_writer.iter().map(|(_, _, s)| s[r]).collect();
        overlapped = overlapped.max(most_at_once(&spans));
    }
    // The writers really ran at the same time (not one after another).
    assert!(overlapped >= 2, "the writers' puts never overlapped");
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The most spans in progress at one instant.
pub fn most_at_once<T: Ord + Copy>(spans: &[(T, T)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap_or(0)
}

/// Everything but races.
pub async fn all(store: &Store) {
    round_trip(store).await;
    damage(store).await;
    expiry(store).await;
    dedup(store).await;
    compression(store).await;
    maintenance(store).await;
    leases(store).await;
    stalled_holder(store).await;
    quick_release(store).await;
}
