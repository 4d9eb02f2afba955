//! Writing query results to stdout: an aligned table for people, or CSV, JSON lines and
//! Arrow IPC for programs. Nested values (vectors) print in Arrow's display form in the
//! table and CSV, and as arrays in JSON. Binary values (image bytes) print whole, as hex, in
//! CSV and JSON; the table shows their size and first bytes, `<2.3 KiB 89504e47…>`.

use std::io::Write;

use std::sync::Arc;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Arrow,
}

pub fn write(
    out: &mut dyn Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Table => {
            let shortened = batches
                .iter()
                .map(short_binaries)
                .collect::<Result<Vec<_>, _>>()?;
            let shown = arrow::util::pretty::pretty_format_batches(&shortened)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}\n(0 rows)", names.join(" | "))?;
            } else {
                writeln!(out, "{shown}")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(schema.fields().iter().map(|f| f.name().as_str()))?;
            let opts = FormatOptions::default().with_null("");
            for b in batches {
                let fmts = b
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                    .collect::<Result<Vec<_>, _>>()?;
                for row in 0..b.num_rows() {
                    w.write_record(fmts.iter().map(|f| f.value(row).to_string()))?;
                }
            }
            w.flush()?;
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Arrow => {
            // Lance's per-column storage settings (a codec named in a field's metadata) are
            // the store's business, not the result's: the stream's fields carry none.
            let plain = crate::store::schema::without_field_metadata(schema);
            let mut w = arrow::ipc::writer::StreamWriter::try_new(out, &plain)?;
            for b in batches {
                w.write(&RecordBatch::try_new(plain.clone(), b.columns().to_vec())?)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// `batch` with each top-level binary column replaced by a text column of
/// [`short_binary`] values (nulls stay null); other columns are shared, not copied.
fn short_binaries(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_binary(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        let values: Option<Vec<Option<String>>> = match c.data_type() {
            DataType::Binary => Some(shorten(c.as_binary::<i32>().iter())),
            DataType::LargeBinary => Some(shorten(c.as_binary::<i64>().iter())),
            DataType::BinaryView => Some(shorten(c.as_binary_view().iter())),
            DataType::FixedSizeBinary(_) => Some(shorten(c.as_fixed_size_binary().iter())),
            _ => None,
        };
        match values {
            Some(v) => {
                fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                columns.push(Arc::new(StringArray::from(v)));
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn shorten<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<Option<String>> {
    values.map(|v| v.map(short_binary)).collect()
}

/// How the table shows a binary value: its size and its first four bytes in hex, e.g.
/// `<2.3 KiB 89504e47…>`, `<3 B 010203>`, `<0 B>`.
pub fn short_binary(bytes: &[u8]) -> String {
    const SHOWN: usize = 4;
    let n = bytes.len();
    let size = if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    };
    if n == 0 {
        return format!("<{size}>");
    }
    let hex: String = bytes[..n.min(SHOWN)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let more = if n > SHOWN { "…" } else { "" };
    format!("<{size} {hex}{more}>")
}

#[cfg(test)]
mod tests {
    use super::short_binary;

    #[test]
    fn binary_values_show_size_and_first_bytes() {
        assert_eq!(short_binary(&[]), "<0 B>");
        assert_eq!(short_binary(&[1, 2, 0xff]), "<3 B 0102ff>");
        assert_eq!(short_binary(&[0x89, b'P', b'N', b'G']), "<4 B 89504e47>");
        // 2355 bytes = 2.2998 KiB → 2.3 KiB
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d];
        png.resize(2355, 0);
        assert_eq!(short_binary(&png), "<2.3 KiB 89504e47…>");
        assert_eq!(short_binary(&vec![7u8; 1024]), "<1.0 KiB 07070707…>");
        assert_eq!(
            short_binary(&vec![0u8; 3 * 1024 * 1024 + 1024 * 512]),
            "<3.5 MiB 00000000…>"
        );
    }
}
