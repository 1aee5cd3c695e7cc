//! The second transport: run state sent to a weir server (`WEIR_API_URL`).
//!
//! Events go into a channel (never blocking the task that records them) and a background
//! thread posts them in batches. A batch that fails for a transient reason (server
//! restarting, database down) is retried with backoff; retries are safe because the server
//! treats snapshots as idempotent proposals and deduplicates logs. A flush resolves once
//! everything sent before it was accepted, or reports what was lost.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use weir_client::Client;
use weir_types::Event;

use crate::engine::Transport;

// Events dominate the channel; boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event),
    Flush(oneshot::Sender<Result<(), String>>),
}

pub(crate) struct HttpTransport {
    tx: mpsc::UnboundedSender<Msg>,
}

/// How long one batch is retried before its events are given up (and reported).
const RETRY_FOR: Duration = Duration::from_secs(60);
const MAX_BATCH: usize = 2000;

impl HttpTransport {
    pub fn start(client: Client) -> std::io::Result<HttpTransport> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name("weir-api-reporter".into())
            .spawn(move || rt.block_on(run(client, rx)))?;
        Ok(HttpTransport { tx })
    }
}

async fn post_with_retry(client: &Client, batch: &[Event]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut wait = Duration::from_millis(100);
    loop {
        match client.post_events(batch).await {
            Ok(result) => {
                for r in &result.rejected {
                    tracing::warn!(target: "weir::remote", "the server refused a state change: {}", r.message);
                }
                return Ok(());
            }
            Err(e) if e.is_transient() && tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!(target: "weir::remote", "reporting to {} failed ({e}); retrying", client.base_url());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(format!(
                    "{} events not recorded on {}: {e}",
                    batch.len(),
                    client.base_url()
                ));
            }
        }
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut batch = Vec::new();
    let mut waiters = Vec::new();
    let mut lost: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            if let Err(e) = post_with_retry(&client, &batch).await {
                lost = Some(e);
            }
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(match lost.take() {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
    }
}

impl Transport for HttpTransport {
    fn send(&self, _root: Option<weir_types::FlowRunId>, event: Event) {
        let _ = self.tx.send(Msg::Event(event));
    }

    fn flush(&self, _root: Option<weir_types::FlowRunId>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            self.tx
                .send(Msg::Flush(done))
                .map_err(|_| "the server reporter has stopped".to_string())?;
            wait.await
                .map_err(|_| "the server reporter stopped before flushing".to_string())?
        })
    }
}
