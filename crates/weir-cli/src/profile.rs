//! `weir profile create | use | ls | rm` and `weir config show`.

use std::io::Write;

use clap::Subcommand;
use weir_types::config::{Paths, ResultsConfig, redact_url};
use weir_types::profile::{KEYS, Profile, ProfileError, Profiles, Source, check_name, lookup};

use crate::runs::table;

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Create a profile (a named set of settings), e.g. for dev and prod.
    Create {
        name: String,
        #[arg(long)]
        api_url: Option<String>,
        #[arg(long)]
        api_key: Option<String>,
        /// Where results go: a folder or a URL (s3://…).
        #[arg(long)]
        results: Option<String>,
        #[arg(long)]
        local_cache: Option<String>,
        /// The server's database (for `weir server start`).
        #[arg(long)]
        database_url: Option<String>,
        /// Make it the active profile.
        #[arg(long = "use")]
        activate: bool,
    },
    /// Make a profile the active one.
    Use { name: String },
    /// List profiles (`*` marks the active one).
    Ls,
    /// Delete a profile.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Every setting in force and where it came from (environment, profile, default).
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub fn run_profile(cmd: ProfileCommand) -> anyhow::Result<()> {
    let home = Paths::from_env().home;
    let mut profiles = Profiles::load(&home)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ProfileCommand::Create {
            name,
            api_url,
            api_key,
            results,
            local_cache,
            database_url,
            activate,
        } => {
            check_name(&name)?;
            for (flag, v) in [
                ("--api-url", &api_url),
                ("--api-key", &api_key),
                ("--results", &results),
                ("--local-cache", &local_cache),
                ("--database-url", &database_url),
            ] {
                if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    anyhow::bail!("{flag} is empty: give a value, or leave the flag out");
                }
            }
            if profiles.profiles.contains_key(&name) {
                return Err(ProfileError::Exists(name).into());
            }
            if let Some(url) = &api_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                anyhow::bail!("--api-url '{url}' is not an http(s) URL");
            }
            profiles.profiles.insert(
                name.clone(),
                Profile {
                    api_url,
                    api_key,
                    results,
                    local_cache,
                    database_url,
                },
            );
            if activate || profiles.active.is_none() {
                profiles.active = Some(name.clone());
            }
            profiles.save(&home)?;
            writeln!(
                out,
                "created profile '{name}'{}",
                if profiles.active.as_deref() == Some(&name) {
                    " (active)"
                } else {
                    ""
                }
            )?;
        }
        ProfileCommand::Use { name } => {
            if !profiles.profiles.contains_key(&name) {
                return Err(ProfileError::Unknown {
                    name,
                    known: profiles.known(),
                }
                .into());
            }
            profiles.active = Some(name.clone());
            profiles.save(&home)?;
            writeln!(out, "now using profile '{name}'")?;
        }
        ProfileCommand::Ls => {
            if profiles.profiles.is_empty() {
                writeln!(out, "no profiles yet: weir profile create NAME --api-url … --results …")?;
                return Ok(());
            }
            let active = profiles.active_name();
            let mut t = table(&["", "NAME", "API URL", "RESULTS"]);
            for (name, p) in &profiles.profiles {
                t.add_row(vec![
                    if active.as_deref() == Some(name) {
                        "*".into()
                    } else {
                        String::new()
                    },
                    name.clone(),
                    p.api_url.as_deref().map(redact_url).unwrap_or_default(),
                    p.results.as_deref().map(redact_url).unwrap_or_default(),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        ProfileCommand::Rm { name } => {
            if profiles.profiles.remove(&name).is_none() {
                return Err(ProfileError::Unknown {
                    name,
                    known: profiles.known(),
                }
                .into());
            }
            if profiles.active.as_deref() == Some(&name) {
                profiles.active = None;
            }
            profiles.save(&home)?;
            writeln!(out, "removed profile '{name}'")?;
        }
    }
    Ok(())
}

pub fn run_config(cmd: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Show { json } = cmd;
    let paths = Paths::from_env();
    // Report a broken profiles file or an unknown active profile here, loudly.
    let profiles = Profiles::load(&paths.home)?;
    let active = profiles.active_profile()?.map(|(n, _)| n);
    let results = ResultsConfig::from_env(&paths);
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "home".into(),
            paths.home.display().to_string(),
            if std::env::var_os("WEIR_HOME").is_some() {
                "environment (WEIR_HOME)".into()
            } else {
                "default".into()
            },
        ),
        (
            "profile".into(),
            active.clone().unwrap_or_else(|| "-".into()),
            match std::env::var("WEIR_PROFILE") {
                Ok(_) => "environment (WEIR_PROFILE)".into(),
                Err(_) if active.is_some() => "profiles.toml".into(),
                Err(_) => "default".into(),
            },
        ),
    ];
    for (key, _) in KEYS {
        let (value, source) = match lookup(&paths.home, key) {
            Some((v, s)) => (v, s),
            None => {
                let default = match *key {
                    "results" => results.location.clone(),
                    "local_cache" => results
                        .local_cache
                        .as_ref()
                        .map(|(d, _)| d.display().to_string())
                        .unwrap_or_else(|| "none (folder store)".into()),
                    "database_url" => format!("sqlite://{}", paths.home.join("server.db").display()),
                    "api_url" => "none (runs are recorded locally)".into(),
                    _ => "none".into(),
                };
                (default, Source::Default)
            }
        };
        let shown = match *key {
            "api_key" if !matches!(source, Source::Default) => "********".to_string(),
            "database_url" | "api_url" | "results" => redact_url(&value),
            _ => value,
        };
        rows.push((key.to_string(), shown, source.to_string()));
    }
    // Where the server's block secret key comes from; never the key itself.
    rows.push(match std::env::var("WEIR_SECRET_KEY") {
        Ok(_) => (
            "secret_key".into(),
            "********".into(),
            "environment (WEIR_SECRET_KEY)".into(),
        ),
        Err(_) => (
            "secret_key".into(),
            format!("key file {}", paths.home.join("secret.key").display()),
            "default".into(),
        ),
    });
    rows.push((
        "state_db".into(),
        paths.state_db.display().to_string(),
        if std::env::var_os("WEIR_STATE_DB").is_some() {
            "environment (WEIR_STATE_DB)".into()
        } else {
            "default".into()
        },
    ));
    let mut out = std::io::stdout().lock();
    if json {
        let v: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(k, v, s)| (k, serde_json::json!({"value": v, "source": s})))
            .collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut t = table(&["SETTING", "VALUE", "FROM"]);
    for (k, v, s) in rows {
        t.add_row(vec![k, v, s]);
    }
    writeln!(out, "{t}")?;
    Ok(())
}
