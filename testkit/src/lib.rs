//! testkit (skeleton: to be written)
