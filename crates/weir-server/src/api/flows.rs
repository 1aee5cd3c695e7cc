//! `/flows`: the flow names the server has seen.

use axum::Json;
use axum::extract::State as AxState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::params::{ApiQuery, NamePageQuery, in_range};
use crate::error::{ApiError, ErrorBody};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_flows))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Flow {
    pub name: String,
    pub path: String,
    pub created_at: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct FlowPage {
    pub items: Vec<Flow>,
    pub next_cursor: Option<String>,
}

/// Flows seen by the server, by name.
#[utoipa::path(get, path = "/flows", params(NamePageQuery),
    responses((status = 200, body = FlowPage), (status = 422, body = ErrorBody)))]
async fn list_flows(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<NamePageQuery>,
) -> Result<Json<FlowPage>, ApiError> {
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    let flows = app.db.flows(q.cursor()?, limit + 1).await?;
    let mut items: Vec<Flow> = flows
        .into_iter()
        .map(|(name, path, created_at)| Flow { name, path, created_at })
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|f| f.name.clone()).unwrap_or_default()
    });
    Ok(Json(FlowPage { items, next_cursor }))
}
