//! Suite leaks: being written.
