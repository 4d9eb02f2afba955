//! Where relative paths in a pipeline point. A path written in the pipeline file (a stage's
//! path-valued parameter, or `store:`) is relative to the folder holding that file, as in
//! Docker Compose and DVC, so a pipeline runs the same from any working directory. A path
//! given on the command line with `--set` is relative to the shell's current folder. Both
//! are made absolute (and `.`/`..` folded lexically) once, when the pipeline is read.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use super::spec::Override;

/// The two bases, and which (stage, key) values came from `--set`.
#[derive(Debug, Clone)]
pub struct Bases {
    file_dir: PathBuf,
    cwd: PathBuf,
    from_cli: BTreeSet<(String, String)>,
}

impl Bases {
    /// The bases for pipeline file `file` read with `overrides`.
    pub fn new(file: &Path, overrides: &[Override]) -> Bases {
        let cwd = std::env::current_dir().unwrap_or_default();
        let file = if file.is_absolute() {
            file.to_path_buf()
        } else {
            cwd.join(file)
        };
        Bases {
            file_dir: normalize(file.parent().unwrap_or(Path::new("/"))),
            cwd,
            from_cli: overrides
                .iter()
                .map(|o| (o.stage.clone(), o.key.clone()))
                .collect(),
        }
    }

    /// Makes `path`, the value of `key` in the stage known by `names` (its name, and for an
    /// expanded sweep stage the template it came from), absolute.
    pub fn resolve(&self, names: &[&str], key: &str, path: &mut PathBuf) {
        let cli = names
            .iter()
            .any(|n| self.from_cli.contains(&(n.to_string(), key.to_string())));
        *path = self.absolute(path, cli);
    }

    /// The pipeline's `store:` value, made absolute against the file's folder.
    /// A URI (`s3://bucket/prefix`) is kept as it is.
    pub fn store(&self, store: &str) -> String {
        if store.contains("://") {
            return store.to_string();
        }
        self.absolute(Path::new(store), false)
            .to_string_lossy()
            .into_owned()
    }

    fn absolute(&self, path: &Path, from_cli: bool) -> PathBuf {
        let base = if from_cli { &self.cwd } else { &self.file_dir };
        normalize(&base.join(path))
    }
}

/// Folds `.` and `name/..` out of a path without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(stage: &str, key: &str) -> Override {
        Override {
            stage: stage.into(),
            key: key.into(),
            value: serde_yaml::Value::Null,
        }
    }

    #[test]
    fn file_paths_follow_the_file_and_set_paths_follow_the_shell() {
        let cwd = std::env::current_dir().unwrap();
        let b = Bases::new(Path::new("/repo/pipelines/x.yaml"), &[set("ingest", "dir")]);
        let mut p = PathBuf::from("../data/fx");
        b.resolve(&["embed"], "dir", &mut p);
        assert_eq!(p, PathBuf::from("/repo/data/fx"));
        let mut p = PathBuf::from("../data/fx");
        b.resolve(&["ingest"], "dir", &mut p);
        assert_eq!(p, normalize(&cwd.join("../data/fx")));
        let mut p = PathBuf::from("/abs/./y");
        b.resolve(&["embed"], "dir", &mut p);
        assert_eq!(p, PathBuf::from("/abs/y"));
        assert_eq!(b.store("../palstore-x"), "/repo/palstore-x");
        let rel = Bases::new(Path::new("x.yaml"), &[]);
        assert_eq!(rel.store("s"), cwd.join("s").to_string_lossy());
    }

    #[test]
    fn normalize_folds_dots_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/..")), PathBuf::from("/"));
        assert_eq!(normalize(Path::new("../a")), PathBuf::from("../a"));
    }
}
