//! End-to-end tests of weir with real processes, files and databases. The binaries in
//! `src/bin` are the "other processes" the tests start; [`s3`] runs real S3-compatible
//! servers on loopback; [`store_suite`] is the behaviour every result store backend must
//! have, run against each of them.

pub mod s3;
pub mod store_suite;
