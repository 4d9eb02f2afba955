//! Read-only SQL over the store's tables through DataFusion.
//!
//! Every table that exists is registered through Lance's table provider (projection, limit
//! and filter pushdown); a table not written yet is registered empty with its schema, so a
//! query over a fresh store answers zero rows instead of failing. DDL, DML and other
//! statements are refused, and so are constructs the engine answers wrongly (`SIMILAR TO`).
//! `octet_length` also measures binary values (the engine's measures strings only);
//! `cosine_similarity`, `l2_distance` and, for `palpipe sql`, the `knn` table function come
//! from `knn.rs`.
//! Formatting results for people is the CLI's job.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::compute::kernels::length::length;
use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use datafusion::common::types::logical_string;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, TypeSignatureClass, Volatility,
};
use lance::datafusion::LanceTableProvider;

use super::knn::{Knn, QueryEncoder, VectorMeasure};
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
    session_with(store, versions, None).await
}

/// As [`session`], with the `knn` table function when `encoder` is given (it embeds text
/// queries; see `knn.rs`).
pub async fn session_with(
    store: &Store,
    versions: &BTreeMap<String, u64>,
    encoder: Option<Arc<dyn QueryEncoder>>,
) -> Result<SessionContext, StoreError> {
    for t in versions.keys() {
        TableSchema::get(t)?;
    }
    let ctx = SessionContext::new();
    ctx.register_udf(ScalarUDF::from(OctetLength::new()));
    ctx.register_udf(ScalarUDF::from(VectorMeasure::cosine_similarity()));
    ctx.register_udf(ScalarUDF::from(VectorMeasure::l2_distance()));
    if let Some(encoder) = encoder {
        ctx.register_udtf("knn", Arc::new(Knn::new(store.clone(), encoder)));
    }
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

/// `octet_length(x)`: the size in bytes of a string or, unlike DataFusion's own (strings
/// only), of a binary value such as `items.bytes`. Registered over the built-in one; strings
/// keep its result types (Int32, Int64 for large strings).
#[derive(Debug, PartialEq, Eq, Hash)]
struct OctetLength {
    signature: Signature,
}

impl OctetLength {
    fn new() -> OctetLength {
        let one = |class| TypeSignature::Coercible(vec![Coercion::new_exact(class)]);
        OctetLength {
            signature: Signature::one_of(
                vec![
                    one(TypeSignatureClass::Native(logical_string())),
                    one(TypeSignatureClass::Binary),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for OctetLength {
    fn name(&self) -> &str {
        "octet_length"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(match args.first() {
            Some(DataType::LargeUtf8 | DataType::LargeBinary) => DataType::Int64,
            _ => DataType::Int32,
        })
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return Err(datafusion::error::DataFusionError::Plan(
                "octet_length takes one argument".into(),
            ));
        };
        match arg {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(length(a.as_ref())?)),
            ColumnarValue::Scalar(v) if v.is_null() => Ok(ColumnarValue::Scalar(
                ScalarValue::try_from(args.return_field.data_type())?,
            )),
            ColumnarValue::Scalar(v) => {
                let n = length(v.to_array()?.as_ref())?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&n, 0)?))
            }
        }
    }
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
    refuse_unsound(sql)?;
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

/// Refuses constructs the SQL engine answers wrongly, found on the parsed statement (so a
/// string literal that merely spells them is fine). A query that does not parse is left to
/// the engine, whose syntax error says more.
///
/// `SIMILAR TO`: DataFusion 54 runs its pattern as a POSIX regular expression, so `_` and
/// `%` are not wildcards (`'ab' SIMILAR TO 'a_'` is false) and matches are not anchored.
fn refuse_unsound(sql: &str) -> Result<(), StoreError> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::{visit_expressions, Expr};
    use std::ops::ControlFlow;

    fn similar_to(stmt: &Statement) -> bool {
        match stmt {
            Statement::Statement(s) => visit_expressions(s.as_ref(), |e| match e {
                Expr::SimilarTo { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
            .is_break(),
            Statement::Explain(x) => similar_to(&x.statement),
            _ => false,
        }
    }

    let Ok(statements) = DFParser::parse_sql(sql) else {
        return Ok(());
    };
    if statements.iter().any(similar_to) {
        return Err(StoreError::Sql(
            "SIMILAR TO is not supported: the SQL engine (DataFusion) gives wrong answers for it \
             ('ab' SIMILAR TO 'a_' is false)\n\
             hint: use LIKE ('_' one character, '%' any run), or a regular expression with ~ \
             (e.g. col ~ '^a.$')"
                .into(),
        ));
    }
    Ok(())
}

/// Turns DataFusion's messages into ours: say what was wrong and what to do.
fn explain(e: datafusion::error::DataFusionError) -> String {
    let mut msg = super::messages::without_source_locations(&e.to_string());
    if let Some(inner) = msg
        .strip_prefix("SQL error: ParserError(\"")
        .and_then(|m| m.strip_suffix("\")"))
    {
        return format!("sql syntax: {inner}");
    }
    // The layers an error went through (Lance wraps DataFusion's own) say nothing to a user.
    const LAYERS: [&str; 4] = [
        "Error during planning: ",
        "External error: ",
        "Query Execution error: ",
        "Execution error: ",
    ];
    while let Some(inner) = LAYERS.iter().find_map(|l| msg.strip_prefix(l)) {
        msg = inner.to_string();
    }
    if msg.contains("escape_char") && msg.contains("LIKE") {
        return format!(
            "sql: {msg}\nhint: escape '%' and '_' with a backslash and no ESCAPE clause, e.g. LIKE 'a\\%b'"
        );
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
