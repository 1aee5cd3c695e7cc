//! A throwaway PostgreSQL cluster for tests and benches (shared by both via `#[path]`).
#![allow(dead_code)] // each includer uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A throwaway PostgreSQL cluster on loopback, removed when dropped.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// PostgreSQL refuses to run as root: run its programs as the postgres user when we are root.
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(what: &str, out: Output) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pg {
    pub fn start() -> Option<Pg> {
        let bin =
            PathBuf::from(std::env::var("WEIR_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()));
        if !bin.join("initdb").exists() {
            assert!(
                std::env::var("WEIR_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "WEIR_TEST_REQUIRE_POSTGRES=1 but {} has no initdb",
                bin.display()
            );
            eprintln!(
                "skipping PostgreSQL: no binaries in {} (scripts/test.sh installs them)",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Owned by postgres, so the cluster can live in it when we run as root.
        let _ = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Pg { dir, bin, port };
        let initdb = as_postgres(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        check("initdb", initdb);
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn stop(&self) {
        check("pg_ctl stop", self.pg_ctl(&["-m", "fast", "-w", "stop"]));
    }

    /// Starts the cluster (again, after [`Pg::stop`]) on its port, listening on loopback only.
    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let log = log.to_str().unwrap_or("pg.log");
        check(
            "pg_ctl start",
            self.pg_ctl(&["-l", log, "-w", "-t", "30", "-o", &opts, "start"]),
        );
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}
