//! Merged rows straight into Arrow columns: the last step of the `preferences` reader.
//!
//! The merge of the sorted runs ([`super::spill`]) gives each row in its run encoding. Here
//! those bytes are appended to the columns of the row's table as they are, so a row is never
//! decoded into a struct of owned strings on its way to the store (each field would be one
//! allocation, a copy and a free). The columns come out in the order `schemas/*.json` lists
//! them, and hold what `store::batches` builds from the same rows (tested below).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, Float32Builder, Int8Builder, LargeBinaryBuilder, StringBuilder,
};
use arrow_array::ArrayRef;

use super::spill::RawFields;

/// The columns of one table, filled from run encodings.
pub trait Columns: Default {
    /// The table, as `schemas/` names it.
    const TABLE: &'static str;
    /// Appends the row whose run encoding is `raw`.
    ///
    /// # Errors
    /// An `InvalidData` error when `raw` is not a whole row of this table's encoding.
    fn append(&mut self, raw: &[u8]) -> io::Result<()>;
    /// Rows appended since the last [`Columns::finish`].
    fn len(&self) -> usize;
    /// No row appended since the last [`Columns::finish`].
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The columns of the rows appended so far, in the schema's order; the columns start
    /// empty again.
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// `items`: item_id, kind, text, bytes, source, parent_id (`ItemRow`'s encoding).
#[derive(Default)]
pub struct ItemColumns {
    item_id: StringBuilder,
    kind: StringBuilder,
    text: StringBuilder,
    bytes: LargeBinaryBuilder,
    source: StringBuilder,
    parent_id: StringBuilder,
}

impl Columns for ItemColumns {
    const TABLE: &'static str = "items";

    fn append(&mut self, raw: &[u8]) -> io::Result<()> {
        let mut f = RawFields::new(raw);
        let (item_id, kind, text) = (f.str()?, f.str()?, f.opt_str()?);
        let (bytes, source, parent_id) = (f.value()?, f.str()?, f.opt_str()?);
        self.item_id.append_value(item_id);
        self.kind.append_value(kind);
        self.text.append_option(text);
        self.bytes.append_option(bytes);
        self.source.append_value(source);
        self.parent_id.append_option(parent_id);
        Ok(())
    }

    fn len(&self) -> usize {
        self.item_id.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.item_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.bytes.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.parent_id.finish()),
        ]
    }
}

/// `prompts`: prompt_id, text, source (`PromptRow`'s encoding).
#[derive(Default)]
pub struct PromptColumns {
    prompt_id: StringBuilder,
    text: StringBuilder,
    source: StringBuilder,
}

impl Columns for PromptColumns {
    const TABLE: &'static str = "prompts";

    fn append(&mut self, raw: &[u8]) -> io::Result<()> {
        let mut f = RawFields::new(raw);
        let (prompt_id, text, source) = (f.str()?, f.str()?, f.str()?);
        self.prompt_id.append_value(prompt_id);
        self.text.append_value(text);
        self.source.append_value(source);
        Ok(())
    }

    fn len(&self) -> usize {
        self.prompt_id.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.prompt_id.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.source.finish()),
        ]
    }
}

/// `pairs`: pair_id, user_id, prompt_id, left_id, right_id, label, dataset, split,
/// source_ref, weight (`PairRow`'s encoding); also counts the rows per split.
#[derive(Default)]
pub struct PairColumns {
    pair_id: StringBuilder,
    user_id: StringBuilder,
    prompt_id: StringBuilder,
    left_id: StringBuilder,
    right_id: StringBuilder,
    label: Int8Builder,
    dataset: StringBuilder,
    split: StringBuilder,
    source_ref: StringBuilder,
    weight: Float32Builder,
    /// Rows appended per split, over every batch.
    pub splits: BTreeMap<String, usize>,
}

impl Columns for PairColumns {
    const TABLE: &'static str = "pairs";

    fn append(&mut self, raw: &[u8]) -> io::Result<()> {
        let mut f = RawFields::new(raw);
        let (pair_id, user_id, prompt_id) = (f.str()?, f.str()?, f.opt_str()?);
        let (left_id, right_id, label) = (f.str()?, f.str()?, f.fixed::<1>()?[0] as i8);
        let (dataset, split, source_ref) = (f.str()?, f.str()?, f.opt_str()?);
        let weight = f32::from_le_bytes(f.fixed::<4>()?);
        self.pair_id.append_value(pair_id);
        self.user_id.append_value(user_id);
        self.prompt_id.append_option(prompt_id);
        self.left_id.append_value(left_id);
        self.right_id.append_value(right_id);
        self.label.append_value(label);
        self.dataset.append_value(dataset);
        self.split.append_value(split);
        self.source_ref.append_option(source_ref);
        self.weight.append_value(weight);
        match self.splits.get_mut(split) {
            Some(n) => *n += 1,
            None => {
                self.splits.insert(split.to_string(), 1);
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.pair_id.len()
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.pair_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.prompt_id.finish()),
            Arc::new(self.left_id.finish()),
            Arc::new(self.right_id.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.dataset.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.source_ref.finish()),
            Arc::new(self.weight.finish()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::preferences::spill::Record;
    use crate::store::batches;
    use crate::store::records::{ItemRow, PairRow, PromptRow};

    /// The columns built from rows' run encodings are the batch `store::batches` builds from
    /// the rows themselves (values, nulls and the schema), for rows with every optional field
    /// present and absent, across two batches from one set of columns.
    #[test]
    fn columns_from_encodings_are_the_batches_of_the_rows() {
        let items: Vec<ItemRow> = (0..5)
            .map(|i| ItemRow {
                item_id: format!("{i:064x}"),
                kind: if i % 2 == 0 { "text" } else { "image" }.into(),
                text: (i % 2 == 0).then(|| format!("text «{i}»")),
                bytes: (i % 2 == 1).then(|| vec![i as u8; i]),
                source: "d".into(),
                parent_id: (i == 3).then(|| "p".repeat(64)),
            })
            .collect();
        let prompts: Vec<PromptRow> = (0..3)
            .map(|i| PromptRow {
                prompt_id: format!("{i:064x}"),
                text: format!("prompt {i}"),
                source: "d".into(),
            })
            .collect();
        let pairs: Vec<PairRow> = (0..4)
            .map(|i| PairRow {
                pair_id: format!("{i:064x}"),
                user_id: format!("d/u{i}"),
                prompt_id: (i != 2).then(|| format!("{:064x}", i + 7)),
                left_id: "l".repeat(64),
                right_id: "r".repeat(64),
                label: if i % 2 == 0 { -1 } else { 1 },
                dataset: "d".into(),
                split: if i < 3 { "train" } else { "test" }.into(),
                source_ref: (i == 1).then(|| "ref-1".to_string()),
                weight: 0.25 * (i + 1) as f32,
            })
            .collect();

        fn through<T: Record, C: Columns>(rows: &[T], cols: &mut C) -> Vec<ArrayRef> {
            let mut raw = Vec::new();
            for r in rows {
                raw.clear();
                r.encode(&mut raw).unwrap();
                cols.append(&raw).unwrap();
            }
            assert_eq!(cols.len(), rows.len());
            cols.finish()
        }
        let mut item_cols = ItemColumns::default();
        for part in [&items[..2], &items[2..]] {
            let got = batches::build("items", None, through(part, &mut item_cols)).unwrap();
            assert_eq!(got, batches::items(part).unwrap());
        }
        let got = batches::build(
            "prompts",
            None,
            through(&prompts, &mut PromptColumns::default()),
        );
        assert_eq!(got.unwrap(), batches::prompts(&prompts).unwrap());
        let mut pair_cols = PairColumns::default();
        let got = batches::build("pairs", None, through(&pairs, &mut pair_cols)).unwrap();
        assert_eq!(got, batches::pairs(&pairs).unwrap());
        let expected: BTreeMap<String, usize> =
            [("test".to_string(), 1), ("train".to_string(), 3)].into();
        assert_eq!(pair_cols.splits, expected);
        assert_eq!(pair_cols.len(), 0, "finish starts the columns afresh");
    }

    /// A row cut short, or one whose text is not UTF-8, is an error, never a panic.
    #[test]
    fn a_damaged_encoding_is_an_error() {
        let row = PromptRow {
            prompt_id: "k".into(),
            text: "t".into(),
            source: "s".into(),
        };
        let mut raw = Vec::new();
        row.encode(&mut raw).unwrap();
        for cut in 0..raw.len() {
            let err = PromptColumns::default().append(&raw[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        }
        // The text's one byte (after the key's 4 + 1 bytes and the text's length) made 0xFF.
        raw[9] = 0xFF;
        let err = PromptColumns::default().append(&raw).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }
}
