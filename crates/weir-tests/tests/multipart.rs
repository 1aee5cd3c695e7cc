//! A multipart upload that fails part-way is aborted: no incomplete upload is left in the
//! bucket (where its parts would be billed until a lifecycle rule removed them). Against
//! moto, which lists multipart uploads (`GET /bucket?uploads`).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_cache::backend::{Backend, WriteMode};
use weir_cache::object::ObjectBackend;
use weir_tests::s3::{moto_endpoint, set_credentials};

/// A plain HTTP request to moto (which accepts unsigned requests); returns the body.
async fn http(endpoint: &str, method: &str, path_query: &str) -> String {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let req =
        format!("{method} {path_query} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    out
}

async fn incomplete_uploads(endpoint: &str, bucket: &str) -> usize {
    http(endpoint, "GET", &format!("/{bucket}?uploads"))
        .await
        .matches("<Upload>")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_that_fails_part_way_is_aborted() {
    let Some(endpoint) = moto_endpoint() else { return };
    set_credentials();
    let bucket = format!("weir-multipart-{}", std::process::id());
    http(&endpoint, "PUT", &format!("/{bucket}")).await;
    let b = opendal::services::S3::default()
        .bucket(&bucket)
        .root("/r")
        .region("us-east-1")
        .endpoint(&endpoint)
        .access_key_id("test")
        .secret_access_key("test");
    let backend = ObjectBackend::new(opendal::Operator::new(b).unwrap(), format!("s3://{bucket}/r"));

    // 32 parts' worth: the upload is still under way when the source changes.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let chunk: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        let mut f = std::fs::File::create(&src).unwrap();
        for _ in 0..32 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
    }
    let upload = {
        let (backend, src) = (backend.clone(), src.clone());
        tokio::spawn(async move { backend.write_file("v1/blobs/ab/big", &src, WriteMode::Overwrite).await })
    };
    // Once the upload has begun (its first part is on its way), the source file shrinks —
    // as when another process rewrites a task's output file while it is being stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while incomplete_uploads(&endpoint, &bucket).await == 0 {
        assert!(!upload.is_finished(), "the upload ended before it was seen in progress");
        assert!(Instant::now() < deadline, "no multipart upload began within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    let err = upload
        .await
        .unwrap()
        .expect_err("a file that changed mid-upload is not stored");
    assert!(err.to_string().contains("changed while it was uploaded"), "{err}");
    assert_eq!(
        incomplete_uploads(&endpoint, &bucket).await,
        0,
        "the failed upload was aborted"
    );
    assert!(
        backend.read("v1/blobs/ab/big").await.unwrap().is_none(),
        "nothing was stored under the name"
    );
}
