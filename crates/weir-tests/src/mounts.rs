//! Shared folders on FUSE for tests: a `bindfs` mount (a stand-in for a network file
//! system), and the two mounts of one real JuiceFS volume that `scripts/test.sh` makes
//! (two clients, as two machines sharing a volume would be).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `path` is the mount point of a FUSE file system whose type contains `fstype`.
fn is_fuse_mount(path: &Path, fstype: &str) -> bool {
    let Ok(path) = path.canonicalize() else { return false };
    let path = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == path && f[2].starts_with("fuse") && f[2].contains(fstype)
        })
}

/// A bindfs mount of a temp dir, unmounted when dropped.
pub struct Bindfs {
    mount: tempfile::TempDir,
    _src: tempfile::TempDir,
}

impl Bindfs {
    /// Mounts one, or says the test skipped (failing it under `WEIR_TEST_REQUIRE_FUSE=1`).
    pub fn mount() -> Option<Bindfs> {
        if Command::new("bindfs").arg("--version").output().is_err() {
            crate::skip("FUSE", "bindfs is not installed (scripts/test.sh installs it)");
            return None;
        }
        if !Path::new("/dev/fuse").exists() {
            crate::skip("FUSE", "no /dev/fuse on this machine");
            return None;
        }
        let src = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let ok = Command::new("bindfs")
            .arg(src.path())
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(ok.success(), "bindfs failed");
        let m = Bindfs { mount, _src: src };
        assert!(
            is_fuse_mount(m.path(), ""),
            "{} is really a FUSE mount",
            m.path().display()
        );
        Some(m)
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(self.mount.path()).status();
    }
}

/// A fresh folder on one JuiceFS volume, seen through both of its mounts.
pub struct JuiceFs {
    /// The same folder through each mount (each mount is a separate JuiceFS client).
    pub dirs: [PathBuf; 2],
}

impl JuiceFs {
    /// The folder `name` (made unique) on the volume `scripts/test.sh` mounted twice and
    /// named in `WEIR_TEST_JUICEFS_MOUNTS=first:second`; or `None` after saying the test
    /// skipped (failing it under `WEIR_TEST_REQUIRE_JUICEFS=1`).
    pub fn folder(name: &str) -> Option<JuiceFs> {
        let mounts = std::env::var("WEIR_TEST_JUICEFS_MOUNTS").unwrap_or_default();
        let Some((a, b)) = mounts.split_once(':') else {
            crate::skip(
                "JUICEFS",
                "no JuiceFS mounts (scripts/test.sh makes them; or set WEIR_TEST_JUICEFS_MOUNTS=m1:m2)",
            );
            return None;
        };
        let (a, b) = (PathBuf::from(a), PathBuf::from(b));
        for m in [&a, &b] {
            assert!(is_fuse_mount(m, "juicefs"), "{} is not a JuiceFS mount", m.display());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let sub = format!("{name}-{}-{nanos}", std::process::id());
        std::fs::create_dir(a.join(&sub)).unwrap();
        Some(JuiceFs {
            dirs: [a.join(&sub), b.join(&sub)],
        })
    }
}

impl Drop for JuiceFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dirs[0]);
    }
}
