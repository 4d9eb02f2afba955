//! Plain row types for the core tables, as ingest stages produce them.
//!
//! These are what a stage hands to the store: the store turns them into Arrow batches that
//! match `schemas/*.json` and writes them with a merge on the key. Nothing here touches Lance.

/// One piece of content: a text, an image, or a raw vector (synthetic data).
/// `item_id` is the blake3 hex of the content bytes (see [`content_id`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub item_id: String,
    /// "text", "image" or "vector".
    pub kind: String,
    pub text: Option<String>,
    pub bytes: Option<Vec<u8>>,
    /// The dataset the item first came from (e.g. "persona", "polis/football-concussions").
    pub source: String,
    /// The item this one was derived from (a colour-filtered image), if any.
    pub parent_id: Option<String>,
}

/// A context x_c. `prompt_id` is the blake3 hex of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt_id: String,
    pub text: String,
    pub source: String,
}

/// One comparison by one user. `label` is -1 when the left item is preferred, +1 when the
/// right one is. `split` is a tag the ingest stage assigns ("train", "val", "test" for seen
/// users' comparisons, "unseen" for users held out for few-shot adaptation).
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    pub pair_id: String,
    pub user_id: String,
    /// None when the data has no context (synthetic ideal points).
    pub prompt_id: Option<String>,
    pub left_id: String,
    pub right_id: String,
    pub label: i8,
    pub dataset: String,
    pub split: String,
    /// The source's own row id where it has one (Pick-a-Pic `ranking_id`).
    pub source_ref: Option<String>,
    /// The comparison's weight in the PAL loss (Σ w·ℓ / Σ w over a batch): positive and
    /// finite, 1.0 unless the data gives one (`columns.weight` of a `preferences` stage).
    pub weight: f32,
}

/// An annotator. `role` is "seen" or "unseen"; `group` is the true group when known
/// (a persona, a synthetic prototype).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub user_id: String,
    pub dataset: String,
    pub group: Option<String>,
    pub role: String,
}

/// One vector for one piece of content under one encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRow {
    pub content_id: String,
    pub encoder_id: String,
    pub vector: Vec<f32>,
}

/// Everything one ingest stage produces; the store writes each part with a merge on its key.
#[derive(Debug, Clone, Default)]
pub struct IngestBatch {
    pub items: Vec<ItemRow>,
    pub prompts: Vec<PromptRow>,
    pub pairs: Vec<PairRow>,
    pub users: Vec<UserRow>,
    /// Vectors known at ingest time (synthetic data), written to `embeddings`.
    pub embeddings: Vec<EmbeddingRow>,
    /// More rows of `items`, `prompts` or `pairs`, already as Arrow columns in the order and
    /// of the types of the table's schema file (a reader that never holds them as rows); per
    /// table, written after the rows above.
    pub columns: Vec<(&'static str, Vec<arrow_array::ArrayRef>)>,
}

/// blake3 hex of some bytes: the id of every piece of content in the store.
pub fn content_id(bytes: &[u8]) -> String {
    hex(&blake3::hash(bytes))
}

/// A blake3 hash in lowercase hex (what `blake3::Hash::to_hex` gives, in one allocation and
/// without its per-character pushes: ingest makes three or four ids a row).
pub fn hex(hash: &blake3::Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(hash.as_bytes()) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    String::from_utf8(out.to_vec()).expect("only ASCII hex digits were written")
}

/// blake3 of `prefix`, then each of `parts` followed by one zero byte: what a
/// `blake3::Hasher` fed prefix, part, 0, part, 0, … gives, computed as one hash over the bytes
/// laid out in one buffer (cheaper than a hasher's `update` per part on the few hundred bytes
/// of a pair's id).
pub fn hash_parts<const N: usize>(prefix: &[u8], parts: [&str; N]) -> blake3::Hash {
    let len = prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    // A pair's parts (ids of 64 characters, a user, a label) fit on the stack.
    let mut stack = [0u8; 512];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
        buf[at] = 0;
        at += 1;
    }
    blake3::hash(buf)
}

/// The id of a comparison: blake3 over user, prompt, left and right ids and the label.
pub fn pair_id(
    user_id: &str,
    prompt_id: Option<&str>,
    left: &str,
    right: &str,
    extra: &str,
) -> String {
    hex(&hash_parts(
        &[],
        [user_id, prompt_id.unwrap_or(""), left, right, extra],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our hex is blake3's own rendering, byte for byte (ids in stores written before it
    /// must not change).
    #[test]
    fn hex_is_blake3_to_hex() {
        for input in [&b""[..], b"a", b"hello world", &[0xffu8; 1000][..]] {
            let h = blake3::hash(input);
            assert_eq!(hex(&h), h.to_hex().as_str());
        }
        assert_eq!(
            content_id(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    /// One hash over the laid-out parts equals a hasher fed prefix, part, 0, part, 0, … (the
    /// ids pairs had before: stored pair ids must not change), for empty and long parts.
    #[test]
    fn hash_parts_is_the_streamed_hash() {
        let streamed = |prefix: &[u8], parts: &[&str]| {
            let mut h = blake3::Hasher::new();
            h.update(prefix);
            for p in parts {
                h.update(p.as_bytes());
                h.update(&[0]);
            }
            h.finalize()
        };
        let long = "x".repeat(5000);
        let cases: [(&[u8], [&str; 3]); 3] = [
            (b"", ["", "", ""]),
            (&7u64.to_le_bytes(), ["user", "prompt", "item"]),
            (b"p", [long.as_str(), "", "z"]),
        ];
        for (prefix, parts) in cases {
            assert_eq!(hash_parts(prefix, parts), streamed(prefix, &parts));
        }
        assert_eq!(
            pair_id("d/u", None, "a", "b", "-1:train:"),
            hex(&streamed(b"", &["d/u", "", "a", "b", "-1:train:"]))
        );
    }
}
