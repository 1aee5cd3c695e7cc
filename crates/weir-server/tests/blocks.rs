//! Blocks against real databases (SQLite and a throwaway PostgreSQL cluster): types,
//! versions, schema errors, secrets encrypted at rest and masked, reveal rules, key checks
//! and rotation, concurrent saves.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_server::secrets::SecretKey;

#[path = "support/pg.rs"]
mod pg;
use pg::Pg;

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzz";
const KEY_ID: &str = "AKIAEXAMPLE0042";

/// The server on 127.0.0.1:0 in this process, knowing its clients' addresses as `serve`
/// does (so loopback clients may reveal).
async fn start(db: weir_server::Db, api_key: Option<&str>, key: SecretKey, connect_info: bool) -> String {
    let app = weir_server::app_with_secret_key(db, api_key.map(str::to_string), key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    if connect_info {
        tokio::spawn(
            async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    format!("http://{addr}/api/v1")
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = c.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(c: &reqwest::Client, url: String) -> (StatusCode, Value) {
    call(c, reqwest::Method::GET, url, None).await
}

async fn put(c: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    call(c, reqwest::Method::PUT, url, Some(body)).await
}

fn bucket_doc(prefix: &str, secret: &str) -> Value {
    json!({"data": {"bucket": "willow", "prefix": prefix, "endpoint": "http://127.0.0.1:9000", "region": "eu-west-1",
        "credentials": {"access_key_id": KEY_ID, "secret_access_key": secret}}})
}

/// The whole behaviour on one database.
async fn suite(url: &str) {
    let db = weir_server::Db::connect(url).await.unwrap();
    let base = start(db.clone(), None, SecretKey::random(), true).await;
    let c = reqwest::Client::new();

    // Built-in types, their secret fields.
    let (s, types) = get(&c, format!("{base}/block_types")).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = types["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["json", "local-file-system", "s3-bucket", "secret"]);
    let (_, s3) = get(&c, format!("{base}/block_types/s3-bucket")).await;
    assert_eq!(
        s3["secret_fields"],
        json!(["/credentials/access_key_id", "/credentials/secret_access_key"])
    );

    // Save, read masked, reveal from this machine.
    let (s, saved) = put(
        &c,
        format!("{base}/blocks/s3-bucket/willowdata"),
        bucket_doc("raw", SECRET),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{saved}");
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["data"]["credentials"]["secret_access_key"], "********");
    let (_, masked) = get(&c, format!("{base}/blocks/s3-bucket/willowdata")).await;
    assert_eq!(
        masked["data"]["credentials"],
        json!({"access_key_id": "********", "secret_access_key": "********"})
    );
    assert_eq!(masked["data"]["bucket"], "willow");
    assert_eq!(masked["revealed"], false);
    assert!(!masked.to_string().contains(SECRET));
    let (s, revealed) = get(&c, format!("{base}/blocks/s3-bucket/willowdata?reveal=true")).await;
    assert_eq!(s, StatusCode::OK, "{revealed}");
    assert_eq!(revealed["data"]["credentials"]["secret_access_key"], SECRET);
    assert_eq!(revealed["data"]["credentials"]["access_key_id"], KEY_ID);

    // At rest: neither secret is in the database, in any column.
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT data, secrets FROM blocks")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for (data, secrets) in &rows {
        for plain in [SECRET, KEY_ID] {
            assert!(
                !data.contains(plain) && !secrets.contains(plain),
                "{plain} stored in clear"
            );
        }
    }

    // A new version; secrets sent as the mask keep their values; old versions stay.
    let (s, v2) = put(
        &c,
        format!("{base}/blocks/s3-bucket/willowdata"),
        bucket_doc("clean", "********"),
    )
    .await;
    assert_eq!((s, v2["version"].as_i64()), (StatusCode::OK, Some(2)), "{v2}");
    let (_, r2) = get(&c, format!("{base}/blocks/s3-bucket/willowdata?reveal=true")).await;
    assert_eq!(
        (
            r2["data"]["prefix"].as_str(),
            r2["data"]["credentials"]["secret_access_key"].as_str()
        ),
        (Some("clean"), Some(SECRET))
    );
    let (_, v1) = get(&c, format!("{base}/blocks/s3-bucket/willowdata?version=1")).await;
    assert_eq!(v1["data"]["prefix"], "raw");
    let (_, versions) = get(&c, format!("{base}/blocks/s3-bucket/willowdata/versions")).await;
    let vs: Vec<i64> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_i64().unwrap())
        .collect();
    assert_eq!(vs, [2, 1]);
    let (_, page) = get(&c, format!("{base}/blocks/s3-bucket/willowdata/versions?limit=1")).await;
    assert_eq!(page["next_cursor"], "2");
    let (_, page) = get(
        &c,
        format!("{base}/blocks/s3-bucket/willowdata/versions?limit=1&cursor=2"),
    )
    .await;
    assert_eq!(
        (page["items"][0]["version"].as_i64(), page["next_cursor"].as_str()),
        (Some(1), None)
    );

    // Other built-in types; listing (latest versions only, masked) and its filter.
    let (s, _) = put(
        &c,
        format!("{base}/blocks/json/settings"),
        json!({"data": [1, {"a": null}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = put(
        &c,
        format!("{base}/blocks/secret/db-password"),
        json!({"data": {"value": SECRET}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = put(
        &c,
        format!("{base}/blocks/local-file-system/scratch"),
        json!({"data": {"basepath": "/tmp/x"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, all) = get(&c, format!("{base}/blocks")).await;
    let listed: Vec<(String, i64)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                format!("{}/{}", b["type"].as_str().unwrap(), b["name"].as_str().unwrap()),
                b["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("json/settings".to_string(), 1),
            ("local-file-system/scratch".into(), 1),
            ("s3-bucket/willowdata".into(), 2),
            ("secret/db-password".into(), 1)
        ]
    );
    assert!(!all.to_string().contains(SECRET), "{all}");
    let (_, only) = get(&c, format!("{base}/blocks?type=secret")).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    assert_eq!(only["items"][0]["data"]["value"], "********");
    let (_, first) = get(&c, format!("{base}/blocks?limit=2")).await;
    assert_eq!(first["next_cursor"], "local-file-system/scratch");
    let (_, rest) = get(&c, format!("{base}/blocks?limit=2&cursor=local-file-system/scratch")).await;
    assert_eq!(rest["items"][0]["name"], "willowdata");

    // Unknown type or name: 404 naming it. Bad documents: 422 naming the field, the value
    // (maybe a secret) never echoed.
    for (url, named) in [
        ("/blocks/nosuchtype/x", "nosuchtype"),
        ("/blocks/s3-bucket/nosuchblock", "s3-bucket/nosuchblock"),
        ("/blocks/s3-bucket/willowdata?version=9", "version 9"),
        ("/blocks/s3-bucket/nosuchblock/versions", "s3-bucket/nosuchblock"),
        ("/block_types/nosuchtype", "nosuchtype"),
    ] {
        let (s, e) = get(&c, format!("{base}{url}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{url}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(named), "{url}: {e}");
    }
    let (s, e) = put(&c, format!("{base}/blocks/nosuchtype/x"), json!({"data": {}})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("nosuchtype"), "{e}");
    let mut wrong_secret = bucket_doc("p", "x");
    wrong_secret["data"]["credentials"]["secret_access_key"] = json!(["nested", SECRET]);
    for (doc, field) in [
        (json!({"data": {"prefix": "p"}}), "data.bucket"),
        (json!({"data": {"bucket": "b", "region": 5}}), "data.region"),
        (json!({"data": {"bucket": "b", "bukket": "c"}}), "data.bukket"),
        (
            json!({"data": {"bucket": "b", "credentials": {"access_key_id": SECRET}}}),
            "data.credentials.secret_access_key",
        ),
        (wrong_secret, "data.credentials.secret_access_key"),
        (json!({"data": {"bucket": "b"}, "extra": 1}), "extra"),
    ] {
        let (s, e) = put(&c, format!("{base}/blocks/s3-bucket/bad"), doc.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{doc}: {e}");
        assert_eq!(e["error"]["field"], field, "{doc}: {e}");
        assert!(!e.to_string().contains(SECRET), "the secret was echoed: {e}");
    }
    let (s, e) = put(
        &c,
        format!("{base}/blocks/secret/fresh"),
        json!({"data": {"value": "********"}}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("data.value")),
        "{e}"
    );
    let (s, _) = get(&c, format!("{base}/blocks/s3-bucket/bad")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing stored by refused saves");
    let (s, e) = get(&c, format!("{base}/blocks/s3-bucket/.hidden")).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name")),
        "{e}"
    );
    let (s, e) = get(&c, format!("{base}/blocks/s3-bucket/%FF")).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name")),
        "{e}"
    );
    let (s, e) = get(&c, format!("{base}/blocks/s3-bucket/willowdata?reveal=maybe")).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("reveal")),
        "{e}"
    );

    // User-defined types.
    let schema = json!({"type": "object", "properties": {
        "host": {"type": "string"}, "port": {"type": "integer", "minimum": 1},
        "password": {"type": "string", "format": "password"},
        "token": {"type": "string", "writeOnly": true}}, "required": ["host"]});
    let (s, t) = put(
        &c,
        format!("{base}/block_types/db-conn"),
        json!({"schema": schema, "description": "a database"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["secret_fields"], json!(["/password", "/token"]));
    let (s, b) = put(
        &c,
        format!("{base}/blocks/db-conn/warehouse"),
        json!({"data": {"host": "db", "port": 5432, "password": SECRET}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["data"]["password"].as_str(), b["secret_fields"].clone()),
        (Some("********"), json!(["/password"]))
    );
    let (s, e) = put(
        &c,
        format!("{base}/blocks/db-conn/warehouse"),
        json!({"data": {"host": "db", "port": 0}}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("data.port")),
        "{e}"
    );
    let (_, types) = get(&c, format!("{base}/block_types")).await;
    assert_eq!(types["items"][4]["name"], "db-conn");
    for (name, body, status, field) in [
        ("s3-bucket", json!({"schema": {}}), StatusCode::CONFLICT, None),
        (
            "broken",
            json!({"schema": {"type": 12}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("schema"),
        ),
        (
            "broken",
            json!({"schema": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("schema"),
        ),
        (
            "broken",
            json!({"schema": {"type": "array", "items": {"type": "string", "writeOnly": true}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("schema"),
        ),
        (
            "bad name",
            json!({"schema": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
    ] {
        let (s, e) = put(&c, format!("{base}/block_types/{name}"), body.clone()).await;
        assert_eq!((s, e["error"]["field"].as_str()), (status, field), "{body}: {e}");
    }
    let (s, _) = get(&c, format!("{base}/block_types/broken")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Delete: every version goes.
    let s = c
        .delete(format!("{base}/blocks/s3-bucket/willowdata"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = get(&c, format!("{base}/blocks/s3-bucket/willowdata?version=1")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let s = c
        .delete(format!("{base}/blocks/s3-bucket/willowdata"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every route is in the OpenAPI document, and no example there holds a secret.
    let (_, doc) = get(&c, format!("{base}/openapi.json")).await;
    for p in [
        "/blocks",
        "/blocks/{type}/{name}",
        "/blocks/{type}/{name}/versions",
        "/block_types",
        "/block_types/{name}",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
    for schema in [
        "Block",
        "BlockType",
        "BlockWrite",
        "BlockPage",
        "BlockVersionPage",
        "BlockTypeWrite",
    ] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "{schema} missing");
    }
    let (_, doc_text) = (0, doc.to_string());
    assert!(!doc_text.contains(SECRET) && !doc_text.contains(KEY_ID));

    concurrent_saves(&base).await;
}

/// Saves of one block racing from many clients get distinct consecutive versions, and
/// every one is kept.
async fn concurrent_saves(base: &str) {
    const N: usize = 8;
    let c = reqwest::Client::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (c, b, url) = (c.clone(), barrier.clone(), format!("{base}/blocks/json/race"));
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            put(&c, url, json!({"data": {"writer": i}})).await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{b}");
        versions.push(b["version"].as_i64().unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=N as i64).collect::<Vec<_>>());
    let (_, kept) = get(&c, format!("{base}/blocks/json/race/versions")).await;
    let mut writers: Vec<u64> = kept["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["data"]["writer"].as_u64().unwrap())
        .collect();
    writers.sort();
    assert_eq!(
        writers,
        (0..N as u64).collect::<Vec<_>>(),
        "each writer's document is one version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    suite(&pg.url()).await;
}

/// Reveal needs the API key, or a client on this machine; a server that cannot tell who is
/// asking refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_needs_a_key_or_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let db = weir_server::Db::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let key = SecretKey::random();
    let c = reqwest::Client::new();
    let unknown_peer = start(db.clone(), None, key.clone(), false).await;
    let (s, _) = put(
        &c,
        format!("{unknown_peer}/blocks/secret/s"),
        json!({"data": {"value": SECRET}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = get(&c, format!("{unknown_peer}/blocks/secret/s?reveal=true")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{e}"
    );
    assert!(!e.to_string().contains(SECRET));
    let (s, masked) = get(&c, format!("{unknown_peer}/blocks/secret/s")).await;
    assert_eq!(
        (s, masked["data"]["value"].as_str()),
        (StatusCode::OK, Some("********"))
    );

    let with_key = start(db.clone(), Some("k3y"), key, false).await;
    let r = c
        .get(format!("{with_key}/blocks/secret/s?reveal=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r: Value = c
        .get(format!("{with_key}/blocks/secret/s?reveal=true"))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["value"], SECRET);
}

/// A server refuses to start with a key other than the secrets'; rotation re-encrypts every
/// secret (all versions) in one go, after which only the new key works, and a server still
/// running with the old key can neither write nor reveal.
async fn keys_and_rotation(url: &str) {
    let (a, b) = (SecretKey::random(), SecretKey::random());
    let db = weir_server::Db::connect(url).await.unwrap();
    let old_server = start(db.clone(), None, a.clone(), true).await;
    let c = reqwest::Client::new();
    for v in ["one", "two"] {
        let (s, _) = put(
            &c,
            format!("{old_server}/blocks/secret/s"),
            json!({"data": {"value": format!("{SECRET}-{v}")}}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = put(&c, format!("{old_server}/blocks/s3-bucket/x"), bucket_doc("p", SECRET)).await;
    assert_eq!(s, StatusCode::OK);

    let start_with = |key: SecretKey| {
        let url = url.to_string();
        async move {
            let cfg = weir_server::ServerConfig {
                database_url: url,
                api_key: None,
                tls: None,
                secret_key: Some(key),
                scheduler: Default::default(),
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let served = tokio::spawn(weir_server::serve_until(
                cfg,
                "127.0.0.1:0".parse().unwrap(),
                false,
                move |addr| {
                    let _ = tx.send(addr);
                },
                std::future::pending(),
            ));
            match rx.await {
                Ok(addr) => Ok(format!("http://{addr}/api/v1")),
                Err(_) => Err(served.await.unwrap().unwrap_err()),
            }
        }
    };
    let err = start_with(b.clone()).await.unwrap_err();
    assert!(matches!(err, weir_server::StartError::WrongSecretKey { .. }), "{err}");
    assert!(err.to_string().contains(&b.fingerprint()), "{err}");

    let err = db.rotate_secret_key(&b, &a).await.unwrap_err();
    assert!(err.to_string().contains("not encrypted with the current key"), "{err}");
    let n = db.rotate_secret_key(&a, &b).await.unwrap();
    assert_eq!(n, 4, "two versions of secret/s, two fields of s3-bucket/x");

    let new_server = start_with(b.clone()).await.unwrap();
    for (v, want) in [(1, "one"), (2, "two")] {
        let (s, r) = get(&c, format!("{new_server}/blocks/secret/s?version={v}&reveal=true")).await;
        assert_eq!(
            (s, r["data"]["value"].as_str()),
            (StatusCode::OK, Some(format!("{SECRET}-{want}").as_str())),
            "{r}"
        );
    }
    let (_, r) = get(&c, format!("{new_server}/blocks/s3-bucket/x?reveal=true")).await;
    assert_eq!(r["data"]["credentials"]["secret_access_key"], SECRET);
    assert!(start_with(a.clone()).await.is_err(), "the old key is refused now");

    // The server still running with the old key: writes refused (409), reveal fails closed.
    let (s, e) = put(
        &c,
        format!("{old_server}/blocks/secret/s"),
        json!({"data": {"value": "v3"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("rotated"), "{e}");
    let (s, e) = get(&c, format!("{old_server}/blocks/secret/s?reveal=true")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert!(!e.to_string().contains(SECRET));
    let (_, kept) = get(&c, format!("{new_server}/blocks/secret/s")).await;
    assert_eq!(kept["version"], 2, "the refused write stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_rotation_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    keys_and_rotation(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_rotation_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    keys_and_rotation(&pg.url()).await;
}
