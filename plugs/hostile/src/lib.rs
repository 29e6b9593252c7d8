//! hostile (skeleton: to be written)
