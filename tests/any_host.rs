//! Suite any_host: being written.
