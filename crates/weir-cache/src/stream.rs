//! Bounded-memory helpers for large results.

use std::io::{self, Read, Write};
use std::path::Path;

/// The unit of streaming I/O and of multipart upload parts.
pub const CHUNK: usize = 8 << 20;

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// BLAKE3 (hex) and size of a file, read in chunks and hashed on all cores (BLAKE3's tree
/// hashing is what makes verifying a large result on every hit affordable).
///
/// Not mmap: mapped pages count against the process's memory, and a file truncated under a
/// mapping kills the process (SIGBUS) — and files handed to tasks, downloaded copies and
/// anything on NFS can be truncated by someone else. Instead one thread reads the next
/// chunk while this one hashes the last, so the cost is close to the slower of the two
/// rather than their sum; memory stays at three chunks.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len <= CHUNK as u64 {
        // One chunk: a reader thread would cost more than it saves.
        return hash_copy(file, &mut io::sink());
    }
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(1);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut spare = Some(vec![0u8; CHUNK]);
            loop {
                let mut buf = match spare.take() {
                    Some(b) => b,
                    None => match empty_rx.recv() {
                        Ok(b) => b,
                        // The hasher stopped (an error): nothing more to do.
                        Err(_) => return,
                    },
                };
                let read = read_full(&mut file, &mut buf);
                let done = !matches!(read, Ok(n) if n > 0);
                if full_tx.send(read.map(|n| (buf, n))).is_err() || done {
                    return;
                }
            }
        });
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Ok(read) = full_rx.recv() {
            let (buf, n) = read?;
            if n == 0 {
                break;
            }
            hasher.update_rayon(&buf[..n]);
            size += n as u64;
            // The reader may have finished already; then the buffer is simply dropped.
            let _ = empty_tx.send(buf);
        }
        Ok((hasher.finalize().to_hex().to_string(), size))
    })
}

/// Copies `input` to `out` in chunks, hashing on the way.
pub fn hash_copy(mut input: impl Read, out: &mut impl Write) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update_rayon(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.flush()?;
    Ok((hasher.finalize().to_hex().to_string(), size))
}
