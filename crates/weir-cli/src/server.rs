//! `weir server start` and `weir server rotate-secret-key`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weir_server::secrets::{KeySource, SecretKey};
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
    /// Re-encrypt every block secret with a new key, in one transaction; stop the server
    /// first. The current key is WEIR_SECRET_KEY or the key file WEIR_HOME/secret.key, which
    /// then holds the new key. Make a key with `(umask 077; openssl rand -base64 32 > new.key)`.
    RotateSecretKey {
        /// A file holding the new key: the base64 of 32 random bytes.
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

/// `WEIR_DATABASE_URL` (or the profile's), else the SQLite file under WEIR_HOME.
fn database_url(paths: &Paths) -> anyhow::Result<String> {
    Ok(match weir_types::profile::try_lookup(&paths.home, "database_url")? {
        Some((url, _)) => url,
        None => {
            std::fs::create_dir_all(&paths.home).with_context(|| format!("creating {}", paths.home.display()))?;
            format!("sqlite://{}", paths.home.join("server.db").display())
        }
    })
}

/// The key of blocks' secrets: `WEIR_SECRET_KEY` (set but empty is an error), else the key
/// file in WEIR_HOME, created 0600 on first start.
fn secret_key(paths: &Paths) -> anyhow::Result<(SecretKey, KeySource)> {
    Ok(weir_server::secrets::resolve_key(
        std::env::var("WEIR_SECRET_KEY").ok(),
        &paths.home,
    )?)
}

fn rotate(new_key_file: PathBuf) -> anyhow::Result<()> {
    let paths = Paths::from_env();
    let new = SecretKey::read_file(&new_key_file)?;
    let (old, source) = match std::env::var("WEIR_SECRET_KEY").ok() {
        Some(v) => (SecretKey::from_base64(&v, "WEIR_SECRET_KEY")?, KeySource::Env),
        None => {
            // Never create a key here: rotating from a key nobody has would lose every secret.
            let path = paths.home.join(weir_server::secrets::KEY_FILE);
            (SecretKey::read_file(&path)?, KeySource::File(path))
        }
    };
    if old.fingerprint() == new.fingerprint() {
        anyhow::bail!("the new key is the current key: nothing to rotate");
    }
    let url = database_url(&paths)?;
    let rt = tokio::runtime::Runtime::new()?;
    let n = rt.block_on(async {
        let db = weir_server::Db::connect(&url).await?;
        anyhow::Ok(db.rotate_secret_key(&old, &new).await?)
    })?;
    println!(
        "re-encrypted {n} secret fields with the new key (fingerprint {})",
        new.fingerprint()
    );
    match source {
        KeySource::File(path) => {
            new.replace_file(&path)?;
            println!("{} now holds the new key", path.display());
        }
        KeySource::Env => println!(
            "start the server with WEIR_SECRET_KEY set to the new key (the contents of {})",
            new_key_file.display()
        ),
    }
    Ok(())
}

pub fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    let (host, port, insecure, tls_cert, tls_key, heartbeat_timeout, late_after) = match cmd {
        ServerCommand::Start {
            host,
            port,
            insecure,
            tls_cert,
            tls_key,
            heartbeat_timeout,
            late_after,
        } => (host, port, insecure, tls_cert, tls_key, heartbeat_timeout, late_after),
        ServerCommand::RotateSecretKey { new_key_file } => return rotate(new_key_file),
    };
    let paths = Paths::from_env();
    // Strict: a broken profiles file, an unknown profile or an empty key stops the start,
    // never lets the server come up without the key the user meant to give it.
    let database_url = database_url(&paths)?;
    let (key, key_source) = secret_key(&paths)?;
    match &key_source {
        KeySource::Env => tracing::info!(
            "block secrets: key from WEIR_SECRET_KEY (fingerprint {})",
            key.fingerprint()
        ),
        KeySource::File(p) => tracing::info!(
            "block secrets: key file {} (fingerprint {})",
            p.display(),
            key.fingerprint()
        ),
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(weir_server::TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cfg = weir_server::ServerConfig {
        database_url: database_url.clone(),
        api_key: weir_types::profile::try_lookup(&paths.home, "api_key")?.map(|(k, _)| k),
        tls,
        secret_key: Some(key),
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = weir_types::duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}
