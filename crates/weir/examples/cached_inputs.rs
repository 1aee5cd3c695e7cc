//! The cached demo: a slow task keyed by its inputs.
//!
//! ```text
//! cargo run --release --example cached_inputs -- --input 1 2 3   # miss: ~3 s
//! cargo run --release --example cached_inputs -- --input 1 2 3   # hit: milliseconds
//! cargo run --release --example cached_inputs -- --input 4 5     # other inputs: miss
//! ```
//!
//! Results go to `WEIR_RESULTS_DIR` (default `~/.weir/results`); point two machines at one
//! shared folder and the second machine hits too. Runs are recorded in `~/.weir/weir.db`:
//! `weir runs ls`, `weir runs show ID`.

use std::time::Duration;

use clap::Parser;

/// Sums a list of integers, slowly the first time and instantly after that.
#[derive(Parser, Debug)]
struct Args {
    /// The integers to sum (space separated).
    #[arg(long, required = true, num_args = 1.., allow_negative_numbers = true)]
    input: Vec<i64>,
}

/// Sleeps three seconds, then sums. Cached by its inputs, so it sleeps once per input list.
#[weir::task(cache = "inputs")]
async fn slow_sum(xs: Vec<i64>) -> anyhow::Result<i64> {
    tracing::info!("computing the sum of {} numbers the slow way", xs.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    xs.iter()
        .try_fold(0i64, |acc, x| acc.checked_add(*x))
        .ok_or_else(|| anyhow::anyhow!("the sum overflows i64"))
}

#[weir::flow]
async fn cached_inputs(input: Vec<i64>) -> anyhow::Result<i64> {
    slow_sum(input).await.map_err(Into::into)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (result, report) = cached_inputs(args.input.clone()).with_report().await;
    let total = result?;
    let how = if report.cached > 0 {
        "cache hit"
    } else {
        "cache miss, computed and stored"
    };
    println!(
        "sum of {:?} = {total} ({how}, {:.1?}, flow run {})",
        args.input, report.duration, report.flow_run_id
    );
    Ok(())
}
