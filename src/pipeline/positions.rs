//! Where each key of a YAML document sits, so that errors found after parsing (a wrong type
//! deep in a stage's parameters, a missing input file) still name the file's line and column.
//!
//! One pass over the parser's marked events builds a map from a dotted path
//! (`stages.2.epochs`) to the position of that key (or of that sequence element).

use std::collections::HashMap;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::Event;

/// Line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default)]
pub struct Positions {
    map: HashMap<String, Pos>,
}

enum Frame {
    /// A mapping: the key whose value comes next, if a key has been read.
    Map { path: String, key: Option<String> },
    /// A sequence: the index of the next element.
    Seq { path: String, next: usize },
}

struct Walker {
    stack: Vec<Frame>,
    map: HashMap<String, Pos>,
}

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_string()
    } else {
        format!("{path}.{part}")
    }
}

impl Walker {
    /// The path of the value that starts now, advancing the parent frame.
    fn value_path(&mut self, mark: Marker) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => key.take().map(|k| join(path, &k)),
            Frame::Seq { path, next } => {
                let p = join(path, &next.to_string());
                *next += 1;
                self.map.entry(p.clone()).or_insert(Pos {
                    line: mark.line(),
                    col: mark.col() + 1,
                });
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &text);
                        self.map.insert(
                            p,
                            Pos {
                                line: mark.line(),
                                col: mark.col() + 1,
                            },
                        );
                        *key = Some(text);
                        return;
                    }
                }
                self.value_path(mark);
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.value_path(mark)
                };
                self.stack.push(Frame::Map {
                    path: path.unwrap_or_default(),
                    key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.value_path(mark)
                };
                self.stack.push(Frame::Seq {
                    path: path.unwrap_or_default(),
                    next: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            _ => {}
        }
    }
}

impl Positions {
    /// Indexes `text`; a document that does not parse gives an empty index (serde_yaml then
    /// reports the syntax error with its own position).
    pub fn index(text: &str) -> Positions {
        let mut w = Walker {
            stack: Vec::new(),
            map: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut w, false).is_err() {
            return Positions::default();
        }
        Positions { map: w.map }
    }

    /// The index of a rebuilt stage list: stage `j` answers with the positions of the file's
    /// stage `from[j]` (`stages.{from[j]}.…` become `stages.{j}.…`); other paths are kept.
    pub fn renumber_stages(&self, from: &[usize]) -> Positions {
        let mut by_stage: HashMap<usize, Vec<(&str, Pos)>> = HashMap::new();
        let mut map = HashMap::new();
        for (k, p) in &self.map {
            match split_stage_key(k) {
                Some((i, rest)) => by_stage.entry(i).or_default().push((rest, *p)),
                None => {
                    map.insert(k.clone(), *p);
                }
            }
        }
        for (j, i) in from.iter().enumerate() {
            for (rest, p) in by_stage.get(i).into_iter().flatten() {
                map.insert(format!("stages.{j}{rest}"), *p);
            }
        }
        Positions { map }
    }

    /// The position of `path`, or of its closest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            p = &p[..p.rfind('.')?];
        }
    }
}

/// `stages.7.k` → (7, ".k"); `stages.7` → (7, ""); `None` for a path outside a stage.
pub fn split_stage_key(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("stages.")?;
    let end = rest.find('.').unwrap_or(rest.len());
    Some((rest[..end].parse().ok()?, &rest[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_inside_sequences_get_their_lines() {
        let text = "name: x\nstages:\n  - name: a\n    kind: synthetic\n    d: 2\n  - name: b\n    kind: train\n";
        let p = Positions::index(text);
        assert_eq!(p.find("name"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(p.find("stages.0.d"), Some(Pos { line: 5, col: 5 }));
        assert_eq!(p.find("stages.1.kind").unwrap().line, 7);
        // an unknown deeper path falls back to its parent
        assert_eq!(p.find("stages.1.kind.nested").unwrap().line, 7);
    }

    #[test]
    fn renumbered_stages_answer_with_their_origin_lines() {
        let text = "name: x\nstages:\n  - name: a\n    kind: synthetic\n  - name: b\n    k: 1\n";
        let p = Positions::index(text).renumber_stages(&[0, 1, 1]);
        assert_eq!(p.find("stages.2.k"), Some(Pos { line: 6, col: 5 }));
        assert_eq!(p.find("stages.1").unwrap().line, 5);
        assert_eq!(p.find("stages.0.kind").unwrap().line, 4);
        assert_eq!(p.find("name"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(split_stage_key("stages.12.k.0"), Some((12, ".k.0")));
        assert_eq!(split_stage_key("splits.a"), None);
    }
}
