//! Blocks end to end: a real server process, flows in other processes that read blocks
//! with the SDK and keep their results in a store a block names (on a real S3 server, moto).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::json;
use weir_tests::s3::{moto_bucket, moto_endpoint};
use weir_types::block::BlockAddress;

const SECRET: &str = "moto-secret-Qx7vLr93kTz";

/// The server as its own process (`server_probe`, which serves as `weir server start` does).
struct ServerProcess(Child);

impl ServerProcess {
    fn start(db: &Path) -> (ServerProcess, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server_probe"))
            .arg(db)
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("server address")
            .to_string();
        (ServerProcess(child), format!("http://{addr}"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe(home: &Path, api: &str, results: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cache_probe"))
        .env("WEIR_HOME", home)
        .env("WEIR_API_URL", api)
        .env("WEIR_RESULTS", results)
        .env("WEIR_LOCAL_CACHE", "none")
        .env("WEIR_LOG", "warn")
        // The block's credentials are the only ones this process has.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("WEIR_API_KEY")
        .env_remove("WEIR_PROFILE")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_keeps_its_results_in_the_bucket_a_block_names() {
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = moto_bucket(&endpoint, "blocks");
    let dir = tempfile::tempdir().unwrap();
    let (_server, api) = ServerProcess::start(&dir.path().join("server.db"));
    let client = weir_client::Client::new(&api, None).unwrap();
    let addr: BlockAddress = "s3-bucket/willowdata".parse().unwrap();
    client
        .put_block(
            &addr,
            json!({"bucket": bucket, "prefix": "team/weir", "endpoint": endpoint, "region": "us-east-1",
                "credentials": {"access_key_id": "moto-id", "secret_access_key": SECRET}}),
        )
        .await
        .unwrap();

    // The SDK reads the block, typed, secrets revealed to this machine; Debug masks them.
    let home = tempfile::tempdir().unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, "memory://", &["block", "willowdata"]))
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let (shown_bucket, rest) = stdout.trim().split_once(' ').unwrap();
    let (shown_secret, debug) = rest.split_once(' ').unwrap();
    assert_eq!((shown_bucket, shown_secret), (bucket.as_str(), SECRET));
    assert!(!debug.contains(SECRET) && debug.contains("********"), "{debug}");
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, "memory://", &["block-json", "s3-bucket/willowdata"]))
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    assert_eq!(doc["credentials"]["secret_access_key"], SECRET);

    // Two runs in two processes: computed into the bucket, then a hit read from it.
    let results = "block:s3-bucket/willowdata";
    for want in ["miss", "hit"] {
        let fresh_home = tempfile::tempdir().unwrap();
        let (h, a) = (fresh_home.path().to_path_buf(), api.clone());
        let out = tokio::task::spawn_blocking(move || probe(&h, &a, results, &["run", "8"]))
            .await
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout.trim(), want, "{stderr}");
        assert!(!stderr.contains("cache disabled"), "{stderr}");
        assert!(!stderr.contains(SECRET) && !stdout.contains(SECRET), "{stderr}");
    }
    let listing = Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request as u; print(u.urlopen('{endpoint}/{bucket}?list-type=2&prefix=team/weir/').read().decode())"),
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("team/weir/v1/manifests/"),
        "no manifest under the block's prefix: {listing}"
    );

    // A local-file-system block names a folder the same way.
    let folder = tempfile::tempdir().unwrap();
    let lfs: BlockAddress = "local-file-system/scratch".parse().unwrap();
    client
        .put_block(
            &lfs,
            json!({"basepath": folder.path().join("results").display().to_string()}),
        )
        .await
        .unwrap();
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, "block:local-file-system/scratch", &["run", "3"]))
        .await
        .unwrap();
    assert_eq!(text(&out).0.trim(), "miss", "{}", text(&out).1);
    assert!(folder.path().join("results/v1/manifests").is_dir());

    // A block that is not there: the flow still runs (uncached) and says which block.
    let (h, a) = (home.path().to_path_buf(), api.clone());
    let out = tokio::task::spawn_blocking(move || probe(&h, &a, "block:s3-bucket/nope", &["run", "4"]))
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cache disabled") && stderr.contains("s3-bucket/nope"),
        "{stderr}"
    );
}

/// A dataset root named by an `s3-bucket` block: written with the block's credentials only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_root_can_be_an_s3_bucket_block() {
    let Some(endpoint) = moto_endpoint() else { return };
    let bucket = moto_bucket(&endpoint, "dsblock");
    let dir = tempfile::tempdir().unwrap();
    let (_server, api) = ServerProcess::start(&dir.path().join("server.db"));
    let client = weir_client::Client::new(&api, None).unwrap();
    let addr: BlockAddress = "s3-bucket/lake".parse().unwrap();
    client
        .put_block(
            &addr,
            json!({"bucket": bucket, "prefix": "datasets", "endpoint": endpoint,
                "credentials": {"access_key_id": "moto-id", "secret_access_key": SECRET}}),
        )
        .await
        .unwrap();
    let mut settings = weir::Settings::from_env();
    settings.api_url = Some(api.clone());
    settings.api_key = None;
    weir::configure(settings).unwrap();

    let root = weir::dataset_root("block:s3-bucket/lake").await.unwrap();
    assert_eq!(root.location(), format!("s3://{bucket}/datasets"));
    let ds = weir::Dataset::new("from_block").partition("rundate", "2022-10-23");
    root.write(&ds, "a\n1\n").await.unwrap();
    let (latest, data) = root.read_latest("from_block").await.unwrap();
    assert_eq!(latest.path, "csv/dataset=from_block/rundate=2022-10-23/data.csv");
    assert_eq!(&data[..], b"a\n1\n");

    let err = weir::dataset_root("block:json/lake").await.err().unwrap();
    assert!(err.to_string().contains("not 'json'"), "{err}");
}
