//! `/blocks` and `/block_types`: named, typed, versioned configuration documents.
//!
//! A save validates the document against its type's JSON Schema, encrypts the fields the
//! schema marks secret (see [`weir_types::block::secret_fields`]) and stores them as the
//! next version. Answers carry `********` in secret fields, unless the client asks with
//! `?reveal=true` and may: when the server has an API key (so the client presented it), or
//! when the request comes from this machine (loopback). A server without a key serving
//! another address (`--insecure`) never reveals.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::State as AxState;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_types::block::{
    Block, BlockPage, BlockType, BlockTypeList, BlockTypeWrite, BlockVersionPage, BlockWrite, MASK, builtin_types,
    is_builtin, secret_fields, valid_name,
};

use super::AppState;
use super::params::{ApiPath as Path, ApiQuery, check_text, in_range};
use crate::db::{StoredBlock, StoredSecret};
use crate::error::{ApiError, ErrorBody};
use crate::json::ApiJson;
use crate::secrets::{SecretKey, aad};

/// The largest block document or type schema, as JSON.
pub const DOCUMENT_LIMIT: usize = 1 << 20;
/// The most registered block types.
pub const TYPE_LIMIT: usize = 1000;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_block_types))
        .routes(routes!(get_block_type, put_block_type))
        .routes(routes!(list_blocks))
        .routes(routes!(get_block, put_block, delete_block))
        .routes(routes!(block_versions))
}

/// The client's address, when the server knows it (it always does when started by `serve`).
pub struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BlockQuery {
    /// This version instead of the latest.
    #[param(minimum = 1)]
    pub version: Option<i64>,
    /// Answer secret fields' values instead of `********`. Allowed when the server has an
    /// API key, or for requests from this machine; 403 otherwise.
    pub reveal: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BlockListQuery {
    /// Only blocks of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    pub block_type: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (`TYPE/NAME`).
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionPageQuery {
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (a version number).
    #[param(minimum = 1)]
    pub cursor: Option<i64>,
}

fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    if valid_name(v) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("{field}: '{v}' is not a name (1–128 letters, digits, '_', '-', '.'; not starting with '.')"),
            Some(field.to_string()),
        ))
    }
}

/// A type's schema, description and whether it is built in; 404 naming it if unknown.
async fn find_type(app: &AppState, name: &str) -> Result<BlockType, ApiError> {
    if let Some((n, d, schema)) = builtin_types().into_iter().find(|(n, _, _)| *n == name) {
        let secret_fields = secret_fields(&schema).unwrap_or_default();
        return Ok(BlockType {
            name: n.to_string(),
            builtin: true,
            description: Some(d.to_string()),
            schema,
            secret_fields,
        });
    }
    match app.db.block_type(name).await? {
        Some(t) => Ok(BlockType {
            secret_fields: secret_fields(&t.schema).unwrap_or_default(),
            name: t.name,
            builtin: false,
            description: t.description,
            schema: t.schema,
        }),
        None => Err(ApiError::NotFound(format!(
            "no block type '{name}' (built-in: {}; register one with PUT /api/v1/block_types/{name})",
            builtin_types()
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `data.a.b` for the JSON Pointer `/a/b` (the field as a client names it).
fn field_of(pointer: &str) -> String {
    let mut out = String::from("data");
    for seg in pointer.split('/').skip(1) {
        out.push('.');
        out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
    }
    out
}

/// Validates `data` against `schema`: a 422 naming the first offending field, with a
/// message that never includes the value (it may be a secret).
fn validate(schema: &Value, data: &Value, type_name: &str) -> Result<(), ApiError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
        tracing::error!(error_id = %id, "block type '{type_name}' has a schema that no longer compiles: {}", e.masked());
        ApiError::Internal { id }
    })?;
    let Some(err) = validator.iter_errors(data).next() else {
        return Ok(());
    };
    let mut field = field_of(&err.instance_path().to_string());
    match err.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            field.push('.');
            field.push_str(property.as_str().unwrap_or_default());
        }
        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
            if let Some(p) = unexpected.first() {
                field.push('.');
                field.push_str(p);
            }
        }
        _ => {}
    }
    Err(ApiError::invalid(
        format!("{field}: {} (the block type {type_name}'s schema)", err.masked()),
        Some(field),
    ))
}

fn decrypt_failed(block: &StoredBlock, e: crate::secrets::SecretError) -> ApiError {
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    tracing::error!(error_id = %id, "block {}/{} version {}: {e}", block.block_type, block.name, block.version);
    ApiError::Internal { id }
}

/// The stored version as answered: masked, or with its secrets decrypted.
fn open(b: StoredBlock, reveal: bool, key: &SecretKey) -> Result<Block, ApiError> {
    let mut data = b.data.clone();
    if reveal {
        for s in &b.secrets {
            let plain = key
                .decrypt(&s.ct, &aad(&b.block_type, &b.name, b.version, &s.path))
                .map_err(|e| decrypt_failed(&b, e))?;
            let value: Value =
                serde_json::from_slice(&plain).map_err(|_| decrypt_failed(&b, crate::secrets::SecretError::Damaged))?;
            if let Some(slot) = data.pointer_mut(&s.path) {
                *slot = value;
            }
        }
    }
    Ok(Block {
        block_type: b.block_type,
        name: b.name,
        version: b.version,
        secret_fields: b.secrets.iter().map(|s| s.path.clone()).collect(),
        revealed: reveal,
        data,
        created_at: b.created_at,
    })
}

fn may_reveal(app: &AppState, peer: &Peer) -> Result<(), ApiError> {
    if app.api_key_set || peer.0.is_some_and(|a| a.ip().is_loopback()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "reveal=true needs a server with an API key (WEIR_API_KEY), or a request from the server's own machine"
                .into(),
        ))
    }
}

/// Every block type: the built-in ones, then registered ones by name.
#[utoipa::path(get, path = "/block_types", tag = "blocks",
    responses((status = 200, body = BlockTypeList)))]
async fn list_block_types(AxState(app): AxState<AppState>) -> Result<Json<BlockTypeList>, ApiError> {
    let mut items: Vec<BlockType> = builtin_types()
        .into_iter()
        .map(|(n, d, schema)| BlockType {
            name: n.to_string(),
            builtin: true,
            description: Some(d.to_string()),
            secret_fields: secret_fields(&schema).unwrap_or_default(),
            schema,
        })
        .collect();
    for t in app.db.block_types(TYPE_LIMIT).await? {
        items.push(BlockType {
            secret_fields: secret_fields(&t.schema).unwrap_or_default(),
            name: t.name,
            builtin: false,
            description: t.description,
            schema: t.schema,
        });
    }
    Ok(Json(BlockTypeList { items }))
}

/// One block type.
#[utoipa::path(get, path = "/block_types/{name}", tag = "blocks",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128)),
    responses((status = 200, body = BlockType), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn get_block_type(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<Json<BlockType>, ApiError> {
    check_name("name", &name)?;
    Ok(Json(find_type(&app, &name).await?))
}

/// Registers (or replaces) a block type: a JSON Schema. Properties marked `"writeOnly":
/// true` or `"format": "password"` are secret fields. Built-in types cannot be replaced.
/// Replacing a schema does not touch blocks saved before; their next save is checked
/// against the new one.
#[utoipa::path(put, path = "/block_types/{name}", tag = "blocks",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128)),
    request_body = BlockTypeWrite,
    responses((status = 200, body = BlockType), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_block_type(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    ApiJson(t): ApiJson<BlockTypeWrite>,
) -> Result<Json<BlockType>, ApiError> {
    check_name("name", &name)?;
    if is_builtin(&name) {
        return Err(ApiError::Conflict(format!(
            "'{name}' is a built-in block type and cannot be registered over"
        )));
    }
    if let Some(d) = &t.description {
        check_text("description", d, 4096)?;
    }
    if t.schema.to_string().len() > DOCUMENT_LIMIT {
        return Err(ApiError::invalid(
            format!("a schema holds at most {DOCUMENT_LIMIT} bytes of JSON"),
            Some("schema".into()),
        ));
    }
    if !t.schema.is_object() && !t.schema.is_boolean() {
        return Err(ApiError::invalid(
            "a JSON Schema is an object (or a boolean)",
            Some("schema".into()),
        ));
    }
    if let Err(e) = jsonschema::validator_for(&t.schema) {
        return Err(ApiError::invalid(
            format!("not a usable JSON Schema: {} (at {})", e.masked(), e.schema_path()),
            Some("schema".into()),
        ));
    }
    let secret = secret_fields(&t.schema).map_err(|e| ApiError::invalid(e, Some("schema".into())))?;
    if app.db.block_type(&name).await?.is_none() && app.db.block_types(TYPE_LIMIT).await?.len() >= TYPE_LIMIT {
        return Err(ApiError::invalid(
            format!("at most {TYPE_LIMIT} block types can be registered"),
            Some("name".into()),
        ));
    }
    app.db
        .put_block_type(
            &name,
            &t.schema,
            t.description.as_deref(),
            weir_types::time::now_micros(),
        )
        .await?;
    Ok(Json(BlockType {
        name,
        builtin: false,
        description: t.description,
        schema: t.schema,
        secret_fields: secret,
    }))
}

/// Blocks (the latest version of each, secret fields masked), by type then name.
#[utoipa::path(get, path = "/blocks", tag = "blocks", params(BlockListQuery),
    responses((status = 200, body = BlockPage), (status = 422, body = ErrorBody)))]
async fn list_blocks(
    AxState(app): AxState<AppState>,
    ApiQuery(q): ApiQuery<BlockListQuery>,
) -> Result<Json<BlockPage>, ApiError> {
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    if let Some(t) = &q.block_type {
        check_name("type", t)?;
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => (String::new(), String::new()),
        Some(c) => match c.split_once('/') {
            Some((t, n)) => (t.to_string(), n.to_string()),
            None => {
                return Err(ApiError::invalid(
                    format!("cursor: '{c}' is not a next_cursor of this list"),
                    Some("cursor".into()),
                ));
            }
        },
    };
    let rows = app
        .db
        .blocks(q.block_type.as_deref(), (&after.0, &after.1), limit + 1)
        .await?;
    let mut items = rows
        .into_iter()
        .map(|b| open(b, false, &app.secret_key))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items
            .last()
            .map(|b| format!("{}/{}", b.block_type, b.name))
            .unwrap_or_default()
    });
    Ok(Json(BlockPage { items, next_cursor }))
}

/// One block: its latest version, or `?version=N`. Secret fields are `********` unless
/// `?reveal=true` (see the parameter).
#[utoipa::path(get, path = "/blocks/{type}/{name}", tag = "blocks",
    params(("type" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128), BlockQuery),
    responses((status = 200, body = Block), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn get_block(
    AxState(app): AxState<AppState>,
    peer: Peer,
    Path((block_type, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BlockQuery>,
) -> Result<Json<Block>, ApiError> {
    check_name("type", &block_type)?;
    check_name("name", &name)?;
    in_range("version", q.version, 1, i64::MAX)?;
    let reveal = q.reveal.unwrap_or(false);
    if reveal {
        may_reveal(&app, &peer)?;
    }
    find_type(&app, &block_type).await?;
    let stored = app.db.block(&block_type, &name, q.version).await?;
    Ok(Json(open(stored, reveal, &app.secret_key)?))
}

/// Saves a document as the block's next version (the first creates it). The document must
/// satisfy the type's schema (422 naming the field otherwise); its secret fields are
/// encrypted, and a secret field sent as `********` keeps its previous value. Answers the
/// saved version, masked.
#[utoipa::path(put, path = "/blocks/{type}/{name}", tag = "blocks",
    params(("type" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128)),
    request_body = BlockWrite,
    responses((status = 200, body = Block), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn put_block(
    AxState(app): AxState<AppState>,
    Path((block_type, name)): Path<(String, String)>,
    ApiJson(w): ApiJson<BlockWrite>,
) -> Result<Json<Block>, ApiError> {
    check_name("type", &block_type)?;
    check_name("name", &name)?;
    if w.data.to_string().len() > DOCUMENT_LIMIT {
        return Err(ApiError::invalid(
            format!("a block holds at most {DOCUMENT_LIMIT} bytes of JSON"),
            Some("data".into()),
        ));
    }
    let ty = find_type(&app, &block_type).await?;
    let key = app.secret_key.clone();
    let stored = app
        .db
        .save_block(
            &block_type,
            &name,
            &key,
            weir_types::time::now_micros(),
            |previous, version| -> Result<_, ApiError> {
                let mut data = w.data;
                restore_masked(&mut data, &ty.secret_fields, previous, &key)?;
                validate(&ty.schema, &data, &ty.name)?;
                Ok(seal(data, &ty.secret_fields, &block_type, &name, version, &key))
            },
        )
        .await?;
    Ok(Json(open(stored, false, &app.secret_key)?))
}

/// Secret fields sent as the mask take the previous version's value.
fn restore_masked(
    data: &mut Value,
    secret: &[String],
    previous: Option<&StoredBlock>,
    key: &SecretKey,
) -> Result<(), ApiError> {
    for path in secret {
        let Some(slot) = data.pointer_mut(path) else { continue };
        if slot.as_str() != Some(MASK) {
            continue;
        }
        let old = previous.and_then(|p| p.secrets.iter().find(|s| &s.path == path).map(|s| (p, s)));
        let Some((p, s)) = old else {
            let field = field_of(path);
            return Err(ApiError::invalid(
                format!("{field} is {MASK} (keep the previous value) but the block has no previous value for it"),
                Some(field),
            ));
        };
        let plain = key
            .decrypt(&s.ct, &aad(&p.block_type, &p.name, p.version, path))
            .map_err(|e| decrypt_failed(p, e))?;
        *slot = serde_json::from_slice(&plain).map_err(|_| decrypt_failed(p, crate::secrets::SecretError::Damaged))?;
    }
    Ok(())
}

/// Encrypts the secret fields present in `data` and masks them.
fn seal(
    mut data: Value,
    secret: &[String],
    block_type: &str,
    name: &str,
    version: i64,
    key: &SecretKey,
) -> (Value, Vec<StoredSecret>) {
    let mut sealed = Vec::new();
    for path in secret {
        let Some(slot) = data.pointer_mut(path) else { continue };
        let plain = slot.to_string();
        sealed.push(StoredSecret {
            path: path.clone(),
            ct: key.encrypt(plain.as_bytes(), &aad(block_type, name, version, path)),
        });
        *slot = Value::String(MASK.into());
    }
    (data, sealed)
}

/// Deletes a block and all its versions.
#[utoipa::path(delete, path = "/blocks/{type}/{name}", tag = "blocks",
    params(("type" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_block(
    AxState(app): AxState<AppState>,
    Path((block_type, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_name("type", &block_type)?;
    check_name("name", &name)?;
    find_type(&app, &block_type).await?;
    if app.db.delete_block(&block_type, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no block {block_type}/{name}")))
    }
}

/// A block's versions, newest first, secret fields masked.
#[utoipa::path(get, path = "/blocks/{type}/{name}/versions", tag = "blocks",
    params(("type" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128),
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$", max_length = 128), VersionPageQuery),
    responses((status = 200, body = BlockVersionPage), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn block_versions(
    AxState(app): AxState<AppState>,
    Path((block_type, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<VersionPageQuery>,
) -> Result<Json<BlockVersionPage>, ApiError> {
    check_name("type", &block_type)?;
    check_name("name", &name)?;
    let limit = in_range("limit", q.limit, 1, 1000)?.unwrap_or(100) as usize;
    let before = in_range("cursor", q.cursor, 1, i64::MAX)?.unwrap_or(i64::MAX);
    find_type(&app, &block_type).await?;
    let rows = app.db.block_versions(&block_type, &name, before, limit + 1).await?;
    if rows.is_empty() && q.cursor.is_none() {
        return Err(ApiError::NotFound(format!("no block {block_type}/{name}")));
    }
    let mut items = rows
        .into_iter()
        .map(|b| open(b, false, &app.secret_key))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|b| b.version.to_string()).unwrap_or_default()
    });
    Ok(Json(BlockVersionPage { items, next_cursor }))
}
