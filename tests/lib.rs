//! End-to-end suites live in this package's test targets (see Cargo.toml); shared support is the `testkit` crate.
