//! A Rust client of the weir server's REST API (`/api/v1`), used by flows (to report
//! runs), the CLI and tests.
//!
//! ```no_run
//! # async fn f() -> Result<(), weir_client::ClientError> {
//! let client = weir_client::Client::new("http://127.0.0.1:4200", None)?;
//! let page = client.flow_runs(&[("state", "Failed")]).await?;
//! for run in page.items {
//!     println!("{} {}", run.id.short(), run.flow_name);
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_types::config::redact_url;
use weir_types::{Event, FlowRunId, FlowRunRecord, LogRecord, TaskRunRecord};

/// The error body the server sends.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiErrorDetail {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL '{0}' (expected http://host:port)")]
    Url(String),
    #[error("the server answered {status}: {}", detail.message)]
    Api { status: u16, detail: ApiErrorDetail },
    #[error("could not reach the server at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
    /// A block cannot be used as asked (wrong type for the purpose, bad address).
    #[error("{0}")]
    Block(String),
}

impl ClientError {
    /// Worth retrying later (the server or its database is unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What the server did with a batch of events.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BatchResult {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct LogPage {
    items: Vec<LogRecord>,
    last_seq: i64,
}

/// Lines per page when reading a run's logs (the server's largest page).
const LOG_PAGE: usize = 5000;

/// True when `url` is plain HTTP to a host other than this machine: a key sent there
/// crosses the network readable by anyone on the path.
pub fn key_in_clear(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    if u.scheme() != "http" {
        return false;
    }
    let host = u.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.is_empty() && !host.eq_ignore_ascii_case("localhost"),
    }
}

/// Once per process: every client of that server would say the same.
fn warn_key_in_clear(base: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "sending the API key over plain HTTP to {base}: anyone on the network path can read it; \
             serve TLS (`weir server start --tls-cert … --tls-key …`) and use an https:// URL"
        );
    }
}

/// A connection to one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `base` with any password masked, for messages.
    shown: String,
    key: Option<String>,
}

impl Client {
    /// `url` is the server's address (`http://127.0.0.1:4200`), with or without `/api/v1`.
    pub fn new(url: &str, api_key: Option<String>) -> Result<Client, ClientError> {
        let trimmed = url.trim().trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(ClientError::Url(url.to_string()));
        }
        let base = if trimmed.ends_with("/api/v1") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/api/v1")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ClientError::Transport {
                url: redact_url(&base),
                source,
            })?;
        let key = api_key.filter(|k| !k.is_empty());
        if key.is_some() && key_in_clear(&base) {
            warn_key_in_clear(&redact_url(&base));
        }
        let shown = redact_url(&base);
        Ok(Client { http, base, shown, key })
    }

    /// The server's address for messages (any password in it masked).
    pub fn base_url(&self) -> &str {
        &self.shown
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        let body = self.send_raw(req, url).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: redact_url(url),
            message: e.to_string(),
        })
    }

    /// Sends, and answers the body of a successful answer (an error answer as an error).
    async fn send_raw(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, ClientError> {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        // Messages name the URL without its password (an API URL may carry basic auth).
        let unreachable = |source: reqwest::Error| ClientError::Transport {
            url: redact_url(url),
            source: source.without_url(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct Wrapper {
                error: ApiErrorDetail,
            }
            let detail = serde_json::from_slice::<Wrapper>(&body)
                .map(|w| w.error)
                .unwrap_or_else(|_| ApiErrorDetail {
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&body).chars().take(500).collect(),
                    field: None,
                });
            return Err(ClientError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        Ok(body.to_vec())
    }

    /// Records events (run snapshots, states, logs). Retrying a batch is safe.
    pub async fn post_events(&self, events: &[Event]) -> Result<BatchResult, ClientError> {
        #[derive(Serialize)]
        struct Batch<'a> {
            events: &'a [Event],
        }
        let url = format!("{}/events", self.base);
        self.send(self.http.post(&url).json(&Batch { events }), &url).await
    }

    /// Records a batch of events already serialized as the body of `POST /events`
    /// (`{"events": [...]}`), waiting at most `timeout` for the answer. The SDK's reporter
    /// uses this: it measures and spools events as bytes.
    pub async fn post_events_json(&self, body: Vec<u8>, timeout: Duration) -> Result<BatchResult, ClientError> {
        let url = format!("{}/events", self.base);
        let req = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(req, &url).await
    }

    /// Lists flow runs; `query` holds filters (`state`, `flow`, `tag`, `limit`, `cursor`…).
    pub async fn flow_runs(&self, query: &[(&str, &str)]) -> Result<Page<FlowRunRecord>, ClientError> {
        let url = format!("{}/flow_runs", self.base);
        self.send(self.http.get(&url).query(query), &url).await
    }

    pub async fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRecord, ClientError> {
        let url = format!("{}/flow_runs/{id}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// The state history of a flow run (its own states; task runs carry theirs).
    pub async fn flow_run_states(&self, id: FlowRunId) -> Result<Vec<weir_types::StateRecord>, ClientError> {
        let url = format!("{}/flow_runs/{id}/states", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// Every task run of a flow run.
    pub async fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRecord>, ClientError> {
        let url = format!("{}/task_runs", self.base);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let id = flow_run.to_string();
            let mut q = vec![("flow_run_id", id.as_str()), ("limit", "1000")];
            if let Some(c) = &cursor {
                q.push(("cursor", c.as_str()));
            }
            let page: Page<TaskRunRecord> = self.send(self.http.get(&url).query(&q), &url).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// How many task runs had each cache status (`hit`, `miss`, …).
    pub async fn cache_counts(&self) -> Result<Vec<(String, u64)>, ClientError> {
        #[derive(Deserialize)]
        struct Count {
            cache_status: String,
            count: u64,
        }
        let url = format!("{}/cache_counts", self.base);
        let counts: Vec<Count> = self.send(self.http.get(&url), &url).await?;
        Ok(counts.into_iter().map(|c| (c.cache_status, c.count)).collect())
    }

    /// Every flow run matching `query` (filters as in [`Client::flow_runs`]), newest first,
    /// through every page; at most `max` when given.
    pub async fn all_flow_runs(
        &self,
        query: &[(&str, &str)],
        max: Option<usize>,
    ) -> Result<Vec<FlowRunRecord>, ClientError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let want = max.map(|m| m - out.len()).unwrap_or(500).clamp(1, 500).to_string();
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("limit", &want));
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let page = self.flow_runs(&q).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) if max.is_none_or(|m| out.len() < m) => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// The log lines of a flow run, oldest first: every line, page after page.
    pub async fn logs(&self, flow_run: FlowRunId) -> Result<Vec<LogRecord>, ClientError> {
        let url = format!("{}/flow_runs/{flow_run}/logs", self.base);
        let mut out = Vec::new();
        let mut after = 0i64;
        loop {
            let q = [("limit", LOG_PAGE.to_string()), ("after", after.to_string())];
            let page: LogPage = self.send(self.http.get(&url).query(&q), &url).await?;
            let n = page.items.len();
            out.extend(page.items);
            if n < LOG_PAGE || page.last_seq <= after {
                return Ok(out);
            }
            after = page.last_seq;
        }
    }
}

mod blocks;
pub use blocks::ResolvedStore;

#[cfg(test)]
mod tests {
    use super::key_in_clear;

    #[test]
    fn a_key_is_in_clear_only_over_plain_http_to_another_host() {
        assert!(key_in_clear("http://10.0.0.5:4200/api/v1"));
        assert!(key_in_clear("http://weir.example.com/api/v1"));
        assert!(!key_in_clear("https://weir.example.com/api/v1"));
        assert!(!key_in_clear("http://127.0.0.1:4200/api/v1"));
        assert!(!key_in_clear("http://[::1]:4200/api/v1"));
        assert!(!key_in_clear("http://localhost:4200/api/v1"));
    }
}
