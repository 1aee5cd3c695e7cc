//! Cache keys.
//!
//! A key is BLAKE3 (in derive-key mode, so no other BLAKE3 use in weir can collide with it)
//! over, in order and each length-prefixed:
//! the task's full path (crate, module, name), its manual `cache_version`, the hash of its
//! source when the policy includes it, then either each input's name and canonical digest
//! or the digest of a user-supplied key.
//!
//! Any change here changes every key users have stored: it needs a test, and the
//! `KEY_CONTEXT` version bumps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const KEY_CONTEXT: &str = "weir 2026-11 task result cache key v1";

/// A 32-byte cache key, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

/// A string that is not a 64-digit hex key.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a cache key (expected 64 hex digits)")]
pub struct InvalidKey(pub String);

impl FromStr for CacheKey {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, InvalidKey> {
        blake3::Hash::from_hex(s)
            .map(|h| CacheKey(*h.as_bytes()))
            .map_err(|_| InvalidKey(s.to_string()))
    }
}

/// The digest of one named input, kept in entry metadata so a miss can be explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    pub name: String,
    /// Hex BLAKE3 of the input's canonical encoding.
    pub digest: String,
}

/// Everything a key is made of.
#[derive(Clone, Debug)]
pub struct KeyParts<'a> {
    /// `crate::module::task_name`.
    pub task_path: &'a str,
    /// The task's manual `cache_version`.
    pub cache_version: &'a str,
    /// The hash of the task's source, for the `inputs+source` policy.
    pub source_hash: Option<&'a str>,
    /// `(name, canonical digest)` of each input, in declaration order.
    pub inputs: &'a [(&'a str, [u8; 32])],
    /// The digest of a user-supplied key, which then replaces the inputs.
    pub custom: Option<[u8; 32]>,
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

impl KeyParts<'_> {
    /// Computes the key.
    pub fn key(&self) -> CacheKey {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        field(&mut h, self.task_path.as_bytes());
        field(&mut h, self.cache_version.as_bytes());
        match self.source_hash {
            Some(s) => {
                h.update(b"S");
                field(&mut h, s.as_bytes());
            }
            None => {
                h.update(b"-");
            }
        }
        match self.custom {
            Some(d) => {
                h.update(b"C");
                h.update(&d);
            }
            None => {
                h.update(b"I");
                h.update(&(self.inputs.len() as u64).to_le_bytes());
                for (name, digest) in self.inputs {
                    field(&mut h, name.as_bytes());
                    h.update(digest);
                }
            }
        }
        CacheKey(*h.finalize().as_bytes())
    }

    /// The input digests as stored in entry metadata.
    pub fn input_digests(&self) -> Vec<InputDigest> {
        self.inputs
            .iter()
            .map(|(name, d)| InputDigest {
                name: (*name).to_string(),
                digest: blake3::Hash::from_bytes(*d).to_hex().to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(path: &'a str, inputs: &'a [(&'a str, [u8; 32])]) -> KeyParts<'a> {
        KeyParts {
            task_path: path,
            cache_version: "",
            source_hash: None,
            inputs,
            custom: None,
        }
    }

    #[test]
    fn every_part_changes_the_key() {
        let d = [(("xs"), [1u8; 32])];
        let base = parts("app::slow_sum", &d).key();
        assert_eq!(base, parts("app::slow_sum", &d).key(), "stable");
        assert_ne!(base, parts("app::other::slow_sum", &d).key(), "path");
        let d2 = [("xs", [2u8; 32])];
        assert_ne!(base, parts("app::slow_sum", &d2).key(), "input value");
        let d3 = [("ys", [1u8; 32])];
        assert_ne!(base, parts("app::slow_sum", &d3).key(), "input name");
        let mut v = parts("app::slow_sum", &d);
        v.cache_version = "2";
        assert_ne!(base, v.key(), "cache_version");
        let mut s = parts("app::slow_sum", &d);
        s.source_hash = Some("abc");
        assert_ne!(base, s.key(), "source hash");
        let mut c = parts("app::slow_sum", &d);
        c.custom = Some([1u8; 32]);
        assert_ne!(base, c.key(), "custom key");
    }

    #[test]
    fn boundaries_between_parts_are_unambiguous() {
        let none: [(&str, [u8; 32]); 0] = [];
        let mut a = parts("ab", &none);
        a.cache_version = "c";
        let mut b = parts("a", &none);
        b.cache_version = "bc";
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let k = parts("x", &[]).key();
        let parsed: CacheKey = k.to_hex().parse().unwrap();
        assert_eq!(k, parsed);
        assert!(
            "nothex"
                .parse::<CacheKey>()
                .unwrap_err()
                .to_string()
                .contains("not a cache key")
        );
    }
}
