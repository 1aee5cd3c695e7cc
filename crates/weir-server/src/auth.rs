//! The API key: every request carries `Authorization: Bearer <key>` when the server has one.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Answers 401 unless the request carries the key, compared in constant time. An empty key
/// (which `serve` refuses to start with) matches nothing: the check fails closed.
pub(crate) async fn require_key(State(key): State<Option<String>>, req: Request, next: Next) -> Response {
    if let Some(key) = key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if key.is_empty() || !constant_time_eq::constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}
