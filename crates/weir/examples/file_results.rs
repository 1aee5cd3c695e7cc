//! Results that are files, stored under names people can find.
//!
//! ```text
//! cargo run --example file_results -- eu        # writes named/daily_export/export/eu/<date>.csv
//! cargo run --example file_results -- eu        # a hit: the file is read back, not recomputed
//! ```

use std::io::{BufRead, Write};

/// Streams a CSV into the result store without holding it in memory, under a readable name.
#[weir::task(result_key = "{flow_name}/{task_name}/{region}/{date}.csv")]
fn export(region: String, rows: u64) -> anyhow::Result<weir::Artifact> {
    let mut out = weir::Artifact::create()?;
    writeln!(out, "region,row,value")?;
    for i in 0..rows {
        writeln!(out, "{region},{i},{}", i * i)?;
    }
    Ok(out.finish()?)
}

#[weir::flow]
async fn daily_export(region: String) -> anyhow::Result<usize> {
    let file = export(region, 100_000).await?;
    let lines = std::io::BufReader::new(file.open()?).lines().count();
    Ok(lines)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let region = std::env::args().nth(1).unwrap_or_else(|| "eu".into());
    let (lines, report) = daily_export(region).with_report().await;
    println!(
        "{} lines ({})",
        lines?,
        if report.cached > 0 {
            "read from the result store"
        } else {
            "computed and stored"
        }
    );
    Ok(())
}
