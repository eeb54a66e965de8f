//! Search support for the management API's `GET /tenants` and `GET /devices/{t}` (HONO-CONTRACT.md
//! §3.2): `filterJson` predicates, `sortJson` orderings and the result page.
//!
//! Filters and sorts address fields by JSON pointer into the document as the API renders it, so the
//! registry can apply them to the same JSON it returns. String values may use `*` (any run of
//! characters) and `?` (exactly one character); matching walks pattern and text with a single
//! backtrack point, so it is O(pattern × text) at worst, never exponential.

use std::cmp::Ordering;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

use crate::error::ValidationError;

/// The only filter operator Hono defines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FilterOp {
    #[default]
    Eq,
}

/// One `filterJson` predicate: the field at `field` equals `value` (strings with wildcards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// JSON pointer (RFC 6901) starting with `/`, e.g. `/ext/brand`.
    #[serde(deserialize_with = "pointer")]
    pub field: String,
    #[serde(default)]
    pub op: FilterOp,
    /// A boolean, number or string; strings may contain `*` and `?` wildcards.
    #[serde(deserialize_with = "scalar")]
    #[schemars(with = "FilterValueSchema")]
    pub value: Value,
}

/// Stand-in schema for `Filter::value`, which `serde_json::Value` would describe as anything.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum FilterValueSchema {
    Bool(bool),
    Number(f64),
    String(String),
}

fn pointer<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let field = String::deserialize(d)?;
    if field.starts_with('/') {
        Ok(field)
    } else {
        Err(serde::de::Error::custom(format!(
            "field `{field}` is not a JSON pointer; it must start with '/', e.g. \"/ext/brand\""
        )))
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let value = Value::deserialize(d)?;
    match value {
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(value),
        other => Err(serde::de::Error::custom(format!(
            "value {other} is not a boolean, number or string"
        ))),
    }
}

impl Filter {
    /// An `eq` filter; `field` must be a JSON pointer starting with `/`.
    pub fn eq(field: &str, value: impl Into<Value>) -> Result<Self, ValidationError> {
        let json = serde_json::json!({ "field": field, "value": value.into() });
        serde_json::from_value(json).map_err(|e| ValidationError::at("filterJson", e))
    }

    /// Parses one `filterJson` query value.
    pub fn parse(json: &str) -> Result<Self, ValidationError> {
        serde_json::from_str(json).map_err(|e| ValidationError::at("filterJson", e))
    }

    /// Whether `doc` has a matching value at the pointer. A pointer that does not resolve never matches;
    /// an array matches when one of its elements does (so `/via` finds devices behind a gateway).
    pub fn matches(&self, doc: &Value) -> bool {
        match doc.pointer(&self.field) {
            Some(Value::Array(items)) => items.iter().any(|item| self.matches_value(item)),
            Some(found) => self.matches_value(found),
            None => false,
        }
    }

    fn matches_value(&self, found: &Value) -> bool {
        match (&self.value, found) {
            (Value::Bool(want), Value::Bool(have)) => want == have,
            (Value::Number(want), Value::Number(have)) => numbers_equal(want, have),
            (Value::String(pattern), Value::String(text)) => wildcard_match(pattern, text),
            _ => false,
        }
    }
}

/// Whether `doc` matches every filter (repeated `filterJson` parameters combine with AND).
pub fn matches_all(filters: &[Filter], doc: &Value) -> bool {
    filters.iter().all(|f| f.matches(doc))
}

/// Compares numbers by value, so that `15` matches `15.0`.
fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters (also none) and `?`
/// for exactly one. Case-sensitive; works on characters, not bytes.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position of the last `*` seen and of the text character it is currently made to end before.
    // Only the last star needs revisiting: any earlier one could only absorb what the last one can.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Sort direction of a `sortJson` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// One `sortJson` option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    /// JSON pointer (RFC 6901) starting with `/`, e.g. `/status/created`.
    #[serde(deserialize_with = "pointer")]
    pub field: String,
    #[serde(default)]
    pub direction: Direction,
}

impl Sort {
    pub fn new(field: &str, direction: Direction) -> Result<Self, ValidationError> {
        let json = serde_json::json!({ "field": field, "direction": direction });
        serde_json::from_value(json).map_err(|e| ValidationError::at("sortJson", e))
    }

    /// Parses one `sortJson` query value.
    pub fn parse(json: &str) -> Result<Self, ValidationError> {
        serde_json::from_str(json).map_err(|e| ValidationError::at("sortJson", e))
    }

    /// Orders two documents by the value at the pointer ([`compare_json`]); `desc` reverses the order, so
    /// documents without the field come first ascending and last descending.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        let order = compare_json(a.pointer(&self.field), b.pointer(&self.field));
        match self.direction {
            Direction::Asc => order,
            Direction::Desc => order.reverse(),
        }
    }
}

/// Orders by the first sort option that tells two documents apart (repeated `sortJson` parameters apply
/// in order).
pub fn compare_by(sorts: &[Sort], a: &Value, b: &Value) -> Ordering {
    sorts
        .iter()
        .map(|s| s.compare(a, b))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// A total order over optional JSON values: missing < null < booleans < numbers < strings < arrays <
/// objects; within a kind, false < true, numbers by value, strings by code point, arrays element-wise.
/// Objects are all equal to each other (sorting by an object field is meaningless but must not panic).
pub fn compare_json(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None => 0,
            Some(Value::Null) => 1,
            Some(Value::Bool(_)) => 2,
            Some(Value::Number(_)) => 3,
            Some(Value::String(_)) => 4,
            Some(Value::Array(_)) => 5,
            Some(Value::Object(_)) => 6,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Array(x)), Some(Value::Array(y))) => x
            .iter()
            .zip(y)
            .map(|(p, q)| compare_json(Some(p), Some(q)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x.cmp(&y);
    }
    let x = a.as_f64().unwrap_or(f64::NAN);
    let y = b.as_f64().unwrap_or(f64::NAN);
    x.total_cmp(&y)
}

/// A page of search results: `total` counts every match, `result` holds the requested page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}SearchResult")]
pub struct SearchResult<T> {
    pub total: u64,
    pub result: Vec<T>,
}

/// An object with its id, as search results list tenants and devices (`{"id": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "{T}WithId")]
pub struct WithId<T> {
    pub id: String,
    #[serde(flatten)]
    pub item: T,
}

#[cfg(test)]
mod tests;
