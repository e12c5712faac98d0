//! Input rules shared by the endpoints; each failure names the limit.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::settings::Limits;

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

/// A metadata key, or a 422 naming the rule.
pub fn key(k: &str) -> Result<(), ApiError> {
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

/// Longest time to live: 100 years, in seconds.
const MAX_TTL_SECS: i64 = 100 * 365 * 24 * 3600;

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`)
/// or a value.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A memory's expiry time (Unix ms) from `expires_at` (absent, `null` for
/// never, or a time) and `ttl_seconds`, else the deployment's default.
pub fn expiry(
    expires_at: Option<Option<i64>>,
    ttl_seconds: Option<i64>,
    default_ttl: Option<std::time::Duration>,
    now: i64,
) -> Result<Option<i64>, ApiError> {
    let latest = now.saturating_add(MAX_TTL_SECS * 1000);
    match (expires_at, ttl_seconds) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "give `expires_at` or `ttl_seconds`, not both",
        )),
        (Some(None), None) => Ok(None),
        (Some(Some(at)), None) if at > now && at <= latest => Ok(Some(at)),
        (Some(Some(at)), None) => Err(ApiError::validation(format!(
            "`expires_at` is {at}; it must be a time in the future (Unix milliseconds), at most 100 years ahead"
        ))),
        (None, Some(ttl)) if (1..=MAX_TTL_SECS).contains(&ttl) => Ok(Some(now + ttl * 1000)),
        (None, Some(ttl)) => Err(ApiError::validation(format!(
            "`ttl_seconds` is {ttl}; it must be between 1 and {MAX_TTL_SECS} (100 years)"
        ))),
        (None, None) => Ok(default_ttl.map(|ttl| now.saturating_add(ttl.as_millis() as i64))),
    }
}

/// A duplicate threshold: a cosine similarity above -1, at most 1.
pub fn threshold(t: f32) -> Result<f32, ApiError> {
    if t > -1.0 && t <= 1.0 {
        Ok(t)
    } else {
        Err(ApiError::validation(format!(
            "`duplicate_threshold` is {t}; it must be above -1 and at most 1"
        )))
    }
}
