//! Reading and checking query and path parameters, shared by every resource.

use serde::Deserialize;
use utoipa::IntoParams;
use weir_types::State;

use crate::error::ApiError;

/// Paging of name-ordered lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NamePageQuery {
    /// Page size, 1–1000 (default 100).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (a name).
    #[param(value_type = String, required = false, max_length = 256, pattern = r"^[^\u0000]*$")]
    pub cursor: Option<String>,
}

impl NamePageQuery {
    /// The cursor, checked as documented.
    pub(crate) fn cursor(&self) -> Result<&str, ApiError> {
        let c = self.cursor.as_deref().unwrap_or("");
        check_text("cursor", c, 256)?;
        Ok(c)
    }
}

/// A state name exactly as the document's enum spells it (`Failed`, not `failed`).
pub(crate) fn state_param(s: Option<String>) -> Result<Option<State>, ApiError> {
    s.map(|s| {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ApiError::invalid(weir_types::state::UnknownState(s).to_string(), Some("state".into())))
    })
    .transpose()
}

/// Parses parameter `field` as the id of a `what` (`flow run`, `task run`).
pub(crate) fn id_param<T: std::str::FromStr>(s: &str, field: &str, what: &str) -> Result<T, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            format!("{field}: '{s}' is not a {what} id (a UUID)"),
            Some(field.to_string()),
        )
    })
}

/// Text within `max` characters (Unicode scalar values: what JSON Schema's `maxLength`
/// counts, so the OpenAPI document can state the limit exactly) and without NUL.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    // Fewer bytes than the limit are fewer characters too: count only when it can matter.
    if value.len() > max && value.chars().count() > max {
        return Err(ApiError::invalid(
            format!("{field} is longer than {max} characters"),
            Some(field.to_string()),
        ));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid(
            format!("{field} contains a NUL character"),
            Some(field.to_string()),
        ));
    }
    Ok(())
}

/// Query parameters parsed like bodies are: a bad or unknown parameter is a JSON 422 that
/// names it, never axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let message = e.inner().to_string();
            let path = e.path().to_string();
            // Unknown and repeated names are reported at the top level: take the name from
            // serde's message ("unknown field `x`, expected …").
            let field = if path == "." {
                message.split('`').nth(1).map(str::to_string)
            } else {
                Some(path)
            };
            let shown = field.as_deref().unwrap_or("the query string");
            ApiError::invalid(format!("query parameter {shown}: {message}"), field)
        })
    }
}

/// A number parameter within its documented range.
pub(crate) fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<Option<T>, ApiError> {
    match value {
        Some(v) if v < min || v > max => Err(ApiError::invalid(
            format!("{field} must be between {min} and {max}, not {v}"),
            Some(field.to_string()),
        )),
        v => Ok(v),
    }
}

/// Path parameters with the same JSON 422 as query parameters (axum's `Path` answers a
/// plain-text 400, for bytes that are not UTF-8 say). Imported as `Path` by the handlers.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::{ErrorKind, Path};
        use axum::extract::rejection::PathRejection;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let shown = field.as_deref().unwrap_or("the path");
                Err(ApiError::invalid(
                    format!("path parameter {shown}: {}", e.body_text()),
                    field,
                ))
            }
            Err(e) => Err(ApiError::invalid(e.body_text(), None)),
        }
    }
}
