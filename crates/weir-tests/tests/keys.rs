//! Cache keys as the `#[weir::task]` macro and the real compiler make them: source hashes
//! that ignore documentation, same-named tasks in different functions, golden keys of
//! whole tasks; and how byte-buffer results are stored.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use weir::CacheKey;

/// One engine per test binary, over a fresh results folder.
fn configure() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut settings = weir::Settings::from_env();
        settings.results = dir.join("results").display().to_string();
        settings.local_cache = None;
        settings.state_db = None;
        settings.refresh_cache = false;
        settings.progress = weir::ProgressMode::Never;
        weir::configure(settings).unwrap();
        dir
    })
}

fn key_of<T: Send + 'static>(call: weir::TaskCall<T>) -> CacheKey {
    call.cache_key().unwrap().unwrap()
}

// ---------- source hashes ----------

mod plain {
    #[weir::task(cache = "inputs+source")]
    pub async fn scaled(x: u64, y: u64) -> anyhow::Result<u64> {
        let factor = [3, 4];
        Ok(x * factor[0] + y)
    }
}

mod documented {
    /// Scales `x`.
    ///
    /// With a longer explanation, which is not code.
    #[weir::task(cache = "inputs+source")]
    pub async fn scaled(
        x: u64, // the input
        y: u64, // the offset
    ) -> anyhow::Result<u64> {
        /* the factors */
        let factor = [
            3, 4, // rustfmt's trailing comma
        ];
        Ok(x * factor[0] + y)
    }
}

mod edited {
    #[weir::task(cache = "inputs+source")]
    pub async fn scaled(x: u64, y: u64) -> anyhow::Result<u64> {
        let factor = [3, 4];
        Ok(x * factor[1] + y)
    }
}

#[test]
fn doc_comments_comments_and_layout_keep_the_source_hash() {
    assert_eq!(plain::scaled::SPEC.source_hash, documented::scaled::SPEC.source_hash);
    assert_ne!(plain::scaled::SPEC.source_hash, edited::scaled::SPEC.source_hash);
}

// ---------- same-named tasks nested in two functions of one module ----------

fn first(x: u64) -> weir::TaskCall<u64> {
    #[weir::task(cache = "inputs")]
    async fn helper(x: u64) -> anyhow::Result<u64> {
        Ok(x + 1)
    }
    helper(x)
}

fn second(x: u64) -> weir::TaskCall<u64> {
    #[weir::task(cache = "inputs")]
    async fn helper(x: u64) -> anyhow::Result<u64> {
        Ok(x + 2)
    }
    helper(x)
}

#[test]
fn same_named_tasks_in_two_functions_get_different_keys() {
    let (a, b) = (first(1), second(1));
    assert_eq!(
        a.spec().unwrap().path,
        b.spec().unwrap().path,
        "module_path! cannot tell them apart"
    );
    assert_ne!(key_of(a), key_of(b));
    assert_eq!(key_of(first(1)), key_of(first(1)));
}

#[tokio::test]
async fn same_named_tasks_in_two_functions_never_see_each_others_results() {
    configure();
    static N: AtomicU64 = AtomicU64::new(0);
    let x = std::process::id() as u64 * 1000 + N.fetch_add(1, Ordering::Relaxed);
    assert_eq!(first(x).await.unwrap(), x + 1);
    assert_eq!(
        second(x).await.unwrap(),
        x + 2,
        "second's helper got first's cached result"
    );
    assert_eq!(first(x).await.unwrap(), x + 1);
}

#[weir::task(cache = "inputs")]
async fn top_level(x: u64) -> anyhow::Result<u64> {
    Ok(x)
}

#[allow(non_snake_case)]
mod r#type {
    #[weir::task(cache = "inputs")]
    pub async fn r#match(x: u64) -> anyhow::Result<u64> {
        Ok(x)
    }
}

#[test]
fn module_level_tasks_keep_their_path_as_key_path() {
    let spec = &top_level::SPEC;
    assert_eq!(spec.path, "keys::top_level");
    assert_eq!((spec.key_path)(), spec.path);
    let raw = &r#type::r#match::SPEC;
    assert_eq!((raw.key_path)(), raw.path);
    let nested = first(1).spec().unwrap();
    assert_eq!((nested.key_path)(), "keys::helper@keys::first::helper");
}

// ---------- same-named tasks in sibling blocks or closures of one function ----------

/// Both `twin`s have the path `keys::twin@keys::siblings::twin`: the compiler's `type_name`
/// does not name blocks, and a key must not hold line numbers (they move with every edit).
fn siblings(which: u8, x: u64) -> weir::TaskCall<u64> {
    if which == 0 {
        #[weir::task(cache = "inputs")]
        async fn twin(x: u64) -> anyhow::Result<u64> {
            Ok(x + 10)
        }
        twin(x)
    } else {
        #[weir::task(cache = "inputs")]
        async fn twin(x: u64) -> anyhow::Result<u64> {
            Ok(x + 20)
        }
        twin(x)
    }
}

#[tokio::test]
async fn a_second_task_with_the_same_key_path_is_refused_not_given_the_firsts_results() {
    configure();
    let x = std::process::id() as u64 * 1000 + 500;
    assert_eq!(siblings(0, x).await.unwrap(), x + 10);
    let err = siblings(1, x)
        .await
        .expect_err("the second twin must not run under the first's keys");
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(msg.contains("keys::twin@keys::siblings::twin"), "{msg}");
    assert!(msg.contains("rename"), "{msg}");
    // The first definition keeps working, the second keeps being refused.
    assert_eq!(siblings(0, x + 1).await.unwrap(), x + 11);
    assert!(siblings(1, x + 1).await.is_err());
}

type MakeCall = Box<dyn Fn(u64) -> weir::TaskCall<u64> + Send + Sync>;

/// Two closures of one function: `type_name` writes both as `{{closure}}`.
fn closures() -> [MakeCall; 2] {
    let a = |x: u64| {
        #[weir::task(cache = "inputs")]
        async fn inner(x: u64) -> anyhow::Result<u64> {
            Ok(x + 1)
        }
        inner(x)
    };
    let b = |x: u64| {
        #[weir::task(cache = "inputs")]
        async fn inner(x: u64) -> anyhow::Result<u64> {
            Ok(x + 2)
        }
        inner(x)
    };
    [Box::new(a), Box::new(b)]
}

#[test]
fn same_named_tasks_in_two_closures_racing_for_one_key_path_one_wins_for_good() {
    let makers = closures();
    assert_eq!(
        (makers[0](1).spec().unwrap().key_path)(),
        (makers[1](1).spec().unwrap().key_path)(),
        "the closures' tasks are expected to share a key path"
    );
    // 8 threads, half per definition, all asking for a key at once.
    let threads = 8;
    let barrier = std::sync::Barrier::new(threads);
    let keyed: Vec<(usize, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (makers, barrier) = (&makers, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (i % 2, makers[i % 2](7).cache_key().unwrap().is_ok())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = |which: usize| keyed.iter().filter(|(w, ok)| *w == which && *ok).count();
    let (a, b) = (ok(0), ok(1));
    assert!(
        (a, b) == (threads / 2, 0) || (a, b) == (0, threads / 2),
        "exactly one definition must own the key path: {keyed:?}"
    );
    let winner = if a > 0 { 0 } else { 1 };
    let err = match makers[1 - winner](7).cache_key().unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the loser got a key later"),
    };
    assert!(err.contains("keys::inner@keys::closures::{{closure}}::inner"), "{err}");
    assert!(makers[winner](8).cache_key().unwrap().is_ok());
}

// ---------- golden keys of whole tasks ----------

#[derive(serde::Serialize)]
struct Query {
    table: String,
    limit: Option<u32>,
}

/// Fixed source, fixed inputs: its key must never change (see crates/weir-cache/tests/golden.rs).
#[weir::task(cache = "inputs+source", cache_version = "7")]
async fn golden(query: Query, weights: Vec<f64>) -> anyhow::Result<usize> {
    Ok(query.table.len() + weights.len())
}

#[weir::task(cache = "inputs")]
async fn golden_inputs(query: Query, weights: Vec<f64>) -> anyhow::Result<usize> {
    Ok(query.table.len() + weights.len())
}

#[test]
fn keys_of_whole_tasks_do_not_change() {
    let q = || Query {
        table: "events".into(),
        limit: Some(10),
    };
    assert_eq!(
        golden::SPEC.source_hash,
        "ea49ae16978b4534c000172867975b48d224d45bc4c9faf120e9dbe074097793"
    );
    assert_eq!(
        key_of(golden(q(), vec![0.5, -0.0])).to_hex(),
        "27b2fd75d3f41aae0d64b76f8a505bc86392ed39b52194ebe6868d0232e7a713"
    );
    assert_eq!(
        key_of(golden_inputs(q(), vec![0.5, -0.0])).to_hex(),
        "80ef9c5efc4a6a590fd54e07dfa2ec58f3631bfaf244b987f19db35ca510b26a"
    );
}

// ---------- byte-buffer results ----------

static NOISE_RUNS: AtomicU64 = AtomicU64::new(0);

fn noise_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[weir::task(cache = "inputs")]
fn noise(len: usize, seed: u64) -> anyhow::Result<Vec<u8>> {
    NOISE_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(noise_bytes(len, seed))
}

#[weir::task(cache = "inputs")]
fn noise_bytes_crate(len: usize, seed: u64) -> anyhow::Result<bytes::Bytes> {
    Ok(noise_bytes(len, seed).into())
}

#[weir::task(cache = "inputs")]
fn noise_byte_buf(len: usize, seed: u64) -> anyhow::Result<serde_bytes::ByteBuf> {
    Ok(serde_bytes::ByteBuf::from(noise_bytes(len, seed)))
}

/// The manifest the store holds for `key`.
async fn stored(key: CacheKey) -> weir_cache::EntryMeta {
    let url = configure().join("results").display().to_string();
    let store = weir_cache::open(&url, &weir_cache::OpenOptions::default()).unwrap();
    store.entry(&key).await.unwrap().expect("the result was published")
}

#[tokio::test]
async fn byte_buffer_results_are_stored_as_the_bytes_themselves() {
    configure();
    let seed = std::process::id() as u64 ^ 0x5eed;
    let len = 1 << 20;
    let want = noise_bytes(len, seed);

    let before = NOISE_RUNS.load(Ordering::SeqCst);
    assert_eq!(noise(len, seed).await.unwrap(), want);
    assert_eq!(noise(len, seed).await.unwrap(), want, "the hit gives the same bytes");
    assert_eq!(
        NOISE_RUNS.load(Ordering::SeqCst) - before,
        1,
        "the second call is a hit"
    );
    let meta = stored(key_of(noise(len, seed))).await;
    assert_eq!(meta.serializer, "raw");
    assert_eq!(meta.raw_size, len as u64, "stored as {} bytes", meta.raw_size);

    let b = noise_bytes_crate(len, seed).await.unwrap();
    assert_eq!(b, want);
    assert_eq!(noise_bytes_crate(len, seed).await.unwrap(), want);
    let meta = stored(key_of(noise_bytes_crate(len, seed))).await;
    assert_eq!((meta.serializer.as_str(), meta.raw_size), ("raw", len as u64));

    assert_eq!(noise_byte_buf(len, seed).await.unwrap().into_vec(), want);
    assert_eq!(noise_byte_buf(len, seed).await.unwrap().into_vec(), want);
    let meta = stored(key_of(noise_byte_buf(len, seed))).await;
    assert_eq!((meta.serializer.as_str(), meta.raw_size), ("raw", len as u64));
}
