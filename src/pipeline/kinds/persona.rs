//! The `persona` kind: Anthropic persona statements (`crate::ingest::persona`) as the PAL
//! paper's Persona dataset. Reads one JSONL file per persona (named by its stem, see the
//! ingest module); owns its dataset's pairs and users. A persona with no file in an existing
//! folder is a parameter error before any work, listing what the folder holds.

use std::path::PathBuf;

use super::{
    ingest_in_memory, keyed_inputs, KindInfo, ParamIssue, PathResolver, RunFuture, Scope, StageCtx,
    StageKind,
};
use crate::ingest::persona::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "persona",
    "Anthropic persona statement files (<stem>.jsonl) as users",
    "dir: ../shared/data/persona\npersonas: [art, math]\nusers_per_persona: 2\nqueries_per_user: 6\nunseen_users_per_persona: 1\nunseen_queries_per_user: 4\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        keyed_inputs("dir", persona::input_files(self))
    }

    fn check(&self) -> Result<(), ParamIssue> {
        // A folder that is missing altogether is reported as a missing input instead.
        if self.dir.is_dir() {
            for name in &self.personas {
                if let Err(e) = persona::persona_file(&self.dir, name) {
                    return Err(ParamIssue::new("personas", e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        resolve("dir", &mut self.dir);
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn describe(&self) -> String {
        format!("personas {:?} from {}", self.personas, self.dir.display())
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        ingest_in_memory(ctx, self, &self.dataset, persona::ingest)
    }
}
