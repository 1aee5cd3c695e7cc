//! Running task runs concurrently: `.map`, `submit()`, `tokio::join!`, and blocking tasks.
//!
//! ```text
//! cargo run --example concurrency
//! ```

use weir::prelude::*;

#[weir::task(cache = "inputs")]
async fn square(x: i64) -> anyhow::Result<i64> {
    Ok(x * x)
}

/// A plain `fn` task runs on the blocking thread pool, so it never stalls the async runtime.
#[weir::task]
fn crunch(n: u64) -> anyhow::Result<u64> {
    Ok((0..n).sum())
}

#[weir::flow]
async fn pipeline(input: Vec<i64>) -> anyhow::Result<i64> {
    let squares = square.map(input.clone()).limit(8).await?; // one task run per item, in order
    let handle = crunch(1_000_000).submit(); // runs concurrently with what follows
    let (a, b) = tokio::join!(square(2), square(3)); // so do these
    let crunched = i64::try_from(handle.await?)?;
    Ok(squares.iter().sum::<i64>() + crunched + a? + b?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("{}", pipeline(vec![1, 2, 3]).await?);
    Ok(())
}
