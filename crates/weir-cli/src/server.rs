//! `weir server start`.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use clap::Subcommand;
use weir_types::config::Paths;

#[derive(Subcommand)]
pub enum ServerCommand {
    /// Start the server. Database: WEIR_DATABASE_URL (default: an SQLite file under
    /// WEIR_HOME); API key: WEIR_API_KEY.
    Start {
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// 0 picks a free port (printed on start).
        #[arg(long, default_value_t = 4200)]
        port: u16,
        /// Listen on a non-loopback address without an API key.
        #[arg(long)]
        insecure: bool,
    },
}

pub fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    let ServerCommand::Start { host, port, insecure } = cmd;
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
    let cfg = weir_server::ServerConfig {
        database_url: database_url.clone(),
        api_key: weir_types::profile::try_lookup(&paths.home, "api_key")?.map(|(k, _)| k),
    };
    let shown_db = redact(&database_url);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(weir_server::serve(cfg, SocketAddr::new(host, port), insecure, |addr| {
        // The first line on stdout, for scripts (and tests) that started us on port 0.
        println!("weir server listening on http://{addr} (database: {shown_db})");
    }))?;
    Ok(())
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
