//! What a running flow shows on stderr: a live progress line in a terminal, plain lines
//! otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::context::Counters;
use crate::settings::ProgressMode;

pub(crate) struct Console {
    live: bool,
    multi: MultiProgress,
}

impl Console {
    pub fn new(mode: ProgressMode) -> Console {
        let live = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Always => true,
            ProgressMode::Never => false,
        };
        let target = if live {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Console {
            live,
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// Prints one line to stderr, above any live progress line.
    pub fn line(&self, text: &str) {
        let write = || {
            // A closed stderr is not worth failing a flow over.
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        };
        if self.live {
            self.multi.suspend(write);
        } else {
            write();
        }
    }

    /// Starts the live line of a root flow run, if stderr is live.
    pub fn progress(&self, flow: &str, counters: Arc<Counters>) -> Option<Progress> {
        // The ticker is a tokio task: without a runtime there is no live line (and the
        // flow reports that it needs one).
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if !self.live {
            return None;
        }
        let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(style);
        bar.set_prefix(flow.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        let ticker_bar = bar.clone();
        let ticker = runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                ticker_bar.set_message(summary(&counters));
            }
        });
        Some(Progress { bar, ticker })
    }
}

/// `3 done · 1 running · 0 failed · 2 cached`
pub(crate) fn summary(counters: &Counters) -> String {
    let [running, completed, cached, failed] = counters.snapshot();
    format!(
        "{} done · {running} running · {failed} failed · {cached} cached",
        completed + cached
    )
}

pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
