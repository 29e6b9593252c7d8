//! Suite host_library: being written.
