//! Checks that need the whole pipeline: input files exist (or an earlier stage makes them),
//! split SQL parses, no two stages own the same rows, and stages reference splits and models
//! that the pipeline defines (or that must already be in the store; those are checked when
//! the run starts). Each pass adds located errors.

use datafusion::sql::parser::DFParser;

use super::kinds::Scope;
use super::positions::Positions;
use super::spec::{Pipeline, SpecError};

pub fn check(p: &Pipeline, pos: &Positions) -> Vec<SpecError> {
    let at = |key: String, message: String| {
        let found = pos.find(&key);
        SpecError {
            file: p.file.clone(),
            line: found.map(|x| x.line),
            col: found.map(|x| x.col),
            key,
            message,
        }
    };
    let mut errors = Vec::new();
    // Inputs exist (for stages whose parameters make sense: see below), or an earlier
    // stage makes them.
    let mut made: Vec<std::path::PathBuf> = Vec::new();
    for (i, s) in p.stages.iter().enumerate() {
        if s.params.check().is_ok() {
            for (key, path) in s.params.inputs() {
                if path.exists() || made.iter().any(|m| path.starts_with(m)) {
                    continue;
                }
                let hint = s
                    .params
                    .missing_input_hint(&key)
                    .map(|h| format!("\n{h}"))
                    .unwrap_or_default();
                errors.push(at(
                    format!("stages.{i}.{key}"),
                    format!(
                        "stage '{}': input '{}' does not exist{hint}",
                        s.name,
                        path.display()
                    ),
                ));
            }
        }
        made.extend(s.params.makes());
    }
    // Parameters in range.
    for (i, s) in p.stages.iter().enumerate() {
        if let Err(issue) = s.params.check() {
            let key = if issue.key.is_empty() {
                format!("stages.{i}")
            } else {
                format!("stages.{i}.{}", issue.key)
            };
            errors.push(at(key, format!("stage '{}': {}", s.name, issue.message)));
        }
    }
    // No two stages own the same rows: each run of one would replace the other's.
    let mut owners: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
    for (i, s) in p.stages.iter().enumerate() {
        for scope in s.params.owns(&s.name) {
            let owned: Vec<(String, &str)> = match &scope {
                Scope::Dataset(d) => vec![(format!("the rows of dataset '{d}'"), "dataset")],
                Scope::Model(m) => vec![(format!("the row of model '{m}'"), "name")],
                Scope::SplitTags { dataset, tags } => tags
                    .iter()
                    .map(|t| (format!("split tag '{t}' of dataset '{dataset}'"), "target"))
                    .collect(),
                Scope::ModelMetric { model, key } => {
                    let param = if key.starts_with("adapt:") {
                        "users"
                    } else {
                        "split"
                    };
                    vec![(format!("metric '{key}' of model '{model}'"), param)]
                }
                Scope::Folder(f) => vec![(format!("folder '{}'", f.display()), "out")],
            };
            for (what, key) in owned {
                match owners.get(&what) {
                    Some(first) => errors.push(at(
                        format!("stages.{i}"),
                        format!(
                            "stage '{}' writes {what}, which stage '{first}' writes too: each run of one would replace the other's work\nhint: give one of them another '{key}'",
                            s.name
                        ),
                    )),
                    None => {
                        owners.insert(what, &s.name);
                    }
                }
            }
        }
    }
    // Splits parse as SQL.
    for (name, sql) in &p.splits {
        if let Err(e) = DFParser::parse_sql(sql) {
            errors.push(at(
                format!("splits.{name}"),
                format!("split '{name}' is not valid SQL: {e}"),
            ));
        }
    }
    // Models referenced by eval/adapt are trained earlier in the pipeline (or already stored).
    for (i, s) in p.stages.iter().enumerate() {
        for (key, model) in s.params.model_refs() {
            let trained_before = p.stages[..i]
                .iter()
                .any(|t| t.params.model_name(&t.name).as_deref() == Some(model.as_str()));
            let trained_later = p.stages[i..]
                .iter()
                .any(|t| t.params.model_name(&t.name).as_deref() == Some(model.as_str()));
            if trained_later && !trained_before {
                errors.push(at(
                    format!("stages.{i}.{key}"),
                    format!(
                        "stage '{}' uses model '{model}' before the stage that trains it",
                        s.name
                    ),
                ));
            }
        }
    }
    errors
}
