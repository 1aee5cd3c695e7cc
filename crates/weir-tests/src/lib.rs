//! End-to-end tests of weir with real processes, files and databases. The binaries in
//! `src/bin` are the "other processes" the tests start.
