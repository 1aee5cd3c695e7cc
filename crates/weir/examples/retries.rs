//! Retries, backoff and timeouts: a task that fails twice, then succeeds.
//!
//! ```text
//! cargo run --example retries
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails on its first two attempts, as a flaky network call would.
#[weir::task(
    retries = 3,
    retry_delay = "100ms",
    backoff = "exponential",
    jitter = 0.2,
    timeout = "5s"
)]
async fn flaky_download(url: String) -> anyhow::Result<usize> {
    let attempt = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt < 3 {
        anyhow::bail!("connection reset while fetching {url} (attempt {attempt})");
    }
    Ok(url.len() * 1000)
}

#[weir::flow]
async fn download(url: String) -> anyhow::Result<usize> {
    Ok(flaky_download(url).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bytes = download("https://example.com/data.csv".into()).await?;
    println!(
        "downloaded {bytes} bytes after {} attempts",
        CALLS.load(Ordering::SeqCst)
    );
    Ok(())
}
