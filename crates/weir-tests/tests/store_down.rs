//! A result store that goes away (a real moto server, killed): cached tasks compute without
//! the cache at once instead of spending the lease retries on a store that already failed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weir::State;
use weir_state::StateDb;
use weir_types::CacheStatus;

static RAN: AtomicU32 = AtomicU32::new(0);

#[weir::task(cache = "inputs")]
async fn doubled(x: u64) -> anyhow::Result<u64> {
    RAN.fetch_add(1, Ordering::SeqCst);
    Ok(x * 2)
}

#[weir::flow]
async fn doubled_flow(x: u64) -> anyhow::Result<u64> {
    Ok(doubled(x).await?)
}

/// A moto server of this test's own (the shared one must not be killed).
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts moto and waits until it answers (or gives up after a minute: a slow machine).
fn start_moto() -> Option<(Moto, String)> {
    let has_moto = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_moto {
        weir_tests::skip("MOTO", "python3 cannot import moto.server (pip install 'moto[server]')");
        return None;
    }
    let port = free_port().to_string();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
        assert!(Instant::now() < until, "moto did not start on {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((moto, endpoint))
}

#[test]
fn a_store_that_went_down_is_skipped_at_once() {
    let Some((mut moto, endpoint)) = start_moto() else {
        return;
    };
    let bucket = weir_tests::s3::moto_bucket(&endpoint, "down");
    weir_tests::s3::set_credentials();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("weir.db");
    let mut settings = weir::Settings::from_env();
    settings.results = format!("s3://{bucket}/results?endpoint={endpoint}");
    settings.local_cache = None;
    settings.state_db = Some(db.clone());
    settings.refresh_cache = false;
    settings.log_filter = "warn".into();
    settings.progress = weir::ProgressMode::Never;
    weir::configure(settings).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The store works: a miss, then a hit.
    assert_eq!(rt.block_on(doubled_flow(1)).unwrap(), 2);
    assert_eq!(rt.block_on(doubled_flow(1)).unwrap(), 2);
    assert_eq!(RAN.load(Ordering::SeqCst), 1, "the second call was a hit");

    // The store goes down: kill moto and wait until it is gone.
    moto.0.kill().unwrap();
    moto.0.wait().unwrap();

    let started = Instant::now();
    let (result, report) = rt.block_on(doubled_flow(2).with_report());
    let took = started.elapsed();
    assert_eq!(result.unwrap(), 4, "computed without the cache");
    assert_eq!(RAN.load(Ordering::SeqCst), 2, "the body ran once");
    let tasks = StateDb::open_existing(&db)
        .unwrap()
        .task_runs(report.flow_run_id)
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, State::Completed);
    assert_eq!(tasks[0].cache_status, CacheStatus::Miss);
    // Only a guard: the lease's retries alone took ~43 s here before.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("store down: the flow took {took:?}");
}
