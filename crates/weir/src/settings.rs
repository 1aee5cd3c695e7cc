//! Engine settings: from the environment by default, or set once by the program.

use std::path::PathBuf;
use std::sync::OnceLock;

use weir_types::config::{Paths, env_flag};

/// When to draw the live progress line on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live line when stderr is a terminal, plain log lines otherwise.
    Auto,
    Always,
    Never,
}

/// What the engine uses. [`Settings::from_env`] documents the variables.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The result cache folder (`WEIR_RESULTS_DIR`).
    pub results_dir: PathBuf,
    /// The SQLite database runs are recorded in (`WEIR_STATE_DB`); `None` records nothing.
    pub state_db: Option<PathBuf>,
    /// Recompute every cached task (`WEIR_REFRESH_CACHE=1`).
    pub refresh_cache: bool,
    /// A `tracing` filter (`WEIR_LOG`, default `info`).
    pub log_filter: String,
    /// `WEIR_PROGRESS`: `auto`, `always` or `never`.
    pub progress: ProgressMode,
    /// fsync results before publishing them (`WEIR_CACHE_FSYNC=0` turns it off).
    pub fsync: bool,
}

impl Settings {
    /// Reads `WEIR_HOME`, `WEIR_RESULTS_DIR`, `WEIR_STATE_DB`, `WEIR_REFRESH_CACHE`, `WEIR_LOG`,
    /// `WEIR_PROGRESS` and `WEIR_CACHE_FSYNC`.
    pub fn from_env() -> Settings {
        let paths = Paths::from_env();
        let progress = match std::env::var("WEIR_PROGRESS")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "always" | "1" | "true" => ProgressMode::Always,
            "never" | "0" | "false" => ProgressMode::Never,
            _ => ProgressMode::Auto,
        };
        Settings {
            results_dir: paths.results_dir,
            state_db: Some(paths.state_db),
            refresh_cache: env_flag("WEIR_REFRESH_CACHE"),
            log_filter: std::env::var("WEIR_LOG")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "info".into()),
            progress,
            fsync: std::env::var("WEIR_CACHE_FSYNC").map(|v| v != "0").unwrap_or(true),
        }
    }
}

/// [`configure`] was called after the engine had started.
#[derive(Debug, thiserror::Error)]
#[error("weir is already configured: call weir::configure before the first flow or task runs")]
pub struct AlreadyConfigured;

pub(crate) static CONFIGURED: OnceLock<Settings> = OnceLock::new();

/// Sets the engine's settings for this process instead of reading the environment.
/// Must run before the first flow or task.
///
/// ```no_run
/// let mut settings = weir::Settings::from_env();
/// settings.results_dir = "/mnt/shared/weir-results".into();
/// weir::configure(settings).expect("configured before any flow ran");
/// ```
pub fn configure(settings: Settings) -> Result<(), AlreadyConfigured> {
    if crate::engine::started() {
        return Err(AlreadyConfigured);
    }
    CONFIGURED.set(settings).map_err(|_| AlreadyConfigured)
}
