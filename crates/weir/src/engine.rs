//! The process-wide engine: settings, the result store, and where run state is recorded.
//!
//! Started lazily by the first flow or task. Recording goes through a [`Transport`]; today
//! the only one is the embedded SQLite writer, and a server client will be the second.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use weir_cache::{Compression, OpenOptions, ResultStore};
use weir_state::{Event, Writer};
use weir_types::FlowRunId;

use crate::console::Console;
use crate::settings::{CONFIGURED, Settings};

/// Where run state goes. One code path records state; transports only carry it.
/// Events carry the root flow run they belong to, so a loss is reported to that flow run's
/// flush and no other.
pub(crate) trait Transport: Send + Sync {
    /// Queues an event; may wait while the transport's bounded queue is full (backpressure).
    fn send(&self, root: Option<FlowRunId>, event: Event);
    /// Resolves once everything sent so far is durable (or handed to a spool); an error
    /// reports what of `root`'s records was lost.
    fn flush(&self, root: Option<FlowRunId>) -> BoxFuture<'_, Result<(), String>>;
}

impl Transport for Writer {
    fn send(&self, root: Option<FlowRunId>, event: Event) {
        Writer::send_for(self, root, event)
    }
    fn flush(&self, root: Option<FlowRunId>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { Writer::flush_run(self, root).await.map_err(|e| e.to_string()) })
    }
}

pub(crate) struct Engine {
    pub settings: Settings,
    pub store: Option<Arc<dyn ResultStore>>,
    pub transport: Option<Box<dyn Transport>>,
    pub hostname: String,
    pub pid: u32,
    pub console: Console,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

pub(crate) fn started() -> bool {
    ENGINE.get().is_some()
}

/// The engine, if it has started (for the log layer, which must not start it).
pub(crate) fn try_get() -> Option<&'static Engine> {
    ENGINE.get()
}

/// The engine, starting it on first use.
pub(crate) fn get() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let settings = CONFIGURED.get().cloned().unwrap_or_else(Settings::from_env);
        let console = Console::new(settings.progress);
        crate::logging::install(&settings.log_filter);
        // Problems here must not stop the user's flow: without a store tasks run uncached,
        // without a database runs are not recorded. Both are reported once, plainly.
        let opts = OpenOptions {
            fsync: settings.fsync,
            compression: if settings.compression {
                Compression::Zstd
            } else {
                Compression::None
            },
            local_tier: settings.local_cache.clone(),
        };
        let opened = match settings.results.strip_prefix("block:") {
            // A store named by a block (dev and prod profiles resolve one flow to their own
            // buckets): fetched from the server, credentials and all.
            Some(spec) => crate::blocks::resolve_store(&settings, spec).and_then(|r| {
                weir_cache::open_with_credentials(&r.location, &opts, r.credentials.as_ref()).map_err(|e| e.to_string())
            }),
            None => weir_cache::open(&settings.results, &opts).map_err(|e| e.to_string()),
        };
        let store: Option<Arc<dyn ResultStore>> = match opened {
            Ok(s) => Some(s),
            Err(e) => {
                console.line(&format!("weir: warning: result cache disabled: {e}"));
                None
            }
        };
        let remote = settings.api_url.as_deref().map(|url| {
            weir_client::Client::new(url, settings.api_key.clone())
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    crate::remote::HttpTransport::start(c, settings.spool_dir.clone()).map_err(|e| e.to_string())
                })
        });
        let transport: Option<Box<dyn Transport>> = match (remote, &settings.state_db) {
            (Some(Ok(t)), _) => Some(Box::new(t)),
            (Some(Err(e)), _) => {
                console.line(&format!("weir: warning: runs will not be recorded on the server: {e}"));
                None
            }
            (None, None) => None,
            (None, Some(path)) => match Writer::start(path) {
                Ok(w) => Some(Box::new(w)),
                Err(e) => {
                    console.line(&format!("weir: warning: runs will not be recorded: {e}"));
                    None
                }
            },
        };
        Engine {
            settings,
            store,
            transport,
            hostname: hostname(),
            pid: std::process::id(),
            console,
        }
    })
}

impl Engine {
    /// Records an event of the run tree under `root`.
    pub fn record(&self, root: Option<FlowRunId>, event: Event) {
        if let Some(t) = &self.transport {
            t.send(root, event);
        }
    }

    /// Waits for `root`'s records; an error says what of them was lost.
    pub async fn flush(&self, root: Option<FlowRunId>) -> Result<(), String> {
        match &self.transport {
            Some(t) => t.flush(root).await,
            None => Ok(()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
