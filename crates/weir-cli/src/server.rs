//! `weir server start`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weir_types::config::{Paths, redact_url};

#[derive(Subcommand)]
pub enum ServerCommand {
    /// Start the server. Database: WEIR_DATABASE_URL (default: an SQLite file under
    /// WEIR_HOME); API key: WEIR_API_KEY. Logs requests to stderr (filter: WEIR_LOG);
    /// SIGTERM stops it after the requests in flight.
    Start {
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// 0 picks a free port (printed on start).
        #[arg(long, default_value_t = 4200)]
        port: u16,
        /// Listen on a non-loopback address without an API key.
        #[arg(long)]
        insecure: bool,
        /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A worker silent this long is dead and its runs are marked Crashed (`15s`, `1m`).
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        heartbeat_timeout: std::time::Duration,
        /// A scheduled run not claimed this long after it was due is Late (`30s`).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        late_after: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = weir_types::duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

pub fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    let ServerCommand::Start {
        host,
        port,
        insecure,
        tls_cert,
        tls_key,
        heartbeat_timeout,
        late_after,
    } = cmd;
    let paths = Paths::from_env();
    // Strict: a broken profiles file, an unknown profile or an empty key stops the start,
    // never lets the server come up without the key the user meant to give it.
    let database_url = match weir_types::profile::try_lookup(&paths.home, "database_url")? {
        Some((url, _)) => url,
        None => {
            std::fs::create_dir_all(&paths.home).with_context(|| format!("creating {}", paths.home.display()))?;
            format!("sqlite://{}", paths.home.join("server.db").display())
        }
    };
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(weir_server::TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cfg = weir_server::ServerConfig {
        database_url: database_url.clone(),
        api_key: weir_types::profile::try_lookup(&paths.home, "api_key")?.map(|(k, _)| k),
        tls,
        scheduler: weir_server::scheduler::Options {
            heartbeat_timeout,
            late_after,
            ..Default::default()
        },
    };
    let shown_db = redact_url(&database_url);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(weir_server::serve(cfg, SocketAddr::new(host, port), insecure, |addr| {
        // The first line on stdout, for scripts (and tests) that started us on port 0.
        println!("weir server listening on {scheme}://{addr} (database: {shown_db})");
    }))?;
    Ok(())
}
