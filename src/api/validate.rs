//! Input rules shared by the endpoints; each failure names the limit.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::settings::Limits;
use crate::store::MetaValue;

/// Longest metadata key, in bytes.
const MAX_KEY_BYTES: usize = 64;

/// A text must be non-blank and at most `max_text_bytes` long.
pub fn text(field: &str, value: &str, limits: &Limits) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::validation(format!("`{field}` must not be empty")));
    }
    if value.len() > limits.max_text_bytes {
        return Err(ApiError::validation(format!(
            "`{field}` is {} bytes; the limit is {} bytes",
            value.len(),
            limits.max_text_bytes
        )));
    }
    Ok(())
}

/// Between 1 and `max_items` items.
pub fn count(field: &str, n: usize, limits: &Limits) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::validation(format!(
            "`{field}` must hold at least one item"
        )));
    }
    if n > limits.max_items {
        return Err(ApiError::validation(format!(
            "`{field}` holds {n} items; the limit is {} per request",
            limits.max_items
        )));
    }
    Ok(())
}

/// A `limit` parameter between 1 and the page maximum; `default` when absent.
pub fn page_limit(value: Option<i64>, default: usize, limits: &Limits) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if n >= 1 && (n as u64) <= limits.max_page as u64 => Ok(n as usize),
        Some(n) => Err(ApiError::validation(format!(
            "`limit` is {n}; it must be between 1 and {}",
            limits.max_page
        ))),
    }
}

/// Whether `k` is a usable metadata key (1 to 64 of A-Z, a-z, 0-9, `_`, `-`).
pub fn is_metadata_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_BYTES
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn key(k: &str) -> Result<(), ApiError> {
    if is_metadata_key(k) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "metadata key `{k}` must be 1 to {MAX_KEY_BYTES} characters of A-Z, a-z, 0-9, `_` or `-`"
        )))
    }
}

/// Metadata is a JSON object of bounded size with plain keys.
pub fn metadata(value: Option<Value>, limits: &Limits) -> Result<Map<String, Value>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::validation("`metadata` must be a JSON object")),
    };
    let size = serde_json::to_vec(&map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits.max_metadata_bytes {
        return Err(ApiError::validation(format!(
            "`metadata` is {size} bytes of JSON; the limit is {} bytes",
            limits.max_metadata_bytes
        )));
    }
    map.keys().try_for_each(|k| key(k))?;
    Ok(map)
}

/// A metadata filter: top-level keys matched for equality on strings,
/// integers or booleans.
pub fn metadata_filter(
    value: Option<Map<String, Value>>,
) -> Result<Vec<(String, MetaValue)>, ApiError> {
    let Some(map) = value else {
        return Ok(Vec::new());
    };
    if map.len() > 16 {
        return Err(ApiError::validation("`filter` may hold at most 16 keys"));
    }
    map.into_iter()
        .map(|(k, v)| {
            key(&k)?;
            let v = match v {
                Value::String(s) => MetaValue::Str(s),
                Value::Bool(b) => MetaValue::Bool(b),
                Value::Number(n) if n.is_i64() => {
                    MetaValue::Int(n.as_i64().expect("is_i64 checked"))
                }
                _ => {
                    return Err(ApiError::validation(format!(
                        "filter value for `{k}` must be a string, an integer or a boolean"
                    )));
                }
            };
            Ok((k, v))
        })
        .collect()
}
