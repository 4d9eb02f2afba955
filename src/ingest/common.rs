//! What the ingest stages share: the one error type, seeded randomness, the side and split
//! draws, and careful file reading (JSON lines, CSV with named columns).
//!
//! The stages themselves live beside this file (`synthetic.rs`, `persona.rs`, `polis.rs`);
//! nothing here knows about a particular dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Split tag of a seen user's training comparisons.
pub const SPLIT_TRAIN: &str = "train";
/// Split tag of a seen user's validation comparisons (checkpoint choice).
pub const SPLIT_VAL: &str = "val";
/// Split tag of a seen user's held-out comparisons.
pub const SPLIT_TEST: &str = "test";
/// Split tag of every comparison of an unseen user (few-shot adaptation and its evaluation).
pub const SPLIT_UNSEEN: &str = "unseen";
/// `users.role` of a user whose train comparisons the model sees.
pub const ROLE_SEEN: &str = "seen";
/// `users.role` of a user held out for few-shot adaptation.
pub const ROLE_UNSEEN: &str = "unseen";

/// Everything that can go wrong in an ingest stage. Each variant names the file (and line,
/// where there is one) or the parameter, and what was expected instead.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input file is not there.
    #[error("input file '{}' does not exist", .path.display())]
    MissingFile { path: PathBuf },
    /// An input file exists but cannot be read. The cause is the error's source, not part of
    /// its message, so a report that prints the chain prints it once.
    #[error("cannot read '{}'", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A text input (CSV, JSON lines) holds bytes that are not UTF-8, typically a file saved
    /// in Windows-1252 or Latin-1 (an Excel re-save): the first bad byte, where it is, and the
    /// start of its line as far as it decodes.
    #[error(
        "{}:{line}:{column}: not valid UTF-8: byte 0x{byte:02X} after \"{before}\"\nhint: the file looks like another encoding (an Excel save in Windows-1252 or Latin-1?); re-save it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 in.csv > out.csv`",
        .path.display()
    )]
    NotUtf8 {
        path: PathBuf,
        line: u64,
        /// 1-based, in characters of the line.
        column: u64,
        byte: u8,
        /// The line's text before the bad byte (its last 40 characters at most).
        before: String,
    },
    /// An input file has no records (no bytes, only blank lines, or a CSV header alone).
    #[error("input file '{}' is empty: it holds no records", .path.display())]
    EmptyFile { path: PathBuf },
    /// A CSV header lacks a column the stage needs.
    #[error("{}: missing column '{column}'\nhint: the header has: {header}", .path.display())]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: String,
    },
    /// A JSON-lines file holds a line that does not parse as JSON.
    #[error("{}:{line}: not a valid JSON line: {message}", .path.display())]
    BadJson {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A record lacks a field (a JSON key, or a key row of a key,value CSV).
    #[error("{}:{line}: missing field '{field}'", .path.display())]
    MissingField {
        path: PathBuf,
        line: u64,
        field: String,
    },
    /// A key,value file (Polis `summary.csv`) lacks a key.
    #[error("{}: no row with key '{key}'", .path.display())]
    MissingKey { path: PathBuf, key: String },
    /// A field holds a value the stage cannot use.
    #[error("{}:{line}: field '{field}' is '{found}', expected {expected}", .path.display())]
    BadValue {
        path: PathBuf,
        line: u64,
        field: String,
        found: String,
        expected: String,
    },
    /// A CSV file that the CSV reader rejects (unequal field counts, bad quoting, bad UTF-8).
    #[error("{}:{line}: malformed CSV: {message}", .path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A stage parameter out of its range, or parameters that contradict each other.
    #[error("parameter '{param}' is {value}, expected {expected}")]
    BadParam {
        param: String,
        value: String,
        expected: String,
    },
    /// Rejection sampling of well-separated prototypes gave up.
    #[error(
        "could not draw {k_star} prototypes at pairwise distance >= {delta} in {attempts} attempts\nhint: lower 'delta', raise 'd' or lower 'k_star'"
    )]
    Prototypes {
        k_star: usize,
        delta: f64,
        attempts: usize,
    },
    /// The consumer of a streaming reader stopped (its own error is reported instead).
    #[error("stopped: {0}")]
    Stopped(String),
    /// The input holds nothing the stage can turn into comparisons.
    #[error("{}: {what}", .path.display())]
    NoData { path: PathBuf, what: String },
}

impl IngestError {
    pub(crate) fn bad_param(param: &str, value: impl std::fmt::Display, expected: &str) -> Self {
        IngestError::BadParam {
            param: param.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// A random generator for one purpose of one stage: ChaCha8 keyed by blake3 of the seed and
/// the purpose (e.g. "items", "user:persona/u0003"). Separate purposes get independent
/// streams, so adding a user does not change the draws of the others.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"palpipe-ingest");
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Puts the preferred item on a random side: returns (left, right, label) with label −1 when
/// the preferred item landed left and +1 when it landed right.
pub fn orient<'a, R: Rng>(
    preferred: &'a str,
    other: &'a str,
    rng: &mut R,
) -> (&'a str, &'a str, i8) {
    if rng.random_bool(0.5) {
        (preferred, other, -1)
    } else {
        (other, preferred, 1)
    }
}

/// How many of `n` comparisons go to test and to val: test = round(n·test_frac),
/// val = round(n·(test_frac + val_frac)) − test (cumulative rounding, so the sum never
/// exceeds `n` when the fractions sum below 1).
pub fn split_counts(n: usize, test_frac: f64, val_frac: f64) -> (usize, usize) {
    let n_test = (((n as f64) * test_frac).round() as usize).min(n);
    let n_test_val = (((n as f64) * (test_frac + val_frac)).round() as usize).clamp(n_test, n);
    (n_test, n_test_val - n_test)
}

/// Split tags for one seen user's `n` comparisons, in comparison order: a seeded shuffle puts
/// [`split_counts`] of them in "test", then "val", the rest in "train".
pub fn assign_splits<R: Rng>(
    n: usize,
    test_frac: f64,
    val_frac: f64,
    rng: &mut R,
) -> Vec<&'static str> {
    let (n_test, n_val) = split_counts(n, test_frac, val_frac);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut tags = vec![SPLIT_TRAIN; n];
    for (rank, &i) in order.iter().enumerate() {
        if rank < n_test {
            tags[i] = SPLIT_TEST;
        } else if rank < n_test + n_val {
            tags[i] = SPLIT_VAL;
        }
    }
    tags
}

/// Checks the test and val fractions of a stage: each in [0, 1), together below 1.
pub fn check_fractions(test_frac: f64, val_frac: f64) -> Result<(), IngestError> {
    for (name, v) in [("test_frac", test_frac), ("val_frac", val_frac)] {
        if !(0.0..1.0).contains(&v) {
            return Err(IngestError::bad_param(name, v, "a fraction in [0, 1)"));
        }
    }
    if test_frac + val_frac >= 1.0 {
        return Err(IngestError::bad_param(
            "test_frac + val_frac",
            test_frac + val_frac,
            "a sum below 1, so that seen users keep train comparisons",
        ));
    }
    Ok(())
}

/// Checks a stage's `dataset` parameter: a non-empty name without spaces.
pub fn check_dataset(dataset: &str) -> Result<(), IngestError> {
    if dataset.is_empty() || dataset.chars().any(char::is_whitespace) {
        return Err(IngestError::bad_param(
            "dataset",
            format!("'{dataset}'"),
            "a non-empty name without spaces",
        ));
    }
    Ok(())
}

/// Opens a file for reading: a missing file is [`IngestError::MissingFile`], any other
/// failure [`IngestError::Io`].
pub fn open_file(path: &Path) -> Result<std::fs::File, IngestError> {
    std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            IngestError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            IngestError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads a whole text file, telling a missing file, an unreadable one, one that is not UTF-8
/// (with the line and column of the first bad byte) and an empty one apart.
pub fn read_text(path: &Path) -> Result<String, IngestError> {
    if !path.exists() {
        return Err(IngestError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text =
        String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    if text.trim().is_empty() {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Where the first invalid byte of `bytes` is, as an [`IngestError::NotUtf8`].
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> IngestError {
    let at = e.valid_up_to();
    let good = &bytes[..at];
    let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // Everything before `at` is valid UTF-8, so this slice decodes.
    let before = std::str::from_utf8(&good[line_start..]).unwrap_or_default();
    let n_chars = before.chars().count();
    IngestError::NotUtf8 {
        path: path.to_path_buf(),
        line: good.iter().filter(|&&b| b == b'\n').count() as u64 + 1,
        column: n_chars as u64 + 1,
        byte: bytes[at],
        before: before.chars().skip(n_chars.saturating_sub(40)).collect(),
    }
}

/// One JSON object of a JSON-lines file.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The non-blank lines of a JSON-lines file, each parsed as a JSON object, with its 1-based
/// line number.
pub fn read_json_lines(path: &Path) -> Result<Vec<(u64, JsonObject)>, IngestError> {
    let mut out = Vec::new();
    for_each_json_line(path, |line, map| {
        out.push((line, map));
        Ok(())
    })?;
    Ok(out)
}

/// Streams the non-blank lines of a JSON-lines file to `each`, parsed as JSON objects, with
/// their 1-based line numbers: one line in memory at a time. The errors are those of
/// [`read_text`] (a missing, unreadable, non-UTF-8 or empty file) and of a line that is not
/// a JSON object, and any `each` returns.
pub fn for_each_json_line(
    path: &Path,
    mut each: impl FnMut(u64, JsonObject) -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    use std::io::BufRead;
    let file = open_file(path)?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let io = |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    let (mut line, mut any) = (0u64, false);
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        line += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t,
            Err(e) => {
                let mut err = not_utf8(path, &buf, e);
                if let IngestError::NotUtf8 { line: l, .. } = &mut err {
                    *l = line;
                }
                return Err(err);
            }
        };
        let raw = text.trim_end_matches('\n').trim_end_matches('\r');
        let raw = raw.trim_start_matches('\u{feff}');
        if raw.trim().is_empty() {
            continue;
        }
        any = true;
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| IngestError::BadJson {
                path: path.to_path_buf(),
                line,
                message: e.to_string(),
            })?;
        match value {
            serde_json::Value::Object(map) => each(line, map)?,
            other => {
                return Err(IngestError::BadJson {
                    path: path.to_path_buf(),
                    line,
                    message: format!("expected a JSON object, found {}", json_kind(&other)),
                })
            }
        }
    }
    if !any {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A string field of a JSON-lines record, or an error naming file, line and field.
pub fn json_str<'a>(
    path: &Path,
    line: u64,
    map: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, IngestError> {
    match map.get(field) {
        None => Err(IngestError::MissingField {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
        }),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(IngestError::BadValue {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
            found: other.to_string(),
            expected: "a string".to_string(),
        }),
    }
}

/// One CSV file read with its header: the records with their line numbers, and the index of
/// each required column.
pub struct CsvTable {
    pub path: PathBuf,
    /// Column name → index, for the columns asked for.
    pub columns: BTreeMap<String, usize>,
    /// Every column name of the header, trimmed, in file order.
    pub header: Vec<String>,
    /// (1-based line where the record starts, record).
    pub records: Vec<(u64, csv::StringRecord)>,
}

impl CsvTable {
    /// The value of `column` (one of those asked for) in `record`.
    pub fn get<'r>(&self, record: &'r csv::StringRecord, column: &str) -> &'r str {
        record.get(self.columns[column]).unwrap_or("")
    }

    /// The value of an optional `column` in `record`: None when the header lacks the column
    /// (a file from an older export), "" when the record is short.
    pub fn get_optional<'r>(&self, record: &'r csv::StringRecord, column: &str) -> Option<&'r str> {
        let i = self.header.iter().position(|h| h == column)?;
        Some(record.get(i).unwrap_or(""))
    }
}

fn csv_error(path: &Path, e: csv::Error) -> IngestError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    IngestError::Csv {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    }
}

/// Reads a CSV file with a header row, requiring `required` columns (exact names after
/// trimming spaces). A file with a header and no rows is empty.
pub fn read_csv(path: &Path, required: &[&str]) -> Result<CsvTable, IngestError> {
    let text = read_text(path)?;
    let text = text.trim_start_matches('\u{feff}');
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut columns = BTreeMap::new();
    for &name in required {
        match header.iter().position(|h| h == name) {
            Some(i) => {
                columns.insert(name.to_string(), i);
            }
            None => {
                return Err(IngestError::MissingColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    header: header.join(","),
                })
            }
        }
    }
    let mut records = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        records.push((line, rec));
    }
    if records.is_empty() {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(CsvTable {
        path: path.to_path_buf(),
        columns,
        header,
        records,
    })
}

/// Reads a headerless two-column `key,value` CSV (Polis `summary.csv`) into (line, key, value)
/// rows; values may span lines when quoted.
pub fn read_key_values(path: &Path) -> Result<Vec<(u64, String, String)>, IngestError> {
    let text = read_text(path)?;
    let text = text.trim_start_matches('\u{feff}');
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let key = rec.get(0).unwrap_or("").trim().to_string();
        let value = rec.iter().skip(1).collect::<Vec<_>>().join(",");
        out.push((line, key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_counts_never_exceed_n() {
        for n in 0..60 {
            for &(t, v) in &[
                (0.2, 0.1),
                (0.5, 0.49),
                (0.0, 0.0),
                (0.33, 0.33),
                (0.9, 0.05),
            ] {
                let (a, b) = split_counts(n, t, v);
                assert!(a + b <= n, "n={n} t={t} v={v}");
            }
        }
        assert_eq!(split_counts(200, 0.2, 0.1), (40, 20));
    }

    #[test]
    fn rng_streams_differ_by_purpose_and_repeat_by_seed() {
        let a: u64 = rng_for(1, "x").random();
        let b: u64 = rng_for(1, "x").random();
        let c: u64 = rng_for(1, "y").random();
        let d: u64 = rng_for(2, "x").random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn a_windows_1252_byte_is_named_by_file_line_and_column() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.csv");
        // "Café" saved in Windows-1252: é is the single byte 0xE9.
        let mut bytes = b"id,text\n1,plain\n2,Caf".to_vec();
        bytes.push(0xE9);
        bytes.extend_from_slice(b" au lait\n");
        std::fs::write(&path, &bytes).unwrap();
        let Err(err) = read_csv(&path, &["id", "text"]) else {
            panic!("a file that is not UTF-8 was read");
        };
        match &err {
            IngestError::NotUtf8 {
                line,
                column,
                byte,
                before,
                ..
            } => assert_eq!(
                (*line, *column, *byte, before.as_str()),
                (3, 6, 0xE9, "2,Caf")
            ),
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("c.csv:3:6: not valid UTF-8: byte 0xE9"),
            "{msg}"
        );
        assert!(msg.contains("\nhint: "), "{msg}");
        // The same bytes, valid as UTF-8, read fine.
        std::fs::write(&path, "id,text\n1,plain\n2,Café au lait\n").unwrap();
        assert_eq!(read_csv(&path, &["id"]).unwrap().records.len(), 2);
    }

    #[test]
    fn orient_balances_sides() {
        let mut rng = rng_for(0, "orient");
        let left = (0..10_000)
            .filter(|_| orient("p", "o", &mut rng).2 == -1)
            .count();
        assert!((4_700..5_300).contains(&left), "{left}");
    }
}
