//! `weir runs ls | show | logs`.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;
use weir_state::{FlowRunFilter, StateDb};
use weir_types::config::Paths;
use weir_types::time::{format_micros, from_micros};
use weir_types::{FlowRunRecord, LogRecord, State, StateRecord, TaskRunRecord};

#[derive(Subcommand)]
pub enum RunsCommand {
    /// List flow runs, newest first.
    Ls {
        /// Only runs in this state (Completed, Failed, Running, …).
        #[arg(long)]
        state: Option<State>,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// At most this many runs (0 for all).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one flow run: parameters, state, and a table of its task runs.
    Show {
        /// The run id, or a unique prefix or suffix of it (the short id in `weir runs ls`).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the logs of a flow run and its task runs.
    Logs {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// Where runs are read from: the server when `WEIR_API_URL` is set, else this machine's
/// embedded database.
pub(crate) enum Source {
    Local(StateDb),
    Remote(weir_client::Client, tokio::runtime::Runtime),
}

impl Source {
    pub(crate) fn open() -> anyhow::Result<Source> {
        let home = Paths::from_env().home;
        match weir_types::profile::try_lookup(&home, "api_url")? {
            Some((url, _)) => {
                let key = weir_types::profile::try_lookup(&home, "api_key")?.map(|(k, _)| k);
                let client = weir_client::Client::new(&url, key)?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                Ok(Source::Remote(client, rt))
            }
            None => Ok(Source::Local(open_db()?)),
        }
    }

    fn list(&self, filter: &FlowRunFilter) -> anyhow::Result<Vec<FlowRunRecord>> {
        match self {
            Source::Local(db) => Ok(db.list_flow_runs(filter)?),
            Source::Remote(c, rt) => {
                let mut q = Vec::new();
                let state = filter.state.map(|s| s.as_str().to_string());
                if let Some(s) = &state {
                    q.push(("state", s.as_str()));
                }
                if let Some(f) = &filter.flow_name {
                    q.push(("flow", f.as_str()));
                }
                // `--limit 0` means every run: page through them all.
                let max = (filter.limit > 0).then_some(filter.limit);
                Ok(rt.block_on(c.all_flow_runs(&q, max))?)
            }
        }
    }

    pub(crate) fn find(&self, wanted: &str) -> anyhow::Result<FlowRunRecord> {
        match self {
            Source::Local(db) => Ok(db.find_flow_run(wanted)?),
            Source::Remote(c, rt) => {
                if let Ok(id) = wanted.parse::<weir_types::FlowRunId>() {
                    return Ok(rt.block_on(c.flow_run(id))?);
                }
                let hex: String = wanted
                    .chars()
                    .filter(|c| *c != '-')
                    .collect::<String>()
                    .to_ascii_lowercase();
                if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    anyhow::bail!("'{wanted}' is not a run id (expected hex digits and dashes)");
                }
                // Every run, not only the newest page: an old run's prefix must resolve too,
                // and a prefix shared with an old run must be reported as ambiguous.
                let all = rt.block_on(c.all_flow_runs(&[], None))?;
                let found: Vec<_> = all
                    .into_iter()
                    .filter(|r| {
                        let s = r.id.0.simple().to_string();
                        s.starts_with(&hex) || s.ends_with(&hex)
                    })
                    .collect();
                match found.len() {
                    0 => anyhow::bail!("no flow run matches '{wanted}' (list runs with `weir runs ls`)"),
                    1 => Ok(found.into_iter().next().context("one run")?),
                    n => anyhow::bail!("'{wanted}' matches {n} flow runs; give more digits"),
                }
            }
        }
    }

    pub(crate) fn task_runs(&self, id: weir_types::FlowRunId) -> anyhow::Result<Vec<TaskRunRecord>> {
        match self {
            Source::Local(db) => Ok(db.task_runs(id)?),
            Source::Remote(c, rt) => Ok(rt.block_on(c.task_runs(id))?),
        }
    }

    /// How many task runs had each cache status.
    pub(crate) fn cache_counts(&self) -> anyhow::Result<Vec<(weir_types::CacheStatus, u64)>> {
        match self {
            Source::Local(db) => Ok(db.cache_counts()?),
            Source::Remote(c, rt) => Ok(rt
                .block_on(c.cache_counts())?
                .into_iter()
                .map(|(s, n)| (weir_types::CacheStatus::parse(&s), n))
                .collect()),
        }
    }

    fn subflows(&self, id: weir_types::FlowRunId) -> anyhow::Result<Vec<FlowRunRecord>> {
        match self {
            Source::Local(db) => Ok(db.subflow_runs(id)?),
            Source::Remote(c, rt) => {
                let parent = id.to_string();
                let mut runs = rt.block_on(c.all_flow_runs(&[("parent", &parent)], None))?;
                runs.reverse();
                Ok(runs)
            }
        }
    }

    fn states(&self, id: weir_types::FlowRunId) -> anyhow::Result<Vec<StateRecord>> {
        match self {
            Source::Local(db) => Ok(db.states(id)?),
            Source::Remote(c, rt) => {
                let mut all = rt.block_on(c.flow_run_states(id))?;
                for t in rt.block_on(c.task_runs(id))? {
                    all.extend(t.history.into_iter().map(|h| StateRecord {
                        flow_run_id: Some(id),
                        task_run_id: Some(t.id),
                        state: h.state,
                        at: h.at,
                        message: h.message,
                    }));
                }
                all.sort_by_key(|s| s.at);
                Ok(all)
            }
        }
    }

    fn logs(&self, id: weir_types::FlowRunId) -> anyhow::Result<Vec<LogRecord>> {
        match self {
            Source::Local(db) => Ok(db.logs(id)?),
            Source::Remote(c, rt) => Ok(rt.block_on(c.logs(id))?),
        }
    }
}

fn open_db() -> anyhow::Result<StateDb> {
    let path = Paths::from_env().state_db;
    if !path.exists() {
        anyhow::bail!(
            "no runs recorded yet: {} does not exist (run a flow first, or set WEIR_HOME / WEIR_STATE_DB)",
            path.display()
        );
    }
    StateDb::open_existing(&path).with_context(|| format!("opening {}", path.display()))
}

pub fn run(cmd: RunsCommand) -> anyhow::Result<()> {
    let mut db = Source::open()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // Runs whose process died are recorded as Crashed before anything is read, so filters
    // (`--state Crashed`) see them too.
    if let Source::Local(local) = &mut db
        && let Err(e) = local.mark_crashed_runs(&host)
    {
        eprintln!("weir: warning: could not record crashed runs: {e}");
    }
    let mut out = std::io::stdout().lock();
    match cmd {
        RunsCommand::Ls {
            state,
            flow,
            limit,
            json,
        } => {
            let mut runs = db.list(&FlowRunFilter {
                state,
                flow_name: flow,
                limit,
            })?;
            runs.iter_mut().for_each(|r| mark_crashed(r, &host));
            if json {
                serde_json::to_writer_pretty(&mut out, &runs)?;
                writeln!(out)?;
                return Ok(());
            }
            if runs.is_empty() {
                writeln!(out, "no flow runs match")?;
                return Ok(());
            }
            let mut t = table(&["ID", "FLOW", "STATE", "STARTED", "DURATION", "PARENT"]);
            for r in &runs {
                t.add_row(vec![
                    r.id.short(),
                    r.flow_name.clone(),
                    r.state.to_string(),
                    when(r.started_at.unwrap_or(r.created_at)),
                    duration(r.started_at, r.ended_at),
                    r.parent_flow_run_id.map(|p| p.short()).unwrap_or_default(),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        RunsCommand::Show { id, json } => {
            let mut run = db.find(&id)?;
            mark_crashed(&mut run, &host);
            let tasks = db.task_runs(run.id)?;
            let subflows = db.subflows(run.id)?;
            if json {
                #[derive(Serialize)]
                struct Show<'a> {
                    flow_run: &'a FlowRunRecord,
                    task_runs: &'a [TaskRunRecord],
                    subflow_runs: &'a [FlowRunRecord],
                    states: Vec<StateRecord>,
                }
                let show = Show {
                    flow_run: &run,
                    task_runs: &tasks,
                    subflow_runs: &subflows,
                    states: db.states(run.id)?,
                };
                serde_json::to_writer_pretty(&mut out, &show)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "flow run   {} ({})", run.id, run.flow_name)?;
            writeln!(out, "state      {}", run.state)?;
            writeln!(out, "parameters {}", run.parameters)?;
            writeln!(out, "started    {}", when(run.started_at.unwrap_or(run.created_at)))?;
            writeln!(out, "duration   {}", duration(run.started_at, run.ended_at))?;
            writeln!(out, "host       {} (pid {})", run.hostname, run.pid)?;
            if let Some(p) = run.parent_flow_run_id {
                writeln!(out, "parent     {p}")?;
            }
            if let Some(e) = &run.error {
                writeln!(out, "error      {e}")?;
            }
            if !subflows.is_empty() {
                writeln!(out, "\nsubflow runs")?;
                let mut t = table(&["ID", "FLOW", "STATE", "DURATION"]);
                for s in &subflows {
                    t.add_row(vec![
                        s.id.short(),
                        s.flow_name.clone(),
                        s.state.to_string(),
                        duration(s.started_at, s.ended_at),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
            writeln!(out, "\ntask runs ({})", tasks.len())?;
            if !tasks.is_empty() {
                let mut t = table(&["ID", "TASK", "STATE", "DURATION", "CACHE", "ATTEMPTS", "ERROR"]);
                for tr in &tasks {
                    t.add_row(vec![
                        tr.id.short(),
                        tr.task_name.clone(),
                        tr.state.to_string(),
                        duration(tr.started_at.or(Some(tr.created_at)), tr.ended_at),
                        tr.cache_status.as_str().to_string(),
                        tr.attempt.to_string(),
                        tr.error.as_deref().map(first_line).unwrap_or_default(),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
        RunsCommand::Logs { id, json } => {
            let run = db.find(&id)?;
            let logs = db.logs(run.id)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &logs)?;
                writeln!(out)?;
                return Ok(());
            }
            if logs.is_empty() {
                writeln!(out, "flow run {} has no log lines", run.id)?;
            }
            let names: std::collections::HashMap<_, _> =
                db.task_runs(run.id)?.into_iter().map(|t| (t.id, t.task_name)).collect();
            for LogRecord {
                task_run_id,
                at,
                level,
                message,
                ..
            } in &logs
            {
                let who = match task_run_id {
                    Some(t) => format!("{}[{}]", names.get(t).map(String::as_str).unwrap_or("task"), t.short()),
                    None => format!("{}[{}]", run.flow_name, run.id.short()),
                };
                writeln!(out, "{} {level:<5} {who} {message}", when(*at))?;
            }
        }
    }
    Ok(())
}

/// A run left Running by a process that no longer exists on this host crashed (for runs
/// read from a server, which has no process start time to compare; local runs were
/// marked in the database already).
fn mark_crashed(run: &mut FlowRunRecord, host: &str) {
    let unfinished = matches!(run.state, State::Running | State::Pending);
    if unfinished && run.hostname == host && !weir_state::process_alive(run.pid, None) {
        run.state = State::Crashed;
        run.error
            .get_or_insert_with(|| format!("process {} exited before the run finished", run.pid));
    }
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header.to_vec());
    t
}

pub(crate) fn when(us: i64) -> String {
    let tz = jiff::tz::TimeZone::system();
    from_micros(us).to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format_micros(e - s),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(59).collect::<String>())
    } else {
        line.to_string()
    }
}
