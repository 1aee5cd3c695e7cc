//! API errors: `{"error": {"code", "message", "field"}}` with the right status, and
//! how database errors become them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid { message: String, field: Option<String> },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("missing or wrong API key (send `Authorization: Bearer <key>`)")]
    Unauthorized,
    /// Authenticated (or not needing to be) but not allowed this.
    #[error("{0}")]
    Forbidden(String),
    /// The database is unreachable; the detail went to the server's log under `id`.
    #[error("the database is unavailable (error id {id}; the server's log has the details)")]
    Unavailable { id: String },
    /// A server-side failure; the detail went to the server's log under `id`.
    #[error("internal error (error id {id}; the server's log has the details)")]
    Internal { id: String },
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `not_found`, `conflict`, `too_large`, `unauthorized`, `forbidden`, `unavailable`, `internal`.
    pub code: &'static str,
    pub message: String,
    /// The offending field of the request, for `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `unavailable` and `internal`: find the details in the server's log by this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, field: impl Into<Option<String>>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            field: field.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// A short id that ties a client's error answer to the server's log line.
fn error_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_string()
}

impl From<sqlx::Error> for ApiError {
    /// Database text (SQL, table names, hosts, credentials in a URL) stays in the server's
    /// log; the client gets a generic message and the id to find it.
    fn from(e: sqlx::Error) -> ApiError {
        let id = error_id();
        let unavailable = match &e {
            // The database went away (restart, network): the client may retry later.
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => db.message().contains("terminating connection"),
            _ => false,
        };
        if unavailable {
            tracing::warn!(error_id = %id, "database unavailable: {e}");
            ApiError::Unavailable { id }
        } else {
            tracing::error!(error_id = %id, "database error: {e}");
            ApiError::Internal { id }
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::NotFound(m) => ApiError::NotFound(m),
            DbError::Conflict(m) => ApiError::Conflict(m),
            DbError::Invalid { message, field } => ApiError::invalid(message, Some(field.to_string())),
            DbError::Sqlx(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let field = match &self {
            ApiError::Invalid { field, .. } => field.clone(),
            _ => None,
        };
        let error_id = match &self {
            ApiError::Unavailable { id } | ApiError::Internal { id } => Some(id.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                field,
                error_id,
            },
        };
        (status, Json(body)).into_response()
    }
}
