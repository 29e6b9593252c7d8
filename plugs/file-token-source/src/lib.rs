//! file-token-source (skeleton: to be written)
