//! `/deployments`: registering deployments (`weir deploy`), pausing them, and starting runs
//! of them with parameters validated against the flow's schema.

use axum::Json;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::deployment::{CreateRun, Deployment, DeploymentSpec};
use weir_types::{FlowRunId, FlowRunRecord};

use super::AppState;
use super::params::{ApiQuery, NamePageQuery, check_text, in_range};
use crate::db::{NewRun, PutOutcome};
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::scheduler;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_deployments))
        .routes(routes!(get_deployment, put_deployment, delete_deployment))
        .routes(routes!(pause_deployment))
        .routes(routes!(resume_deployment))
        .routes(routes!(create_run))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DeploymentPage {
    pub items: Vec<Deployment>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Names of deployments and work pools: `[A-Za-z0-9_.-]{1,128}`.
pub(super) fn check_name(what: &str, field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("'{name}' is not a {what} name (letters, digits, '_', '-', '.'; at most 128)"),
            Some(field.to_string()),
        ))
    }
}

fn check_spec(path_name: &str, s: &DeploymentSpec) -> Result<(), ApiError> {
    check_name("deployment", "name", &s.name)?;
    if s.name != path_name {
        return Err(ApiError::invalid(
            format!(
                "the body names deployment '{}' but the path names '{path_name}'",
                s.name
            ),
            Some("name".into()),
        ));
    }
    check_text("flow", &s.flow, 256)?;
    if s.flow.is_empty() {
        return Err(ApiError::invalid("the flow name is empty", Some("flow".into())));
    }
    if s.entrypoint.is_empty() || s.entrypoint[0].is_empty() {
        return Err(ApiError::invalid(
            "the entrypoint is empty (give the command that runs the flow)",
            Some("entrypoint".into()),
        ));
    }
    for (i, a) in s.entrypoint.iter().enumerate() {
        check_text(&format!("entrypoint[{i}]"), a, 4096)?;
    }
    if !s.parameters.is_object() {
        return Err(ApiError::invalid(
            "default parameters must be a JSON object",
            Some("parameters".into()),
        ));
    }
    if let Err(e) = jsonschema::validator_for(&s.parameter_schema) {
        return Err(ApiError::invalid(
            format!("the parameter schema is not a valid JSON Schema: {e}"),
            Some("parameter_schema".into()),
        ));
    }
    for (i, sch) in s.schedules.iter().enumerate() {
        scheduler::parse(sch).map_err(|e| ApiError::invalid(e.to_string(), Some(format!("schedules[{i}]"))))?;
    }
    check_name("work pool", "work_pool", &s.work_pool)?;
    for (i, t) in s.tags.iter().enumerate() {
        check_text(&format!("tags[{i}]"), t, 128)?;
    }
    if s.concurrency_limit == Some(0) {
        return Err(ApiError::invalid(
            "a concurrency limit of 0 would never run anything (leave it out for no limit)",
            Some("concurrency_limit".into()),
        ));
    }
    Ok(())
}

/// The run's parameters: `given` over the deployment's defaults (top-level keys), validated
/// against the deployment's schema. A 422 names the first offending field
/// (`parameters.n`).
pub fn merged_parameters(
    spec: &DeploymentSpec,
    given: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, ApiError> {
    let mut merged = spec.parameters.as_object().cloned().unwrap_or_default();
    for (k, v) in given {
        merged.insert(k.clone(), v.clone());
    }
    let merged = serde_json::Value::Object(merged);
    let validator = jsonschema::validator_for(&spec.parameter_schema).map_err(|e| {
        ApiError::invalid(
            format!(
                "deployment '{}' has a parameter schema that does not compile ({e}); deploy it again",
                spec.name
            ),
            Some("parameter_schema".to_string()),
        )
    })?;
    if let Some(e) = validator.iter_errors(&merged).next() {
        let mut field = String::from("parameters");
        for seg in e.instance_path().segments() {
            field.push('.');
            field.push_str(&seg.to_string());
        }
        match e.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => {
                field.push('.');
                field.push_str(property.as_str().unwrap_or_default());
            }
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(u) = unexpected.first() {
                    field.push('.');
                    field.push_str(u);
                }
            }
            _ => {}
        }
        return Err(ApiError::invalid(
            format!("invalid parameters for deployment '{}': {field}: {e}", spec.name),
            Some(field),
        ));
    }
    Ok(merged)
}

/// Deployments, by name.
#[utoipa::path(get, path = "/deployments", params(NamePageQuery),
    responses((status = 200, body = DeploymentPage), (status = 422, body = ErrorBody)))]
async fn list_deployments(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<NamePageQuery>,
) -> Result<Json<DeploymentPage>, ApiError> {
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    let mut items = app.db.deployments(q.cursor.as_deref().unwrap_or(""), limit + 1).await?;
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|d| d.spec.name.clone()).unwrap_or_default()
    });
    Ok(Json(DeploymentPage { items, next_cursor }))
}

/// One deployment.
#[utoipa::path(get, path = "/deployments/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_deployment(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    check_name("deployment", "name", &name)?;
    Ok(Json(app.db.deployment(&name).await?))
}

/// Creates or replaces a deployment (`weir deploy`). Schedules, the parameter schema and
/// names are checked here (422 naming the field). The same spec again changes nothing; a
/// changed one replaces the deployment's future unclaimed scheduled runs. A paused
/// deployment stays paused.
#[utoipa::path(put, path = "/deployments/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    request_body = DeploymentSpec,
    responses((status = 200, body = Deployment, description = "replaced or unchanged"), (status = 201, body = Deployment, description = "created"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_deployment(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<DeploymentSpec>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    check_name("deployment", "name", &name)?;
    check_spec(&name, &spec)?;
    let (d, outcome) = app.db.put_deployment(&spec, weir_types::time::now_micros()).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    if outcome != PutOutcome::Unchanged {
        app.kick.notify_one();
    }
    Ok((status, Json(d)))
}

/// Deletes a deployment. Its runs stay; those no worker claimed yet end Cancelled (future
/// scheduled ones are removed).
#[utoipa::path(delete, path = "/deployments/{name}", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_deployment(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    check_name("deployment", "name", &name)?;
    app.db.delete_deployment(&name, weir_types::time::now_micros()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a deployment: its schedules make no runs, and its scheduled runs not yet claimed
/// are removed. Runs asked for by hand still run.
#[utoipa::path(post, path = "/deployments/{name}/pause", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn pause_deployment(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    check_name("deployment", "name", &name)?;
    Ok(Json(
        app.db.set_paused(&name, true, weir_types::time::now_micros()).await?,
    ))
}

/// Resumes a paused deployment: its schedules make runs again from now on.
#[utoipa::path(post, path = "/deployments/{name}/resume", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn resume_deployment(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    check_name("deployment", "name", &name)?;
    let d = app.db.set_paused(&name, false, weir_types::time::now_micros()).await?;
    app.kick.notify_one();
    Ok(Json(d))
}

/// Starts a run of a deployment: `parameters` merged over the deployment's defaults and
/// validated against its schema (422 naming the field, such as `parameters.n`). The run is
/// created `Scheduled`; a worker of the deployment's pool claims it when it is due.
#[utoipa::path(post, path = "/deployments/{name}/runs", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$", max_length = 128)),
    request_body = CreateRun,
    responses((status = 201, body = FlowRunRecord), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create_run(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CreateRun>,
) -> Result<(StatusCode, Json<FlowRunRecord>), ApiError> {
    check_name("deployment", "name", &name)?;
    let d = app.db.deployment(&name).await?;
    for (i, t) in req.tags.iter().enumerate() {
        check_text(&format!("tags[{i}]"), t, 128)?;
    }
    let parameters = merged_parameters(&d.spec, &req.parameters)?;
    let now = weir_types::time::now_micros();
    let mut tags = d.spec.tags.clone();
    tags.extend(req.tags);
    let id = FlowRunId::new();
    app.db
        .create_runs(&[NewRun {
            id,
            deployment: name,
            flow_name: d.spec.flow.clone(),
            work_pool: d.spec.work_pool.clone(),
            parameters,
            tags,
            scheduled_at: req.scheduled_at.unwrap_or(now / 1000),
            schedule_slot: None,
            retry_of: None,
            retry_count: 0,
            created_at: now,
        }])
        .await?;
    app.wake.wake(&app.db).await;
    Ok((StatusCode::CREATED, Json(app.db.flow_run(id).await?)))
}
