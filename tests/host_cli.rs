//! Suite host_cli: being written.
