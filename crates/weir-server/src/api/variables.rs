//! `/variables`: small named JSON values.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::params::{ApiPath as Path, ApiQuery, NamePageQuery, in_range};
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_variables))
        .routes(routes!(get_variable, put_variable, delete_variable))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct VariablePage {
    pub items: Vec<Variable>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Variable {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)]
    pub name: String,
    pub value: serde_json::Value,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableValue {
    pub value: serde_json::Value,
}

fn check_var_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("'{name}' is not a variable name (letters, digits, '_', '-', '.'; at most 128)"),
            Some("name".into()),
        ))
    }
}

/// Variables, by name.
#[utoipa::path(get, path = "/variables", params(NamePageQuery),
    responses((status = 200, body = VariablePage), (status = 422, body = ErrorBody)))]
async fn list_variables(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<NamePageQuery>,
) -> Result<Json<VariablePage>, ApiError> {
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    let mut items: Vec<Variable> = app
        .db
        .variables(q.cursor()?, limit + 1)
        .await?
        .into_iter()
        .map(|(name, value, updated_at)| Variable {
            name,
            value,
            updated_at,
        })
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|v| v.name.clone()).unwrap_or_default()
    });
    Ok(Json(VariablePage { items, next_cursor }))
}

/// One variable.
#[utoipa::path(get, path = "/variables/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 200, body = Variable), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_variable(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<Json<Variable>, ApiError> {
    check_var_name(&name)?;
    let (value, updated_at) = app.db.variable(&name).await?;
    Ok(Json(Variable {
        name,
        value,
        updated_at,
    }))
}

/// Sets a variable (a small named JSON value, at most 64 KiB).
#[utoipa::path(put, path = "/variables/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)), request_body = VariableValue,
    responses((status = 200, body = Variable), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_variable(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(v): ApiJson<VariableValue>,
) -> Result<Json<Variable>, ApiError> {
    check_var_name(&name)?;
    if v.value.to_string().len() > 65536 {
        return Err(ApiError::invalid(
            "a variable holds at most 64 KiB of JSON",
            Some("value".into()),
        ));
    }
    let now = weir_types::time::now_micros();
    app.db.put_variable(&name, &v.value, now).await?;
    Ok(Json(Variable {
        name,
        value: v.value,
        updated_at: now,
    }))
}

/// Deletes a variable.
#[utoipa::path(delete, path = "/variables/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_variable(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    check_var_name(&name)?;
    if app.db.delete_variable(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no variable '{name}'")))
    }
}
