//! Vector search over `embeddings`: an optional Lance vector index, and k-nearest queries
//! restricted to one encoder (exact when the table has no index).

use arrow_array::{Array, Float32Array, StringArray};
use futures::TryStreamExt;
use lance::index::vector::VectorIndexParams;
use lance::index::DatasetIndexExt;
use lance_index::vector::hnsw::builder::HnswBuildParams;
use lance_index::vector::ivf::IvfBuildParams;
use lance_index::IndexType;
use lance_linalg::distance::DistanceType;

use super::{lance_err, Store, StoreError};

/// The kinds of vector index `palpipe index` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexKind {
    /// Inverted file with exact vectors in each partition: good for small tables.
    IvfFlat,
    /// Inverted file with product-quantised vectors: compact, needs hundreds of rows to train.
    IvfPq,
    /// Inverted file with an HNSW graph per partition.
    Hnsw,
}

/// Builds (or replaces) the index on `embeddings.vector`, with cosine distance.
pub async fn create_index(
    store: &Store,
    kind: IndexKind,
    partitions: usize,
) -> Result<usize, StoreError> {
    let Some(mut ds) = store.dataset("embeddings", None).await? else {
        return Err(StoreError::Sql(
            "the store has no embeddings to index yet\nhint: run an 'embed' stage first".into(),
        ));
    };
    let rows = ds.count_rows(None).await.map_err(lance_err("embeddings"))?;
    let dim = super::vector_width(&arrow_schema::Schema::from(ds.schema())).unwrap_or(0);
    let params = match kind {
        IndexKind::IvfFlat => VectorIndexParams::ivf_flat(partitions, DistanceType::Cosine),
        IndexKind::IvfPq => {
            let sub = (1..=dim.min(16))
                .rev()
                .find(|s| dim.is_multiple_of(*s))
                .unwrap_or(1);
            VectorIndexParams::ivf_pq(partitions, 8, sub, DistanceType::Cosine, 50)
        }
        IndexKind::Hnsw => VectorIndexParams::ivf_hnsw(
            DistanceType::Cosine,
            IvfBuildParams::new(partitions),
            HnswBuildParams::default(),
        ),
    };
    ds.create_index(
        &["vector"],
        IndexType::Vector,
        Some("vector_idx".into()),
        &params,
        true,
    )
    .await
    .map_err(lance_err("embeddings"))?;
    Ok(rows)
}

/// One search result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    pub content_id: String,
    pub distance: f32,
}

/// The `k` vectors of `encoder` nearest to `query` (cosine distance, smallest first).
pub async fn nearest(
    store: &Store,
    encoder: &str,
    query: &[f32],
    k: usize,
) -> Result<Vec<Hit>, StoreError> {
    let Some(ds) = store.dataset("embeddings", None).await? else {
        return Ok(Vec::new());
    };
    let has_index = !ds
        .load_indices()
        .await
        .map_err(lance_err("embeddings"))?
        .is_empty();
    let mut scan = ds.scan();
    let q = Float32Array::from(query.to_vec());
    scan.nearest("vector", &q, k)
        .map_err(lance_err("embeddings"))?;
    scan.distance_metric(DistanceType::Cosine);
    scan.filter(&format!("encoder_id = '{}'", encoder.replace('\'', "''")))
        .map_err(lance_err("embeddings"))?;
    scan.prefilter(true);
    if has_index {
        scan.nprobes(16);
        scan.refine(4);
    } else {
        scan.use_index(false);
    }
    scan.project(&["content_id"])
        .map_err(lance_err("embeddings"))?;
    let batches: Vec<_> = scan
        .try_into_stream()
        .await
        .map_err(lance_err("embeddings"))?
        .try_collect()
        .await
        .map_err(lance_err("embeddings"))?;
    let mut hits = Vec::new();
    for b in batches {
        let ids = b
            .column_by_name("content_id")
            .and_then(|a| a.as_any().downcast_ref::<StringArray>().cloned());
        let d = b
            .column_by_name("_distance")
            .and_then(|a| a.as_any().downcast_ref::<Float32Array>().cloned());
        if let (Some(ids), Some(d)) = (ids, d) {
            for i in 0..ids.len() {
                hits.push(Hit {
                    content_id: ids.value(i).to_string(),
                    distance: d.value(i),
                });
            }
        }
    }
    hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    Ok(hits)
}
