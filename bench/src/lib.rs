//! benchmarks (skeleton: to be written)
