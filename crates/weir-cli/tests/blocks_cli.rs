//! `weir block …` against `weir server start` as a real process: saving, showing (masked
//! unless revealed), listing, types, bad input; secrets never in the server's log, its
//! database file, the CLI's errors or `weir config show`; the key file and its rotation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const SECRET: &str = "s3cr3t-Vw9qZ-bucket-key";
const SECRET2: &str = "pw-Hq2mX-do-not-log";

/// `weir server start` with its stderr (log) going to `log`; the API URL once it listens.
fn start(home: &Path, log: &Path, env: &[(&str, &str)]) -> Result<(Child, String), String> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(["server", "start", "--port", "0"]).env("WEIR_HOME", home);
    for v in [
        "WEIR_API_URL",
        "WEIR_API_KEY",
        "WEIR_PROFILE",
        "WEIR_DATABASE_URL",
        "WEIR_SECRET_KEY",
    ] {
        c.env_remove(v);
    }
    // Everything the server logs, request starts included.
    c.env("WEIR_LOG", "debug");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.contains("listening") {
        child.wait().unwrap();
        return Err(std::fs::read_to_string(log).unwrap());
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    Ok((child, url))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait().unwrap();
}

fn weir(home: &Path, api: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(args).env("WEIR_HOME", home).env("WEIR_API_URL", api);
    for v in ["WEIR_API_KEY", "WEIR_PROFILE", "WEIR_SECRET_KEY", "WEIR_DATABASE_URL"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_secret(what: &str, text: &str) {
    for s in [SECRET, SECRET2] {
        assert!(!text.contains(s), "a secret in {what}: {text}");
    }
}

#[test]
fn blocks_through_the_cli_keep_their_secrets() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let log = h.join("server.log");
    let (server, api) = start(h, &log, &[]).unwrap();

    // The key file was made on first start, readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.join("secret.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let key_text = std::fs::read_to_string(h.join("secret.key"))
        .unwrap()
        .trim()
        .to_string();

    let saved = ok(&weir(
        h,
        &api,
        &[],
        &[
            "block",
            "create",
            "s3-bucket/willowdata",
            "--field",
            "bucket=willow",
            "--field",
            "credentials.access_key_id=AKID",
            "--field",
            &format!("credentials.secret_access_key={SECRET}"),
        ],
    ));
    assert!(saved.contains("saved s3-bucket/willowdata version 1"), "{saved}");
    let doc = h.join("pw.json");
    std::fs::write(&doc, format!("{{\"value\": \"{SECRET2}\"}}")).unwrap();
    ok(&weir(
        h,
        &api,
        &[],
        &["block", "create", "secret/db-pw", "--from-file", doc.to_str().unwrap()],
    ));

    let shown = ok(&weir(h, &api, &[], &["block", "show", "s3-bucket/willowdata"]));
    assert!(
        shown.contains("\"secret_access_key\": \"********\"") && shown.contains("willow"),
        "{shown}"
    );
    no_secret("show", &shown);
    let revealed = ok(&weir(
        h,
        &api,
        &[],
        &["block", "show", "s3-bucket/willowdata", "--reveal"],
    ));
    assert!(revealed.contains(SECRET), "{revealed}");
    let ls = ok(&weir(h, &api, &[], &["block", "ls"]));
    assert!(ls.contains("willowdata") && ls.contains("db-pw"), "{ls}");
    no_secret("ls", &ls);
    let ls_json = ok(&weir(h, &api, &[], &["block", "ls", "secret", "--json"]));
    assert!(
        ls_json.contains("db-pw") && !ls_json.contains("willowdata"),
        "{ls_json}"
    );
    no_secret("ls --json", &ls_json);
    let types = ok(&weir(h, &api, &[], &["block", "types"]));
    assert!(types.contains("/credentials/secret_access_key"), "{types}");

    // A second version; --version reads the first.
    ok(&weir(
        h,
        &api,
        &[],
        &[
            "block",
            "create",
            "s3-bucket/willowdata",
            "--field",
            "bucket=willow2",
            "--field",
            "credentials.access_key_id=********",
            "--field",
            "credentials.secret_access_key=********",
        ],
    ));
    let v1 = ok(&weir(
        h,
        &api,
        &[],
        &["block", "show", "s3-bucket/willowdata", "--version", "1"],
    ));
    assert!(v1.contains("\"willow\""), "{v1}");
    let kept = ok(&weir(
        h,
        &api,
        &[],
        &["block", "show", "s3-bucket/willowdata", "--reveal", "--json"],
    ));
    assert!(
        kept.contains("willow2") && kept.contains(SECRET) && kept.contains("\"version\": 2"),
        "{kept}"
    );
    let versions = ok(&weir(h, &api, &[], &["block", "versions", "s3-bucket/willowdata"]));
    assert!(versions.contains(" 2 ") && versions.contains(" 1 "), "{versions}");

    // A user type; bad input named, secrets not echoed.
    let schema = h.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"host": {"type": "string"}, "port": {"type": "integer", "minimum": 1},
            "password": {"type": "string", "format": "password"}}, "required": ["host"]}"#,
    )
    .unwrap();
    let reg = ok(&weir(
        h,
        &api,
        &[],
        &[
            "block",
            "type",
            "register",
            "db-conn",
            "--schema",
            schema.to_str().unwrap(),
        ],
    ));
    assert!(reg.contains("/password"), "{reg}");
    let e = failed(&weir(
        h,
        &api,
        &[],
        &[
            "block",
            "create",
            "db-conn/w",
            "--field",
            "host=h",
            "--field",
            "port:=0",
            "--field",
            &format!("password={SECRET2}"),
        ],
    ));
    assert!(e.contains("data.port") && e.contains("422"), "{e}");
    no_secret("a refused create", &e);
    let e = failed(&weir(
        h,
        &api,
        &[],
        &[
            "block",
            "create",
            "db-conn/w",
            "--field",
            &format!("password:={SECRET2}"),
        ],
    ));
    no_secret("a malformed --field", &e);
    let e = failed(&weir(h, &api, &[], &["block", "create", "nosuch/x", "--field", "a=b"]));
    assert!(e.contains("404") && e.contains("nosuch"), "{e}");
    let e = failed(&weir(h, &api, &[], &["block", "show", "s3-bucket/nope"]));
    assert!(e.contains("404") && e.contains("s3-bucket/nope"), "{e}");
    let e = failed(&weir(h, &api, &[], &["block", "show", "willowdata"]));
    assert!(e.contains("TYPE/NAME"), "{e}");

    // rm takes every version.
    ok(&weir(h, &api, &[], &["block", "create", "json/tmp", "--field", "a:=1"]));
    ok(&weir(h, &api, &[], &["block", "rm", "json/tmp"]));
    failed(&weir(h, &api, &[], &["block", "show", "json/tmp", "--version", "1"]));

    // config show names where the key is, never the key.
    for env in [vec![], vec![("WEIR_SECRET_KEY", key_text.as_str())]] {
        let shown = ok(&weir(h, &api, &env, &["config", "show"]));
        assert!(shown.contains("secret_key") && !shown.contains(&key_text), "{shown}");
    }
    stop(server);

    // Nothing secret in the server's log (at debug level) or in its database files.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("/blocks/s3-bucket/willowdata"),
        "requests were logged: {logged}"
    );
    no_secret("the server's log", &logged);
    for f in std::fs::read_dir(h).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("server.db") {
            let bytes = std::fs::read(f.path()).unwrap();
            for s in [SECRET, SECRET2] {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{s} in clear in {name}"
                );
            }
        }
    }

    // Rotation: every secret re-encrypted; the key file holds the new key (still 0600).
    let new_key = h.join("new.key");
    let new_text = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    std::fs::write(&new_key, new_text).unwrap();
    let rotated = ok(&weir(
        h,
        &api,
        &[],
        &[
            "server",
            "rotate-secret-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    ));
    assert!(rotated.contains("re-encrypted 5 secret fields"), "{rotated}");
    assert_eq!(std::fs::read_to_string(h.join("secret.key")).unwrap().trim(), new_text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.join("secret.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let e = failed(&weir(
        h,
        &api,
        &[],
        &[
            "server",
            "rotate-secret-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("nothing to rotate"), "{e}");

    let refused = start(h, &h.join("old.log"), &[("WEIR_SECRET_KEY", &key_text)]).unwrap_err();
    assert!(
        refused.contains("not the one the stored block secrets are encrypted with"),
        "{refused}"
    );
    no_secret("a refused start", &refused);
    let empty = start(h, &h.join("empty.log"), &[("WEIR_SECRET_KEY", "")]).unwrap_err();
    assert!(empty.contains("WEIR_SECRET_KEY is empty"), "{empty}");

    let (server, api) = start(h, &log, &[]).unwrap();
    let revealed = ok(&weir(h, &api, &[], &["block", "show", "secret/db-pw", "--reveal"]));
    assert!(revealed.contains(SECRET2), "{revealed}");
    stop(server);
}

/// `weir cache …` run in `cwd` (where a store path misread as a folder would appear).
fn cache_cmd(home: &Path, cwd: &Path, api: Option<&str>, results: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.arg("cache")
        .args(args)
        .current_dir(cwd)
        .env("WEIR_HOME", home)
        .env("WEIR_RESULTS", results)
        .env("WEIR_LOCAL_CACHE", "none");
    for v in [
        "WEIR_API_URL",
        "WEIR_API_KEY",
        "WEIR_PROFILE",
        "WEIR_RESULTS_DIR",
        "WEIR_STATE_DB",
    ] {
        c.env_remove(v);
    }
    if let Some(api) = api {
        c.env("WEIR_API_URL", api);
    }
    c.output().unwrap()
}

/// `WEIR_RESULTS=block:local-file-system/NAME` names the same store for `weir cache` as for
/// flows; a missing block or server is an error naming it, never an empty listing of a
/// folder called `block:…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_open_the_store_a_block_names() {
    use weir_cache::folder::FolderBackend;
    use weir_cache::{EntryMeta, PutMode, ResultStore, Store};

    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    let cwd = tempfile::tempdir().unwrap();
    let log = h.join("server.log");
    let (server, api) = start(&h, &log, &[]).unwrap();
    let folder = h.join("team-results");
    ok(&weir(
        &h,
        &api,
        &[],
        &[
            "block",
            "create",
            "local-file-system/scratch",
            "--field",
            &format!("basepath={}", folder.display()),
        ],
    ));
    let store = Store::new(std::sync::Arc::new(FolderBackend::open(&folder).unwrap()));
    let key_hex = "d".repeat(64);
    let now = weir_types::time::now_micros();
    let meta = EntryMeta {
        format: 1,
        key: key_hex.clone(),
        task: "app::etl::load".into(),
        task_run_id: "t".into(),
        serializer: "json".into(),
        created_at: now,
        ..EntryMeta::default()
    };
    store.put(meta, b"42".to_vec(), PutMode::IfAbsent).await.unwrap();

    let results = "block:local-file-system/scratch";
    let run = |api: Option<String>, results: &'static str, args: &'static [&'static str]| {
        let (h, cwd) = (h.clone(), cwd.path().to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || cache_cmd(&h, &cwd, api.as_deref(), results, args))
                .await
                .unwrap()
        }
    };
    let ls = ok(&run(Some(api.clone()), results, &["ls"]).await);
    assert!(ls.contains("dddddddddddd") && ls.contains("load"), "{ls}");
    let show = ok(&run(Some(api.clone()), results, &["show", "dddd"]).await);
    assert!(show.contains(&key_hex), "{show}");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(Some(api.clone()), results, &["stats", "--json"]).await)).unwrap();
    assert_eq!(stats["entries"].as_u64(), Some(1), "{stats}");
    let location = stats["location"].as_str().unwrap();
    assert!(
        location.contains(results) && location.contains("team-results"),
        "{location}"
    );
    assert!(ok(&run(Some(api.clone()), results, &["rm", "dddd"]).await).contains("removed"));
    assert!(
        store.entry(&key_hex.parse().unwrap()).await.unwrap().is_none(),
        "rm removed the entry from the block's folder"
    );
    let gc = ok(&run(Some(api.clone()), results, &["gc", "--grace", "0s"]).await);
    assert!(gc.contains(results), "{gc}");

    // A block that is not there, a block of the wrong type, no server, a server that is down.
    let missing = failed(&run(Some(api.clone()), "block:local-file-system/nope", &["ls"]).await);
    assert!(missing.contains("local-file-system/nope"), "{missing}");
    let wrong = failed(&run(Some(api.clone()), "block:secret/db-pw", &["ls"]).await);
    assert!(wrong.contains("block:secret/db-pw"), "{wrong}");
    let no_server = failed(&run(None, results, &["ls"]).await);
    assert!(
        no_server.contains(results) && no_server.contains("WEIR_API_URL"),
        "{no_server}"
    );
    stop(server);
    let down = failed(&run(Some(api.clone()), results, &["ls"]).await);
    assert!(down.contains(results), "{down}");
    // Nothing was made of the address itself.
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "a folder named after the block"
    );
}

/// The same through an s3-bucket block on a real S3 server (moto): the block's credentials
/// are the only ones the CLI has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_open_the_bucket_an_s3_bucket_block_names() {
    use weir_cache::{EntryMeta, OpenOptions, PutMode};
    use weir_types::block::AwsCredentials;

    let Some(endpoint) = weir_tests::s3::moto_endpoint() else {
        return;
    };
    let bucket = weir_tests::s3::moto_bucket(&endpoint, "cli-blocks");
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    let cwd = tempfile::tempdir().unwrap();
    let (server, api) = start(&h, &h.join("server.log"), &[]).unwrap();
    let doc = h.join("bucket.json");
    let block = serde_json::json!({"bucket": bucket, "prefix": "team", "endpoint": endpoint, "region": "us-east-1",
        "credentials": {"access_key_id": "moto-id", "secret_access_key": SECRET}});
    std::fs::write(&doc, block.to_string()).unwrap();
    ok(&weir(
        &h,
        &api,
        &[],
        &[
            "block",
            "create",
            "s3-bucket/willowdata",
            "--from-file",
            doc.to_str().unwrap(),
        ],
    ));
    let creds: AwsCredentials = serde_json::from_value(block["credentials"].clone()).unwrap();
    let url = format!("s3://{bucket}/team?endpoint={endpoint}&region=us-east-1");
    let store = weir_cache::open_with_credentials(&url, &OpenOptions::default(), Some(&creds)).unwrap();
    let key_hex = "e".repeat(64);
    let meta = EntryMeta {
        format: 1,
        key: key_hex.clone(),
        task: "app::etl::load".into(),
        task_run_id: "t".into(),
        serializer: "json".into(),
        created_at: weir_types::time::now_micros(),
        ..EntryMeta::default()
    };
    store.put(meta, b"42".to_vec(), PutMode::IfAbsent).await.unwrap();

    let results = "block:s3-bucket/willowdata";
    let run = |args: &'static [&'static str]| {
        let (h, cwd, api) = (h.clone(), cwd.path().to_path_buf(), api.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
                c.arg("cache")
                    .args(args)
                    .current_dir(&cwd)
                    .env("WEIR_HOME", &h)
                    .env("WEIR_API_URL", &api)
                    .env("WEIR_RESULTS", results)
                    .env("WEIR_LOCAL_CACHE", "none");
                for v in [
                    "WEIR_API_KEY",
                    "WEIR_PROFILE",
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "AWS_ENDPOINT_URL",
                ] {
                    c.env_remove(v);
                }
                c.output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let ls = ok(&run(&["ls"]).await);
    assert!(ls.contains("eeeeeeeeeeee"), "{ls}");
    let stats = ok(&run(&["stats"]).await);
    assert!(stats.contains(&format!("s3://{bucket}/team")), "{stats}");
    no_secret("cache stats", &stats);
    assert!(ok(&run(&["rm", "eeee"]).await).contains("removed"));
    assert!(store.entry(&key_hex.parse().unwrap()).await.unwrap().is_none());
    stop(server);
}
