//! Keying a task call whose input is a 1 GiB file (`weir::Artifact`): the first call hashes
//! the file; calls after it find the hash remembered for that file version.
//!
//! ```text
//! cargo bench -p weir-tests --bench file_input      # BENCH_DIR picks the disk (default /var/tmp)
//! ```
//! The file is in the page cache (it was just written), so the first call measures hashing,
//! not the disk; `dd` to /dev/null of the same file is printed beside it.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: u64 = 1 << 30;

#[weir::task(cache = "inputs")]
async fn consume(file: weir::Artifact) -> anyhow::Result<u64> {
    Ok(file.len()?)
}

/// Time to build one call (which computes its key), and that the key came out.
fn key_once(path: &Path) -> Duration {
    let start = Instant::now();
    let call = consume(weir::Artifact::from_path(path));
    let key = call.cache_key().expect("cached task").expect("keyed");
    let took = start.elapsed();
    std::hint::black_box(key);
    took
}

fn reads() -> u64 {
    weir_cache::filehash::shared().reads()
}

fn main() {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let path = dir.path().join("input.bin");
    {
        let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).expect("create"));
        let chunk: Vec<u8> = (0..(8u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..(SIZE / chunk.len() as u64) {
            f.write_all(&chunk).expect("write");
        }
        f.flush().expect("flush");
    }
    let racy = key_once(&path);
    let racy_reads = reads();
    // A hash taken within RACY_MARGIN of the file's last change is not remembered; wait it out
    // so the next call is an ordinary first call on a settled file.
    std::thread::sleep(weir_cache::filehash::RACY_MARGIN + Duration::from_millis(200));

    let before = reads();
    let first = key_once(&path);
    let first_reads = reads() - before;
    let before = reads();
    let mut again: Vec<Duration> = (0..1000).map(|_| key_once(&path)).collect();
    let again_reads = reads() - before;
    again.sort();
    let median = again[again.len() / 2];

    let start = Instant::now();
    let out = Command::new("dd")
        .args([
            &format!("if={}", path.display()),
            "of=/dev/null",
            "bs=8M",
            "status=none",
        ])
        .output()
        .expect("dd");
    assert!(out.status.success(), "dd failed");
    let dd = start.elapsed();

    let mibs = |d: Duration| (SIZE >> 20) as f64 / d.as_secs_f64();
    println!("| keying a call with a 1 GiB file input | time | reads of the file |");
    println!("|---|---|---|");
    println!(
        "| first call (hash the file) | {:.0} ms ({:.0} MiB/s) | {first_reads} |",
        first.as_secs_f64() * 1e3,
        mibs(first)
    );
    println!(
        "| again, file unchanged (remembered hash), median of 1000 | {:.1} µs | {again_reads} in 1000 calls |",
        median.as_secs_f64() * 1e6
    );
    println!(
        "| a call within {} s of the file's last write (not remembered) | {:.0} ms | {racy_reads} |",
        weir_cache::filehash::RACY_MARGIN.as_secs(),
        racy.as_secs_f64() * 1e3
    );
    println!(
        "| for scale: `dd bs=8M` of the file to /dev/null | {:.0} ms ({:.0} MiB/s) | |",
        dd.as_secs_f64() * 1e3,
        mibs(dd)
    );
    assert_eq!((first_reads, again_reads), (1, 0), "the hash cache did not work");
}
