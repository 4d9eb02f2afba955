//! Vector search in SQL: the `knn(encoder, query, k)` table function and the scalar
//! functions `cosine_similarity(a, b)` and `l2_distance(a, b)`.
//!
//! `knn` answers the `k` stored vectors of an encoder nearest to a query (cosine distance,
//! nearest first), through [`super::vector::nearest`], so it uses the vector index when the
//! table has one and an exact scan otherwise. The query is a vector literal (`[0.1, 0.2, …]`)
//! or a text, which a [`QueryEncoder`] turns into a vector with the same encoder; loading
//! models is not the store's business, so the caller (`palpipe sql`) supplies one. Its rows:
//! `rank` (from 1), `content_id` and the same value as `item_id` and `prompt_id` (so that
//! `JOIN items USING (item_id)` and `JOIN prompts USING (prompt_id)` both read naturally), and
//! `distance`.
//!
//! The scalar functions take two vectors — fixed-size lists or lists of numbers, columns or
//! literals — and answer a Float64 per row (NULL when either side is NULL, or for the cosine
//! of a zero vector).

use std::fmt::Debug;
use std::sync::Arc;

use arrow::compute::cast;
use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use futures::future::BoxFuture;

use super::{vector, Store, StoreError};

/// Turns the encoder a query names into the store's encoder id and, for a text query, the
/// text's vector under that encoder.
pub trait QueryEncoder: Debug + Send + Sync {
    /// The encoder id `name` (an id, or a name the store holds one encoder of) stands for.
    fn resolve<'a>(
        &'a self,
        store: &'a Store,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>>;

    /// The encoder id `name` stands for and the vector of `text` under it.
    fn embed<'a>(
        &'a self,
        store: &'a Store,
        name: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(String, Vec<f32>), StoreError>>;
}

/// The `knn` table function over one store.
#[derive(Debug)]
pub struct Knn {
    store: Store,
    encoder: Arc<dyn QueryEncoder>,
}

impl Knn {
    pub fn new(store: Store, encoder: Arc<dyn QueryEncoder>) -> Knn {
        Knn { store, encoder }
    }
}

/// The query of a `knn` call.
enum Query {
    Text(String),
    Vector(Vec<f32>),
}

fn plan_err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(msg.into())
}

const USAGE: &str = "hint: knn('all-MiniLM-L6-v2', 'a text' or [0.1, 0.2, …], 10)";

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn string_arg(e: &Expr) -> Option<String> {
    match literal(e)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The numbers of a list literal, as f32.
fn vector_arg(e: &Expr) -> Option<Vec<f32>> {
    let v = literal(e)?;
    let array = v.to_array().ok()?;
    let lists = as_f32_lists(&array).ok()?;
    if lists.is_empty() || lists.is_null(0) {
        return None;
    }
    let values = lists.value(0);
    let f = values.as_any().downcast_ref::<Float32Array>()?;
    Some(f.values().to_vec())
}

fn k_arg(e: &Expr) -> Option<usize> {
    let n = match literal(e)? {
        ScalarValue::Int64(Some(n)) => *n,
        ScalarValue::Int32(Some(n)) => *n as i64,
        ScalarValue::UInt64(Some(n)) => *n as i64,
        _ => return None,
    };
    (n > 0).then_some(n as usize)
}

impl TableFunctionImpl for Knn {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 3 {
            return Err(plan_err(format!(
                "knn takes 3 arguments (encoder, query, k), got {}\n{USAGE}",
                exprs.len()
            )));
        }
        let encoder = string_arg(&exprs[0]).ok_or_else(|| {
            plan_err(format!(
                "knn: the encoder must be a text literal, got {}\n{USAGE}",
                exprs[0]
            ))
        })?;
        let query = match (string_arg(&exprs[1]), vector_arg(&exprs[1])) {
            (Some(t), _) => Query::Text(t),
            (None, Some(v)) => Query::Vector(v),
            (None, None) => {
                return Err(plan_err(format!(
                    "knn: the query must be a text or a list of numbers, got {}\n{USAGE}",
                    exprs[1]
                )))
            }
        };
        let k = k_arg(&exprs[2]).ok_or_else(|| {
            plan_err(format!(
                "knn: k must be a positive whole number, got {}\n{USAGE}",
                exprs[2]
            ))
        })?;
        // Planning is synchronous; the search is not. Needs the multi-threaded runtime the
        // command line runs on.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| plan_err(format!("knn needs a tokio runtime: {e}")))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(plan_err("knn needs a multi-threaded tokio runtime"));
        }
        let batch = tokio::task::block_in_place(|| {
            handle.block_on(search(
                &self.store,
                self.encoder.as_ref(),
                &encoder,
                query,
                k,
            ))
        })
        .map_err(|e| plan_err(format!("knn: {e}")))?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Arc::new(table))
    }
}

/// The schema of `knn`'s rows.
fn knn_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rank", DataType::Int64, false),
        Field::new("content_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("distance", DataType::Float32, false),
    ]))
}

async fn search(
    store: &Store,
    encoder: &dyn QueryEncoder,
    name: &str,
    query: Query,
    k: usize,
) -> Result<RecordBatch, StoreError> {
    let (id, q) = match query {
        Query::Text(t) => encoder.embed(store, name, &t).await?,
        Query::Vector(v) => (encoder.resolve(store, name).await?, v),
    };
    let hits = vector::nearest(store, &id, &q, k).await?;
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
        hits.iter().map(|h| h.content_id.as_str()),
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(1..=hits.len() as i64)),
        ids.clone(),
        ids.clone(),
        ids,
        Arc::new(Float32Array::from_iter_values(
            hits.iter().map(|h| h.distance),
        )),
    ];
    RecordBatch::try_new(knn_schema(), columns).map_err(|e| StoreError::Batch {
        table: "embeddings".into(),
        message: e.to_string(),
    })
}

/// `array` (a list or fixed-size list of numbers) as a list of Float32.
fn as_f32_lists(array: &ArrayRef) -> DfResult<ListArray> {
    let target = DataType::List(Arc::new(Field::new("item", DataType::Float32, true)));
    let lists = match array.data_type() {
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            cast(array.as_ref(), &target)?
        }
        other => {
            return Err(plan_err(format!(
                "expected a vector (a list of numbers), got a value of type {other}"
            )))
        }
    };
    lists
        .as_any()
        .downcast_ref::<ListArray>()
        .cloned()
        .ok_or_else(|| plan_err("a vector did not convert to a list of numbers"))
}

/// Which measure a [`VectorMeasure`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Measure {
    Cosine,
    L2,
}

/// `cosine_similarity(a, b)` or `l2_distance(a, b)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorMeasure {
    measure: Measure,
    signature: Signature,
}

impl VectorMeasure {
    /// `cosine_similarity(a, b)`: a·b / (|a| |b|).
    pub fn cosine_similarity() -> VectorMeasure {
        VectorMeasure {
            measure: Measure::Cosine,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }

    /// `l2_distance(a, b)`: the Euclidean distance |a − b|.
    pub fn l2_distance() -> VectorMeasure {
        VectorMeasure {
            measure: Measure::L2,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }

    /// The measure of two equally long vectors (`None`: the cosine of a zero vector).
    fn of(&self, a: &[f32], b: &[f32]) -> Option<f64> {
        match self.measure {
            Measure::Cosine => {
                let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
                for (x, y) in a.iter().zip(b) {
                    let (x, y) = (*x as f64, *y as f64);
                    dot += x * y;
                    na += x * x;
                    nb += y * y;
                }
                (na > 0.0 && nb > 0.0).then(|| dot / (na.sqrt() * nb.sqrt()))
            }
            Measure::L2 => Some(
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                    .sum::<f64>()
                    .sqrt(),
            ),
        }
    }
}

impl ScalarUDFImpl for VectorMeasure {
    fn name(&self) -> &str {
        match self.measure {
            Measure::Cosine => "cosine_similarity",
            Measure::L2 => "l2_distance",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let [a, b] = args.args.as_slice() else {
            return Err(plan_err(format!("{} takes two vectors", self.name())));
        };
        let n = if all_scalar { 1 } else { rows };
        let (a, b) = (
            as_f32_lists(&a.to_array(n)?)?,
            as_f32_lists(&b.to_array(n)?)?,
        );
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if a.is_null(i) || b.is_null(i) {
                out.push(None);
                continue;
            }
            let (va, vb) = (a.value(i), b.value(i));
            let (Some(va), Some(vb)) = (
                va.as_any().downcast_ref::<Float32Array>(),
                vb.as_any().downcast_ref::<Float32Array>(),
            ) else {
                return Err(plan_err("a vector did not convert to Float32"));
            };
            if va.len() != vb.len() {
                return Err(DataFusionError::Execution(format!(
                    "{}: row {}: the vectors have {} and {} values",
                    self.name(),
                    i + 1,
                    va.len(),
                    vb.len()
                )));
            }
            if va.null_count() > 0 || vb.null_count() > 0 {
                out.push(None);
                continue;
            }
            out.push(self.of(va.values(), vb.values()));
        }
        let result = Float64Array::from(out);
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(result)))
        }
    }
}
