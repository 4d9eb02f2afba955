//! The pipeline file: YAML → typed spec, with every error naming file, line, column and key.
//!
//! Parsing happens in two steps. serde_yaml reads the top level (name, store, stages,
//! splits) straight from the text, so its errors carry positions. Each stage's parameters
//! are then read into the stage kind's own struct (unknown keys rejected) through
//! `serde_path_to_error`, and the key path is turned back into a line with [`Positions`].
//! In between, stages with `foreach:` are expanded into one stage per combination
//! (`sweep.rs`), each keeping the line of the stage as written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::kinds::{self, Kind};
use super::positions::Positions;

/// One problem in a pipeline file, located.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// Dotted key path (`stages.1.epochs`), empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.col) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": '{}'", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found, reported together.
#[derive(Debug, Clone)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    store_options: BTreeMap<String, Value>,
    stages: Vec<Mapping>,
    #[serde(default)]
    splits: BTreeMap<String, String>,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// The `store:` value, made absolute against the file's folder.
    pub store: Option<String>,
    /// The `store_options:` map: options for a store on object storage (`aws_region`,
    /// `aws_endpoint`, `allow_http`, …), passed to lance's object store as they are.
    pub store_options: BTreeMap<String, String>,
    pub stages: Vec<Stage>,
    pub splits: BTreeMap<String, String>,
}

/// One stage: its name, and its kind with typed parameters.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub params: Kind,
    /// Line of the stage in the file, for messages at run time.
    pub line: Option<usize>,
}

/// A `--set stage.key=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    pub stage: String,
    pub key: String,
    pub value: Value,
}

impl Override {
    /// Parses `stage.key=value`; the value is read as YAML (`3`, `true`, `[1, 2]`, `text`).
    pub fn parse(s: &str) -> Result<Override, String> {
        let (lhs, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--set '{s}': expected stage.key=value"))?;
        let (stage, key) = lhs
            .split_once('.')
            .ok_or_else(|| format!("--set '{s}': expected stage.key=value"))?;
        let value: Value =
            serde_yaml::from_str(value).map_err(|e| format!("--set '{s}': value: {e}"))?;
        Ok(Override {
            stage: stage.to_string(),
            key: key.to_string(),
            value,
        })
    }
}

impl Pipeline {
    /// Reads and validates a pipeline file; every problem is reported at once.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Pipeline, SpecErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecErrors(vec![SpecError {
                file: path.to_path_buf(),
                line: None,
                col: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Pipeline::parse(path, &text, overrides)
    }

    pub fn parse(path: &Path, text: &str, overrides: &[Override]) -> Result<Pipeline, SpecErrors> {
        let err = |line: Option<usize>, col: Option<usize>, key: &str, message: String| SpecError {
            file: path.to_path_buf(),
            line,
            col,
            key: key.to_string(),
            message,
        };
        let raw: RawPipeline = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            SpecErrors(vec![err(
                loc.as_ref().map(|l| l.line()),
                loc.as_ref().map(|l| l.column()),
                "",
                e.to_string(),
            )])
        })?;
        // Sweeps (`foreach:`) expand first, with `--set` applied; from here on `stages.{i}`
        // is an index into the expanded list, and `pos` answers with the line each expanded
        // stage was written on; `relocate` turns keys back into the file's (see `sweep.rs`).
        let at_in = |pos: &Positions, key: &str, message: String| {
            let p = pos.find(key);
            err(p.map(|p| p.line), p.map(|p| p.col), key, message)
        };
        let file_pos = Positions::index(text);
        // Each file stage's name as written (a sweep's template), for `--set` paths below.
        let file_names: Vec<Option<String>> = raw
            .stages
            .iter()
            .map(|m| m.get("name").and_then(Value::as_str).map(String::from))
            .collect();
        let (mut sweep, mut all_errors) =
            super::sweep::expand(raw.stages, overrides, &|k: &str, m: String| {
                at_in(&file_pos, k, m)
            });
        let pos = sweep.positions(&file_pos);
        let at = |key: &str, message: String| at_in(&pos, key, message);
        let mut errors = Vec::new();
        let stages_raw = std::mem::take(&mut sweep.stages);
        let bases = super::paths::Bases::new(path, overrides);
        let mut stages = Vec::new();
        // The index in the expanded list of each stage that parsed.
        let mut parsed = Vec::new();
        for (i, mut m) in stages_raw.into_iter().enumerate() {
            let base = format!("stages.{i}");
            let line = pos.find(&base).map(|p| p.line);
            let name = match m.remove("name") {
                Some(Value::String(s)) if !s.is_empty() => s,
                Some(_) => {
                    errors.push(at(
                        &format!("{base}.name"),
                        "expected a non-empty string".into(),
                    ));
                    continue;
                }
                None => {
                    errors.push(at(&base, "stage has no 'name'".into()));
                    continue;
                }
            };
            let kind = match m.remove("kind") {
                Some(Value::String(s)) => s,
                _ => {
                    errors.push(at(
                        &base,
                        format!("stage '{name}' has no 'kind' (one of {})", kinds::names()),
                    ));
                    continue;
                }
            };
            let params = match kinds::find(&kind) {
                Some(k) => (k.parse)(Value::Mapping(m)),
                None => Err(ParamError::UnknownKind),
            };
            // A path set with `--set` on this stage, or on the sweep that made it, is relative
            // to the shell's folder; one written in the file, to the file's folder.
            let template = sweep
                .origins
                .get(i)
                .and_then(|o| file_names.get(o.index).cloned().flatten());
            match params {
                Ok(mut params) => {
                    params.resolve_paths(&|key, p| {
                        bases.resolve(&[name.as_str(), template.as_deref().unwrap_or("")], key, p)
                    });
                    stages.push(Stage {
                        name,
                        params: params.into(),
                        line,
                    });
                    parsed.push(i);
                }
                Err(ParamError::UnknownKind) => {
                    let guess = crate::suggest::closest(&kind, kinds::KINDS.iter().map(|k| k.name))
                        .map(|g| format!("; did you mean '{g}'?"))
                        .unwrap_or_default();
                    errors.push(at(
                        &format!("{base}.kind"),
                        format!(
                            "unknown stage kind '{kind}'{guess}\nhint: kinds: {}",
                            kinds::names()
                        ),
                    ))
                }
                Err(ParamError::Invalid { path, message }) => {
                    let key = if path.is_empty() || path == "." {
                        base.clone()
                    } else {
                        format!("{base}.{path}")
                    };
                    errors.push(at(&key, format!("stage '{name}' ({kind}): {message}")));
                }
            }
        }
        sweep.relocate(&mut errors);
        all_errors.append(&mut errors);
        // From here on `stages.{i}` indexes the stages that parsed.
        let sweep = sweep.select(&parsed);
        let pos = sweep.positions(&file_pos);
        let at = |key: &str, message: String| at_in(&pos, key, message);
        let mut seen = BTreeMap::new();
        for (i, s) in stages.iter().enumerate() {
            if let Some(first) = seen.insert(s.name.clone(), s.line) {
                errors.push(at(
                    &format!("stages.{i}.name"),
                    format!(
                        "duplicate stage name '{}' (first used by the stage at line {})",
                        s.name,
                        first.map_or("?".to_string(), |l| l.to_string())
                    ),
                ));
            }
        }
        let pipeline = Pipeline {
            file: path.to_path_buf(),
            name: raw.name,
            description: raw.description,
            store: raw.store.map(|s| bases.store(&s)),
            store_options: raw
                .store_options
                .into_iter()
                .map(|(k, v)| (k, option_text(&v)))
                .collect(),
            stages,
            splits: raw.splits,
        };
        errors.extend(super::validate::check(&pipeline, &pos));
        sweep.relocate(&mut errors);
        all_errors.append(&mut errors);
        if all_errors.is_empty() {
            Ok(pipeline)
        } else {
            Err(SpecErrors(all_errors))
        }
    }
}

/// Why a stage's parameters were refused.
#[derive(Debug)]
pub enum ParamError {
    UnknownKind,
    Invalid { path: String, message: String },
}

/// Reads a stage kind's parameter struct, keeping the path of a bad key.
pub fn read_params<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(value).map_err(|e| ParamError::Invalid {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// A `store_options:` value as the text lance's options take: strings as they are, numbers
/// and booleans as written.
fn option_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}
