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
    // The key file beside the database, so a restarted server reads its blocks' secrets.
    let key_file = std::path::Path::new(db.as_str()).with_extension("key");
    let key = weir_server::secrets::SecretKey::load_or_create(&key_file)?;
    let app = weir_server::app_with_secret_key(
        weir_server::Db::connect(&format!("sqlite://{db}"))
            .await
            .context("server database")?,
        None,
        key,
    );
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await.context("bind")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    // Peers' addresses, as `weir server start` has them: blocks reveal secrets to loopback.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await?;
    Ok(())
}
