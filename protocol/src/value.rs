//! Reading redis-rs reply values: strings, arrays and maps, whatever RESP
//! version spelled them.
//!
//! Stream reads, `XINFO`, `CLUSTER SHARDS` and liveness records all arrive as
//! nested [`redis::Value`]s; these few functions take them apart, once.

use redis::Value;

/// A string-like reply value as bytes (integers as their decimal digits).
pub fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.as_bytes().to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// A string-like reply value as text.
pub fn text_of(value: &Value) -> Option<String> {
    bytes_of(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// [`bytes_of`], taking the value: a bulk string's bytes are moved out, not copied (stream
/// reads hand every entry's id and payload through here).
pub fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        other => bytes_of(&other),
    }
}

/// [`text_of`], taking the value.
pub fn into_text(value: Value) -> Option<String> {
    into_bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// [`items`], taking the value.
pub fn into_items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// The elements of an array (or set) reply; empty for anything else.
pub fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// The name/value pairs of a map reply, or of a flat `[name, value, …]` array
/// (RESP2 spells maps that way): what `XINFO`, `CLUSTER SHARDS` and friends return.
pub fn fields(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| Some((text_of(k)?, v))).collect(),
        _ => items(value)
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((text_of(k)?, v)),
                _ => None,
            })
            .collect(),
    }
}

/// An integer reply value, or a string holding one.
pub fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text_of(other)?.parse().ok(),
    }
}
