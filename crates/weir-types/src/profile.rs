//! Profiles: named sets of settings (dev, prod…) in `$WEIR_HOME/profiles.toml`.
//!
//! ```toml
//! active = "prod"
//!
//! [profiles.prod]
//! api_url = "https://weir.example.com"
//! results = "s3://team-results/weir?region=eu-west-1"
//! ```
//!
//! A setting comes from, in order: its environment variable, the active profile
//! (`WEIR_PROFILE`, else `active` in the file), the built-in default. [`lookup`] says which.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The settings a profile can hold, with their environment variables.
pub const KEYS: &[(&str, &str)] = &[
    ("api_url", "WEIR_API_URL"),
    ("api_key", "WEIR_API_KEY"),
    ("results", "WEIR_RESULTS"),
    ("local_cache", "WEIR_LOCAL_CACHE"),
    ("database_url", "WEIR_DATABASE_URL"),
];

/// One profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cache: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            "api_url" => self.api_url.as_deref(),
            "api_key" => self.api_key.as_deref(),
            "results" => self.results.as_deref(),
            "local_cache" => self.local_cache.as_deref(),
            "database_url" => self.database_url.as_deref(),
            _ => None,
        }
    }
}

/// The profiles file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("no profile named '{name}' (profiles: {known})")]
    Unknown { name: String, known: String },
    #[error("a profile named '{0}' already exists (remove it first, or edit profiles.toml)")]
    Exists(String),
    #[error("'{0}' is not a profile name (letters, digits, '-' and '_')")]
    BadName(String),
    #[error("the API key from {0} is empty: give a real key, or remove the setting to run without one")]
    EmptyKey(Source),
}

impl Profiles {
    pub fn path(home: &Path) -> PathBuf {
        home.join("profiles.toml")
    }

    /// Reads the file; a missing file is no profiles. A malformed one is an error that names
    /// the file, never silently ignored.
    pub fn load(home: &Path) -> Result<Profiles, ProfileError> {
        let path = Self::path(home);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ProfileError::Read {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
            Err(e) => Err(ProfileError::Read {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// Writes the file atomically (temp file, then rename), readable by its owner only: it
    /// holds API keys and database passwords. The temp file is created with mode 0600, so
    /// the keys are never readable by others, not even for a moment.
    pub fn save(&self, home: &Path) -> Result<(), ProfileError> {
        use std::io::Write;
        let path = Self::path(home);
        let werr = |e: &dyn fmt::Display| ProfileError::Write {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(home).map_err(|e| werr(&e))?;
        let text = toml::to_string_pretty(self).map_err(|e| werr(&e))?;
        let tmp = home.join(".profiles.toml.tmp");
        // A leftover temp file would keep its old mode through `create`: start afresh.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(&e)),
            _ => {}
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| werr(&e))?;
        f.write_all(text.as_bytes()).map_err(|e| werr(&e))?;
        f.sync_all().map_err(|e| werr(&e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| werr(&e))
    }

    pub fn known(&self) -> String {
        if self.profiles.is_empty() {
            "none yet; create one with `weir profile create NAME`".into()
        } else {
            self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// The profile in force: `WEIR_PROFILE`, else the file's `active`.
    pub fn active_name(&self) -> Option<String> {
        std::env::var("WEIR_PROFILE")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.active.clone())
    }

    pub fn active_profile(&self) -> Result<Option<(String, &Profile)>, ProfileError> {
        match self.active_name() {
            None => Ok(None),
            Some(name) => match self.profiles.get(&name) {
                Some(p) => Ok(Some((name, p))),
                None => Err(ProfileError::Unknown {
                    name,
                    known: self.known(),
                }),
            },
        }
    }
}

pub fn check_name(name: &str) -> Result<(), ProfileError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ProfileError::BadName(name.to_string()))
    }
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Env(&'static str),
    Profile(String),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(v) => write!(f, "environment ({v})"),
            Source::Profile(p) => write!(f, "profile '{p}'"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A profile setting (`api_url`, `results`, …): the environment first, then the active
/// profile. `None` means the default applies. Lenient: an unreadable profiles file or an
/// unknown active profile contributes nothing (flows keep running; `weir config show`
/// reports the problem). Commands that must not start with a wrong setting — the server
/// without its key — use [`try_lookup`].
pub fn lookup(home: &Path, key: &str) -> Option<(String, Source)> {
    let env = KEYS.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)?;
    if let Ok(v) = std::env::var(env)
        && !v.trim().is_empty()
    {
        return Some((v, Source::Env(env)));
    }
    let profiles = Profiles::load(home).ok()?;
    let (name, p) = profiles.active_profile().ok()??;
    p.get(key).map(|v| (v.to_string(), Source::Profile(name)))
}

/// [`lookup`], strict: a malformed profiles file, an unknown `WEIR_PROFILE` or active
/// profile, and an empty API key (from the environment or a profile) are errors that say
/// where they came from. An empty variable other than `WEIR_API_KEY` means unset.
pub fn try_lookup(home: &Path, key: &str) -> Result<Option<(String, Source)>, ProfileError> {
    let Some(env) = KEYS.iter().find(|(k, _)| *k == key).map(|(_, e)| *e) else {
        return Ok(None);
    };
    // Always read the file: a broken one is reported even when the environment decides.
    let profiles = Profiles::load(home)?;
    let active = profiles.active_profile()?;
    let found = match std::env::var(env) {
        Ok(v) if !v.trim().is_empty() || key == "api_key" => Some((v, Source::Env(env))),
        _ => active.and_then(|(name, p)| p.get(key).map(|v| (v.to_string(), Source::Profile(name)))),
    };
    if key == "api_key"
        && let Some((v, source)) = &found
        && v.trim().is_empty()
    {
        return Err(ProfileError::EmptyKey(source.clone()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("weir-profiles-{}", std::process::id()));
        let mut p = Profiles::default();
        p.profiles.insert(
            "prod".into(),
            Profile {
                api_url: Some("http://h:4200".into()),
                ..Default::default()
            },
        );
        p.active = Some("prod".into());
        p.save(&dir).unwrap();
        let back = Profiles::load(&dir).unwrap();
        assert_eq!(back, p);
        std::fs::write(Profiles::path(&dir), "active = 3").unwrap();
        assert!(Profiles::load(&dir).unwrap_err().to_string().contains("profiles.toml"));
        assert!(check_name("a b").is_err());
        assert!(check_name("prod-eu_1").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
