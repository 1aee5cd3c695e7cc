//! Blocks: named, typed, versioned configuration documents kept by the server
//! (`s3-bucket/willowdata`), and the built-in block types.
//!
//! The wire types of `/api/v1/blocks` and `/api/v1/block_types` live here so the server,
//! the client, the CLI and the SDK read one definition. A block type is a JSON Schema; a
//! property whose schema says `"writeOnly": true` or `"format": "password"` is a **secret
//! field**: the server stores it encrypted and answers [`MASK`] in its place unless a
//! client asks for it with `?reveal=true`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a secret field's value is replaced by in answers, logs and the CLI.
pub const MASK: &str = "********";

/// Block type and block names: 1–128 of letters, digits, `_`, `-`, `.`, not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The names' rule as a regular expression, for the OpenAPI document.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$";

/// A block's address, `TYPE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockAddress {
    pub block_type: String,
    pub name: String,
}

impl std::str::FromStr for BlockAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (t, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a block address (expected TYPE/NAME, e.g. s3-bucket/willowdata)"))?;
        for (what, v) in [("type", t), ("name", n)] {
            if !valid_name(v) {
                return Err(format!(
                    "'{s}': the block {what} '{v}' is not a name (1–128 letters, digits, '_', '-', '.'; not starting with '.')"
                ));
            }
        }
        Ok(BlockAddress {
            block_type: t.to_string(),
            name: n.to_string(),
        })
    }
}

impl std::fmt::Display for BlockAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.block_type, self.name)
    }
}

/// One version of a block, as the server answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Block {
    /// The block type (`s3-bucket`, `secret`, `json`, `local-file-system`, or a registered one).
    #[serde(rename = "type")]
    pub block_type: String,
    pub name: String,
    /// 1 for the first save, one more for each save after it.
    pub version: i64,
    /// The document. Secret fields hold `********` unless `revealed`.
    #[schema(value_type = Object)]
    pub data: Value,
    /// JSON Pointers (RFC 6901) into `data` of the secret fields this version holds.
    pub secret_fields: Vec<String>,
    /// True when the secret fields hold their values (asked with `?reveal=true`).
    pub revealed: bool,
    /// When this version was saved (µs since the epoch).
    pub created_at: i64,
}

/// A page of blocks (the latest version of each), by type then name.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockPage {
    pub items: Vec<Block>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of one block's versions, newest first.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockVersionPage {
    pub items: Vec<Block>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The body of `PUT /blocks/{type}/{name}`: the document to save as the next version.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockWrite {
    /// Must validate against the type's schema. A secret field sent as `********` keeps the
    /// value it had in the previous version.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A block type: its JSON Schema and the secret fields that schema marks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockType {
    pub name: String,
    /// Built into weir (cannot be registered over).
    pub builtin: bool,
    pub description: Option<String>,
    /// The JSON Schema documents of this type must satisfy.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// JSON Pointers into a document of the fields this schema marks secret.
    pub secret_fields: Vec<String>,
}

/// Every block type, built-in first, then registered ones by name.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockTypeList {
    pub items: Vec<BlockType>,
}

/// The body of `PUT /block_types/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockTypeWrite {
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise). External `$ref`s are
    /// not fetched. Mark secret fields with `"writeOnly": true` or `"format": "password"`.
    #[schema(value_type = Object)]
    pub schema: Value,
    pub description: Option<String>,
}

fn secret_string() -> Value {
    json!({"type": "string", "writeOnly": true})
}

/// The built-in types: `(name, description, schema)`.
pub fn builtin_types() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "json",
            "Any JSON value.",
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema"}),
        ),
        (
            "local-file-system",
            "A folder: results or datasets under `basepath`.",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"basepath": {"type": "string", "minLength": 1}},
                "required": ["basepath"],
                "additionalProperties": false
            }),
        ),
        (
            "s3-bucket",
            "An S3 (or S3-compatible) bucket and prefix, with optional endpoint, region and credentials.",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "bucket": {"type": "string", "minLength": 1},
                    "prefix": {"type": "string"},
                    "endpoint": {"type": "string"},
                    "region": {"type": "string"},
                    "credentials": {
                        "type": "object",
                        "properties": {
                            "access_key_id": secret_string(),
                            "secret_access_key": secret_string()
                        },
                        "required": ["access_key_id", "secret_access_key"],
                        "additionalProperties": false
                    }
                },
                "required": ["bucket"],
                "additionalProperties": false
            }),
        ),
        (
            "secret",
            "One secret string.",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"value": secret_string()},
                "required": ["value"],
                "additionalProperties": false
            }),
        ),
    ]
}

/// True for the names of built-in types.
pub fn is_builtin(name: &str) -> bool {
    builtin_types().iter().any(|(n, _, _)| *n == name)
}

fn is_secret_marker(node: &serde_json::Map<String, Value>) -> bool {
    node.get("writeOnly") == Some(&Value::Bool(true)) || node.get("format").and_then(Value::as_str) == Some("password")
}

/// Escapes a property name as a JSON Pointer segment.
fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The secret fields a schema marks, as JSON Pointers into a document. A secret marker is
/// honoured on the root and on properties reached from it through `properties` only; one
/// anywhere else (inside `items`, `$defs`, `anyOf`…) is an error naming where it is, so no
/// value meant to be secret is ever stored in clear by surprise.
pub fn secret_fields(schema: &Value) -> Result<Vec<String>, String> {
    fn walk(node: &Value, at: Option<&str>, loc: &str, out: &mut Vec<String>) -> Result<(), String> {
        match node {
            Value::Object(m) => {
                if is_secret_marker(m) {
                    match at {
                        Some(p) => out.push(p.to_string()),
                        None => {
                            return Err(format!(
                                "the secret marker at schema location '{loc}' is not on a property reached through `properties` from the root; weir can only encrypt those"
                            ));
                        }
                    }
                }
                for (k, v) in m {
                    let child_loc = format!("{loc}/{}", pointer_segment(k));
                    match (k.as_str(), v) {
                        // Values, not schemas.
                        ("const" | "enum" | "default" | "examples", _) => {}
                        ("properties", Value::Object(props)) => {
                            for (name, sub) in props {
                                let inner = at.map(|p| format!("{p}/{}", pointer_segment(name)));
                                walk(
                                    sub,
                                    inner.as_deref(),
                                    &format!("{child_loc}/{}", pointer_segment(name)),
                                    out,
                                )?;
                            }
                        }
                        _ => walk(v, None, &child_loc, out)?,
                    }
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, None, &format!("{loc}/{i}"), out)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    let mut out = Vec::new();
    walk(schema, Some(""), "", &mut out)?;
    Ok(out)
}

/// A Rust type for one block type, for [`crate`] users such as `weir::Block::load`.
pub trait BlockKind: DeserializeOwned {
    /// The block type's name (`s3-bucket`).
    const TYPE: &'static str;
}

/// `local-file-system`: a folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFileSystem {
    pub basepath: String,
}

impl BlockKind for LocalFileSystem {
    const TYPE: &'static str = "local-file-system";
}

/// `s3-bucket`: a bucket and prefix on S3 or an S3-compatible server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Bucket {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// `http://host:port` of an S3-compatible server; absent for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Absent: the usual `AWS_*` environment variables apply.
    #[serde(default)]
    pub credentials: Option<AwsCredentials>,
}

impl BlockKind for S3Bucket {
    const TYPE: &'static str = "s3-bucket";
}

impl S3Bucket {
    /// The result store URL of this bucket (`s3://bucket/prefix?endpoint=…&region=…`); the
    /// credentials are not in it.
    pub fn store_url(&self) -> String {
        let mut url = format!("s3://{}/{}", self.bucket, self.prefix.trim_matches('/'));
        let mut sep = '?';
        for (k, v) in [("endpoint", &self.endpoint), ("region", &self.region)] {
            if let Some(v) = v {
                url.push(sep);
                url.push_str(k);
                url.push('=');
                url.push_str(&percent_encode(v));
                sep = '&';
            }
        }
        url
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An access key pair. `Debug` masks both halves, so logging it leaks nothing.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &MASK)
            .field("secret_access_key", &MASK)
            .finish()
    }
}

/// `secret`: one secret string. `Debug` masks it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("value", &MASK).finish()
    }
}

impl BlockKind for Secret {
    const TYPE: &'static str = "secret";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_of_the_builtin_types() {
        let found: Vec<(&str, Vec<String>)> = builtin_types()
            .iter()
            .map(|(n, _, s)| (*n, secret_fields(s).unwrap()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("json", vec![]),
                ("local-file-system", vec![]),
                (
                    "s3-bucket",
                    vec![
                        "/credentials/access_key_id".to_string(),
                        "/credentials/secret_access_key".to_string()
                    ]
                ),
                ("secret", vec!["/value".to_string()]),
            ]
        );
    }

    #[test]
    fn secret_markers_out_of_reach_are_refused_and_names_are_escaped() {
        let s = json!({"properties": {"a/b": {"format": "password"}, "list": {"items": {"writeOnly": true}}}});
        let e = secret_fields(&s).unwrap_err();
        assert!(e.contains("/properties/list/items"), "{e}");
        let s = json!({"properties": {"a/b": {"format": "password"}, "c": {"enum": [{"writeOnly": true}]}}});
        assert_eq!(secret_fields(&s).unwrap(), vec!["/a~1b".to_string()]);
    }

    #[test]
    fn addresses_and_store_urls() {
        let a: BlockAddress = "s3-bucket/willowdata".parse().unwrap();
        assert_eq!((a.block_type.as_str(), a.name.as_str()), ("s3-bucket", "willowdata"));
        for bad in ["nope", "a/", "/b", "a/b/c", "a/../x", "a/.hidden"] {
            assert!(bad.parse::<BlockAddress>().is_err(), "{bad}");
        }
        let b = S3Bucket {
            bucket: "b".into(),
            prefix: "/p/q/".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu west".into()),
            credentials: Some(AwsCredentials {
                access_key_id: "AKID".into(),
                secret_access_key: "sssh".into(),
            }),
        };
        assert_eq!(
            b.store_url(),
            "s3://b/p/q?endpoint=http://127.0.0.1:9000&region=eu%20west"
        );
        let shown = format!("{b:?}");
        assert!(!shown.contains("sssh") && !shown.contains("AKID"), "{shown}");
    }
}
