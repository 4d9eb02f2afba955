//! Finding and reading preference files: a file, a glob or a folder (the Hugging Face
//! datasets layout); the format from the extension (or `format:`); gzip and zstd by their
//! magic bytes; and one streaming reader per format that hands each row on as a [`Val`].
//!
//! JSON lines (in blocks of whole lines, which the sink may parse on several threads), CSV/TSV
//! and Parquet are read a block, a line or a record batch at a time, so memory does not grow
//! with the file; a JSON array is streamed element by element.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::error::{Loc, PrefError};
use super::value::{from_arrow, Val};
use crate::ingest::common::IngestError;

/// A file format the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
    Tsv,
    /// One JSON object a line.
    Jsonl,
    /// A JSON array of objects (a `.json` file whose first character is `{` is read as JSON
    /// lines, which is how many releases name them).
    Json,
}

impl Format {
    /// The format's name, as `format:` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
        }
    }
}

const COMPRESSED: [&str; 3] = ["gz", "zst", "zstd"];

/// The file name without a compression extension, and that extension.
fn strip_compression(name: &str) -> (&str, Option<&str>) {
    for ext in COMPRESSED {
        if let Some(base) = name.strip_suffix(&format!(".{ext}")) {
            return (base, Some(ext));
        }
    }
    (name, None)
}

/// The format a file name says (compression extension left aside), if any.
pub fn format_from_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (base, _) = strip_compression(&name);
    let ext = base.rsplit_once('.')?.1;
    Some(match ext {
        "parquet" | "pq" => Format::Parquet,
        "csv" => Format::Csv,
        "tsv" | "tab" => Format::Tsv,
        "jsonl" | "ndjson" => Format::Jsonl,
        "json" => Format::Json,
        _ => return None,
    })
}

/// The split a Hugging Face file name gives: `<split>.<ext>` or
/// `<split>-00000-of-00003.<ext>`, when `<split>` starts with a split word (train, test,
/// valid…, val, dev, eval: `test_prefs`, `valid1` count).
pub fn split_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let (base, _) = strip_compression(name);
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    let stem = match stem.rsplit_once("-of-") {
        Some((left, total)) if total.chars().all(|c| c.is_ascii_digit()) => left
            .rsplit_once('-')
            .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
            .map_or(left, |(s, _)| s),
        _ => stem,
    };
    let lower = stem.to_ascii_lowercase();
    ["train", "test", "valid", "val", "dev", "eval"]
        .iter()
        .any(|w| lower.starts_with(w))
        .then(|| stem.to_string())
}

/// The data files `path` names, sorted: the file itself, the files a glob matches, or every
/// file of a known format under a folder (hidden entries skipped). Empty when none.
pub fn list_files(path: &Path) -> Vec<PathBuf> {
    let text = path.to_string_lossy();
    if text.contains(['*', '?', '[']) {
        let mut out: Vec<PathBuf> = glob::glob(&text)
            .map(|g| g.filter_map(Result::ok).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        out.sort();
        return out;
    }
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    if path.is_dir() {
        walk(path, &mut out);
    }
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else if format_from_name(&p).is_some() {
            out.push(p);
        }
    }
}

fn open(path: &Path) -> Result<File, PrefError> {
    Ok(crate::ingest::common::open_file(path)?)
}

/// An I/O error's conversion naming `path`.
pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> PrefError + '_ {
    move |source| {
        IngestError::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }
}

/// The first bytes of a file (up to 8).
fn magic(path: &Path) -> Result<Vec<u8>, PrefError> {
    let mut head = Vec::with_capacity(8);
    open(path)?
        .take(8)
        .read_to_end(&mut head)
        .map_err(io(path))?;
    Ok(head)
}

/// The file's text stream: decompressed when its bytes start with the gzip or zstd magic;
/// a `.gz`/`.zst` name on a file that is neither is an error.
fn text_stream(path: &Path) -> Result<Box<dyn Read>, PrefError> {
    let head = magic(path)?;
    let file = open(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    let said = name.as_deref().and_then(|n| strip_compression(n).1);
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(file)));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::new(file).map_err(io(path))?;
        return Ok(Box::new(d));
    }
    if let Some(ext) = said {
        return Err(PrefError::NotFormat {
            path: path.to_path_buf(),
            format: if ext == "gz" { "gzip" } else { "zstd" }.into(),
            found: format!("it starts with bytes {}", hex(&head)),
        });
    }
    Ok(Box::new(file))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a reader tells its consumer: the file's columns once (before any row), then each
/// row with its place.
pub trait RowSink {
    /// The top-level column names (a CSV header, a Parquet schema, the first JSON object's
    /// keys).
    fn columns(&mut self, names: &[String]) -> Result<(), PrefError>;
    /// One row.
    fn row(&mut self, at: Loc, row: Val) -> Result<(), PrefError>;
    /// Every row of a JSON lines stream (see [`Blocks`], [`parse_line`]): the sink reads
    /// the lines itself, so that it can parse them on several threads. The file's first row
    /// gives its columns; a stream without rows is an empty file.
    fn json_lines(
        &mut self,
        path: &Path,
        format: Format,
        r: &mut dyn BufRead,
    ) -> Result<(), PrefError>;
}

/// Reads every row of `path` as `format` into `sink`. `wanted` names the top-level columns
/// the mapping uses (Parquet reads only those).
pub fn read_file(
    path: &Path,
    format: Format,
    wanted: &[String],
    sink: &mut dyn RowSink,
) -> Result<(), PrefError> {
    match format {
        Format::Parquet => read_parquet(path, wanted, sink),
        Format::Csv => read_csv(path, b',', sink),
        Format::Tsv => read_csv(path, b'\t', sink),
        Format::Jsonl | Format::Json => {
            let mut r = BufReader::with_capacity(1 << 20, text_stream(path)?);
            // A `.json` file may hold JSON lines: the first non-blank byte tells.
            let first = loop {
                let buf = r.fill_buf().map_err(io(path))?;
                match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(i) => break Some(buf[i]),
                    None if buf.is_empty() => break None,
                    None => {
                        let n = buf.len();
                        r.consume(n);
                    }
                }
            };
            match (format, first) {
                (_, None) => Err(IngestError::EmptyFile {
                    path: path.to_path_buf(),
                }
                .into()),
                (Format::Json, Some(b'[')) => read_json_array(path, r, sink),
                _ => sink.json_lines(path, format, &mut r),
            }
        }
    }
}

/// Whole lines of a JSON lines stream, and the number of the first (1-based).
pub struct Block {
    pub first_line: u64,
    pub data: Vec<u8>,
}

impl Block {
    /// The lines with their numbers (a line keeps its end of line; the last may have none).
    /// Ends are found with `memchr`, not byte by byte: the byte-by-byte search was nine
    /// tenths of the samples of the function that parses a block (3% of an ingest's).
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut rest = &self.data[..];
        let lines = std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (line, tail) = rest.split_at(end);
            rest = tail;
            Some(line)
        });
        (self.first_line..).zip(lines)
    }
}

/// Reads a JSON lines stream in [`Block`]s of about `target` bytes.
pub struct Blocks<'r> {
    path: &'r Path,
    r: &'r mut dyn BufRead,
    target: usize,
    next_line: u64,
}

impl<'r> Blocks<'r> {
    /// Blocks of `r` (the stream of `path`).
    pub fn new(path: &'r Path, r: &'r mut dyn BufRead, target: usize) -> Blocks<'r> {
        Blocks {
            path,
            r,
            target,
            next_line: 1,
        }
    }

    /// The next block, in `data` (a buffer done with, emptied first): whole lines, at least
    /// `target` bytes unless the stream ends first.
    pub fn next_block(&mut self, mut data: Vec<u8>) -> Result<Option<Block>, PrefError> {
        data.clear();
        data.reserve(self.target + (self.target >> 4));
        let first_line = self.next_line;
        while data.len() < self.target {
            let got = self.r.read_until(b'\n', &mut data).map_err(io(self.path))?;
            if got == 0 {
                break;
            }
            self.next_line += 1;
        }
        Ok((!data.is_empty()).then_some(Block { first_line, data }))
    }
}

/// What one JSON line holds.
pub enum Line {
    /// Nothing but white space.
    Blank,
    Value(Val),
    /// Not JSON: the parser's message.
    Syntax(String),
}

/// Parses line `n` of a JSON lines file (the first line may start with a byte order mark).
pub fn parse_line(n: u64, line: &[u8]) -> Line {
    let mut bytes = line;
    if n == 1 {
        bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Line::Value(v),
        Err(e) => Line::Syntax(e.to_string()),
    }
}

/// The error for line `n` of a JSON lines file that does not parse: the file is not JSON
/// lines at all when no row came before (`first`), else that line is bad.
pub fn syntax_error(
    path: &Path,
    format: Format,
    n: u64,
    message: String,
    first: bool,
) -> PrefError {
    if first {
        return PrefError::NotFormat {
            path: path.to_path_buf(),
            format: format!("{} (JSON lines)", format.name()),
            found: format!("line {n} does not parse as JSON: {message}"),
        };
    }
    IngestError::BadJson {
        path: path.to_path_buf(),
        line: n,
        message,
    }
    .into()
}

/// The top-level keys of a record, in file order.
pub fn keys(row: &Val) -> Vec<String> {
    match row {
        Val::Map(f) => f.iter().map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    }
}

/// `value` when it is a record, else the error naming the row.
pub fn object(path: &Path, at: Loc, value: Val) -> Result<Val, PrefError> {
    match value {
        Val::Map(_) => Ok(value),
        other => Err(PrefError::Row {
            path: path.to_path_buf(),
            at,
            column: "(row)".into(),
            message: format!("expected a JSON object, found {}", other.kind()),
            hint: None,
        }),
    }
}

/// A JSON array of objects, streamed: each element is read, handed to the sink and dropped
/// before the next is read.
fn read_json_array(path: &Path, r: impl Read, sink: &mut dyn RowSink) -> Result<(), PrefError> {
    let mut elements = Elements {
        path,
        sink,
        n: 0,
        stopped: None,
    };
    let mut de = serde_json::Deserializer::from_reader(r);
    let parsed =
        serde::Deserializer::deserialize_seq(&mut de, &mut elements).and_then(|()| de.end());
    if let Some(e) = elements.stopped.take() {
        return Err(e);
    }
    if let Err(e) = parsed {
        return Err(IngestError::BadJson {
            path: path.to_path_buf(),
            line: e.line() as u64,
            message: format!("{e} (in element {})", elements.n.max(1)),
        }
        .into());
    }
    if elements.n == 0 {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

/// The visitor of a JSON array's elements: `n` counts the elements begun; a sink error is
/// kept in `stopped` (serde's error type cannot carry it) and stops the parse.
struct Elements<'a, 's> {
    path: &'a Path,
    sink: &'s mut dyn RowSink,
    n: u64,
    stopped: Option<PrefError>,
}

impl<'de> serde::de::Visitor<'de> for &mut Elements<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.n += 1;
            let Some(v) = seq.next_element::<Val>()? else {
                self.n -= 1;
                return Ok(());
            };
            let at = Loc {
                unit: "element",
                n: self.n,
            };
            let done = object(self.path, at, v).and_then(|row| {
                if self.n == 1 {
                    self.sink.columns(&keys(&row))?;
                }
                self.sink.row(at, row)
            });
            if let Err(e) = done {
                self.stopped = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
    }
}

fn read_csv(path: &Path, delimiter: u8, sink: &mut dyn RowSink) -> Result<(), PrefError> {
    let ends = Rc::new(RefCell::new(LineEnds::default()));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(NewlineTap {
            inner: text_stream(path)?,
            ends: Rc::clone(&ends),
        });
    let line_of = |p: &csv::Position| ends.borrow_mut().record_line(p.line(), p.byte());
    let csv_err = |e: csv::Error| -> PrefError {
        IngestError::Csv {
            path: path.to_path_buf(),
            line: e.position().map(line_of).unwrap_or(0),
            message: e.to_string(),
        }
        .into()
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect();
    sink.columns(&header)?;
    let mut any = false;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_err)? {
        any = true;
        let n = record.position().map(line_of).unwrap_or(0);
        let row = Val::Map(
            header
                .iter()
                .zip(record.iter())
                .map(|(h, v)| {
                    let v = if v.is_empty() {
                        Val::Null
                    } else {
                        Val::Str(v.to_string())
                    };
                    (h.clone(), v)
                })
                .collect(),
        );
        sink.row(Loc { unit: "line", n }, row)?;
    }
    if !any {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

fn read_parquet(path: &Path, wanted: &[String], sink: &mut dyn RowSink) -> Result<(), PrefError> {
    let head = magic(path)?;
    if !head.starts_with(b"PAR1") {
        return Err(PrefError::NotFormat {
            path: path.to_path_buf(),
            format: "parquet".into(),
            found: format!(
                "it starts with bytes {} (parquet files start with PAR1)",
                hex(&head)
            ),
        });
    }
    let not_parquet = |e: parquet::errors::ParquetError| PrefError::NotFormat {
        path: path.to_path_buf(),
        format: "parquet".into(),
        found: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(not_parquet)?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    sink.columns(&names)?;
    let roots: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| wanted.iter().any(|w| w == *n))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(not_parquet)?;
    let mut n = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| IngestError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("cannot decode a row group: {e}")),
        })?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            n += 1;
            let row = Val::Map(
                schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| (f.name().clone(), from_arrow(c, i)))
                    .collect(),
            );
            sink.row(Loc { unit: "row", n }, row)?;
        }
    }
    Ok(())
}

/// The newlines of a CSV stream not yet passed, so that a record's line is told right.
///
/// The csv reader numbers a record with the count of newlines read before it starts on the
/// record, and a record ends at the first byte of its line end: with Windows line ends
/// ("\r\n") the "\n" is read only with the next record, after its number was taken, so every
/// record after the first line end would be numbered one line too low (the same for blank
/// lines before a record). The reader's byte offset of a record is exact, so the newlines
/// found at that offset (and the blank lines after it) are added back.
#[derive(Default)]
struct LineEnds {
    /// Bytes handed to the reader so far.
    offset: u64,
    /// Whether the last byte handed over was "\r".
    after_cr: bool,
    /// The offsets of the newlines handed over and not yet passed, each with whether a "\r"
    /// comes right before it: about one read buffer's worth.
    newlines: VecDeque<(u64, bool)>,
}

impl LineEnds {
    /// The line (1-based) of the record that the csv reader places at `line`, byte `byte`.
    fn record_line(&mut self, line: u64, byte: u64) -> u64 {
        while self.newlines.front().is_some_and(|&(at, _)| at < byte) {
            self.newlines.pop_front();
        }
        let (mut at, mut skipped) = (byte, 0);
        loop {
            match self.newlines.front() {
                Some(&(nl, _)) if nl == at => at += 1,
                Some(&(nl, true)) if nl == at + 1 => at += 2,
                _ => return line + skipped,
            }
            self.newlines.pop_front();
            skipped += 1;
        }
    }
}

/// A CSV input that notes where its newlines are in [`LineEnds`] as the reader reads it.
struct NewlineTap<R> {
    inner: R,
    ends: Rc<RefCell<LineEnds>>,
}

impl<R: Read> Read for NewlineTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = &buf[..n];
        let mut ends = self.ends.borrow_mut();
        let base = ends.offset;
        for (i, _) in read.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            let after_cr = if i == 0 {
                ends.after_cr
            } else {
                read[i - 1] == b'\r'
            };
            ends.newlines.push_back((base + i as u64, after_cr));
        }
        if let Some(&last) = read.last() {
            ends.after_cr = last == b'\r';
        }
        ends.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block's lines keep their ends and are numbered from the block's first line; a last
    /// line without an end is a line; blank lines count.
    #[test]
    fn block_lines_keep_their_ends_and_numbers() {
        let cases: [(&str, &[(u64, &str)]); 5] = [
            ("", &[]),
            ("{}\n", &[(7, "{}\n")]),
            ("a\nb", &[(7, "a\n"), (8, "b")]),
            (
                "a\r\n\n\nb\n",
                &[(7, "a\r\n"), (8, "\n"), (9, "\n"), (10, "b\n")],
            ),
            ("\n", &[(7, "\n")]),
        ];
        for (text, want) in cases {
            let block = Block {
                first_line: 7,
                data: text.as_bytes().to_vec(),
            };
            let got: Vec<(u64, &[u8])> = block.lines().collect();
            let want: Vec<(u64, &[u8])> = want.iter().map(|(n, l)| (*n, l.as_bytes())).collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    /// Each record's line, as an editor numbers it, whatever the line ends: Unix, Windows,
    /// blank lines before a record, a quoted field over two lines, no final line end; read in
    /// 1-byte and larger reads (the reader's own buffering decides where a read ends).
    #[test]
    fn csv_records_are_numbered_by_the_line_they_start_on() {
        let cases: [(&str, &[u64]); 4] = [
            ("h1,h2\na,b\n\nc,\"x\ny\"\nd,e\n", &[2, 4, 6]),
            ("h1,h2\r\na,b\r\n\r\nc,\"x\r\ny\"\r\nd,e", &[2, 4, 6]),
            ("h\r\nx\r\ny\r\n\r\n\r\nz\r\n", &[2, 3, 6]),
            ("h\r\nx\n\ny\r\nz", &[2, 4, 5]),
        ];
        for (text, want) in cases {
            for capacity in [1, 8 << 10] {
                let ends = Rc::new(RefCell::new(LineEnds::default()));
                let mut reader = csv::ReaderBuilder::new()
                    .buffer_capacity(capacity)
                    .flexible(true)
                    .from_reader(NewlineTap {
                        inner: text.as_bytes(),
                        ends: Rc::clone(&ends),
                    });
                let mut got = Vec::new();
                let mut record = csv::StringRecord::new();
                while reader.read_record(&mut record).unwrap() {
                    let p = record.position().unwrap();
                    got.push(ends.borrow_mut().record_line(p.line(), p.byte()));
                }
                assert_eq!(got, want, "{text:?}, buffer {capacity}");
            }
        }
    }

    #[test]
    fn hugging_face_file_names_give_their_split() {
        let s = |n: &str| split_from_name(Path::new(n));
        assert_eq!(
            s("data/train-00000-of-00003.parquet").as_deref(),
            Some("train")
        );
        assert_eq!(
            s("test_prefs-00001-of-00002.parquet").as_deref(),
            Some("test_prefs")
        );
        assert_eq!(s("valid1.jsonl.gz").as_deref(), Some("valid1"));
        assert_eq!(s("validation.csv").as_deref(), Some("validation"));
        assert_eq!(s("comparisons.jsonl"), None);
        assert_eq!(
            format_from_name(Path::new("a/b.jsonl.zst")),
            Some(Format::Jsonl)
        );
        assert_eq!(format_from_name(Path::new("b.TSV")), Some(Format::Tsv));
        assert_eq!(format_from_name(Path::new("b.txt")), None);
    }
}
