//! End-to-end tests of weir with real processes, files and databases. The binaries in
//! `src/bin` are the "other processes" the tests start; [`s3`] runs real S3-compatible
//! servers on loopback; [`mounts`] gives FUSE and JuiceFS mounts; [`store_suite`] is the
//! behaviour every result store backend must have, run against each of them.

pub mod mounts;
pub mod s3;
pub mod store_suite;

/// Whether `scripts/test.sh` made a service mandatory (`WEIR_TEST_REQUIRE_<WHAT>=1`).
pub fn required(what: &str) -> bool {
    std::env::var(format!("WEIR_TEST_REQUIRE_{what}")).as_deref() == Ok("1")
}

/// A test that cannot run here says so with a line containing `skipping` (which
/// `scripts/test.sh` also refuses), and fails outright when `WEIR_TEST_REQUIRE_<WHAT>=1`.
pub fn skip(what: &str, why: &str) {
    assert!(!required(what), "WEIR_TEST_REQUIRE_{what}=1 but {why}");
    eprintln!("skipping: {why}");
}
