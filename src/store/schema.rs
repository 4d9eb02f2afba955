//! Table schemas, read from the files in `schemas/` (compiled in, so the binary carries them).
//!
//! A schema file names its table, its key columns and its fields. The code that builds Arrow
//! batches (`batches.rs`) always goes through [`TableSchema::arrow`], and the tests check that
//! every builder's output equals the file, so code and files cannot drift apart silently.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

use super::StoreError;

/// The core tables, in the order `palpipe tables` lists them.
pub const TABLES: [&str; 9] = [
    "items",
    "prompts",
    "pairs",
    "users",
    "embeddings",
    "splits",
    "models",
    "runs",
    "enrollments",
];

const FILES: [(&str, &str); 9] = [
    ("items", include_str!("../../schemas/items.json")),
    ("prompts", include_str!("../../schemas/prompts.json")),
    ("pairs", include_str!("../../schemas/pairs.json")),
    ("users", include_str!("../../schemas/users.json")),
    ("embeddings", include_str!("../../schemas/embeddings.json")),
    ("splits", include_str!("../../schemas/splits.json")),
    ("models", include_str!("../../schemas/models.json")),
    ("runs", include_str!("../../schemas/runs.json")),
    (
        "enrollments",
        include_str!("../../schemas/enrollments.json"),
    ),
];

/// One table's schema file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub table: String,
    pub key: Vec<String>,
    #[serde(default)]
    pub doc: String,
    pub fields: Vec<FieldSpec>,
}

/// One column: its name, a type word and nullability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    /// utf8 | int8 | int32 | int64 | float32 | float64 | bool | large_binary | vector_f32
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
    #[serde(default)]
    pub doc: String,
}

impl TableSchema {
    /// The schema of table `name`, parsed from its file.
    pub fn get(name: &str) -> Result<TableSchema, StoreError> {
        let (_, text) = FILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| StoreError::UnknownTable(name.to_string()))?;
        let schema: TableSchema =
            serde_json::from_str(text).map_err(|e| StoreError::SchemaFile {
                table: name.to_string(),
                message: e.to_string(),
            })?;
        Ok(schema)
    }

    /// The Arrow schema. `vector_dim` sets the width of a `vector_f32` column (the
    /// embeddings table fixes it when it is created).
    pub fn arrow(&self, vector_dim: Option<usize>) -> Result<SchemaRef, StoreError> {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                Ok(Field::new(
                    &f.name,
                    self.data_type(f, vector_dim)?,
                    f.nullable,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    fn data_type(&self, f: &FieldSpec, vector_dim: Option<usize>) -> Result<DataType, StoreError> {
        Ok(match f.ty.as_str() {
            "utf8" => DataType::Utf8,
            "int8" => DataType::Int8,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "float32" => DataType::Float32,
            "float64" => DataType::Float64,
            "bool" => DataType::Boolean,
            "large_binary" => DataType::LargeBinary,
            "vector_f32" => DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                vector_dim.unwrap_or(0) as i32,
            ),
            other => {
                return Err(StoreError::SchemaFile {
                    table: self.table.clone(),
                    message: format!("column '{}' has unknown type '{other}'", f.name),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_parses_and_names_its_table() {
        for name in TABLES {
            let s = TableSchema::get(name).unwrap();
            assert_eq!(s.table, name);
            assert!(!s.key.is_empty(), "{name} has no key");
            for k in &s.key {
                assert!(
                    s.fields.iter().any(|f| &f.name == k),
                    "{name}: key {k} is not a column"
                );
            }
            s.arrow(Some(4)).unwrap();
        }
    }

    #[test]
    fn compiled_schemas_match_the_files_on_disk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (name, text) in FILES {
            let on_disk = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            assert_eq!(on_disk, text, "schemas/{name}.json changed: rebuild");
        }
    }
}
