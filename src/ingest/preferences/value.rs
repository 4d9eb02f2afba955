//! One row of a preferences file as a tree of values, whatever format it came from (JSON,
//! CSV, Parquet), and the dotted-path lookup (`info.post`, `summaries.0.text`) the column
//! mapping uses.

use arrow::array::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

/// A value of a row: JSON's kinds plus raw bytes (Parquet binary columns).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Val>),
    /// Fields in their file order.
    Map(Vec<(String, Val)>),
}

/// What a path found in a row.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// The value (possibly null).
    Value(&'a Val),
    /// A key or index of the path is absent; the argument is the part that was reached.
    Missing,
}

impl Val {
    /// The value at a dotted path: a map field named exactly `path` first (a CSV header may
    /// hold dots), else the first segment as a field or list index, then the rest.
    pub fn lookup(&self, path: &str) -> Found<'_> {
        match self {
            Val::Map(fields) => {
                if let Some((_, v)) = fields.iter().find(|(k, _)| k == path) {
                    return Found::Value(v);
                }
                let Some((head, rest)) = path.split_once('.') else {
                    return Found::Missing;
                };
                match fields.iter().find(|(k, _)| k == head) {
                    Some((_, v)) => v.lookup(rest),
                    None => Found::Missing,
                }
            }
            Val::List(items) => {
                let (head, rest) = match path.split_once('.') {
                    Some((h, r)) => (h, Some(r)),
                    None => (path, None),
                };
                let Some(v) = head.parse::<usize>().ok().and_then(|i| items.get(i)) else {
                    return Found::Missing;
                };
                match rest {
                    Some(r) => v.lookup(r),
                    None => Found::Value(v),
                }
            }
            _ => Found::Missing,
        }
    }

    /// A short name of the value's kind, for messages and the type check across files
    /// (integers and floats are both "a number").
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) | Val::Float(_) => "a number",
            Val::Str(_) => "a string",
            Val::Bytes(_) => "bytes",
            Val::List(_) => "a list",
            Val::Map(_) => "a record",
        }
    }

    /// A scalar as text (ids, group keys, split names); None for lists, records, bytes, null.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Val::Str(s) => Some(s.clone()),
            Val::Int(i) => Some(i.to_string()),
            Val::Float(f) => Some(f.to_string()),
            Val::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A number (a numeric string too, as CSV gives); None when it is not one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Val::Str(s) => {
                let t = s.trim();
                match t.to_ascii_lowercase().as_str() {
                    "nan" => Some(f64::NAN),
                    _ => t.parse::<f64>().ok(),
                }
            }
            _ => None,
        }
    }

    /// A flag: true, 1, "true", "True", "1", "yes" are true.
    pub fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s) => matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "t" | "y"
            ),
            _ => false,
        }
    }

    /// A short rendering for messages (at most 60 characters).
    pub fn show(&self) -> String {
        let s = match self {
            Val::Str(s) => format!("{s:?}"),
            Val::Bytes(b) => format!("<{} bytes>", b.len()),
            Val::List(l) => format!("<list of {}>", l.len()),
            Val::Map(_) => "<record>".to_string(),
            other => other.as_text().unwrap_or_else(|| "null".into()),
        };
        if s.chars().count() > 60 {
            format!("{}…", s.chars().take(60).collect::<String>())
        } else {
            s
        }
    }
}

/// A JSON value read straight into a [`Val`] (no intermediate `serde_json::Value`): objects
/// keep their fields in file order.
impl<'de> serde::Deserialize<'de> for Val {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Val, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> serde::de::Visitor<'de> for ValVisitor {
    type Value = Val;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        d.deserialize_any(ValVisitor)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Val, E> {
        Ok(Val::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Val, E> {
        Ok(Val::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Val, E> {
        Ok(i64::try_from(u).map_or(Val::Float(u as f64), Val::Int))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Val, E> {
        Ok(Val::Float(x))
    }
    fn visit_str<E>(self, s: &str) -> Result<Val, E> {
        Ok(Val::Str(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Val, E> {
        Ok(Val::Str(s))
    }
    fn visit_bytes<E>(self, b: &[u8]) -> Result<Val, E> {
        Ok(Val::Bytes(b.to_vec()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element::<Val>()? {
            items.push(v);
        }
        Ok(Val::List(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(4));
        // A repeated key keeps its last value, as serde_json's own maps do.
        while let Some((k, v)) = map.next_entry::<String, Val>()? {
            match fields.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => fields.push((k, v)),
            }
        }
        Ok(Val::Map(fields))
    }
}

impl From<serde_json::Value> for Val {
    fn from(v: serde_json::Value) -> Val {
        match v {
            serde_json::Value::Null => Val::Null,
            serde_json::Value::Bool(b) => Val::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Val::Str(s),
            serde_json::Value::Array(a) => Val::List(a.into_iter().map(Val::from).collect()),
            serde_json::Value::Object(m) => {
                Val::Map(m.into_iter().map(|(k, v)| (k, Val::from(v))).collect())
            }
        }
    }
}

/// Row `i` of an Arrow column as a value: nested structs and lists walked, dictionaries
/// decoded; a type without a natural value (dates, decimals) becomes its text.
pub fn from_arrow(a: &ArrayRef, i: usize) -> Val {
    if a.is_null(i) {
        return Val::Null;
    }
    macro_rules! prim {
        ($t:ty, $conv:expr) => {
            $conv(a.as_primitive::<$t>().value(i))
        };
    }
    match a.data_type() {
        DataType::Null => Val::Null,
        DataType::Boolean => Val::Bool(a.as_boolean().value(i)),
        DataType::Int8 => prim!(Int8Type, |v: i8| Val::Int(v as i64)),
        DataType::Int16 => prim!(Int16Type, |v: i16| Val::Int(v as i64)),
        DataType::Int32 => prim!(Int32Type, |v: i32| Val::Int(v as i64)),
        DataType::Int64 => prim!(Int64Type, Val::Int),
        DataType::UInt8 => prim!(UInt8Type, |v: u8| Val::Int(v as i64)),
        DataType::UInt16 => prim!(UInt16Type, |v: u16| Val::Int(v as i64)),
        DataType::UInt32 => prim!(UInt32Type, |v: u32| Val::Int(v as i64)),
        DataType::UInt64 => prim!(UInt64Type, |v: u64| Val::Int(v as i64)),
        DataType::Float32 => prim!(Float32Type, |v: f32| Val::Float(v as f64)),
        DataType::Float64 => prim!(Float64Type, Val::Float),
        DataType::Utf8 => Val::Str(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Val::Str(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Val::Str(a.as_string_view().value(i).to_string()),
        DataType::Binary => Val::Bytes(a.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Val::Bytes(a.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Val::Bytes(a.as_binary_view().value(i).to_vec()),
        DataType::FixedSizeBinary(_) => Val::Bytes(a.as_fixed_size_binary().value(i).to_vec()),
        DataType::List(_) => list(&a.as_list::<i32>().value(i)),
        DataType::LargeList(_) => list(&a.as_list::<i64>().value(i)),
        DataType::FixedSizeList(_, _) => list(&a.as_fixed_size_list().value(i)),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Val::Map(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), from_arrow(c, i)))
                    .collect(),
            )
        }
        DataType::Dictionary(_, value_type) => {
            match arrow::compute::cast(&a.slice(i, 1), value_type) {
                Ok(decoded) => from_arrow(&decoded, 0),
                Err(_) => Val::Null,
            }
        }
        _ => match arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8) {
            Ok(s) => from_arrow(&s, 0),
            Err(_) => Val::Null,
        },
    }
}

fn list(values: &ArrayRef) -> Val {
    Val::List((0..values.len()).map(|j| from_arrow(values, j)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_reach_into_records_and_lists() {
        let row = Val::from(serde_json::json!({
            "info": {"post": "p", "id": 7},
            "summaries": [{"text": "a", "note": null}, {"text": "b"}],
            "a.b": 1
        }));
        assert!(matches!(row.lookup("info.post"), Found::Value(Val::Str(s)) if s == "p"));
        assert!(matches!(row.lookup("summaries.1.text"), Found::Value(Val::Str(s)) if s == "b"));
        assert!(matches!(
            row.lookup("summaries.0.note"),
            Found::Value(Val::Null)
        ));
        assert!(matches!(row.lookup("summaries.1.note"), Found::Missing));
        assert!(matches!(row.lookup("summaries.2.text"), Found::Missing));
        assert!(matches!(row.lookup("a.b"), Found::Value(Val::Int(1))));
        assert!(matches!(row.lookup("info.nothing"), Found::Missing));
    }
}
