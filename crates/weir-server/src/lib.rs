//! The weir server: run metadata (never user code) behind a REST API, in SQLite or
//! PostgreSQL.
//!
//! - [`db`]: the database, one set of queries for both engines;
//! - [`api`]: the `/api/v1` handlers and the OpenAPI document generated from them;
//! - [`error`] and [`json`]: JSON errors and strict, size-limited request bodies;
//! - `auth`: the API key check;
//! - [`secrets`]: the key that encrypts blocks' secret fields;
//! - [`serve`]: binds, applies the API key rule, serves (TLS when given a certificate), and
//!   drains requests in flight on SIGTERM.

pub mod api;
mod auth;
pub mod db;
pub mod error;
pub mod json;
pub mod scheduler;
pub mod secrets;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;

pub use db::Db;
pub use error::ApiError;

#[derive(OpenApi)]
#[openapi(info(
    title = "weir",
    description = "Run metadata of weir flows: flow runs, task runs, states, logs, variables; blocks (typed, versioned configuration documents with encrypted secret fields)."
))]
struct ApiDoc;

/// How long a stopping server waits for requests in flight before closing their
/// connections. Log followers (`follow=…`) are answered at once when the server stops.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// A PEM certificate chain and its private key, for serving HTTPS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to run the server.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Every request must carry `Authorization: Bearer <key>` when set. Never empty.
    pub api_key: Option<String>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The scheduler's and claims' settings (heartbeat timeout, late grace period).
    pub scheduler: scheduler::Options,
    /// Encrypts blocks' secret fields; `None`: a random key for this run only (tests).
    pub secret_key: Option<secrets::SecretKey>,
}

/// Why the server would not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0} without an API key: set WEIR_API_KEY, or pass --insecure if this network is trusted"
    )]
    Insecure(SocketAddr),
    #[error("the API key is empty: give a real key, or none (on loopback only)")]
    EmptyKey,
    #[error("cannot use the TLS certificate {} and key {}: {message}", .files.cert.display(), .files.key.display())]
    Tls { files: TlsFiles, message: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "the secret key (fingerprint {given}) is not the one the stored block secrets are encrypted with (fingerprint {stored}): start with that key (WEIR_SECRET_KEY or the key file), or rotate with `weir server rotate-secret-key`"
    )]
    WrongSecretKey { given: String, stored: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The whole application: `/api/v1/…` and `/api/v1/openapi.json`, with the scheduler
/// running beside it (call inside a tokio runtime). Blocks' secrets are encrypted with a
/// random key of this process (see [`app_with_secret_key`]).
pub fn app(db: Db, api_key: Option<String>) -> Router {
    app_with_options(db, api_key, scheduler::Options::default())
}

/// [`app`] with scheduler settings.
pub fn app_with_options(db: Db, api_key: Option<String>, opts: scheduler::Options) -> Router {
    let state = api::AppState::with_options(db, opts);
    state.spawn_background();
    app_with(state, api_key)
}

/// [`app`] encrypting blocks' secrets with `secret_key`.
pub fn app_with_secret_key(db: Db, api_key: Option<String>, secret_key: secrets::SecretKey) -> Router {
    app_with(api::AppState::new(db).with_secret_key(secret_key), api_key)
}

fn app_with(mut state: api::AppState, api_key: Option<String>) -> Router {
    state.api_key_set = api_key.is_some();
    let (api, mut doc) = api::routes().split_for_parts();
    let mut openapi = ApiDoc::openapi();
    openapi.paths = std::mem::take(&mut doc.paths);
    openapi.components = doc.components.take();
    openapi.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let mut openapi_json = serde_json::to_value(&openapi).unwrap_or_default();
    if api_key.is_some() {
        require_key_in_doc(&mut openapi_json);
    }
    let api = api
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = openapi_json.clone();
                async move { axum::Json(doc) }
            }),
        )
        .with_state(state)
        .layer(middleware::from_fn_with_state(api_key, auth::require_key))
        // The handlers check the limit themselves (413 with a JSON body); this only stops
        // axum from buffering more than that.
        .layer(DefaultBodyLimit::max(json::BODY_LIMIT + 1));
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::NotFound("no such endpoint (the API is under /api/v1)".into()) })
        // One line per request (method, path, status, latency) at INFO; 5xx at ERROR; its
        // start at DEBUG.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                .on_failure(DefaultOnFailure::new().level(Level::ERROR)),
        )
}

/// With an API key, the document says so: a bearer scheme required by every operation, each
/// of which may answer 401 (the key is checked before any handler runs).
fn require_key_in_doc(doc: &mut serde_json::Value) {
    use serde_json::json;
    doc["components"]["securitySchemes"]["bearer"] = json!({"type": "http", "scheme": "bearer"});
    doc["security"] = json!([{"bearer": []}]);
    let unauthorized = json!({
        "description": "Missing or wrong API key",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(|p| p.as_object_mut())
            .flat_map(|p| p.values_mut())
        {
            if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
                responses.insert("401".into(), unauthorized.clone());
            }
        }
    }
}

/// Connects, migrates, binds and serves until SIGTERM or Ctrl-C, then drains (see
/// [`DRAIN_LIMIT`]). `ready` receives the bound address (useful with port 0).
pub async fn serve(
    cfg: ServerConfig,
    addr: SocketAddr,
    insecure: bool,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    serve_until(cfg, addr, insecure, ready, stop_signal()).await
}

/// SIGTERM (what service managers send) or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn load_tls(files: &TlsFiles) -> Result<axum_server::tls_rustls::RustlsConfig, StartError> {
    // Two rustls crypto providers are linked into this binary (ring and aws-lc-rs, through
    // different dependencies): rustls picks none by itself then, so name one. Another part
    // of the process may have installed one already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
        .await
        .map_err(|e| StartError::Tls {
            files: files.clone(),
            message: e.to_string(),
        })
}

/// [`serve`], stopping when `stop` completes instead of on a signal.
pub async fn serve_until(
    cfg: ServerConfig,
    addr: SocketAddr,
    insecure: bool,
    ready: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if cfg.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(StartError::EmptyKey);
    }
    if !addr.ip().is_loopback() && cfg.api_key.is_none() && !insecure {
        return Err(StartError::Insecure(addr));
    }
    let tls = match &cfg.tls {
        Some(files) => Some(load_tls(files).await?),
        None => None,
    };
    let db = Db::connect(&cfg.database_url).await?;
    // Without a key (tests), a throwaway one: it is not recorded at start, so a restart
    // with another throwaway key still starts (its block writes are then refused).
    let secret_key = cfg.secret_key.clone().unwrap_or_else(secrets::SecretKey::random);
    if cfg.secret_key.is_some() && !db.check_secret_key(&secret_key).await? {
        let stored = db.stored_key_fingerprint().await?.unwrap_or_default();
        return Err(StartError::WrongSecretKey {
            given: secret_key.fingerprint(),
            stored,
        });
    }
    let bind_err = |source| StartError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let state = api::AppState::with_options(db, cfg.scheduler.clone()).with_secret_key(secret_key);
    state.spawn_background();
    let stopping = Arc::clone(&state.stopping);
    // The peer's address lets blocks reveal secrets to this machine's clients only.
    let app = app_with(state, cfg.api_key).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::info!(
                "stopping: no new connections; waiting up to {} s for requests in flight",
                DRAIN_LIMIT.as_secs()
            );
            stopping.stop();
            handle.graceful_shutdown(Some(DRAIN_LIMIT));
        });
    }
    ready(bound);
    let served = match tls {
        None => {
            axum_server::from_tcp(listener)
                .map_err(bind_err)?
                .handle(handle)
                .serve(app)
                .await
        }
        Some(tls) => {
            axum_server::from_tcp_rustls(listener, tls)
                .map_err(bind_err)?
                .handle(handle)
                .serve(app)
                .await
        }
    };
    served.map_err(|source| StartError::Bind { addr: bound, source })?;
    tracing::info!("stopped");
    Ok(())
}
