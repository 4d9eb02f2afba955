//! `palpipe sql` and `palpipe tables`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use super::output::{self, Format};
use super::{CliError, Ctx};
use crate::store::knn::QueryEncoder;
use crate::store::{sql as store_sql, TABLES};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe sql \"SELECT split, count(*) FROM pairs GROUP BY split\"\n  palpipe sql \"SELECT item_id, octet_length(bytes) AS size FROM items WHERE kind = 'image' LIMIT 5\"\n  palpipe sql \"SELECT * FROM users\" --format json\n  palpipe sql \"SELECT rank, distance, text FROM knn('all-MiniLM-L6-v2', 'I love painting', 5) JOIN items USING (item_id)\"\n  palpipe sql \"SELECT cosine_similarity(vector, [0.1, 0.2]) FROM embeddings\"\n\nknn(encoder, text or [numbers], k): the k nearest stored vectors (cosine distance), with\nrank, content_id (also as item_id and prompt_id) and distance; the vector index is used\nwhen there is one. cosine_similarity(a, b) and l2_distance(a, b) take two vectors.\n\nThe store must exist (palpipe run creates it). SIMILAR TO is refused (the engine answers\nit wrongly): use LIKE or a regular expression with ~."
)]
pub struct SqlArgs {
    /// The query (read-only: SELECT, WITH, EXPLAIN).
    pub query: String,
    /// Output format: table for people; csv, json (JSON lines) or arrow (IPC stream) for
    /// programs. The table shows a binary value (items.bytes) as its size and first bytes,
    /// `<2.3 KiB 89504e47…>`; csv and json keep it whole, as hex.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Query TABLE as of version N (repeatable), e.g. --version-of pairs=3.
    #[arg(long = "version-of", value_name = "TABLE=N")]
    pub version_of: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct TablesArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn parse_versions(specs: &[String]) -> Result<BTreeMap<String, u64>, CliError> {
    let mut out = BTreeMap::new();
    for s in specs {
        let (t, v) = s.split_once('=').ok_or_else(|| {
            CliError::usage(anyhow::anyhow!("--version-of '{s}': expected TABLE=N"))
        })?;
        let v: u64 = v.parse().map_err(|_| {
            CliError::usage(anyhow::anyhow!(
                "--version-of '{s}': '{v}' is not a version number"
            ))
        })?;
        if !TABLES.contains(&t) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--version-of '{s}': unknown table '{t}' (tables: {})",
                TABLES.join(", ")
            )));
        }
        out.insert(t.to_string(), v);
    }
    Ok(out)
}

pub async fn sql(ctx: &Ctx, a: SqlArgs) -> Result<(), CliError> {
    let versions = parse_versions(&a.version_of)?;
    let store = ctx.existing_store().await?;
    let encoder: Arc<dyn QueryEncoder> = Arc::new(super::vectors::StoreEncoders);
    let session = store_sql::session_with(&store, &versions, Some(encoder)).await?;
    let result = store_sql::query_in(&session, &a.query).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::write(&mut out, &result.schema, &result.batches, a.format)?;
    out.flush()
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?;
    Ok(())
}

pub async fn tables(ctx: &Ctx, a: TablesArgs) -> Result<(), CliError> {
    use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
    use std::sync::Arc;
    let store = ctx.existing_store().await?;
    let (mut names, mut versions, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for t in TABLES {
        let ds = store.dataset(t, None).await?;
        names.push(t.to_string());
        match ds {
            Some(ds) => {
                versions.push(Some(ds.version_id()));
                rows.push(Some(
                    ds.count_rows(None)
                        .await
                        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?
                        as u64,
                ));
            }
            None => {
                versions.push(None);
                rows.push(None);
            }
        }
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("table", Arc::new(StringArray::from(names)) as ArrayRef),
        ("version", Arc::new(UInt64Array::from(versions)) as ArrayRef),
        ("rows", Arc::new(UInt64Array::from(rows)) as ArrayRef),
    ])
    .map_err(|e| CliError::failure(anyhow::Error::from(e)))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    output::write(&mut out, &batch.schema(), &[batch], a.format)?;
    Ok(())
}
