//! `weir block …`: blocks (named, typed, versioned configuration documents) on the server.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;
use weir_types::block::{Block, BlockAddress};
use weir_types::config::Paths;

use crate::runs::table;

#[derive(Subcommand)]
pub enum BlockCommand {
    /// Save a block's next version (the first save creates it), from fields or a JSON file.
    /// `--field key=value` sets a string, `--field key:=JSON` a JSON value; `a.b=…` a nested
    /// field. Secrets on a command line end up in shell history: prefer --from-file for them.
    /// A secret field given as ******** keeps its previous value.
    Create {
        /// TYPE/NAME, e.g. s3-bucket/willowdata.
        address: String,
        #[arg(long = "field", value_name = "KEY=VALUE")]
        fields: Vec<String>,
        /// The document as a JSON file (fields given with --field are set on top of it).
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List blocks (the latest version of each), of one type when given.
    Ls {
        block_type: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a block; secret fields are ******** unless --reveal (which the server allows
    /// with its API key, or on its own machine).
    Show {
        address: String,
        #[arg(long)]
        reveal: bool,
        #[arg(long)]
        version: Option<i64>,
        /// The whole answer as JSON (version, secret fields…), not only the document.
        #[arg(long)]
        json: bool,
    },
    /// A block's versions, newest first.
    Versions { address: String },
    /// Delete a block and all its versions.
    Rm { address: String },
    /// List block types (built-in and registered) and their secret fields.
    Types {
        #[arg(long)]
        json: bool,
    },
    /// Register block types.
    #[command(subcommand)]
    Type(TypeCommand),
}

#[derive(Subcommand)]
pub enum TypeCommand {
    /// Register (or replace) a block type from a JSON Schema file. Mark secret fields with
    /// "writeOnly": true or "format": "password".
    Register {
        name: String,
        #[arg(long)]
        schema: PathBuf,
        #[arg(long)]
        description: Option<String>,
    },
}

fn client() -> anyhow::Result<(weir_client::Client, tokio::runtime::Runtime)> {
    let home = Paths::from_env().home;
    let Some((url, _)) = weir_types::profile::try_lookup(&home, "api_url")? else {
        bail!("blocks live on the weir server: set WEIR_API_URL (or a profile's api_url)");
    };
    let key = weir_types::profile::try_lookup(&home, "api_key")?.map(|(k, _)| k);
    let client = weir_client::Client::new(&url, key)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok((client, rt))
}

/// Sets `value` at the dotted `key` of `doc`, making objects on the way.
fn set_field(doc: &mut Value, key: &str, value: Value) -> anyhow::Result<()> {
    let mut at = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!("--field '{key}': an empty name between dots");
        }
        if !at.is_object() {
            if at.is_null() {
                *at = Value::Object(Default::default());
            } else {
                bail!("--field '{key}': '{}' is not an object", parts[..i].join("."));
            }
        }
        let obj = at.as_object_mut().context("an object")?;
        if i + 1 == parts.len() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        at = obj.entry(part.to_string()).or_insert(Value::Null);
    }
    Ok(())
}

/// `key=value` (a string) or `key:=JSON`. The value is never echoed in errors (it may be a
/// secret).
fn parse_field(f: &str) -> anyhow::Result<(String, Value)> {
    let eq = f
        .find('=')
        .with_context(|| "--field takes KEY=VALUE or KEY:=JSON".to_string())?;
    let (key, value) = (&f[..eq], &f[eq + 1..]);
    match key.strip_suffix(':') {
        Some(k) => {
            let v = serde_json::from_str(value).map_err(|e| anyhow::anyhow!("--field {k}:=…: not JSON ({e})"))?;
            Ok((k.to_string(), v))
        }
        None => Ok((key.to_string(), Value::String(value.to_string()))),
    }
}

fn when(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn run(cmd: BlockCommand) -> anyhow::Result<()> {
    let (c, rt) = client()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        BlockCommand::Create {
            address,
            fields,
            from_file,
        } => {
            let addr: BlockAddress = address.parse().map_err(anyhow::Error::msg)?;
            let mut doc = match &from_file {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?
                }
                None => Value::Object(Default::default()),
            };
            if from_file.is_none() && fields.is_empty() {
                bail!("give the document: --field KEY=VALUE (repeatable) or --from-file FILE.json");
            }
            for f in &fields {
                let (k, v) = parse_field(f)?;
                set_field(&mut doc, &k, v)?;
            }
            let saved = rt.block_on(c.put_block(&addr, doc))?;
            writeln!(out, "saved {addr} version {}", saved.version)?;
        }
        BlockCommand::Ls { block_type, json } => {
            let blocks = rt.block_on(c.blocks(block_type.as_deref()))?;
            if json {
                serde_json::to_writer_pretty(&mut out, &blocks)?;
                writeln!(out)?;
                return Ok(());
            }
            let mut t = table(&["TYPE", "NAME", "VERSION", "SAVED", "SECRET FIELDS"]);
            for b in &blocks {
                t.add_row(vec![
                    b.block_type.clone(),
                    b.name.clone(),
                    b.version.to_string(),
                    when(b.created_at),
                    b.secret_fields.join(" "),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        BlockCommand::Show {
            address,
            reveal,
            version,
            json,
        } => {
            let addr: BlockAddress = address.parse().map_err(anyhow::Error::msg)?;
            let b: Block = rt.block_on(c.block(&addr, version, reveal))?;
            if json {
                serde_json::to_writer_pretty(&mut out, &b)?;
            } else {
                writeln!(out, "{addr} version {} saved {}", b.version, when(b.created_at))?;
                serde_json::to_writer_pretty(&mut out, &b.data)?;
            }
            writeln!(out)?;
        }
        BlockCommand::Versions { address } => {
            let addr: BlockAddress = address.parse().map_err(anyhow::Error::msg)?;
            let mut t = table(&["VERSION", "SAVED"]);
            for b in rt.block_on(c.block_versions(&addr))? {
                t.add_row(vec![b.version.to_string(), when(b.created_at)]);
            }
            writeln!(out, "{t}")?;
        }
        BlockCommand::Rm { address } => {
            let addr: BlockAddress = address.parse().map_err(anyhow::Error::msg)?;
            rt.block_on(c.delete_block(&addr))?;
            writeln!(out, "removed {addr} (every version)")?;
        }
        BlockCommand::Types { json } => {
            let types = rt.block_on(c.block_types())?;
            if json {
                serde_json::to_writer_pretty(&mut out, &types)?;
                writeln!(out)?;
                return Ok(());
            }
            let mut t = table(&["NAME", "BUILT-IN", "SECRET FIELDS", "DESCRIPTION"]);
            for ty in &types {
                t.add_row(vec![
                    ty.name.clone(),
                    if ty.builtin { "yes" } else { "" }.into(),
                    ty.secret_fields.join(" "),
                    ty.description.clone().unwrap_or_default(),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        BlockCommand::Type(TypeCommand::Register {
            name,
            schema,
            description,
        }) => {
            let text = std::fs::read_to_string(&schema).with_context(|| format!("reading {}", schema.display()))?;
            let schema_json: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", schema.display()))?;
            let t = rt.block_on(c.put_block_type(&name, schema_json, description.as_deref()))?;
            writeln!(
                out,
                "registered block type '{}' (secret fields: {})",
                t.name,
                if t.secret_fields.is_empty() {
                    "none".to_string()
                } else {
                    t.secret_fields.join(" ")
                }
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_make_nested_documents() {
        let mut doc = Value::Object(Default::default());
        for f in [
            "bucket=b",
            "credentials.secret_access_key=a=b",
            "port:=5432",
            "tags:=[\"x\"]",
        ] {
            let (k, v) = parse_field(f).unwrap();
            set_field(&mut doc, &k, v).unwrap();
        }
        assert_eq!(
            doc,
            serde_json::json!({"bucket": "b", "credentials": {"secret_access_key": "a=b"}, "port": 5432, "tags": ["x"]})
        );
        let e = parse_field("password:=hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let (k, v) = parse_field("bucket.x=1").unwrap();
        assert!(set_field(&mut doc, &k, v).is_err(), "bucket is a string");
    }
}
