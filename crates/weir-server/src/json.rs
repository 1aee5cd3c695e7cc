//! Request bodies: size-limited, strictly parsed, with the failing field named.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body accepted (4 MiB); larger ones get 413.
pub const BODY_LIMIT: usize = 4 << 20;

/// A JSON body parsed with the failing field's path reported in errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(len) = req.headers().get(axum::http::header::CONTENT_LENGTH)
            && let Some(len) = len.to_str().ok().and_then(|s| s.parse::<usize>().ok())
            && len > BODY_LIMIT
        {
            return Err(ApiError::TooLarge(BODY_LIMIT));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(BODY_LIMIT)
            } else {
                ApiError::invalid(format!("unreadable body: {e}"), None)
            }
        })?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(ApiError::invalid("the body is not valid UTF-8", None));
        }
        // The common case, a valid body, is parsed without tracking the path (a batch of
        // 2,000 events is parsed at ingest speed); only a refused one is parsed again to name
        // the failing field.
        if let Ok(v) = serde_json::from_slice::<T>(&bytes) {
            return Ok(ApiJson(v));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(v) => {
                de.end()
                    .map_err(|e| ApiError::invalid(format!("trailing data after the JSON body: {e}"), None))?;
                Ok(ApiJson(v))
            }
            Err(e) => {
                let path = e.path().to_string();
                let field = (path != ".").then_some(path);
                Err(ApiError::invalid(format!("invalid body: {}", e.inner()), field))
            }
        }
    }
}
