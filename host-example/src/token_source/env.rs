//! A token in an environment variable of the host process.

use super::{cleaned, TokenRequest, TokenSource, TokenSourceError};
use crate::secret::Secret;

/// Reads the token from the host process's environment variable on every call (so a
/// supervisor that updates it is honoured). Surrounding whitespace is trimmed.
///
/// The guest never sees the host's environment: only this one value, only as the token.
#[derive(Debug, Clone)]
pub struct EnvTokenSource {
    variable: String,
}

impl EnvTokenSource {
    /// A source reading the variable `variable` at each call.
    pub fn new(variable: impl Into<String>) -> Self {
        EnvTokenSource {
            variable: variable.into(),
        }
    }
}

#[async_trait::async_trait]
impl TokenSource for EnvTokenSource {
    async fn token(&self, _request: &TokenRequest) -> Result<Secret, TokenSourceError> {
        let name = &self.variable;
        match std::env::var(name) {
            Ok(value) => cleaned(&value, || format!("environment variable {name}")),
            Err(std::env::VarError::NotPresent) => Err(TokenSourceError::new(format!(
                "environment variable {name} is not set"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(TokenSourceError::new(format!(
                "environment variable {name} is not valid UTF-8"
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("environment variable {}", self.variable)
    }
}
