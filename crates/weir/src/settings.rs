//! Engine settings: from the environment by default, or set once by the program.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

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
    /// Where results go: a folder path or a URL (`WEIR_RESULTS`, else `WEIR_RESULTS_DIR`):
    /// `/mnt/shared/results`, `file:///…`, `s3://bucket/prefix?endpoint=…`, `memory://`, or
    /// `block:s3-bucket/NAME` / `block:local-file-system/NAME` (a block on the server).
    pub results: String,
    /// A local folder in front of the result store (`WEIR_LOCAL_CACHE`; default
    /// `$WEIR_HOME/local-cache` for remote stores, none for folders unless set), and its size
    /// cap (`WEIR_LOCAL_CACHE_SIZE`, default `10GiB`). Every local hit is revalidated against
    /// the store's manifest.
    pub local_cache: Option<(PathBuf, u64)>,
    /// Compress stored results (`WEIR_COMPRESSION=zstd`); tasks can override.
    pub compression: bool,
    /// Where file results downloaded from object storage go when there is no local tier
    /// (`$WEIR_HOME/artifacts`).
    pub artifacts_dir: PathBuf,
    /// How long a lease on a key being computed lasts without renewal
    /// (`WEIR_LEASE_TTL`, default `30s`; renewed every third of it while computing).
    pub lease_ttl: Duration,
    /// The SQLite database runs are recorded in (`WEIR_STATE_DB`); `None` records nothing.
    pub state_db: Option<PathBuf>,
    /// Recompute every cached task (`WEIR_REFRESH_CACHE=1`).
    pub refresh_cache: bool,
    /// A `tracing` filter (`WEIR_LOG`, default `info`).
    pub log_filter: String,
    /// `WEIR_PROGRESS`: `auto`, `always` or `never`.
    pub progress: ProgressMode,
    /// Report runs to this server instead of the embedded database (`WEIR_API_URL`).
    pub api_url: Option<String>,
    /// The server's API key (`WEIR_API_KEY`).
    pub api_key: Option<String>,
    /// fsync results before publishing them (`WEIR_CACHE_FSYNC=0` turns it off).
    pub fsync: bool,
    /// Where events for an unreachable server wait (`$WEIR_HOME/spool`).
    pub spool_dir: PathBuf,
    /// What was wrong with the profiles (a malformed `profiles.toml`, an unknown
    /// `WEIR_PROFILE`, an empty API key) when these settings were read: while it is set,
    /// every flow run fails at its start with this message instead of running on settings
    /// that silently lack the profile.
    pub profile_error: Option<String>,
}

impl Settings {
    /// Reads `WEIR_HOME`, `WEIR_RESULTS_DIR`, `WEIR_STATE_DB`, `WEIR_REFRESH_CACHE`, `WEIR_LOG`,
    /// `WEIR_PROGRESS` and `WEIR_CACHE_FSYNC`, and the active profile. A broken profile (see
    /// [`Settings::try_from_env`]) is kept in [`Settings::profile_error`]: flows then refuse
    /// to start, saying why.
    pub fn from_env() -> Settings {
        let mut settings = Settings::lenient();
        if let Err(e) = Settings::check_profiles(&settings) {
            settings.profile_error = Some(e.to_string());
        }
        settings
    }

    /// [`Settings::from_env`], refusing a malformed `profiles.toml`, an unknown
    /// `WEIR_PROFILE` or active profile, and an empty API key for a server, as the CLI and
    /// the server do.
    pub fn try_from_env() -> Result<Settings, weir_types::profile::ProfileError> {
        let settings = Settings::lenient();
        Settings::check_profiles(&settings)?;
        Ok(settings)
    }

    /// The strict lookups, for their errors only (the values equal the lenient ones when
    /// they succeed).
    fn check_profiles(settings: &Settings) -> Result<(), weir_types::profile::ProfileError> {
        let home = Paths::from_env().home;
        // Reads and checks the whole file and the active profile, whichever key is asked.
        weir_types::profile::try_lookup(&home, "api_url")?;
        if settings.api_url.is_some() {
            weir_types::profile::try_lookup(&home, "api_key")?;
        }
        Ok(())
    }

    fn lenient() -> Settings {
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
        let results = weir_types::config::ResultsConfig::from_env(&paths);
        let lease_ttl = std::env::var("WEIR_LEASE_TTL")
            .ok()
            .and_then(|s| weir_types::duration::parse(&s).ok())
            .unwrap_or(Duration::from_secs(30));
        Settings {
            artifacts_dir: paths.home.join("artifacts"),
            spool_dir: paths.home.join("spool"),
            results: results.location,
            local_cache: results.local_cache,
            compression: std::env::var("WEIR_COMPRESSION").map(|v| v == "zstd").unwrap_or(false),
            lease_ttl,
            state_db: Some(paths.state_db),
            refresh_cache: env_flag("WEIR_REFRESH_CACHE"),
            log_filter: std::env::var("WEIR_LOG")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "info".into()),
            progress,
            api_url: weir_types::profile::lookup(&paths.home, "api_url").map(|(v, _)| v),
            api_key: weir_types::profile::lookup(&paths.home, "api_key").map(|(v, _)| v),
            fsync: std::env::var("WEIR_CACHE_FSYNC").map(|v| v != "0").unwrap_or(true),
            profile_error: None,
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
/// settings.results = "s3://team-bucket/weir?region=eu-west-1".into();
/// weir::configure(settings).expect("configured before any flow ran");
/// ```
pub fn configure(settings: Settings) -> Result<(), AlreadyConfigured> {
    if crate::engine::started() {
        return Err(AlreadyConfigured);
    }
    CONFIGURED.set(settings).map_err(|_| AlreadyConfigured)
}
