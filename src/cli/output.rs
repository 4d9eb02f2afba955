//! Writing query results to stdout: an aligned table for people, or CSV, JSON lines and
//! Arrow IPC for programs. Nested values (vectors) print in Arrow's display form in the
//! table and CSV, and as arrays in JSON.

use std::io::Write;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

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
            let shown = arrow::util::pretty::pretty_format_batches(batches)?;
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
            let mut w = arrow::ipc::writer::StreamWriter::try_new(out, schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
