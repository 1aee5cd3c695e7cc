//! A weir server as its own process, for tests that stop and restart it.
//!
//! ```text
//! server_probe DB_FILE ADDR     serve on ADDR (127.0.0.1:0 picks a port); prints `listening ADDR`
//! ```

use std::io::Write;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, addr] = args.as_slice() else {
        anyhow::bail!("usage: server_probe DB_FILE ADDR");
    };
    let db = weir_server::Db::connect(&format!("sqlite://{db}"))
        .await
        .context("server database")?;
    let app = weir_server::app(db, None);
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await.context("bind")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    axum::serve(listener, app).await?;
    Ok(())
}
