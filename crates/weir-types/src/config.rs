//! Where weir keeps its files, resolved from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WEIR_HOME` | `~/.weir` | weir's own folder |
//! | `WEIR_RESULTS_DIR` | `$WEIR_HOME/results` | the result cache folder (may be a shared mount) |
//! | `WEIR_STATE_DB` | `$WEIR_HOME/weir.db` | the embedded SQLite database of runs |
//! | `WEIR_REFRESH_CACHE` | unset | `1`/`true`: recompute every cached task of the run |
//! | `WEIR_LOG` | `info` | log filter (`warn`, `debug`, `my_crate=debug`, …) |
//! | `WEIR_PROGRESS` | `auto` | `auto`, `always` or `never`: the live progress line on stderr |

use std::path::PathBuf;

/// Resolved locations and switches.
#[derive(Clone, Debug)]
pub struct Paths {
    pub home: PathBuf,
    pub results_dir: PathBuf,
    pub state_db: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl Paths {
    /// Reads `WEIR_HOME`, `WEIR_RESULTS_DIR` and `WEIR_STATE_DB`.
    pub fn from_env() -> Self {
        let home = env_path("WEIR_HOME").unwrap_or_else(|| {
            env_path("HOME")
                .map(|h| h.join(".weir"))
                .unwrap_or_else(|| PathBuf::from(".weir"))
        });
        let results_dir = env_path("WEIR_RESULTS_DIR").unwrap_or_else(|| home.join("results"));
        let state_db = env_path("WEIR_STATE_DB").unwrap_or_else(|| home.join("weir.db"));
        Paths {
            home,
            results_dir,
            state_db,
        }
    }
}

/// Where results go and the local tier in front of them, from the environment:
/// `WEIR_RESULTS` (a path or URL; else `WEIR_RESULTS_DIR`), `WEIR_LOCAL_CACHE` (a folder, or
/// `none`; default `$WEIR_HOME/local-cache` for remote stores) and `WEIR_LOCAL_CACHE_SIZE`
/// (default `10GiB`).
#[derive(Clone, Debug)]
pub struct ResultsConfig {
    pub location: String,
    pub local_cache: Option<(PathBuf, u64)>,
}

impl ResultsConfig {
    pub fn from_env(paths: &Paths) -> ResultsConfig {
        let location = crate::profile::lookup(&paths.home, "results")
            .map(|(v, _)| v)
            .unwrap_or_else(|| paths.results_dir.display().to_string());
        // A store named by an s3-bucket block is as remote as its s3:// URL.
        let remote =
            (location.contains("://") && !location.starts_with("file://")) || location.starts_with("block:s3-bucket/");
        let dir = match crate::profile::lookup(&paths.home, "local_cache").map(|(v, _)| std::ffi::OsString::from(v)) {
            Some(v) if v == "none" || v == "off" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => remote.then(|| paths.home.join("local-cache")),
        };
        let cap = std::env::var("WEIR_LOCAL_CACHE_SIZE")
            .ok()
            .and_then(|s| s.trim().parse::<bytesize::ByteSize>().ok())
            .map(|b| b.as_u64())
            .unwrap_or(10 << 30);
        ResultsConfig {
            location,
            local_cache: dir.map(|d| (d, cap)),
        }
    }
}

/// True when an environment flag is set to `1`, `true`, `yes` or `on`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// A URL with its passwords replaced by `***`, for printing: the one in its user info
/// (`postgres://u:***@host/db`) and any `password=` query parameter, which PostgreSQL
/// clients accept too (`postgres://u@host/db?password=***`).
pub fn redact_url(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_string();
    };
    // The last '@': a password may hold a raw '@' (over-masking beats printing a secret).
    let (mut out, rest_from) = match url.rfind('@') {
        Some(at) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => (format!("{}{user}:***", &url[..s + 3]), at),
                None => (url[..at].to_string(), at),
            }
        }
        _ => (String::new(), 0),
    };
    let rest = &url[rest_from..];
    let Some(q) = rest.find('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(&rest[..=q]);
    let (query, fragment) = match rest[q + 1..].split_once('#') {
        Some((query, f)) => (query, Some(f)),
        None => (&rest[q + 1..], None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if matches!(k.to_ascii_lowercase().as_str(), "password" | "sslpassword") => {
                format!("{k}=***")
            }
            _ => p.to_string(),
        })
        .collect();
    out.push_str(&params.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_only_the_password() {
        use super::redact_url;
        assert_eq!(redact_url("postgres://u:p@h:5/d"), "postgres://u:***@h:5/d");
        assert_eq!(redact_url("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("sqlite:///a@b/x.db"), "sqlite:///a@b/x.db");
        assert_eq!(
            redact_url("postgres://u@h/d?sslmode=require&password=p&PassWord=q"),
            "postgres://u@h/d?sslmode=require&password=***&PassWord=***"
        );
        assert_eq!(
            redact_url("postgres://u:p@h/d?password=p"),
            "postgres://u:***@h/d?password=***"
        );
        assert_eq!(
            redact_url("postgres://h/d?password=p#x"),
            "postgres://h/d?password=***#x"
        );
        assert_eq!(redact_url("/plain/path"), "/plain/path");
    }
}
