//! Suite hostile: being written.
