//! The `weir` command. Thin glue: argument parsing here, work in the library crates.

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
    /// The settings in force and where each came from.
    #[command(subcommand)]
    Config(profile::ConfigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Runs(cmd) => runs::run(cmd),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Server(cmd) => server::run(cmd),
        Command::Profile(cmd) => profile::run_profile(cmd),
        Command::Config(cmd) => profile::run_config(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
