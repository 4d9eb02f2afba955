//! Sweeps: a stage written once and run once per combination of listed values, the way
//! DVC's `foreach` and GitHub Actions' `matrix` work. This file owns the `foreach:` key,
//! `${key}` placeholders, the `--set` overrides (which may name a sweep or one of its
//! stages), and the bookkeeping that lets errors in an expanded stage point at the line of
//! the stage that made it.
//!
//! ```yaml
//! - name: pal-${model}-k${k}     # each expansion's own name: pal-b-k1 … pal-a-k6
//!   kind: train
//!   foreach: {model: [b, a], k: [1, 2, 3, 4, 5, 6]}
//!   model: pal-${model}          # placeholders work in every string value …
//!   k: ${k}                      # … and a value that is exactly one keeps its type (1, not "1")
//! ```
//!
//! `foreach` is either a mapping of lists (their cartesian product, the first key outermost,
//! so the expansions above come in the order pal-b-k1, pal-b-k2, …, pal-a-k6) or a list of
//! mappings (exactly those combinations, for sets that are not a product, e.g.
//! `[{model: a, k: 1}, {model: a, k: 3}, {model: b, k: 3}]`). The swept values are numbers,
//! strings or booleans. The name must hold a placeholder, every placeholder must name a key
//! of the stage's `foreach`, and `$${` writes a literal `${`. Mapping keys are never
//! substituted. Expansion happens on the raw YAML mappings, before any stage's parameters are
//! read, so each expanded stage is then an ordinary stage: its own name, fingerprint and
//! model.
//!
//! `--set STAGE.KEY=VALUE` names either one expanded stage (`--set pal-b-k3.seed=1`: that
//! stage only) or a sweep by its template name (`--set 'pal-${model}-k${k}.seed=1'`: every
//! expansion; the value may hold placeholders, and `KEY` may be `foreach` to change the
//! sweep itself). A template's overrides apply before expansion, an expanded stage's after.

use std::collections::BTreeSet;

use serde_yaml::{Mapping, Value};

use super::positions::{split_stage_key, Positions};
use super::spec::{Override, SpecError};

/// The key that makes a stage a sweep.
pub const FOREACH: &str = "foreach";

/// Most stages one sweep may make (a typo in a long product should not make thousands).
pub const MAX_EXPANSIONS: usize = 1000;

/// Where a stage of the expanded list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Index of the stage in the file's `stages` list.
    pub index: usize,
    /// The combination that made it (`model=b, k=3`); `None` for a stage written out.
    pub label: Option<String>,
}

/// The stage list after expansion, each stage with its origin.
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    pub stages: Vec<Mapping>,
    pub origins: Vec<Origin>,
}

/// Part of a string value: literal text, or a placeholder's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A key name usable in `${…}`: a letter or `_`, then letters, digits, `_` or `-`.
fn is_key_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `s` into text and placeholders (`$${` is a literal `${`).
fn pieces(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("$${") {
            text.push_str("${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let Some(end) = r.find('}') else {
                return Err(format!("'{s}' opens a placeholder '${{' that has no '}}'"));
            };
            let key = &r[..end];
            if !is_key_name(key) {
                return Err(format!(
                    "'${{{key}}}' in '{s}' is not a placeholder (a key name: letters, digits, '_', '-')\nhint: write '$${{' for a literal '${{'"
                ));
            }
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Var(key.to_string()));
            rest = &r[end + 1..];
        } else {
            let c = rest.chars().next().unwrap_or_default();
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// The text a swept value takes inside a longer string.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        // `values` refuses anything else.
        other => format!("{other:?}"),
    }
}

/// One combination: (key, value) in the order of the stage's `foreach`.
type Combo = Vec<(String, Value)>;

fn lookup<'a>(combo: &'a Combo, key: &str) -> Option<&'a Value> {
    combo.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn label(combo: &Combo) -> String {
    combo
        .iter()
        .map(|(k, v)| format!("{k}={}", as_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `value` with every placeholder replaced by `combo`'s value; a string that is exactly one
/// placeholder takes the value itself (a number stays a number). Placeholders were checked.
fn substitute(value: &Value, combo: &Combo) -> Value {
    match value {
        Value::String(s) => match pieces(s) {
            Ok(ps) => match ps.as_slice() {
                [Piece::Var(k)] => lookup(combo, k).cloned().unwrap_or_else(|| value.clone()),
                _ => Value::String(
                    ps.iter()
                        .map(|p| match p {
                            Piece::Text(t) => t.clone(),
                            Piece::Var(k) => lookup(combo, k).map(as_text).unwrap_or_default(),
                        })
                        .collect(),
                ),
            },
            Err(_) => value.clone(),
        },
        Value::Sequence(items) => {
            Value::Sequence(items.iter().map(|v| substitute(v, combo)).collect())
        }
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| (k.clone(), substitute(v, combo)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every string value under `value`, with its dotted path below `path`.
fn strings<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((path, s)),
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                strings(v, format!("{path}.{i}"), out);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => as_text(other),
                };
                strings(v, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Checks one swept value: numbers, strings and booleans only.
fn swept_value(v: &Value) -> Result<(), &'static str> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        Value::Null => Err("empty (null)"),
        Value::Sequence(_) => Err("a list"),
        Value::Mapping(_) => Err("a mapping"),
        Value::Tagged(_) => Err("a tagged value"),
    }
}

/// The combinations a `foreach` value stands for, or located errors (`(key below the stage,
/// message)`).
fn combinations(foreach: &Value) -> Result<Vec<Combo>, Vec<(String, String)>> {
    const SHAPE: &str = "'foreach' takes a mapping of lists ({k: [1, 2]}: every combination) or a list of mappings ([{k: 1}, {k: 2}]: exactly those)";
    let key_name = |k: &Value, at: String| -> Result<String, (String, String)> {
        match k {
            Value::String(s) if is_key_name(s) => Ok(s.clone()),
            other => Err((
                at,
                format!(
                    "'foreach' key '{}' is not a key name (letters, digits, '_', '-', starting with a letter)",
                    as_text(other)
                ),
            )),
        }
    };
    let mut errors = Vec::new();
    let combos = match foreach {
        Value::Mapping(m) if !m.is_empty() => {
            let mut combos: Vec<Combo> = vec![Vec::new()];
            for (k, v) in m {
                let key = match key_name(k, FOREACH.into()) {
                    Ok(key) => key,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let at = format!("{FOREACH}.{key}");
                let Value::Sequence(values) = v else {
                    errors.push((
                        at,
                        format!(
                            "'foreach' key '{key}' needs a list of values, e.g. {key}: [1, 2, 3]"
                        ),
                    ));
                    continue;
                };
                if values.is_empty() {
                    errors.push((at, format!("'foreach' key '{key}' lists no values, so the stage would not run at all")));
                    continue;
                }
                for (i, v) in values.iter().enumerate() {
                    if let Err(what) = swept_value(v) {
                        errors.push((
                            format!("{at}.{i}"),
                            format!("'foreach' key '{key}': value {} is {what}; sweeps take numbers, strings and booleans", i + 1),
                        ));
                    }
                }
                let key = &key;
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push((key.clone(), v.clone()));
                            c
                        })
                    })
                    .take(MAX_EXPANSIONS + 1)
                    .collect();
            }
            combos
        }
        Value::Sequence(list) if !list.is_empty() => {
            let mut combos = Vec::new();
            let mut keys: Option<Vec<String>> = None;
            for (i, item) in list.iter().enumerate() {
                let at = format!("{FOREACH}.{i}");
                let Value::Mapping(m) = item else {
                    errors.push((at, SHAPE.to_string()));
                    continue;
                };
                if m.is_empty() {
                    errors.push((
                        at,
                        format!(
                            "'foreach' entry {} sets no keys; each entry sets the keys it sweeps, e.g. {{k: 2, lr: 0.01}}",
                            i + 1
                        ),
                    ));
                    continue;
                }
                let mut combo = Vec::new();
                for (k, v) in m {
                    match key_name(k, at.clone()) {
                        Ok(key) => {
                            if let Err(what) = swept_value(v) {
                                errors.push((
                                    format!("{at}.{key}"),
                                    format!("'foreach' entry {}: '{key}' is {what}; sweeps take numbers, strings and booleans", i + 1),
                                ));
                            }
                            combo.push((key, v.clone()));
                        }
                        Err(e) => errors.push(e),
                    }
                }
                let these: Vec<String> = combo.iter().map(|(k, _)| k.clone()).collect();
                match keys.as_ref() {
                    Some(first) if *first != these => errors.push((
                        at,
                        format!(
                            "'foreach' entry {} has keys [{}] but the first entry has [{}]; every entry sets the same keys",
                            i + 1,
                            these.join(", "),
                            first.join(", ")
                        ),
                    )),
                    Some(_) => {}
                    None => keys = Some(these),
                }
                combos.push(combo);
            }
            combos
        }
        _ => {
            errors.push((FOREACH.into(), SHAPE.to_string()));
            Vec::new()
        }
    };
    if combos.len() > MAX_EXPANSIONS {
        errors.push((
            FOREACH.into(),
            format!("'foreach' makes more than {MAX_EXPANSIONS} stages"),
        ));
    }
    if errors.is_empty() {
        Ok(combos)
    } else {
        Err(errors)
    }
}

/// The stage named by an override: the longest name `N` with `STAGE.KEY` = `N.rest`, so a
/// name holding a dot (`k0.5`) still works. Returns the name's position and the key.
fn target<'a>(
    o: &Override,
    names: impl Iterator<Item = Option<&'a str>>,
) -> Option<(usize, String)> {
    let full = format!("{}.{}", o.stage, o.key);
    names
        .enumerate()
        .filter_map(|(i, n)| {
            let n = n?;
            let key = full.strip_prefix(n)?.strip_prefix('.')?;
            (!key.is_empty()).then(|| (i, n.len(), key.to_string()))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(i, _, key)| (i, key))
}

/// Sets `key` of a stage to `value`; a dotted key (`columns.user`) sets one entry of a
/// nested mapping, making the mappings missing on its way, so that `--set
/// prefs.columns.user=rater` changes one column and keeps the others.
///
/// # Errors
/// The message for `--set` when a part of the key on the way holds a value that is not a
/// mapping (`--set prefs.path.sub=x` where `path` is a text): the stage is left unchanged.
fn set_path(stage: &mut Mapping, key: &str, value: Value) -> Result<(), String> {
    let mut m = stage;
    let mut parts = key.split('.').peekable();
    let mut walked = Vec::new();
    while let Some(part) = parts.next() {
        let k = Value::String(part.to_string());
        walked.push(part);
        if parts.peek().is_none() {
            m.insert(k, value);
            return Ok(());
        }
        let entry = m.entry(k).or_insert_with(|| Value::Mapping(Mapping::new()));
        m = match entry {
            Value::Mapping(inner) => inner,
            _ => {
                return Err(format!(
                    "'{}' holds a value, not a mapping: nothing under it can be set\nhint: set '{}' itself",
                    walked.join("."),
                    walked.join(".")
                ))
            }
        };
    }
    Ok(())
}

fn name_of(m: &Mapping) -> Option<&str> {
    m.get("name").and_then(Value::as_str)
}

/// Expands the file's stages (applying `overrides`); `at` locates an error by its key path in
/// the file (`stages.3.foreach.k`). A stage whose sweep is wrong is reported and left out.
pub fn expand(
    file_stages: Vec<Mapping>,
    overrides: &[Override],
    at: &dyn Fn(&str, String) -> SpecError,
) -> (Expansion, Vec<SpecError>) {
    let mut errors = Vec::new();
    let mut stages = file_stages;
    // Overrides that name a stage as written (a sweep's template, or a plain stage).
    let mut later = Vec::new();
    for o in overrides {
        match target(o, stages.iter().map(name_of)) {
            Some((i, key)) => {
                if let Err(m) = set_path(&mut stages[i], &key, o.value.clone()) {
                    errors.push(at("", format!("--set '{}.{}': {m}", o.stage, o.key)));
                }
            }
            None => later.push(o),
        }
    }
    let mut out = Expansion::default();
    let mut has_sweeps = false;
    for (index, mut m) in stages.into_iter().enumerate() {
        let base = format!("stages.{index}");
        let Some(foreach) = m.remove(FOREACH) else {
            if let Some(name) = name_of(&m) {
                if let Ok(ps) = pieces(name) {
                    if ps.iter().any(|p| matches!(p, Piece::Var(_))) {
                        errors.push(at(
                            &format!("{base}.name"),
                            format!("stage name '{name}' holds a placeholder but the stage has no 'foreach'\nhint: add the values to sweep, e.g. 'foreach: {{k: [1, 2]}}'"),
                        ));
                        continue;
                    }
                }
            }
            out.stages.push(m);
            out.origins.push(Origin { index, label: None });
            continue;
        };
        has_sweeps = true;
        let combos = match combinations(&foreach) {
            Ok(c) => c,
            Err(es) => {
                for (key, message) in es {
                    errors.push(at(&format!("{base}.{key}"), message));
                }
                continue;
            }
        };
        let keys: Vec<&str> = combos[0].iter().map(|(k, _)| k.as_str()).collect();
        // The template: a name with a placeholder, and only known placeholders anywhere.
        let mut bad = false;
        // (A missing or non-text name is reported once, by the stage parser.)
        if let Some(Value::String(name)) = m.get("name") {
            if let Ok(ps) = pieces(name) {
                if !ps.iter().any(|p| matches!(p, Piece::Var(_))) {
                    bad = true;
                    errors.push(at(
                        &format!("{base}.name"),
                        format!("stage '{name}' has 'foreach' but no placeholder in its name, so every expansion would be named '{name}'\nhint: put a swept key in the name, e.g. '{name}-${{{}}}'", keys[0]),
                    ));
                }
            }
        }
        let mut found = Vec::new();
        for (k, v) in &m {
            if let Value::String(k) = k {
                strings(v, k.clone(), &mut found);
            }
        }
        for (path, s) in found {
            match pieces(s) {
                Err(message) => {
                    bad = true;
                    errors.push(at(&format!("{base}.{path}"), message));
                }
                Ok(ps) => {
                    let unknown: BTreeSet<&str> = ps
                        .iter()
                        .filter_map(|p| match p {
                            Piece::Var(k) if !keys.contains(&k.as_str()) => Some(k.as_str()),
                            _ => None,
                        })
                        .collect();
                    for k in unknown {
                        bad = true;
                        errors.push(at(
                            &format!("{base}.{path}"),
                            format!(
                                "placeholder '${{{k}}}' names no key of this stage's 'foreach' (keys: {})",
                                keys.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if bad {
            continue;
        }
        if !matches!(m.get("name"), Some(Value::String(_))) {
            // Let the stage parser report the name once, at the stage's line.
            out.stages.push(m);
            out.origins.push(Origin { index, label: None });
            continue;
        }
        for combo in &combos {
            let expanded: Mapping = m
                .iter()
                .map(|(k, v)| {
                    let v = if k.as_str() == Some("name") {
                        match substitute(v, combo) {
                            Value::String(s) => Value::String(s),
                            other => Value::String(as_text(&other)),
                        }
                    } else {
                        substitute(v, combo)
                    };
                    (k.clone(), v)
                })
                .collect();
            out.stages.push(expanded);
            out.origins.push(Origin {
                index,
                label: Some(label(combo)),
            });
        }
    }
    // Overrides that name one expanded stage.
    for o in later {
        match target(o, out.stages.iter().map(name_of)) {
            Some((j, key))
                if key.split('.').next() == Some(FOREACH) && out.origins[j].label.is_some() =>
            {
                errors.push(at(
                    "",
                    format!(
                        "--set '{}.{}': stage '{}' is one expansion of a sweep; change the sweep on the stage as written (its name with '${{…}}', quoted)",
                        o.stage, o.key, o.stage
                    ),
                ));
            }
            Some((j, key)) => {
                if let Err(m) = set_path(&mut out.stages[j], &key, o.value.clone()) {
                    errors.push(at("", format!("--set '{}.{}': {m}", o.stage, o.key)));
                }
            }
            None => errors.push(at(
                "",
                format!(
                    "--set names stage '{}', which this pipeline does not have{}",
                    o.stage,
                    if has_sweeps {
                        "\nhint: a swept stage is named by one expansion (pal-b-k3) or by its name as written, quoted ('pal-b-k${k}')"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
    (out, errors)
}

impl Expansion {
    /// Positions for the expanded list: stage `j` answers with the lines of the stage it
    /// comes from, so errors found by index in the expanded list land on the right line.
    pub fn positions(&self, file: &Positions) -> Positions {
        let from: Vec<usize> = self.origins.iter().map(|o| o.index).collect();
        file.renumber_stages(&from)
    }

    /// The origins of the stages at `keep` (indices into this list), in that order: for
    /// a list from which stages that did not parse were left out.
    pub fn select(&self, keep: &[usize]) -> Expansion {
        Expansion {
            stages: Vec::new(),
            origins: keep
                .iter()
                .filter_map(|&j| self.origins.get(j).cloned())
                .collect(),
        }
    }

    /// Turns errors keyed by the expanded list's indices (`stages.7.k`) back into the file's
    /// (`stages.2.k`), and says which combination an expanded stage's error is about.
    pub fn relocate(&self, errors: &mut [SpecError]) {
        for e in errors {
            let Some((j, rest)) = split_stage_key(&e.key) else {
                continue;
            };
            let Some(origin) = self.origins.get(j) else {
                continue;
            };
            e.key = format!("stages.{}{rest}", origin.index);
            if let Some(label) = &origin.label {
                let note = format!(" (sweep: {label})");
                match e.message.find("\nhint:") {
                    Some(i) => e.message.insert_str(i, &note),
                    None => e.message.push_str(&note),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn stages(yaml: &str) -> Vec<Mapping> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn run(yaml: &str, overrides: &[&str]) -> (Expansion, Vec<SpecError>) {
        let text = format!("stages:\n{yaml}");
        let pos = Positions::index(&text);
        let at = |key: &str, message: String| {
            let p = pos.find(key);
            SpecError {
                file: PathBuf::from("p.yaml"),
                line: p.map(|p| p.line),
                col: p.map(|p| p.col),
                key: key.to_string(),
                message,
            }
        };
        let overrides: Vec<Override> = overrides
            .iter()
            .map(|s| Override::parse(s).unwrap())
            .collect();
        expand(stages(yaml), &overrides, &at)
    }

    fn names(e: &Expansion) -> Vec<&str> {
        e.stages.iter().map(|m| name_of(m).unwrap()).collect()
    }

    #[test]
    fn placeholders_split_into_text_and_keys() {
        assert_eq!(
            pieces("pal-${m}-k${k}").unwrap(),
            vec![
                Piece::Text("pal-".into()),
                Piece::Var("m".into()),
                Piece::Text("-k".into()),
                Piece::Var("k".into())
            ]
        );
        assert_eq!(
            pieces("cost $${x}").unwrap(),
            vec![Piece::Text("cost ${x}".into())]
        );
        assert!(pieces("a ${k").unwrap_err().contains("no '}'"));
        assert!(pieces("a ${1k}").unwrap_err().contains("not a placeholder"));
        assert_eq!(pieces("é$").unwrap(), vec![Piece::Text("é$".into())]);
    }

    #[test]
    fn a_product_expands_first_key_outermost_with_typed_values() {
        let (e, errs) = run(
            "  - name: pal-${m}-k${k}\n    kind: train\n    foreach: {m: [b, a], k: [1, 2, 3]}\n    model: pal-${m}\n    k: ${k}\n    training: {lr: '${k}', note: 'k is ${k}'}\n  - name: after\n    kind: eval\n",
            &[],
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            names(&e),
            ["pal-b-k1", "pal-b-k2", "pal-b-k3", "pal-a-k1", "pal-a-k2", "pal-a-k3", "after"]
        );
        let third = &e.stages[2];
        assert_eq!(third.get("k"), Some(&Value::from(3u64)));
        assert_eq!(third.get("model"), Some(&Value::from("pal-b")));
        assert!(third.get(FOREACH).is_none());
        let training = third.get("training").unwrap();
        // A quoted placeholder alone still takes the swept value's type.
        assert_eq!(training.get("lr"), Some(&Value::from(3u64)));
        assert_eq!(training.get("note"), Some(&Value::from("k is 3")));
        assert_eq!(
            e.origins[4],
            Origin {
                index: 0,
                label: Some("m=a, k=2".into())
            }
        );
        assert_eq!(
            e.origins[6],
            Origin {
                index: 1,
                label: None
            }
        );
    }

    #[test]
    fn a_list_of_mappings_expands_exactly_those() {
        let (e, errs) = run(
            "  - name: x-${model}-k${k}\n    kind: train\n    foreach: [{model: a, k: 1}, {model: a, k: 3}, {model: b, k: 3}]\n    k: ${k}\n",
            &[],
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(names(&e), ["x-a-k1", "x-a-k3", "x-b-k3"]);
        assert_eq!(e.stages[1].get("k"), Some(&Value::from(3u64)));
    }

    /// An entry of the list form with no keys is refused where it stands (it used to reach
    /// the name check with no key to suggest, and panic).
    #[test]
    fn an_empty_foreach_entry_is_refused() {
        let yaml = "  - name: t\n    kind: train\n    foreach: [{}]\n  - name: u-${k}\n    kind: train\n    foreach:\n      - {k: 1}\n      - {}\n";
        let (e, errs) = run(yaml, &[]);
        assert!(e.stages.is_empty(), "{:?}", names(&e));
        let got: Vec<(Option<usize>, &str)> =
            errs.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(errs.len(), 2, "{got:?}");
        assert_eq!(errs[0].line, Some(4), "{got:?}");
        assert!(errs[0].message.contains("entry 1 sets no keys"), "{got:?}");
        assert_eq!(errs[1].line, Some(9), "{got:?}");
        assert!(errs[1].message.contains("entry 2 sets no keys"), "{got:?}");
    }

    #[test]
    fn sweep_mistakes_point_at_their_lines() {
        // line 1 is "stages:"
        let yaml = "  - name: t-${k}\n    kind: train\n    foreach: {k: [1, [2]]}\n  - name: u\n    kind: train\n    foreach: {k: [1, 2]}\n  - name: v-${k}\n    kind: train\n    foreach: {k: [1]}\n    train: s-${j}\n  - name: w-${k}\n    kind: train\n  - name: z-${k}\n    kind: train\n    foreach: {k: []}\n";
        let (e, errs) = run(yaml, &[]);
        assert!(e.stages.is_empty(), "{:?}", names(&e));
        let got: Vec<(Option<usize>, &str)> =
            errs.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(errs.len(), 5, "{got:?}");
        assert_eq!(errs[0].line, Some(4));
        assert!(errs[0].message.contains("value 2 is a list"), "{got:?}");
        assert_eq!(errs[1].line, Some(5));
        assert!(
            errs[1].message.contains("no placeholder in its name"),
            "{got:?}"
        );
        assert_eq!(errs[2].line, Some(11));
        assert!(errs[2].message.contains("'${j}'"), "{got:?}");
        assert_eq!(errs[3].line, Some(12));
        assert!(errs[3].message.contains("has no 'foreach'"), "{got:?}");
        assert_eq!(errs[4].line, Some(16));
        assert!(errs[4].message.contains("lists no values"), "{got:?}");
    }

    #[test]
    fn overrides_name_a_template_or_one_expansion() {
        let yaml = "  - name: t-k${k}\n    kind: train\n    foreach: {k: [1, 2, 3]}\n    seed: 0\n    k: ${k}\n";
        let (e, errs) = run(yaml, &["t-k2.seed=7", "t-k${k}.train=s-${k}"]);
        assert!(errs.is_empty(), "{errs:?}");
        let seeds: Vec<u64> = e
            .stages
            .iter()
            .map(|m| m.get("seed").and_then(Value::as_u64).unwrap())
            .collect();
        assert_eq!(seeds, [0, 7, 0]);
        assert_eq!(e.stages[2].get("train"), Some(&Value::from("s-3")));
        // The sweep itself is changed on the template.
        let (e, _) = run(yaml, &["t-k${k}.foreach={k: [5]}"]);
        assert_eq!(names(&e), ["t-k5"]);
        let (_, errs) = run(yaml, &["t-k2.foreach={k: [5]}"]);
        assert!(
            errs[0].message.contains("one expansion of a sweep"),
            "{errs:?}"
        );
        let (_, errs) = run(yaml, &["t-k9.seed=1"]);
        assert!(errs[0].message.contains("does not have"), "{errs:?}");
    }

    #[test]
    fn a_dotted_override_sets_one_entry_of_a_nested_mapping() {
        let yaml = "  - name: prefs\n    kind: preferences\n    columns: {user: worker, chosen: a}\n    path: x\n";
        let (e, errs) = run(
            yaml,
            &["prefs.columns.user=rater", "prefs.extra.deep.key=1"],
        );
        assert!(errs.is_empty(), "{errs:?}");
        let m = &e.stages[0];
        let cols = m.get("columns").and_then(Value::as_mapping).unwrap();
        assert_eq!(cols.get("user"), Some(&Value::from("rater")));
        assert_eq!(
            cols.get("chosen"),
            Some(&Value::from("a")),
            "the other columns stay"
        );
        assert_eq!(cols.len(), 2);
        let deep = m["extra"]["deep"]["key"].as_u64();
        assert_eq!(deep, Some(1), "the mappings on the way are made");
        // Nothing can be set under a key that holds a text: an error, the text kept.
        let (e, errs) = run(yaml, &["prefs.path.sub=y"]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .message
                .contains("--set 'prefs.path.sub': 'path' holds a value, not a mapping"),
            "{errs:?}"
        );
        assert_eq!(e.stages[0]["path"], Value::from("x"));
        // The same on one expansion of a sweep, after it is expanded.
        let yaml = "  - name: t-k${k}\n    kind: train\n    foreach: {k: [1, 2]}\n    training: {lr: 0.1, epochs: 3}\n";
        let (_, errs) = run(yaml, &["t-k2.training.lr=0.5", "t-k2.foreach.k=[9]"]);
        assert!(
            errs.iter()
                .any(|e| e.message.contains("one expansion of a sweep")),
            "{errs:?}"
        );
        let (e2, errs2) = run(yaml, &["t-k2.training.lr=0.5"]);
        assert!(errs2.is_empty(), "{errs2:?}");
        let lr: Vec<f64> = (e2.stages.iter())
            .map(|m| m["training"]["lr"].as_f64().unwrap())
            .collect();
        assert_eq!(lr, [0.1, 0.5]);
        assert_eq!(e2.stages[1]["training"]["epochs"].as_u64(), Some(3));
    }

    #[test]
    fn errors_in_an_expanded_stage_go_back_to_the_stage_as_written() {
        let (e, _) = run(
            "  - name: a\n    kind: x\n  - name: t-${k}\n    kind: train\n    foreach: {k: [1, 2]}\n",
            &[],
        );
        let mut errs = vec![SpecError {
            file: PathBuf::from("p.yaml"),
            line: None,
            col: None,
            key: "stages.2.k".into(),
            message: "bad\nhint: fix".into(),
        }];
        e.relocate(&mut errs);
        assert_eq!(errs[0].key, "stages.1.k");
        assert_eq!(errs[0].message, "bad (sweep: k=2)\nhint: fix");
    }
}
