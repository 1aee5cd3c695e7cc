//! `tracing` integration: log lines printed with their flow and task run, and recorded with
//! that run in the state database.
//!
//! The engine installs this as the global subscriber when none is set. A program with its
//! own subscriber adds [`layer`] to it to get the same recording.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use weir_types::LogRecord;

use crate::context;

/// The weir layer: prints events with run context and records them with their run.
pub fn layer<S: Subscriber>() -> impl Layer<S> {
    WeirLayer
}

pub(crate) fn install(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Fails only if the program installed its own subscriber first, which it may.
    let _ = tracing_subscriber::registry().with(filter).with(WeirLayer).try_init();
}

struct WeirLayer;

#[derive(Default)]
struct Message {
    message: String,
    fields: String,
}

impl Message {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if name == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            let _ = write!(self.fields, " {name}={value}");
        }
    }

    fn text(self) -> String {
        self.message + &self.fields
    }
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field.name(), format_args!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field.name(), format_args!("{value}"));
    }
}

fn clock() -> String {
    let now = weir_types::time::now();
    let tz = jiff::tz::TimeZone::system();
    now.to_zoned(tz).strftime("%H:%M:%S%.3f").to_string()
}

/// weir's own crates, by exact crate name: a user crate called `weirdata` is not weir.
const WEIR_CRATES: &[&str] = &[
    "weir",
    "weir_cache",
    "weir_state",
    "weir_client",
    "weir_types",
    "weir_macros",
];

/// Whether a `tracing` target belongs to one of weir's own crates.
fn is_weir_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    WEIR_CRATES.contains(&krate)
}

impl<S: Subscriber> Layer<S> for WeirLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut msg = Message::default();
        event.record(&mut msg);
        let scope = context::current();
        let level = *meta.level();

        let mut line = format!("{} {:<5} ", clock(), level.as_str());
        if let Some(scope) = &scope {
            if let Some(flow) = &scope.flow {
                let _ = write!(line, "{}[{}] ", flow.name, flow.id.short());
            }
            if let Some((task_run, task_name)) = &scope.task {
                let _ = write!(line, "{task_name}[{}] ", task_run.short());
            }
        }
        let text = msg.text();
        line.push_str(&text);

        let Some(engine) = crate::engine::try_get() else {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
            return;
        };
        engine.console.line(&line);

        // weir's own progress lines are states, already recorded as such; its warnings
        // (a corrupt cache entry, say) belong with the run.
        let is_engine_chatter = is_weir_target(meta.target()) && level > Level::WARN;
        if let Some(scope) = scope.filter(|_| !is_engine_chatter) {
            let root = scope.flow.as_ref().map(|f| f.root);
            engine.record(
                root,
                weir_state::Event::Log(LogRecord {
                    flow_run_id: scope.flow.as_ref().map(|f| f.id),
                    task_run_id: scope.task.map(|t| t.0),
                    at: weir_types::time::now_micros(),
                    level: level.as_str().to_string(),
                    target: meta.target().to_string(),
                    message: text,
                }),
            );
        }
    }
}
