//! serde field readers that read a value of the wrong type as absent: for the views of
//! documents the host only describes (a JWT's claims, a generator spec), whose owner (the
//! API server, Cloudsmith, the component) validates them.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A string, else `None`.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// The strings of an array (a single string too, when `one` is allowed), else empty.
fn strings(value: Value, one: bool) -> Vec<String> {
    match value {
        Value::String(s) if one => vec![s],
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// An array of strings (other elements dropped), else empty.
pub(crate) fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(strings(Value::deserialize(d)?, false))
}

/// A string or an array of strings, as a list.
pub(crate) fn text_or_texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(strings(Value::deserialize(d)?, true))
}

/// A non-negative number of seconds, whole (a fraction is dropped), else `None`.
pub(crate) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e15)
        .map(|s| s as u64))
}

/// An object read as `T` (its own fields lenient), else `None`: serde would also read a
/// struct from an array, position by position.
pub(crate) fn object<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        object @ Value::Object(_) => serde_json::from_value(object).ok(),
        _ => None,
    })
}
