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
/// hashing is what makes verifying a large result on every hit affordable). Not mmap: mapped
/// pages would count against the process's memory, and a file truncated under a mapping
/// kills the process.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    hash_copy(std::fs::File::open(path)?, &mut io::sink())
}

/// BLAKE3 (hex) and size of a file that nobody modifies in place, such as a published blob:
/// mapped in 32 MiB windows (no copy, and at most one window resident) and hashed on all
/// cores. Used to verify large results on every hit at close to the disk's read speed.
pub fn hash_immutable_file(path: &Path) -> io::Result<(String, u64)> {
    const WINDOW: u64 = 32 << 20;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let len = WINDOW.min(size - offset) as usize;
        // SAFETY: callers pass files that are never truncated or rewritten in place: blobs
        // are published by linking a finished temp file and replaced only by renaming a new
        // file over the name, which leaves the mapped inode intact.
        let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(&file)? };
        hasher.update_rayon(&map);
        offset += len as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
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
