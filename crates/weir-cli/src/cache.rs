//! `weir cache ls | show | rm | gc | stats | explain`.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;
use weir_cache::{CacheKey, EntryMeta, GcOptions, OpenOptions, ResultStore};
use weir_types::config::{Paths, ResultsConfig};
use weir_types::time::{format_micros, now_micros};
use weir_types::{CacheStatus, TaskRunRecord};

use crate::runs::{Source, table, when};

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List cache entries, newest last.
    Ls {
        /// Only entries of this task (its name or full path).
        #[arg(long)]
        task: Option<String>,
        /// Only entries written by this flow.
        #[arg(long)]
        flow: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one entry's metadata and provenance.
    Show {
        /// The cache key, or a unique prefix of it.
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an entry (its data goes at the next gc unless another entry uses it).
    Rm { key: String },
    /// Remove expired entries, old entries and data nothing refers to.
    Gc {
        /// Also remove entries created longer ago than this (e.g. 7d).
        #[arg(long)]
        older_than: Option<String>,
        /// Then remove the oldest entries until the data fits in this size (e.g. 50GB).
        #[arg(long)]
        max_size: Option<String>,
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced data younger than this: it may belong to an entry being
        /// written right now (default 1h; at least 20m for blobs on object storage).
        #[arg(long, default_value = "1h")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
    /// Entries, bytes, and how often task runs hit or missed.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Why did a task run miss the cache? Names what changed since the nearest earlier
    /// entry of the same task: which input, or the task's code.
    Explain {
        /// The flow run (id, or a unique prefix or suffix).
        run: String,
        /// The task's name.
        task: String,
        #[arg(long)]
        json: bool,
    },
}

/// The result store flows use, and how to name it: `WEIR_RESULTS` (a path or URL), or for
/// `block:s3-bucket/NAME` / `block:local-file-system/NAME` the store that block on the server
/// names, opened with its credentials as the SDK opens it.
async fn open_store() -> anyhow::Result<(Arc<dyn ResultStore>, String)> {
    let paths = Paths::from_env();
    let cfg = ResultsConfig::from_env(&paths);
    // Opened as the SDK opens it, local tier included: listing and stats read the shared
    // store through it, while `rm` and `gc` also clear this machine's copies.
    let opts = OpenOptions {
        local_tier: cfg.local_cache.clone(),
        ..OpenOptions::default()
    };
    let Some(spec) = cfg.location.strip_prefix("block:") else {
        let store = weir_cache::open(&cfg.location, &opts)
            .with_context(|| format!("opening the result store {}", cfg.location))?;
        return Ok((store, cfg.location));
    };
    let named = format!("WEIR_RESULTS={}", cfg.location);
    let client = server_client(&paths).with_context(|| named.clone())?;
    // Bounded by the client's timeouts (5 s to connect, 30 s in all).
    let resolved = client
        .resolve_store(spec)
        .await
        .with_context(|| format!("{named}: reading the block from the server"))?;
    let store = weir_cache::open_with_credentials(&resolved.location, &opts, resolved.credentials.as_ref())
        .with_context(|| format!("{named}: opening the result store {}", resolved.location))?;
    Ok((store, format!("{} ({})", cfg.location, resolved.location)))
}

/// A client of the server blocks live on (`WEIR_API_URL`, `WEIR_API_KEY` or the profile).
fn server_client(paths: &Paths) -> anyhow::Result<weir_client::Client> {
    let Some((url, _)) = weir_types::profile::try_lookup(&paths.home, "api_url")? else {
        bail!("blocks live on the weir server, and no server is configured (set WEIR_API_URL, or a profile's api_url)");
    };
    let key = weir_types::profile::try_lookup(&paths.home, "api_key")?.map(|(k, _)| k);
    Ok(weir_client::Client::new(&url, key)?)
}

async fn find_entry(store: &dyn ResultStore, wanted: &str) -> anyhow::Result<EntryMeta> {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("'{wanted}' is not a cache key (expected hex digits, as shown by `weir cache ls`)");
    }
    if let Ok(key) = wanted.parse::<CacheKey>()
        && let Some(m) = store.entry(&key).await?
    {
        return Ok(m);
    }
    let found: Vec<EntryMeta> = store
        .entries()
        .await?
        .into_iter()
        .filter(|m| m.key.starts_with(&wanted))
        .collect();
    match found.len() {
        0 => bail!("no cache entry matches '{wanted}' (list entries with `weir cache ls`)"),
        1 => Ok(found.into_iter().next().context("one entry")?),
        n => bail!("'{wanted}' matches {n} cache entries; give more digits"),
    }
}

fn short_task(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    // Run records are read before entering this runtime: reading them from a server
    // uses a runtime of its own.
    let runs = match &cmd {
        CacheCommand::Stats { .. } => {
            let remote = weir_types::profile::try_lookup(&Paths::from_env().home, "api_url")?.is_some();
            let counts = if remote || Paths::from_env().state_db.exists() {
                Source::open()?.cache_counts()?
            } else {
                Vec::new()
            };
            Runs::Counts { counts, remote }
        }
        CacheCommand::Explain { run, task, .. } => {
            let source = Source::open()?;
            let flow_run = source.find(run)?;
            let task_runs: Vec<TaskRunRecord> = source
                .task_runs(flow_run.id)?
                .into_iter()
                .filter(|t| t.task_name == *task || short_task(&t.task_path) == task)
                .collect();
            if task_runs.is_empty() {
                bail!("flow run {} has no task run of '{task}'", flow_run.id);
            }
            Runs::OfTask(task_runs)
        }
        _ => Runs::None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd, runs))
}

/// What a cache command needs from the run records (this machine's or the server's).
enum Runs {
    None,
    Counts {
        counts: Vec<(CacheStatus, u64)>,
        remote: bool,
    },
    OfTask(Vec<TaskRunRecord>),
}

async fn run_async(cmd: CacheCommand, runs: Runs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        CacheCommand::Ls { task, flow, json } => {
            let (store, _) = open_store().await?;
            let entries: Vec<EntryMeta> = store
                .entries()
                .await?
                .into_iter()
                .filter(|m| task.as_deref().is_none_or(|t| m.task == t || short_task(&m.task) == t))
                .filter(|m| flow.as_deref().is_none_or(|f| m.flow.as_deref() == Some(f)))
                .collect();
            if json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
                return Ok(());
            }
            if entries.is_empty() {
                writeln!(out, "no cache entries match")?;
                return Ok(());
            }
            let now = now_micros();
            let mut t = table(&["KEY", "TASK", "FLOW", "SIZE", "CREATED", "EXPIRES"]);
            for m in &entries {
                t.add_row(vec![
                    m.key.get(..12).unwrap_or(&m.key).to_string(),
                    short_task(&m.task).to_string(),
                    m.flow.clone().unwrap_or_default(),
                    bytesize::ByteSize::b(m.size).to_string(),
                    when(m.created_at),
                    match m.expires_at {
                        None => "never".into(),
                        Some(e) if e <= now => "expired".into(),
                        Some(e) => when(e),
                    },
                ]);
            }
            writeln!(out, "{t}")?;
        }
        CacheCommand::Show { key, json } => {
            let (store, _) = open_store().await?;
            let m = find_entry(store.as_ref(), &key).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &m)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "key            {}", m.key)?;
            writeln!(out, "task           {}", m.task)?;
            writeln!(out, "flow           {}", m.flow.as_deref().unwrap_or("-"))?;
            writeln!(out, "flow run       {}", m.flow_run_id.as_deref().unwrap_or("-"))?;
            writeln!(out, "task run       {}", m.task_run_id)?;
            writeln!(out, "created        {}", when(m.created_at))?;
            writeln!(
                out,
                "expires        {}",
                m.expires_at.map(when).unwrap_or_else(|| "never".into())
            )?;
            writeln!(out, "serializer     {}", m.serializer)?;
            writeln!(
                out,
                "size           {} stored, {} serialized{}",
                bytesize::ByteSize::b(m.size),
                bytesize::ByteSize::b(m.raw_size),
                m.compression.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
            )?;
            writeln!(out, "blob           {}", m.blob)?;
            writeln!(
                out,
                "cache_version  {}",
                if m.cache_version.is_empty() {
                    "-"
                } else {
                    &m.cache_version
                }
            )?;
            writeln!(out, "code hash      {}", m.code_hash.as_deref().unwrap_or("-"))?;
            writeln!(
                out,
                "source in key  {}",
                if m.source_hash.is_some() {
                    "yes (inputs+source)"
                } else {
                    "no"
                }
            )?;
            writeln!(out, "inputs")?;
            for i in &m.inputs {
                writeln!(out, "  {:<12} {}", i.name, i.digest)?;
            }
        }
        CacheCommand::Rm { key } => {
            let (store, _) = open_store().await?;
            let m = find_entry(store.as_ref(), &key).await?;
            let key: CacheKey = m.key.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            store.remove(&key).await?;
            writeln!(out, "removed {} ({})", m.key, short_task(&m.task))?;
        }
        CacheCommand::Gc {
            older_than,
            max_size,
            dry_run,
            grace,
            json,
        } => {
            let (store, location) = open_store().await?;
            let older = older_than
                .map(|s| weir_types::duration::parse(&s))
                .transpose()?
                .map(|d| d.as_micros() as i64);
            let max = max_size
                .map(|s| {
                    s.trim()
                        .parse::<bytesize::ByteSize>()
                        .map_err(|e| anyhow::anyhow!("invalid --max-size '{s}': {e}"))
                })
                .transpose()?
                .map(|b| b.as_u64());
            let grace = weir_types::duration::parse(&grace)?.as_micros() as i64;
            let report = store
                .gc(
                    GcOptions {
                        older_than_micros: older,
                        max_size: max,
                        dry_run,
                        grace_micros: grace,
                    },
                    now_micros(),
                )
                .await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
                return Ok(());
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            writeln!(
                out,
                "{location}: {verb} {} entries and {} blobs ({}); kept {} entries",
                report.entries_removed,
                report.blobs_removed,
                bytesize::ByteSize::b(report.bytes_freed),
                report.entries_kept
            )?;
        }
        CacheCommand::Stats { json } => {
            let (store, location) = open_store().await?;
            let stats = store.stats(now_micros()).await?;
            let Runs::Counts { counts, remote } = runs else {
                bail!("internal: cache stats without run counts")
            };
            let count = |s: CacheStatus| counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n).unwrap_or(0);
            #[derive(Serialize)]
            struct Stats {
                location: String,
                entries: usize,
                expired: usize,
                blobs: usize,
                bytes: u64,
                hits: u64,
                misses: u64,
                refreshes: u64,
            }
            let s = Stats {
                location,
                entries: stats.entries,
                expired: stats.expired,
                blobs: stats.blobs,
                bytes: stats.bytes,
                hits: count(CacheStatus::Hit),
                misses: count(CacheStatus::Miss),
                refreshes: count(CacheStatus::Refreshed),
            };
            if json {
                serde_json::to_writer_pretty(&mut out, &s)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "store     {}", s.location)?;
            writeln!(out, "entries   {} ({} expired)", s.entries, s.expired)?;
            writeln!(out, "data      {} in {} blobs", bytesize::ByteSize::b(s.bytes), s.blobs)?;
            let lookups = s.hits + s.misses;
            let rate = if lookups == 0 {
                0.0
            } else {
                s.hits as f64 * 100.0 / lookups as f64
            };
            writeln!(
                out,
                "task runs {} hits, {} misses ({rate:.0}% hit rate), {} refreshed  (recorded {})",
                s.hits,
                s.misses,
                s.refreshes,
                if remote { "on the server" } else { "on this machine" }
            )?;
        }
        CacheCommand::Explain { json, .. } => {
            let Runs::OfTask(task_runs) = runs else {
                bail!("internal: cache explain without task runs")
            };
            let (store, _) = open_store().await?;
            let explanation = explain(store.as_ref(), &task_runs).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &explanation)?;
                writeln!(out)?;
            } else {
                for line in &explanation.lines {
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    Ok(())
}

/// What `explain` found.
#[derive(Serialize)]
pub struct Explanation {
    pub task_run_id: String,
    pub cache_status: CacheStatus,
    /// The entry the miss is compared with.
    pub compared_with: Option<String>,
    /// Input names whose value changed, appeared or disappeared.
    pub changed_inputs: Vec<String>,
    pub code_changed: bool,
    pub lines: Vec<String>,
}

async fn explain(store: &dyn ResultStore, task_runs: &[TaskRunRecord]) -> anyhow::Result<Explanation> {
    // The first run of the task that did not hit, else the first one.
    let tr = task_runs
        .iter()
        .find(|t| t.cache_status != CacheStatus::Hit)
        .unwrap_or(&task_runs[0]);
    let mut e = Explanation {
        task_run_id: tr.id.to_string(),
        cache_status: tr.cache_status,
        compared_with: None,
        changed_inputs: Vec::new(),
        code_changed: false,
        lines: Vec::new(),
    };
    let name = &tr.task_name;
    match tr.cache_status {
        CacheStatus::Disabled => {
            e.lines
                .push(format!("{name} is not cached (cache = \"none\"): it runs every time"));
            return Ok(e);
        }
        CacheStatus::Hit => {
            e.lines.push(format!(
                "{name} ({}) was a cache hit: nothing to explain",
                tr.id.short()
            ));
            return Ok(e);
        }
        CacheStatus::Refreshed => {
            e.lines.push(format!(
                "{name} ({}) was recomputed on request (refresh_cache / WEIR_REFRESH_CACHE), not because anything changed",
                tr.id.short()
            ));
            return Ok(e);
        }
        CacheStatus::Miss => {}
    }
    let Some(key) = tr.cache_key.as_deref().and_then(|k| k.parse::<CacheKey>().ok()) else {
        e.lines
            .push(format!("{name} ({}) has no cache key recorded", tr.id.short()));
        return Ok(e);
    };
    let Some(this) = store.entry(&key).await? else {
        e.lines.push(format!(
            "{name} ({}) missed, and wrote no entry ({}): its inputs are unknown to the store",
            tr.id.short(),
            if tr.state.is_success() {
                "it was removed since"
            } else {
                "the run did not complete"
            }
        ));
        return Ok(e);
    };
    let earlier = store
        .entries()
        .await?
        .into_iter()
        .filter(|m| m.task == this.task && m.key != this.key && m.created_at <= this.created_at)
        .max_by_key(|m| m.created_at);
    let Some(prev) = earlier else {
        e.lines.push(format!(
            "{name} ({}) missed: the store has no earlier entry of {} — it never ran with any inputs before (or its entries were removed)",
            tr.id.short(),
            this.task
        ));
        return Ok(e);
    };
    e.compared_with = Some(prev.key.clone());
    let ago = format_micros(this.created_at - prev.created_at);
    e.lines.push(format!(
        "{name} ({}) missed; compared with the nearest earlier entry {} (written {ago} before):",
        tr.id.short(),
        prev.key.get(..12).unwrap_or(&prev.key)
    ));
    if prev.cache_version != this.cache_version {
        e.code_changed = true;
        e.lines.push(format!(
            "  cache_version changed: \"{}\" -> \"{}\"",
            prev.cache_version, this.cache_version
        ));
    }
    if prev.source_hash != this.source_hash {
        e.code_changed = true;
        e.lines
            .push("  the task's code changed (its source hash differs)".to_string());
    }
    for input in &this.inputs {
        match prev.inputs.iter().find(|p| p.name == input.name) {
            Some(p) if p.digest == input.digest => {}
            Some(p) => {
                e.changed_inputs.push(input.name.clone());
                e.lines.push(format!(
                    "  input `{}` changed ({}… -> {}…)",
                    input.name,
                    p.digest.get(..8).unwrap_or(""),
                    input.digest.get(..8).unwrap_or("")
                ));
            }
            None => {
                e.changed_inputs.push(input.name.clone());
                e.lines.push(format!("  input `{}` is new", input.name));
            }
        }
    }
    for p in &prev.inputs {
        if !this.inputs.iter().any(|i| i.name == p.name) {
            e.changed_inputs.push(p.name.clone());
            e.lines.push(format!("  input `{}` was removed", p.name));
        }
    }
    if !e.code_changed && e.changed_inputs.is_empty() {
        e.lines.push(
            "  nothing in the key differs: the matching entry was missing, expired or unreadable at the time"
                .to_string(),
        );
    }
    Ok(e)
}
