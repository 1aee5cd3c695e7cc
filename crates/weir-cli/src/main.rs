//! The `weir` command. Thin glue: argument parsing here, work in the library crates.

mod block;
mod cache;
mod profile;
mod runs;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: flows, tasks and a result cache that works across machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Flow runs recorded on this machine (in WEIR_HOME's state database).
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// The result cache (WEIR_RESULTS): entries, provenance, garbage collection, why a task missed.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// The weir server: REST API over run metadata (SQLite or PostgreSQL).
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Named sets of settings (dev, prod…) in WEIR_HOME/profiles.toml.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Blocks: named, typed, versioned configuration documents on the server (WEIR_API_URL).
    #[command(subcommand)]
    Block(block::BlockCommand),
    /// The settings in force and where each came from.
    #[command(subcommand)]
    Config(profile::ConfigCommand),
}

/// Logs to stderr, filtered by `WEIR_LOG` (`info`, `weir_server=debug`, …). The server
/// logs each request at INFO; other commands default to warnings only.
fn init_logging(default: &str) {
    let filter = match std::env::var("WEIR_LOG") {
        Ok(f) if !f.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&f).unwrap_or_else(|e| {
            eprintln!("warning: WEIR_LOG='{f}' is not a log filter ({e}); using '{default}'");
            tracing_subscriber::EnvFilter::new(default)
        }),
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Server(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Runs(cmd) => runs::run(cmd),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Server(cmd) => server::run(cmd),
        Command::Profile(cmd) => profile::run_profile(cmd),
        Command::Config(cmd) => profile::run_config(cmd),
        Command::Block(cmd) => block::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
