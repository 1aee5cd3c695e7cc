//! Datasets on a real folder and on a real S3 server (moto): the hive layout, reads, the
//! `latest` pointer under concurrent readers, and names that must be refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use weir_dataset::{Dataset, DatasetError, DatasetRoot, Format};

fn moto_root() -> Option<DatasetRoot> {
    let endpoint = weir_tests::s3::moto_endpoint()?;
    let bucket = weir_tests::s3::moto_bucket(&endpoint, "weir-datasets");
    weir_tests::s3::set_credentials();
    Some(DatasetRoot::parse(&format!("s3://{bucket}/data?endpoint={endpoint}")).unwrap())
}

async fn layout_and_reads(root: &DatasetRoot) {
    let day1 = Dataset::new("my_cool_dataset")
        .format(Format::Csv)
        .partition("rundate", "2022-10-23");
    assert_eq!(
        day1.path().unwrap(),
        "csv/dataset=my_cool_dataset/rundate=2022-10-23/data.csv"
    );
    assert!(root.latest("my_cool_dataset").await.unwrap().is_none());
    assert!(matches!(
        root.read_latest("my_cool_dataset").await,
        Err(DatasetError::NoLatest(_))
    ));

    let written = root.write(&day1, "a,b\n1,2\n").await.unwrap();
    assert_eq!(written.size, 8);
    assert_eq!(root.read(&day1).await.unwrap(), Bytes::from("a,b\n1,2\n"));

    // From a file, then from a stream of chunks.
    let day2 = Dataset::new("my_cool_dataset")
        .partition("rundate", "2022-10-24")
        .partition("region", "eu");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), "a,b\n3,4\n").unwrap();
    root.write_file(&day2, tmp.path()).await.unwrap();
    let (latest, data) = root.read_latest("my_cool_dataset").await.unwrap();
    assert_eq!(
        latest.path,
        "csv/dataset=my_cool_dataset/rundate=2022-10-24/region=eu/data.csv"
    );
    assert_eq!(
        latest.partitions,
        vec![("rundate".into(), "2022-10-24".into()), ("region".into(), "eu".into())]
    );
    assert_eq!(data, Bytes::from("a,b\n3,4\n"));

    let lines = Dataset::new("events").format(Format::JsonLines).partition("hour", "07");
    let chunks = (0..5).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("{{\"i\":{i}}}\n"))));
    root.write_stream(&lines, futures::stream::iter(chunks)).await.unwrap();
    let (latest, data) = root.read_latest("events").await.unwrap();
    assert_eq!(latest.path, "jsonl/dataset=events/hour=07/data.jsonl");
    assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 5);

    // A stream that fails midway leaves neither the partition nor a new latest.
    let broken = Dataset::new("events").format(Format::JsonLines).partition("hour", "08");
    let chunks = vec![
        Ok(Bytes::from("{\"i\":1}\n")),
        Err(std::io::Error::other("source died")),
    ];
    let err = root
        .write_stream(&broken, futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("source died"), "{err}");
    assert!(matches!(root.read(&broken).await, Err(DatasetError::NotFound { .. })));
    assert_eq!(
        root.latest("events").await.unwrap().unwrap().path,
        "jsonl/dataset=events/hour=07/data.jsonl"
    );

    assert_eq!(
        root.partitions("my_cool_dataset", Format::Csv).await.unwrap(),
        vec![
            vec![("rundate".to_string(), "2022-10-23".to_string())],
            vec![
                ("rundate".to_string(), "2022-10-24".to_string()),
                ("region".to_string(), "eu".to_string())
            ],
        ]
    );
    assert!(
        root.partitions("my_cool_dataset", Format::Parquet)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn datasets_on_a_folder_follow_the_hive_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = DatasetRoot::folder(dir.path());
    layout_and_reads(&root).await;
    // The files are where any program looks for them.
    let file = dir
        .path()
        .join("csv/dataset=my_cool_dataset/rundate=2022-10-23/data.csv");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "a,b\n1,2\n");
    let pointer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("latest/dataset=events/latest.json")).unwrap()).unwrap();
    assert_eq!(pointer["path"], "jsonl/dataset=events/hour=07/data.jsonl");
    assert_eq!(pointer["format"], "jsonl");
}

#[tokio::test]
async fn datasets_on_s3_follow_the_hive_layout() {
    let Some(root) = moto_root() else { return };
    layout_and_reads(&root).await;
}

const SIZE: usize = 1 << 20;

/// One writer rewrites three partitions over and over (each write a new uniform byte) while
/// readers follow `latest`: every read must be one whole write.
async fn readers_never_see_half_a_write(root: DatasetRoot, writes: u8) {
    let root = Arc::new(root);
    let readers = 4;
    let barrier = Arc::new(tokio::sync::Barrier::new(readers + 1));
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let first = Dataset::new("racy").partition("slot", "0");
    root.write(&first, vec![b'a'; SIZE]).await.unwrap();

    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (root, barrier, done, checked) = (root.clone(), barrier.clone(), done.clone(), checked.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            while !done.load(Ordering::Acquire) {
                let (latest, data) = root.read_latest("racy").await.expect("latest is always readable");
                assert_eq!(data.len(), SIZE, "a reader saw {} of {SIZE} bytes", data.len());
                assert_eq!(latest.size as usize, SIZE);
                let b = data[0];
                assert!(data.iter().all(|&x| x == b), "a reader saw two writes mixed");
                checked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    barrier.wait().await;
    for i in 0..writes {
        let ds = Dataset::new("racy").partition("slot", (i % 3).to_string());
        root.write(&ds, vec![b'a' + (i % 26); SIZE]).await.unwrap();
    }
    done.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let checked = checked.load(Ordering::Relaxed);
    assert!(
        checked >= readers,
        "the readers read during the writes ({checked} reads)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_of_latest_on_a_folder_never_see_half_a_write() {
    let dir = tempfile::tempdir().unwrap();
    readers_never_see_half_a_write(DatasetRoot::folder(dir.path()), 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_of_latest_on_s3_never_see_half_a_write() {
    let Some(root) = moto_root() else { return };
    // moto takes ~0.3 s per MiB written; 15 writes still overlap many reads.
    readers_never_see_half_a_write(root, 15).await;
}

#[tokio::test]
async fn bad_names_and_values_are_refused_by_name_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = DatasetRoot::folder(dir.path());
    let cases = [
        (Dataset::new("a/b"), "dataset name", "a/b"),
        (Dataset::new(".."), "dataset name", ".."),
        (
            Dataset::new("ok").partition("run=date", "x"),
            "partition name",
            "run=date",
        ),
        (
            Dataset::new("ok").partition("rundate", "../../etc"),
            "partition value",
            "../../etc",
        ),
        (
            Dataset::new("ok").partition("rundate", "a\0b"),
            "partition value",
            "a\0b",
        ),
        (
            Dataset::new("ok").partition("rundate", "a\nb"),
            "partition value",
            "a\nb",
        ),
        (Dataset::new("ok").partition("", "x"), "partition name", ""),
        (Dataset::new("ok").partition("k", "a\\b"), "partition value", "a\\b"),
    ];
    for (ds, what, value) in cases {
        let err = root.write(&ds, "x").await.unwrap_err();
        match &err {
            DatasetError::Invalid { what: w, value: v, .. } => {
                assert_eq!((*w, v.as_str()), (what, value), "{err}");
            }
            other => panic!("{value:?}: expected Invalid, got {other}"),
        }
        assert!(err.to_string().contains(what), "{err}");
    }
    assert!(matches!(root.latest("a/b").await, Err(DatasetError::Invalid { .. })));
    // Nothing at all was written.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn batch() -> arrow_array::RecordBatch {
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
    let names: ArrayRef = Arc::new(StringArray::from(vec!["ada", "grace", "linus"]));
    arrow_array::RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap()
}

async fn arrow_round_trips(root: &DatasetRoot) {
    for format in [Format::Csv, Format::Parquet, Format::JsonLines] {
        let ds = Dataset::new("people").format(format).partition("rundate", "2022-10-23");
        root.write_batches(&ds, &[batch()]).await.unwrap();
        let back = root.read_batches(&ds).await.unwrap();
        let rows: usize = back.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3, "{format:?}");
        assert_eq!(back[0].column(0).as_ref(), batch().column(0).as_ref(), "{format:?}");
        assert_eq!(back[0].column(1).as_ref(), batch().column(1).as_ref(), "{format:?}");
        let (latest, again) = root.read_latest_batches("people").await.unwrap();
        assert_eq!(latest.format, format);
        assert_eq!(again, back);
    }
    let parquet = root
        .read(
            &Dataset::new("people")
                .format(Format::Parquet)
                .partition("rundate", "2022-10-23"),
        )
        .await
        .unwrap();
    assert_eq!(&parquet[..4], b"PAR1", "a real Parquet file");
}

#[tokio::test]
async fn arrow_batches_round_trip_as_csv_parquet_and_json_lines_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    arrow_round_trips(&DatasetRoot::folder(dir.path())).await;
    assert!(
        dir.path()
            .join("parquet/dataset=people/rundate=2022-10-23/data.parquet")
            .exists()
    );
}

#[tokio::test]
async fn arrow_batches_round_trip_on_s3() {
    let Some(root) = moto_root() else { return };
    arrow_round_trips(&root).await;
}
