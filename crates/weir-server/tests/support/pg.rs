//! A throwaway PostgreSQL cluster for tests and benches (shared by both via `#[path]`).
#![allow(dead_code)] // each includer uses a different part

use std::path::PathBuf;
use std::process::Command;

/// A throwaway PostgreSQL cluster on loopback, removed when dropped.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // PostgreSQL refuses to run as root: run it as the postgres user when we are root.
        let as_pg = |args: &[&str]| {
            let mut c = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c
            } else {
                Command::new(args[0]);
                Command::new("env")
            };
            c.args(args);
            c
        };
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let initdb = bin.join("initdb");
        let ok = as_pg(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
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
        assert!(ok.status.success(), "initdb: {}", String::from_utf8_lossy(&ok.stderr));
        let pg_ctl = bin.join("pg_ctl");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("pg.log");
        let ok = as_pg(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "-o",
            &opts,
            "start",
        ])
        .output()
        .unwrap();
        assert!(
            ok.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        Some(Pg { dir, bin, port })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.path().join("data");
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let out = c.arg("-D").arg(&data).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        self.pg_ctl(&["-l", log.to_str().unwrap_or(""), "-w", "-t", "30", "-o", &opts, "start"]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Drop for Pg {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.path().join("data");
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = c
            .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
