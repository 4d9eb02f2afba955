//! Read-only SQL over the store's tables through DataFusion.
//!
//! Every table that exists is registered through Lance's table provider (projection, limit
//! and filter pushdown); a table not written yet is registered empty with its schema, so a
//! query over a fresh store answers zero rows instead of failing. DDL, DML and other
//! statements are refused. Formatting results for people is the CLI's job.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionContext};
use lance::datafusion::LanceTableProvider;

use super::{Store, StoreError, TableSchema, TABLES};

/// A query's result: its schema (even with no rows) and its batches.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Builds a session with every table registered; `versions` pins tables to older versions.
pub async fn session(
    store: &Store,
    versions: &BTreeMap<String, u64>,
) -> Result<SessionContext, StoreError> {
    for t in versions.keys() {
        TableSchema::get(t)?;
    }
    let ctx = SessionContext::new();
    for t in TABLES {
        let ds = store.dataset(t, versions.get(t).copied()).await?;
        let reg = match ds {
            Some(ds) => ctx.register_table(
                t,
                Arc::new(LanceTableProvider::new(Arc::new(ds), false, false)),
            ),
            None => {
                let schema = TableSchema::get(t)?.arrow(Some(1))?;
                let empty = MemTable::try_new(schema, vec![vec![]])
                    .map_err(|e| StoreError::Sql(e.to_string()))?;
                ctx.register_table(t, Arc::new(empty))
            }
        };
        reg.map_err(|e| StoreError::Sql(e.to_string()))?;
    }
    Ok(ctx)
}

/// Runs one read-only query.
pub async fn query(
    store: &Store,
    sql: &str,
    versions: &BTreeMap<String, u64>,
) -> Result<QueryResult, StoreError> {
    let ctx = session(store, versions).await?;
    query_in(&ctx, sql).await
}

/// Runs one read-only query in an existing session.
pub async fn query_in(ctx: &SessionContext, sql: &str) -> Result<QueryResult, StoreError> {
    let opts = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, opts)
        .await
        .map_err(|e| StoreError::Sql(explain(e)))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| StoreError::Sql(explain(e)))?;
    Ok(QueryResult { schema, batches })
}

/// Turns DataFusion's messages into ours: say what was wrong and what to do.
fn explain(e: datafusion::error::DataFusionError) -> String {
    let mut msg = e.to_string();
    if let Some(inner) = msg
        .strip_prefix("SQL error: ParserError(\"")
        .and_then(|m| m.strip_suffix("\")"))
    {
        return format!("sql syntax: {inner}");
    }
    if let Some(inner) = msg.strip_prefix("Error during planning: ") {
        msg = inner.to_string();
    }
    if msg.contains("not supported")
        && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
    {
        return format!("only read queries are allowed (SELECT, WITH, EXPLAIN): {msg}");
    }
    if msg.contains("table") && msg.contains("not found") {
        return format!("{msg}\nhint: tables are {}", TABLES.join(", "));
    }
    format!("sql: {msg}")
}
