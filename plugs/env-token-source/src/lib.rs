//! env-token-source (skeleton: to be written)
