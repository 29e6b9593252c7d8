//! Suite load: being written.
