//! The `embed` kind: fills the content-addressed embedding cache (`crate::pipeline::embed_stage`
//! holds the cache and the encoders' loading, shared with `palpipe embed`). Reads `items`
//! and `prompts` and the model folder; `embeddings` is shared and append-only, so it owns
//! no rows.

use std::path::PathBuf;

use super::{KindInfo, ParamIssue, PathResolver, RunFuture, Scope, StageCtx, StageKind};
use crate::embed as encoders;
use crate::pipeline::embed_stage::{embed_texts, EmbedParams};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<EmbedParams>(
    "embed",
    "vectors of texts, prompts and (clip) images, cached by content and encoder",
    "encoder: clip\nmodel_dir: ../tests/fixtures/tiny_clip\ntargets: [items, prompts]\nwhere: \"source = 'pickapic'\"\nbatch_size: 8\nmax_length: 77\ndevice: cpu\nchunk: 256\n",
);

impl StageKind for EmbedParams {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        let name = self.model_name();
        let dir = match &self.model_dir {
            Some(d) => d.clone(),
            None => encoders::models_root(name)
                .map(|r| r.join(name))
                .unwrap_or_else(|_| PathBuf::from(name)),
        };
        let key = if self.model_dir.is_some() {
            "model_dir"
        } else {
            "encoder"
        };
        vec![(key.to_string(), dir)]
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        if let Some(d) = self.model_dir.as_mut() {
            resolve("model_dir", d);
        }
    }

    fn missing_input_hint(&self, key: &str) -> Option<String> {
        (key == "encoder" && self.model_name() == encoders::MINILM_L6_V2).then(|| {
            "hint: run 'make setup' (it installs all-MiniLM-L6-v2), or set 'model_dir'".to_string()
        })
    }

    fn reads(&self) -> &'static [&'static str] {
        &["items", "prompts"]
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        Vec::new()
    }

    fn appends(&self) -> &'static [&'static str] {
        &["embeddings"]
    }

    fn describe(&self) -> String {
        let model = match (&self.model_dir, self.is_clip()) {
            (Some(d), true) => format!("clip ({})", d.display()),
            _ => self.model_name().to_string(),
        };
        format!("{model} over {} on {}", self.targets.join("+"), self.device)
    }

    fn check(&self) -> Result<(), ParamIssue> {
        EmbedParams::check(self)
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(embed(self, ctx))
    }
}

async fn embed(p: &EmbedParams, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let c = embed_texts(p, ctx.store, ctx.printer).await?;
    let mut line = format!(
        "{}: embedded {}{}, already cached {}",
        c.encoder_id,
        c.embedded,
        if c.images > 0 {
            format!(" ({} images)", c.images)
        } else {
            String::new()
        },
        c.cached,
    );
    if c.empty > 0 {
        line.push_str(&format!(", {} empty texts skipped", c.empty));
    }
    if let Some(f) = c.failed_line() {
        line.push_str(&format!(", {f}"));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_names_the_encoder_key() {
        let v: serde_yaml::Value = serde_yaml::from_str("encoder: clip").unwrap();
        let p: super::EmbedParams = serde_yaml::from_value(v).unwrap();
        assert_eq!(p.check().unwrap_err().key, "encoder");
    }
}
