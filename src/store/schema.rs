//! Table schemas, read from the files in `schemas/` (compiled in, so the binary carries them).
//!
//! A schema file names its table, its key columns and its fields. The code that builds Arrow
//! batches (`batches.rs`) always goes through [`TableSchema::arrow`], and the tests check that
//! every builder's output equals the file, so code and files cannot drift apart silently.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

use super::StoreError;

/// Lance's field metadata keys for a column's codec and its level (lance-encoding's
/// `COMPRESSION_META_KEY` and `COMPRESSION_LEVEL_META_KEY`).
const COMPRESSION_KEY: &str = "lance-encoding:compression";
const COMPRESSION_LEVEL_KEY: &str = "lance-encoding:compression-level";
/// Lance's field metadata key for the bytes of values its mini-block encoder aims to put in
/// one chunk (lance-encoding's `MINICHUNK_SIZE_META_KEY`; its default is 4 KiB).
const MINICHUNK_SIZE_KEY: &str = "lance-encoding:minichunk-size";

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
    /// How Lance compresses the column, when not its own choice: a codec name Lance knows
    /// (`zstd`, `lz4`, `fsst`, `none`), written as the field's `lance-encoding:compression`
    /// metadata. The columns of blake3 hex ids take `zstd` at level 1: as small as Lance's
    /// default FSST for random hex (4 bits of entropy per character either way), at less
    /// CPU time (bench/README.md, "Session 28").
    #[serde(default)]
    pub compression: Option<String>,
    /// The codec's level (`lance-encoding:compression-level`), with `compression` only.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Bytes of values per mini-block chunk Lance aims for (`lance-encoding:minichunk-size`),
    /// with `compression` only: the codec compresses each chunk on its own, so on small
    /// chunks its per-call setup (zstd's entropy tables) costs as much as the compression.
    /// The hex id columns take 16 KiB (Lance's default is 4 KiB), so 128 ids to a chunk
    /// instead of 32: the ingest spends about 4% less CPU time and its store is 2–3% smaller
    /// (bench/README.md, "Session 33"), for point reads that decompress four times as many ids
    /// to find one. Any size Lance accepts: its 2.2 files (the default, which palpipe writes)
    /// take chunks of any size; 2.1 files ignore sizes of 32 KiB and more.
    #[serde(default)]
    pub minichunk_size: Option<u32>,
}

/// `schema` without its fields' metadata (the schema's own is kept): the columns as a reader
/// sees them, less Lance's per-column storage settings ([`FieldSpec::compression`]), which a
/// table written by another palpipe version may carry or not.
pub fn without_field_metadata(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = (schema.fields().iter())
        .map(|f| f.as_ref().clone().with_metadata(HashMap::new()))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
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
                let field = Field::new(&f.name, self.data_type(f, vector_dim)?, f.nullable);
                Ok(match &f.compression {
                    None => field,
                    Some(codec) => {
                        let mut meta =
                            HashMap::from([(COMPRESSION_KEY.to_string(), codec.clone())]);
                        if let Some(level) = f.compression_level {
                            meta.insert(COMPRESSION_LEVEL_KEY.to_string(), level.to_string());
                        }
                        if let Some(bytes) = f.minichunk_size {
                            meta.insert(MINICHUNK_SIZE_KEY.to_string(), bytes.to_string());
                        }
                        field.with_metadata(meta)
                    }
                })
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
            for f in &s.fields {
                if let Some(codec) = &f.compression {
                    assert!(
                        ["zstd", "lz4", "fsst", "none"].contains(&codec.as_str()),
                        "{name}.{}: codec {codec}",
                        f.name
                    );
                } else {
                    assert!(
                        f.compression_level.is_none() && f.minichunk_size.is_none(),
                        "{name}.{}: a level or chunk size without a codec",
                        f.name
                    );
                }
            }
        }
    }

    /// Every column of blake3 hex ids (64 characters of [0-9a-f], as `records::hex` writes
    /// them) is stored with zstd at level 1 in chunks of 16 KiB, written as Lance's field
    /// metadata; other columns are left to Lance.
    #[test]
    fn hex_id_columns_carry_their_codec_as_lance_metadata() {
        let hex_ids = [
            ("items", "item_id"),
            ("items", "parent_id"),
            ("prompts", "prompt_id"),
            ("pairs", "pair_id"),
            ("pairs", "prompt_id"),
            ("pairs", "left_id"),
            ("pairs", "right_id"),
            ("embeddings", "content_id"),
        ];
        for name in TABLES {
            let schema = TableSchema::get(name).unwrap().arrow(Some(4)).unwrap();
            for field in schema.fields() {
                let meta = field.metadata();
                if hex_ids.contains(&(name, field.name().as_str())) {
                    assert_eq!(meta.get(COMPRESSION_KEY).map(String::as_str), Some("zstd"));
                    assert_eq!(
                        meta.get(COMPRESSION_LEVEL_KEY).map(String::as_str),
                        Some("1")
                    );
                    assert_eq!(
                        meta.get(MINICHUNK_SIZE_KEY).map(String::as_str),
                        Some("16384")
                    );
                } else {
                    assert!(meta.is_empty(), "{name}.{}: {meta:?}", field.name());
                }
            }
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
