//! Where things live in a store: the paths of manifests, blobs, leases and named results.

use crate::key::CacheKey;
use crate::store::StoreError;

/// Checks that a templated result key stays inside the store: a relative path of plain
/// segments (no `..`, no `.`, no empty segments, no absolute paths, no backslashes or NULs).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Config(format!("result key '{name}' {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with('/') {
        return bad("is an absolute path; result keys are relative to the store");
    }
    if name.contains('\\') || name.contains('\0') {
        return bad("contains a backslash or NUL");
    }
    for seg in name.split('/') {
        match seg {
            "" => return bad("has an empty path segment"),
            "." | ".." => return bad("would resolve outside the store ('.' or '..' segment)"),
            _ => {}
        }
    }
    Ok(())
}

/// The key whose lease serializes writers of the named result `name` (a named result has
/// no cache key of its own): BLAKE3 of `named:` and the name.
pub fn named_lease_key(name: &str) -> CacheKey {
    CacheKey(*blake3::hash(format!("named:{name}").as_bytes()).as_bytes())
}

pub(crate) fn named_data_path(name: &str) -> String {
    format!("named/{name}")
}

pub(crate) fn named_manifest_path(name: &str) -> String {
    format!("v1/named/{name}.json")
}

pub(crate) fn manifest_path(key_hex: &str) -> String {
    format!("v1/manifests/{}/{key_hex}.json", &key_hex[..2.min(key_hex.len())])
}

pub(crate) fn blob_path(blob_hex: &str) -> String {
    format!("v1/blobs/{}/{blob_hex}", blob_hex.get(..2).unwrap_or("__"))
}

pub(crate) fn lease_dir(key: &CacheKey) -> String {
    format!("v1/leases/{}/", key.to_hex())
}
