//! The weir server: run metadata (never user code) behind a REST API, in SQLite or
//! PostgreSQL.
//!
//! - [`db`]: the database, one set of queries for both engines;
//! - [`api`]: the `/api/v1` handlers and the OpenAPI document generated from them;
//! - [`error`] and [`json`]: JSON errors and strict, size-limited request bodies;
//! - `auth`: the API key check;
//! - [`serve`]: binds, applies the API key rule, and runs.

pub mod api;
mod auth;
pub mod db;
pub mod error;
pub mod json;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use tokio::net::TcpListener;
use utoipa::OpenApi;

pub use db::Db;
pub use error::ApiError;

#[derive(OpenApi)]
#[openapi(info(
    title = "weir",
    description = "Run metadata of weir flows: flow runs, task runs, states, logs, variables."
))]
struct ApiDoc;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Every request must carry `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
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
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The whole application: `/api/v1/…` and `/api/v1/openapi.json`.
pub fn app(db: Db, api_key: Option<String>) -> Router {
    let state = api::AppState {
        db,
        new_logs: Default::default(),
    };
    let (api, mut doc) = api::routes().split_for_parts();
    let mut openapi = ApiDoc::openapi();
    openapi.paths = std::mem::take(&mut doc.paths);
    openapi.components = doc.components.take();
    openapi.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let openapi_json = serde_json::to_value(&openapi).unwrap_or_default();
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
}

/// Connects, migrates, binds and serves until the process is stopped. `ready` receives the
/// bound address (useful with port 0).
pub async fn serve(
    cfg: ServerConfig,
    addr: SocketAddr,
    insecure: bool,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    if cfg.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(StartError::EmptyKey);
    }
    if !addr.ip().is_loopback() && cfg.api_key.is_none() && !insecure {
        return Err(StartError::Insecure(addr));
    }
    let db = Db::connect(&cfg.database_url).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    ready(bound);
    axum::serve(listener, app(db, cfg.api_key))
        .await
        .map_err(|source| StartError::Bind { addr: bound, source })
}
