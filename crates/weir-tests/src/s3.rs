//! Real S3-compatible servers on loopback for tests.
//!
//! - [`S3sServer`]: `s3s-fs` inside the test process on an ephemeral port (starts in under
//!   a millisecond, checks SigV4 credentials). Its conditional writes are *not* atomic under
//!   concurrency (it checks, then writes), so it is used for everything but races.
//! - [`moto_endpoint`]: a `moto_server` (`pip install 'moto[server]'`), whose
//!   `If-None-Match: *` is atomic; `scripts/test.sh` starts one and exports its address in
//!   `WEIR_TEST_MOTO_ENDPOINT`. The concurrency and lease tests run against it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const ACCESS_KEY: &str = "weir-test-access";
pub const SECRET_KEY: &str = "weir-test-secret-key-0123456789";

/// Counts the requests the server received, by S3 operation (`PutObject`, `UploadPart`…).
/// s3s asks its access check about every signed request, by operation name.
#[derive(Clone, Default)]
struct OpCounter(Arc<Mutex<HashMap<String, u64>>>);

#[async_trait::async_trait]
impl S3Access for OpCounter {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> s3s::S3Result<()> {
        // As s3s's default check: signed requests only.
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        }
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(cx.s3_op().name().to_string()).or_default() += 1;
        Ok(())
    }
}

/// An `s3s-fs` server on 127.0.0.1, stopped when dropped.
pub struct S3sServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    ops: OpCounter,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3sServer {
    /// Starts a server with one empty bucket per name in `buckets`.
    pub fn start(buckets: &[&str]) -> anyhow::Result<S3sServer> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let fs_root = root.clone();
        let ops = OpCounter::default();
        let access = ops.clone();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let service = match s3s_fs::FileSystem::new(&fs_root) {
                    Ok(fs) => {
                        let mut b = S3ServiceBuilder::new(fs);
                        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                        b.set_access(access);
                        b.build()
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(anyhow::anyhow!("s3s-fs: {e:?}")));
                        return;
                    }
                };
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr().map_err(Into::into));
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            // Small responses otherwise wait out delayed ACKs (~40 ms each).
                            let _ = socket.set_nodelay(true);
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
            });
        });
        let addr = addr_rx.recv()??;
        Ok(S3sServer {
            addr,
            root,
            ops,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// How many requests for the S3 operation `op` (e.g. `UploadPart`) the server received.
    pub fn requests(&self, op: &str) -> u64 {
        let counts = self.ops.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(op).copied().unwrap_or(0)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `WEIR_RESULTS` URL for `bucket/prefix` on this server.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}?endpoint={}&region=us-east-1", self.endpoint())
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Credentials for the servers above, as the `AWS_*` variables a child process reads.
pub fn credentials_env() -> [(&'static str, &'static str); 2] {
    [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)]
}

/// Sets the credentials in this process (for in-process stores). Tests in one binary all
/// use the same values, so the races of `set_var` are harmless.
pub fn set_credentials() {
    for (k, v) in credentials_env() {
        // SAFETY: every test of this binary sets the same values before use.
        unsafe { std::env::set_var(k, v) };
    }
}

/// The moto server's endpoint, from `WEIR_TEST_MOTO_ENDPOINT`. When
/// `WEIR_TEST_REQUIRE_MOTO=1` (as `scripts/test.sh` sets it) a missing server is an error
/// rather than a skipped test.
pub fn moto_endpoint() -> Option<String> {
    match std::env::var("WEIR_TEST_MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            crate::skip(
                "MOTO",
                "no moto server (run through scripts/test.sh, or set WEIR_TEST_MOTO_ENDPOINT)",
            );
            None
        }
    }
}

/// Makes a fresh bucket `{prefix}-{pid}-{n}` on the moto server at `endpoint` (moto accepts
/// any credentials and creates buckets on request) and returns its name.
pub fn moto_bucket(endpoint: &str, prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bucket = format!("{prefix}-{}-{n}", std::process::id());
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request as u; u.urlopen(u.Request('{endpoint}/{bucket}', method='PUT')).read()"),
        ])
        .status()
        .expect("python3 runs");
    assert!(made.success(), "could not make bucket {bucket} on {endpoint}");
    bucket
}
