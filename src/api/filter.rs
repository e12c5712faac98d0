//! The filter language of search and list: metadata equality, any-of and
//! numeric ranges, and bounds on the creation time.
//!
//! `filter` maps a metadata key to what its value must be:
//! - a string, integer or boolean: equal to it;
//! - `{"in": [v1, v2, ...]}`: equal to one of them (1 to 64 values);
//! - `{"gt": n, "gte": n, "lt": n, "lte": n}` (any of the four): a number
//!   within the bounds.
//!
//! `created_after` and `created_before` bound the creation time (Unix
//! milliseconds, both exclusive). Every condition must hold.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::store::{Bounds, Conditions, MetaValue};

/// Most keys in one filter.
const MAX_KEYS: usize = 16;
/// Most values in one `in`.
const MAX_ANY: usize = 64;

/// The conditions of a search's or a list's filter and time bounds.
pub fn conditions(
    filter: Option<Map<String, Value>>,
    created_after: Option<i64>,
    created_before: Option<i64>,
) -> Result<Conditions, ApiError> {
    let mut out = Conditions::default();
    if let Some(map) = filter {
        if map.len() > MAX_KEYS {
            return Err(ApiError::validation(format!(
                "`filter` may hold at most {MAX_KEYS} keys"
            )));
        }
        for (key, value) in map {
            super::validate::key(&key)?;
            match value {
                Value::Object(spec) => condition(&mut out, key, spec)?,
                scalar => {
                    let v = meta_value(&key, scalar)?;
                    out.metadata.push((key, v));
                }
            }
        }
    }
    out.created = Bounds {
        gt: created_after.map(|t| t as f64),
        lt: created_before.map(|t| t as f64),
        ..Bounds::default()
    };
    if let (Some(after), Some(before)) = (created_after, created_before)
        && after >= before
    {
        return Err(ApiError::validation(
            "`created_after` must be earlier than `created_before`",
        ));
    }
    Ok(out)
}

/// One key's `{"in": [...]}` or range object.
fn condition(out: &mut Conditions, key: String, spec: Map<String, Value>) -> Result<(), ApiError> {
    if let Some(values) = spec.get("in") {
        if spec.len() > 1 {
            return Err(ApiError::validation(format!(
                "filter for `{key}`: `in` cannot be combined with other operators"
            )));
        }
        let Value::Array(values) = values else {
            return Err(ApiError::validation(format!(
                "filter for `{key}`: `in` must be an array"
            )));
        };
        if values.is_empty() || values.len() > MAX_ANY {
            return Err(ApiError::validation(format!(
                "filter for `{key}`: `in` must hold 1 to {MAX_ANY} values"
            )));
        }
        let values = values
            .iter()
            .map(|v| meta_value(&key, v.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        out.any_of.push((key, values));
        return Ok(());
    }
    let mut bounds = Bounds::default();
    for (op, value) in &spec {
        let slot = match op.as_str() {
            "gt" => &mut bounds.gt,
            "gte" => &mut bounds.gte,
            "lt" => &mut bounds.lt,
            "lte" => &mut bounds.lte,
            other => {
                return Err(ApiError::validation(format!(
                    "filter for `{key}`: unknown operator `{other}`; use `in`, `gt`, `gte`, `lt` or `lte`"
                )));
            }
        };
        let n = value.as_f64().filter(|n| n.is_finite()).ok_or_else(|| {
            ApiError::validation(format!("filter for `{key}`: `{op}` must be a number"))
        })?;
        *slot = Some(n);
    }
    if bounds.is_open() {
        return Err(ApiError::validation(format!(
            "filter for `{key}`: an operator object needs `in` or a bound (`gt`, `gte`, `lt`, `lte`)"
        )));
    }
    out.ranges.push((key, bounds));
    Ok(())
}

/// A value to compare for equality: a string, an integer or a boolean.
fn meta_value(key: &str, value: Value) -> Result<MetaValue, ApiError> {
    match value {
        Value::String(s) => Ok(MetaValue::Str(s)),
        Value::Bool(b) => Ok(MetaValue::Bool(b)),
        Value::Number(n) if n.is_i64() => Ok(MetaValue::Int(n.as_i64().expect("is_i64 checked"))),
        _ => Err(ApiError::validation(format!(
            "filter value for `{key}` must be a string, an integer or a boolean (or an `in` or range object)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(filter: Value) -> Result<Conditions, ApiError> {
        conditions(filter.as_object().cloned(), None, None)
    }

    #[test]
    fn scalars_ranges_and_any_of_become_their_conditions() {
        let c = parse(json!({
            "topic": "travel",
            "lang": {"in": ["en", "fr"]},
            "price": {"gte": 10, "lt": 20.5},
        }))
        .expect("valid");
        assert_eq!(
            c.metadata,
            [("topic".into(), MetaValue::Str("travel".into()))]
        );
        assert_eq!(c.any_of[0].1.len(), 2);
        let (key, bounds) = &c.ranges[0];
        assert_eq!(key, "price");
        assert!(bounds.holds(10.0) && bounds.holds(20.0) && !bounds.holds(20.5));
    }

    #[test]
    fn malformed_operators_are_refused_with_the_key_named() {
        for bad in [
            json!({"price": {}}),
            json!({"price": {"between": [1, 2]}}),
            json!({"price": {"gt": "ten"}}),
            json!({"lang": {"in": []}}),
            json!({"lang": {"in": ["en"], "gt": 1}}),
            json!({"lang": {"in": [{"nested": 1}]}}),
        ] {
            let err = parse(bad.clone()).expect_err("refused");
            let ApiError::Validation(message) = err else {
                panic!("not a validation error for {bad}");
            };
            assert!(
                message.contains("price") || message.contains("lang"),
                "{message}"
            );
        }
    }

    #[test]
    fn time_bounds_must_leave_room() {
        assert!(conditions(None, Some(5), Some(5)).is_err());
        let c = conditions(None, Some(1), Some(9)).expect("valid");
        assert!(c.created.holds(5.0) && !c.created.holds(1.0) && !c.created.holds(9.0));
    }
}
