//! Shell tasks: a program in any language run as a weir task run.
//!
//! [`shell`] builds one; awaiting it runs the child in its own process group, streams its
//! stdout and stderr lines into the task run's logs as they come, and returns its stdout
//! (or, with [`Shell::json`], stdout parsed as JSON). Records, retries, timeouts and the
//! cache are the engine's, exactly as for a `#[weir::task]`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cache::KeyMaterial;
use crate::task::{Backoff, CachePolicy, TaskCall, TaskSpec};
use crate::{Artifact, OnDuplicate};

/// A log line longer than this is cut (and says so).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// How much stdout is kept as the result; more fails the task (write big outputs to a file).
pub const MAX_STDOUT_BYTES: usize = 64 * 1024 * 1024;
/// How many of the last stderr lines a failure quotes…
pub const STDERR_TAIL_LINES: usize = 20;
/// …each cut to this many bytes.
pub const STDERR_TAIL_LINE_BYTES: usize = 2048;
/// Parameters whose JSON is longer go to a file named by `WEIR_PARAMETERS_FILE` instead
/// (the kernel refuses single environment strings over 128 KiB).
pub const MAX_PARAMETERS_ENV_BYTES: usize = 64 * 1024;
/// Default time between SIGTERM and SIGKILL when a child's process group is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Distinct (name, cache, retries, timeout) combinations a process may use; each keeps one
/// task description for the life of the process.
const MAX_SPECS: usize = 4096;

/// Characters that make [`shell`] run its command through `sh -c` rather than directly.
const SHELL_CHARS: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~', '=', '{', '}', '\n',
    '%', '!',
];

/// A shell task: the program `command` names, run as a task run.
///
/// The command is split on whitespace and run directly (no shell) unless it contains one of
/// `| & ; < > ( ) $ \` \ " ' * ? [ ] # ~ = { } % !` or a newline, in which case it runs as
/// `sh -c COMMAND`. [`Shell::argv`] never uses a shell.
///
/// ```no_run
/// #[weir::flow]
/// async fn nightly(day: String) -> anyhow::Result<String> {
///     let out = weir::shell("julia --project run.jl")
///         .env("DAY", &day)
///         .current_dir("/srv/model")
///         .timeout(std::time::Duration::from_secs(3600))
///         .input_file("config", "/srv/model/config.toml")
///         .cache(true)
///         .await?;
///     Ok(out)
/// }
/// ```
pub fn shell(command: impl Into<String>) -> Shell {
    let line: String = command.into();
    let program = if line.contains(SHELL_CHARS) {
        Program::Shell(line)
    } else {
        Program::Argv(line.split_whitespace().map(str::to_string).collect())
    };
    Shell::with(program)
}

#[derive(Clone, Debug, Serialize)]
enum Program {
    /// Run as `sh -c LINE`.
    Shell(String),
    /// Program and arguments, no shell.
    Argv(Vec<String>),
}

impl Program {
    fn display(&self) -> String {
        match self {
            Program::Shell(line) => line.clone(),
            Program::Argv(argv) => argv.join(" "),
        }
    }
}

/// The builder [`shell`] returns. Await it (or call [`Shell::call`] for a [`TaskCall`] to
/// `submit`) to run it.
#[derive(Clone, Debug)]
#[must_use = "a shell task does nothing until it is awaited"]
pub struct Shell {
    program: Program,
    env: BTreeMap<String, String>,
    current_dir: Option<PathBuf>,
    input_files: BTreeMap<String, PathBuf>,
    timeout: Option<Duration>,
    kill_grace: Duration,
    cache: bool,
    retries: u32,
    retry_delay: Duration,
    name: Option<String>,
}

/// What a cached shell task's key is made of (file inputs by their contents).
#[derive(Serialize)]
struct KeyDoc<'a> {
    program: &'a Program,
    env: &'a BTreeMap<String, String>,
    current_dir: &'a Option<PathBuf>,
    input_files: BTreeMap<&'a str, Artifact>,
    /// `text` or `json`: the two outputs are stored differently.
    output: &'static str,
}

impl Shell {
    /// A program and its arguments, run without a shell.
    pub fn argv<I, S>(argv: I) -> Shell
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Shell::with(Program::Argv(argv.into_iter().map(Into::into).collect()))
    }

    fn with(program: Program) -> Shell {
        Shell {
            program,
            env: BTreeMap::new(),
            current_dir: None,
            input_files: BTreeMap::new(),
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            cache: false,
            retries: 0,
            retry_delay: Duration::from_secs(1),
            name: None,
        }
    }

    /// Sets an environment variable for the child (part of the cache key).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Shell {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The child's working directory (part of the cache key).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Shell {
        self.current_dir = Some(dir.into());
        self
    }

    /// A file the program reads, named: part of the cache key by its contents (like a
    /// [`Artifact`] input), and handed to the child as `WEIR_INPUT_<NAME>` (upper case).
    pub fn input_file(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Shell {
        self.input_files.insert(name.into(), path.into());
        self
    }

    /// An attempt running longer is stopped (its whole process group: SIGTERM, then SIGKILL
    /// after the grace) and counts as `TimedOut`.
    pub fn timeout(mut self, limit: Duration) -> Shell {
        self.timeout = Some(limit);
        self
    }

    /// Time between SIGTERM and SIGKILL when the child is stopped (default 5 s).
    pub fn kill_grace(mut self, grace: Duration) -> Shell {
        self.kill_grace = grace;
        self
    }

    /// Cache the result by the command, its env, working directory and input files' contents
    /// (off by default, as for tasks).
    pub fn cache(mut self, on: bool) -> Shell {
        self.cache = on;
        self
    }

    /// Retry a failed or timed-out attempt this many times, `delay` apart.
    pub fn retries(mut self, retries: u32, delay: Duration) -> Shell {
        self.retries = retries;
        self.retry_delay = delay;
        self
    }

    /// The task name shown in records (default: the program's file name).
    pub fn name(mut self, name: impl Into<String>) -> Shell {
        self.name = Some(name.into());
        self
    }

    /// The task call whose result is the child's stdout, as text (invalid UTF-8 replaced).
    pub fn call(self) -> TaskCall<String> {
        self.build("text", |bytes| Ok(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The task call whose result is the child's stdout parsed as JSON.
    pub fn json<T>(self) -> TaskCall<T>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        self.build("json", |bytes| {
            serde_json::from_slice(&bytes).map_err(|source| anyhow::Error::new(ShellError::Json { source }))
        })
    }

    fn build<T>(self, output: &'static str, parse: fn(Vec<u8>) -> anyhow::Result<T>) -> TaskCall<T>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let name = self.name.clone().unwrap_or_else(|| self.default_name());
        let spec = match spec_for(SpecCfg {
            name,
            cache: self.cache,
            retries: self.retries,
            retry_delay: self.retry_delay,
            timeout: self.timeout,
        }) {
            Ok(spec) => spec,
            Err(e) => {
                let fallback = fallback_spec();
                return TaskCall::__new(fallback, move || {
                    let e = e.clone();
                    Box::pin(async move { Err(anyhow::Error::new(e)) })
                });
            }
        };
        let job = Arc::new(self);
        let attempt = {
            let job = job.clone();
            move || -> BoxFuture<'static, anyhow::Result<T>> {
                let job = job.clone();
                Box::pin(async move { parse(job.run_once().await?) })
            }
        };
        if !job.cache {
            return TaskCall::__new(spec, attempt);
        }
        let key = KeyMaterial::recording_files(|| {
            let doc = KeyDoc {
                program: &job.program,
                env: &job.env,
                current_dir: &job.current_dir,
                input_files: job
                    .input_files
                    .iter()
                    .map(|(k, p)| (k.as_str(), Artifact::from_path(p)))
                    .collect(),
                output,
            };
            KeyMaterial::custom(weir_cache::canonical::digest(&doc))
        });
        TaskCall::__cached(spec, key, attempt)
    }

    fn default_name(&self) -> String {
        let first = match &self.program {
            Program::Argv(argv) => argv.first().map(String::as_str),
            Program::Shell(line) => line.split_whitespace().next(),
        };
        let base = first
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if base.is_empty() { "shell".into() } else { base }
    }

    /// One attempt: spawns the child, streams its output, waits for it.
    async fn run_once(&self) -> Result<Vec<u8>, ShellError> {
        let shown = self.program.display();
        let mut cmd = match &self.program {
            Program::Shell(line) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(line);
                c
            }
            Program::Argv(argv) => {
                let Some((program, args)) = argv.split_first() else {
                    return Err(ShellError::Empty);
                };
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                c
            }
        };
        cmd.envs(&self.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        for (name, path) in &self.input_files {
            cmd.env(format!("WEIR_INPUT_{}", env_name(name)), path);
        }
        let _params_file = self.weir_env(&mut cmd)?;

        let mut child = cmd.spawn().map_err(|error| ShellError::Spawn {
            command: shown.clone(),
            error,
        })?;
        // Stops the whole group when this attempt ends for any reason: the command exited
        // (stragglers it left behind), a timeout or the flow dropped this future.
        let _group = child.id().and_then(|id| i32::try_from(id).ok()).map(|pgid| GroupGuard {
            pgid,
            grace: self.kill_grace,
        });
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ShellError::Io(std::io::Error::other("child pipes missing")));
        };
        let mut out = Lines::new(Stream::Stdout);
        let mut err = Lines::new(Stream::Stderr);
        let (a, b) = tokio::join!(pump(stdout, &mut out), pump(stderr, &mut err));
        a.and(b).map_err(ShellError::Io)?;
        let status = child.wait().await.map_err(ShellError::Io)?;
        let tail = err.tail();
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            return Err(match (status.code(), status.signal()) {
                (Some(code), _) => ShellError::Exit {
                    command: shown,
                    code,
                    tail,
                },
                (None, Some(signal)) => ShellError::Signal {
                    command: shown,
                    signal: signal_name(signal),
                    tail,
                },
                (None, None) => ShellError::Exit {
                    command: shown,
                    code: -1,
                    tail,
                },
            });
        }
        if out.overflowed {
            return Err(ShellError::StdoutTooLarge);
        }
        Ok(out.captured)
    }

    /// `WEIR_*` variables for the child; returns the parameters file, if one was needed, to
    /// keep it alive until the child is done.
    fn weir_env(&self, cmd: &mut tokio::process::Command) -> Result<Option<tempfile::TempPath>, ShellError> {
        if let Some(engine) = crate::engine::try_get() {
            if let Some(url) = &engine.settings.api_url {
                cmd.env("WEIR_API_URL", url);
            }
            if let Some(key) = &engine.settings.api_key {
                cmd.env("WEIR_API_KEY", key);
            }
        }
        let Some(scope) = crate::context::current() else {
            return Ok(None);
        };
        if let Some((id, _)) = scope.task {
            cmd.env("WEIR_TASK_RUN_ID", id.to_string());
        }
        let Some(flow) = scope.flow else {
            return Ok(None);
        };
        cmd.env("WEIR_FLOW_RUN_ID", flow.id.to_string());
        let params = serde_json::to_string(&*flow.params).map_err(|e| ShellError::Io(std::io::Error::other(e)))?;
        if params.len() <= MAX_PARAMETERS_ENV_BYTES {
            cmd.env("WEIR_PARAMETERS", params);
            return Ok(None);
        }
        let mut file = tempfile::Builder::new()
            .prefix("weir-parameters-")
            .suffix(".json")
            .tempfile()
            .map_err(ShellError::Io)?;
        std::io::Write::write_all(&mut file, params.as_bytes()).map_err(ShellError::Io)?;
        let path = file.into_temp_path();
        cmd.env("WEIR_PARAMETERS_FILE", &*path);
        Ok(Some(path))
    }
}

impl IntoFuture for Shell {
    type Output = Result<String, crate::TaskError>;
    type IntoFuture = TaskCall<String>;

    fn into_future(self) -> TaskCall<String> {
        self.call()
    }
}

/// Why a shell task's attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("empty command")]
    Empty,
    #[error("could not start `{command}`: {error}")]
    Spawn { command: String, error: std::io::Error },
    #[error("`{command}` exited with code {code}{}", tail_text(tail))]
    Exit { command: String, code: i32, tail: String },
    #[error("`{command}` was killed by {signal}{}", tail_text(tail))]
    Signal {
        command: String,
        signal: String,
        tail: String,
    },
    #[error("stdout over {} MiB: write large outputs to a file instead", MAX_STDOUT_BYTES >> 20)]
    StdoutTooLarge,
    #[error("stdout is not valid JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("too many distinct shell task configurations in one process (at most {MAX_SPECS})")]
    TooManySpecs,
    #[error("reading the child's output: {0}")]
    Io(#[source] std::io::Error),
}

impl Clone for ShellError {
    fn clone(&self) -> ShellError {
        match self {
            ShellError::TooManySpecs => ShellError::TooManySpecs,
            other => ShellError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

fn tail_text(tail: &str) -> String {
    if tail.is_empty() {
        " (stderr was empty)".into()
    } else {
        format!("; last lines of stderr:\n{tail}")
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("{name} (signal {signal})")
}

fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Sends SIGTERM to a process group when dropped, and SIGKILL after the grace if any of it
/// is still there (from a short-lived thread: a drop cannot wait).
struct GroupGuard {
    pgid: i32,
    grace: Duration,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pid) = rustix::process::Pid::from_raw(self.pgid) else {
            return;
        };
        if rustix::process::test_kill_process_group(pid).is_err() {
            return; // every process of the group has exited
        }
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        let grace = self.grace;
        let spawned = std::thread::Builder::new()
            .name("weir-shell-kill".into())
            .spawn(move || {
                let deadline = std::time::Instant::now() + grace;
                while std::time::Instant::now() < deadline {
                    if rustix::process::test_kill_process_group(pid).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            });
        if spawned.is_err() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Splits a child's output into bounded lines, logs each, and keeps what the task needs
/// (stdout whole, up to its cap; stderr's last lines).
struct Lines {
    stream: Stream,
    line: Vec<u8>,
    /// Bytes of the current line past [`MAX_LINE_BYTES`], dropped.
    cut: usize,
    captured: Vec<u8>,
    overflowed: bool,
    tail: VecDeque<String>,
}

impl Lines {
    fn new(stream: Stream) -> Lines {
        Lines {
            stream,
            line: Vec::new(),
            cut: 0,
            captured: Vec::new(),
            overflowed: false,
            tail: VecDeque::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if matches!(self.stream, Stream::Stdout) {
            if self.captured.len() + bytes.len() <= MAX_STDOUT_BYTES {
                self.captured.extend_from_slice(bytes);
            } else {
                self.overflowed = true;
            }
        }
        while !bytes.is_empty() {
            let (part, rest, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.cut += part.len() - keep;
            if ends {
                self.emit();
            }
            bytes = rest;
        }
    }

    fn emit(&mut self) {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        if self.cut > 0 {
            text.push_str(&format!(" …[truncated by weir: {} more bytes]", self.cut));
        }
        match self.stream {
            Stream::Stdout => tracing::info!(target: "shell::stdout", "{text}"),
            Stream::Stderr => {
                tracing::info!(target: "shell::stderr", "{text}");
                let mut short = text;
                if short.len() > STDERR_TAIL_LINE_BYTES {
                    let mut end = STDERR_TAIL_LINE_BYTES;
                    while !short.is_char_boundary(end) {
                        end -= 1;
                    }
                    short.truncate(end);
                    short.push('…');
                }
                if self.tail.len() == STDERR_TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(short);
            }
        }
        self.line.clear();
        self.cut = 0;
    }

    fn finish(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }

    fn tail(&self) -> String {
        self.tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, lines: &mut Lines) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            lines.finish();
            return Ok(());
        }
        lines.feed(&buf[..n]);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SpecCfg {
    name: String,
    cache: bool,
    retries: u32,
    retry_delay: Duration,
    timeout: Option<Duration>,
}

fn key_path() -> &'static str {
    "weir::shell"
}

/// Task descriptions are `'static` (the engine and its records hold them): one is made per
/// distinct configuration and kept, at most [`MAX_SPECS`] of them.
fn spec_for(cfg: SpecCfg) -> Result<&'static TaskSpec, ShellError> {
    static SPECS: OnceLock<Mutex<HashMap<SpecCfg, &'static TaskSpec>>> = OnceLock::new();
    let mut specs = SPECS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(spec) = specs.get(&cfg) {
        return Ok(spec);
    }
    if specs.len() >= MAX_SPECS {
        return Err(ShellError::TooManySpecs);
    }
    let spec: &'static TaskSpec = Box::leak(Box::new(TaskSpec {
        name: Box::leak(cfg.name.clone().into_boxed_str()),
        path: "weir::shell",
        key_path,
        source_hash: "",
        cache: if cfg.cache {
            CachePolicy::Custom
        } else {
            CachePolicy::None
        },
        cache_version: "1",
        cache_expiration: None,
        refresh_cache: false,
        format: weir_cache::Format::Json,
        retries: cfg.retries,
        retry_delay: cfg.retry_delay,
        backoff: Backoff::Fixed,
        jitter: 0.0,
        timeout: cfg.timeout,
        blocking: false,
        params: &[],
        isolation: cfg.cache,
        compression: None,
        result_key: None,
        on_duplicate: OnDuplicate::Skip,
    }));
    specs.insert(cfg, spec);
    Ok(spec)
}

fn fallback_spec() -> &'static TaskSpec {
    static SPEC: TaskSpec = TaskSpec {
        name: "shell",
        path: "weir::shell",
        key_path,
        source_hash: "",
        cache: CachePolicy::None,
        cache_version: "1",
        cache_expiration: None,
        refresh_cache: false,
        format: weir_cache::Format::Json,
        retries: 0,
        retry_delay: Duration::ZERO,
        backoff: Backoff::Fixed,
        jitter: 0.0,
        timeout: None,
        blocking: false,
        params: &[],
        isolation: false,
        compression: None,
        result_key: None,
        on_duplicate: OnDuplicate::Skip,
    };
    &SPEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_directly_and_shell_syntax_uses_sh() {
        assert!(matches!(shell("julia --project run.jl").program, Program::Argv(ref a) if a.len() == 3));
        assert!(matches!(shell("echo $HOME").program, Program::Shell(_)));
        assert!(matches!(shell("a | b").program, Program::Shell(_)));
        assert!(matches!(shell("FOO=1 cmd").program, Program::Shell(_)));
    }

    #[test]
    fn long_lines_are_cut_and_say_so() {
        let mut l = Lines::new(Stream::Stderr);
        l.feed(&vec![b'x'; MAX_LINE_BYTES + 10]);
        l.feed(b"\nshort\n");
        assert_eq!(l.tail.len(), 2);
        assert_eq!(l.tail[1], "short");
        assert!(l.tail[0].ends_with('…'));
    }
}
