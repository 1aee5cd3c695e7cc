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
/// anything on NFS can be truncated by someone else. Reading costs one copy from the page
/// cache; on this project's test machine hashing, not reading, is the bottleneck (1 GiB:
/// ~0.15–0.35 s to read, ≥ 0.45 s to hash on two cores), and a reader thread overlapping
/// the two measured no faster, so it is one loop.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    hash_copy(std::fs::File::open(path)?, &mut io::sink())
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
