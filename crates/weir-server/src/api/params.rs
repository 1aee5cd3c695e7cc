//! Reading and checking query and path parameters, shared by every resource.

use serde::Deserialize;
use utoipa::IntoParams;
use weir_types::State;

use crate::error::ApiError;

/// Paging of name-ordered lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NamePageQuery {
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

pub(crate) fn state_param(s: Option<String>) -> Result<Option<State>, ApiError> {
    s.map(|s| {
        s.parse()
            .map_err(|e: weir_types::state::UnknownState| ApiError::invalid(e.to_string(), Some("state".into())))
    })
    .transpose()
}

pub(crate) fn id_param<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            format!("'{s}' is not a {what} id (a UUID)"),
            Some(what.replace(' ', "_")),
        )
    })
}

pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(
            format!("{field} is longer than {max} bytes"),
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
