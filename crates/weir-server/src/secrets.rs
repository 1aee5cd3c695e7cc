//! The key that encrypts blocks' secret fields at rest, and the encryption itself.
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): a random 24-byte nonce per value
//! (random nonces that long never repeat in practice), and the block's type, name, version
//! and field as associated data, so a ciphertext copied into another row or field does not
//! decrypt. Stored as base64 of `nonce ‖ ciphertext`.
//!
//! The key comes from `WEIR_SECRET_KEY` (base64 of 32 bytes) or from a key file the server
//! creates on first start, mode 0600 from the moment it exists. The database keeps a
//! fingerprint of the key (a keyed BLAKE3 hash of a constant: it reveals nothing about the
//! key), so a server started with another key is refused instead of failing on each read.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The name of the key file in the server's data folder.
pub const KEY_FILE: &str = "secret.key";

/// A 32-byte key. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.fingerprint())
    }
}

/// Why a key could not be had, or a value not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{source_name} is empty: give the base64 of 32 random bytes (e.g. `openssl rand -base64 32`)")]
    Empty { source_name: String },
    #[error("{source_name} is not the base64 of 32 bytes (e.g. `openssl rand -base64 32`)")]
    Malformed { source_name: String },
    #[error("cannot {action} the secret key file {}: {source}", .path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The ciphertext does not decrypt with this key (another key, or damaged).
    #[error("a stored secret does not decrypt with the server's key (another key, or damaged data)")]
    Decrypt,
    #[error("a stored secret is not valid (damaged data)")]
    Damaged,
}

impl SecretKey {
    /// A fresh random key.
    pub fn random() -> SecretKey {
        let k = chacha20poly1305::Key::generate();
        let mut out = [0u8; 32];
        out.copy_from_slice(k.as_slice());
        SecretKey(out)
    }

    /// Parses base64 text (surrounding whitespace ignored); `source_name` says where it came
    /// from in errors (never the text itself).
    pub fn from_base64(text: &str, source_name: &str) -> Result<SecretKey, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty {
                source_name: source_name.into(),
            });
        }
        let bytes = B64.decode(text).map_err(|_| SecretError::Malformed {
            source_name: source_name.into(),
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SecretError::Malformed {
            source_name: source_name.into(),
        })?;
        Ok(SecretKey(arr))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Reads a key file.
    pub fn read_file(path: &Path) -> Result<SecretKey, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        SecretKey::from_base64(&text, &format!("the key file {}", path.display()))
    }

    /// Reads `path`, or creates it with a new random key if it does not exist. The file is
    /// created with mode 0600 (never chmod-ed after: there is no moment it is readable by
    /// others) and only if absent, so two servers starting at once agree on one key.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretError> {
        match SecretKey::read_file(path) {
            Err(SecretError::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = SecretKey::random();
        match key.write_new_file(path) {
            Ok(()) => Ok(key),
            // Another process created it first: use its key.
            Err(SecretError::File { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                SecretKey::read_file(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes this key to a new file (mode 0600, create-only), fsynced.
    pub fn write_new_file(&self, path: &Path) -> Result<(), SecretError> {
        let err = |action, source| SecretError::File {
            action,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err("create the folder of", e))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| err("create", e))?;
        f.write_all(format!("{}\n", self.to_base64()).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err("write", e))
    }

    /// Replaces the key file at `path` with this key: a new 0600 file beside it, renamed over.
    pub fn replace_file(&self, path: &Path) -> Result<(), SecretError> {
        let tmp = path.with_extension(format!("new-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        self.write_new_file(&tmp)?;
        std::fs::rename(&tmp, path).map_err(|source| SecretError::File {
            action: "replace",
            path: path.to_path_buf(),
            source,
        })
    }

    /// A short public name for this key: a keyed hash of a constant.
    pub fn fingerprint(&self) -> String {
        blake3::keyed_hash(&self.0, b"weir secret key fingerprint").to_hex()[..32].to_string()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// Encrypts `plain` bound to `aad` (where it is stored).
    pub fn encrypt(&self, plain: &[u8], aad: &[u8]) -> String {
        let nonce = XNonce::generate();
        // Encryption fails only for messages over 256 GiB; request bodies are 4 MiB at most.
        let ct = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plain, aad })
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(ct);
        B64.encode(out)
    }

    pub fn decrypt(&self, stored: &str, aad: &[u8]) -> Result<Vec<u8>, SecretError> {
        let raw = B64.decode(stored).map_err(|_| SecretError::Damaged)?;
        if raw.len() < 24 + 16 {
            return Err(SecretError::Damaged);
        }
        let (nonce, ct) = raw.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Damaged)?;
        self.cipher()
            .decrypt(&nonce, Payload { msg: ct, aad })
            .map_err(|_| SecretError::Decrypt)
    }
}

/// The associated data binding a stored secret to its place: block type, name, version and
/// field (NUL-separated; names cannot hold NUL).
pub fn aad(block_type: &str, name: &str, version: i64, path: &str) -> Vec<u8> {
    format!("weir-block\0{block_type}\0{name}\0{version}\0{path}").into_bytes()
}

/// Where the server's key comes from: `WEIR_SECRET_KEY` when set (empty is an error, never
/// "no key"), else the key file in `data_dir` (created on first start).
pub fn resolve_key(env_value: Option<String>, data_dir: &Path) -> Result<(SecretKey, KeySource), SecretError> {
    match env_value {
        Some(v) => Ok((SecretKey::from_base64(&v, "WEIR_SECRET_KEY")?, KeySource::Env)),
        None => {
            let path = data_dir.join(KEY_FILE);
            Ok((SecretKey::load_or_create(&path)?, KeySource::File(path)))
        }
    }
}

/// Where a key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bound_to_its_place_with_a_fresh_nonce_each_time() {
        let k = SecretKey::random();
        let a = k.encrypt(b"hunter2", b"secret/x/1/value");
        let b = k.encrypt(b"hunter2", b"secret/x/1/value");
        assert_ne!(a, b, "a random nonce per value");
        assert_eq!(k.decrypt(&a, b"secret/x/1/value").unwrap(), b"hunter2");
        assert!(matches!(k.decrypt(&a, b"secret/y/1/value"), Err(SecretError::Decrypt)));
        assert!(matches!(
            SecretKey::random().decrypt(&a, b"secret/x/1/value"),
            Err(SecretError::Decrypt)
        ));
        assert!(matches!(k.decrypt("AAAA", b""), Err(SecretError::Damaged)));
    }

    #[test]
    fn keys_from_text_never_echo_it() {
        assert!(matches!(
            SecretKey::from_base64("  ", "WEIR_SECRET_KEY"),
            Err(SecretError::Empty { .. })
        ));
        let e = SecretKey::from_base64("c2hvcnQ=", "WEIR_SECRET_KEY")
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEIR_SECRET_KEY") && !e.contains("c2hvcnQ="), "{e}");
        let k = SecretKey::random();
        let back = SecretKey::from_base64(&k.to_base64(), "x").unwrap();
        assert_eq!(back.fingerprint(), k.fingerprint());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_created_0600_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A permissive umask must not matter: the mode is given at creation.
        let path = dir.path().join("data").join(KEY_FILE);
        let (k1, src) = resolve_key(None, &dir.path().join("data")).unwrap();
        assert_eq!(src, KeySource::File(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, _) = resolve_key(None, &dir.path().join("data")).unwrap();
        assert_eq!(k1.fingerprint(), k2.fingerprint(), "the same key on the next start");
        let e = resolve_key(Some(String::new()), dir.path()).unwrap_err();
        assert!(matches!(e, SecretError::Empty { .. }), "{e}");
    }
}
