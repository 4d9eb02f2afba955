//! Enrolling a new user into a served model: their comparisons in, their fitted mixture (and
//! with the `offset` estimator their offset δ of the ideal point) out, stored in the
//! `enrollments` table so that `score` and `serve` know them from then on.
//!
//! Owns: the comparison input format ([`parse_comparisons`]: JSON lines
//! `{"prompt": …, "chosen": …, "rejected": …}`, each value a text, an image path or
//! `{"id": …}` as for scoring; an optional `"weight"`), the held-out split, and
//! [`Scorer::enroll`]. The fit itself is [`crate::pal::fit_enrolled_user`] (f, g_k or P and τ
//! frozen; only the user's K logits move, and δ with `offset`).
//! With at least [`MIN_FOR_HELD_OUT`] comparisons, a fifth of them (at least 2, chosen by a
//! seeded shuffle) is held out: a fit on the rest scores them, and that accuracy is reported;
//! the stored logits are then fitted on every comparison. The held-out comparisons never take
//! part in the fit they score. The base model's checkpoint is never rewritten; enrolling a
//! user again replaces their row (one commit).

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::error::{shown, ServeError};
use super::scorer::{relative_to, Content, Scorer, UserParams};
use crate::pal::{
    fit_enrolled_user, Comparison, ComparisonSet, Estimator, FewShotConfig, ScoreJob,
};
use crate::pipeline::pal_stages::{AutoChoice, ModelEntry};
use crate::store::batches::{self, EnrollmentRow};
use crate::store::sql_str;

/// Fewest comparisons for which a part is held out to measure accuracy.
pub const MIN_FOR_HELD_OUT: usize = 10;

/// One comparison of the user being enrolled: `chosen` preferred to `rejected`, with its
/// weight (`"weight"`, a positive finite number; 1.0 when absent), which weighs it in the fit
/// as a stored pair's `weight` weighs it in adaptation (weight 2: as if given twice).
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonInput {
    pub prompt: Option<Content>,
    pub chosen: Content,
    pub rejected: Content,
    pub weight: f32,
}

/// What an enrolment did.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollOutcome {
    pub model: String,
    pub user: String,
    /// The estimator that fitted them (`auto` resolved: see [`Scorer::enroll`]).
    pub estimator: Estimator,
    /// With `auto`: the model's `adapt:<users>` metric whose seen-user simulation chose the
    /// estimator, prior scale and ridge; absent when none is recorded (then `auto` is
    /// `empirical` with the settings given) or when an estimator was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_by: Option<String>,
    /// The prior scale of the fit (unused by `mle`).
    pub prior_scale: f64,
    /// `offset` only: the ridge strength λ of the fit ("inf" for ∞).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::pal::ridge_json::serialize"
    )]
    pub ridge: Option<f64>,
    /// The fitted logits W_i (K values) and their mixture w_i.
    pub logits: Vec<f32>,
    pub mixture: Vec<f64>,
    /// `offset` only: the user's offset δ of the ideal point (D values, see
    /// [`ScoreJob::offset`]) and its Euclidean norm; scoring adds it from then on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_norm: Option<f64>,
    /// Comparisons the stored fit used (all of them).
    pub comparisons: usize,
    /// Comparisons held out to measure accuracy (0 when too few were given).
    pub held_out: usize,
    /// Accuracy on the held-out comparisons of a fit on the others.
    pub held_out_accuracy: Option<f64>,
    /// Whether the user was enrolled before (their row was replaced).
    pub replaced: bool,
}

/// Reads comparisons from one JSON value each: `{"prompt"?, "chosen", "rejected", "weight"?}`. Strings
/// are image paths (relative to `base`) when `images`, texts otherwise. `what(i)` names
/// comparison `i` in errors (a line of a file, an index of a request).
pub fn parse_comparison(
    v: &serde_json::Value,
    images: bool,
    base: Option<&Path>,
    at: &str,
) -> Result<ComparisonInput, ServeError> {
    let obj = v.as_object().ok_or_else(|| {
        ServeError::bad(
            at,
            "must be an object {\"prompt\", \"chosen\", \"rejected\", \"weight\"} (prompt and weight optional)",
        )
    })?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "prompt" | "chosen" | "rejected" | "weight") {
            return Err(ServeError::bad(
                at,
                format!(
                    "unknown key '{}' (keys: prompt, chosen, rejected, weight)",
                    shown(k)
                ),
            ));
        }
    }
    let weight = match obj.get("weight") {
        None | Some(serde_json::Value::Null) => 1.0,
        Some(v) => {
            let w = v.as_f64().map(|x| x as f32);
            match w {
                Some(w) if w.is_finite() && w > 0.0 => w,
                _ => {
                    return Err(ServeError::bad(
                        format!("{at}: weight"),
                        format!(
                            "is {}, it must be a positive finite number (at most {:e})",
                            shown(&v.to_string()),
                            f32::MAX
                        ),
                    ))
                }
            }
        }
    };
    let field = |k: &str, images: bool| -> Result<Content, ServeError> {
        let v = obj
            .get(k)
            .ok_or_else(|| ServeError::bad(format!("{at}: {k}"), "is missing"))?;
        let c = Content::from_json(v, images, &format!("{at}: {k}"))?;
        Ok(match c {
            Content::Image(p) => Content::Image(relative_to(base, p)),
            other => other,
        })
    };
    let prompt = (super::scorer::given_prompt(obj.get("prompt")))
        .map(|_| field("prompt", false))
        .transpose()?;
    let (chosen, rejected) = (field("chosen", images)?, field("rejected", images)?);
    if chosen == rejected {
        return Err(ServeError::bad(
            at,
            "chosen and rejected are the same item; a comparison needs two different ones",
        ));
    }
    Ok(ComparisonInput {
        prompt,
        chosen,
        rejected,
        weight,
    })
}

/// Comparisons from JSON lines (blank lines skipped); errors name `source` and the line.
pub fn parse_comparisons(
    text: &str,
    images: bool,
    base: Option<&Path>,
    source: &str,
) -> Result<Vec<ComparisonInput>, ServeError> {
    let mut out = Vec::new();
    for (at, v) in super::json_lines(text, source)? {
        out.push(parse_comparison(&v, images, base, &at)?);
    }
    if out.is_empty() {
        return Err(ServeError::bad(source, "holds no comparisons"));
    }
    Ok(out)
}

impl Scorer {
    /// The settings an enrolment fits with: `cfg` itself for a named estimator; for `auto`,
    /// the estimator, prior scale and ridge that the seen-user simulation of `palpipe adapt`
    /// (or an `adapt` stage) with a `tune_split` chose for this model, read from the model's
    /// metrics now ([`AutoChoice::from_metrics`]), so that a new user is enrolled as
    /// adaptation fits them; `cfg` (whose `auto` fits as `empirical`) when none is recorded.
    async fn resolve_auto(
        &self,
        cfg: &FewShotConfig,
    ) -> Result<(FewShotConfig, Option<AutoChoice>), ServeError> {
        if cfg.estimator != Estimator::Auto {
            return Ok((cfg.clone(), None));
        }
        let entry = ModelEntry::find(self.store(), &self.name)
            .await
            .map_err(|e| ServeError::Internal(crate::store::messages::error_chain(&e)))?;
        let choice = entry
            .row
            .metrics_json
            .as_deref()
            .and_then(AutoChoice::from_metrics);
        match choice {
            Some(c) => {
                let resolved = c.apply(cfg);
                resolved.validate().map_err(|e| {
                    ServeError::Internal(format!(
                        "model '{}': the estimator settings recorded in its metric '{}' are not valid: {e}",
                        self.name, c.metric
                    ))
                })?;
                Ok((resolved, Some(c)))
            }
            None => Ok((cfg.clone(), None)),
        }
    }

    /// Fits `user`'s logits on `comps` and records them (see the module doc). With the
    /// estimator `auto`, the settings are those adaptation chose for the model by simulation
    /// when it has recorded them (`Scorer::resolve_auto`), `empirical` with `cfg`'s otherwise.
    pub async fn enroll(
        &self,
        user: &str,
        comps: &[ComparisonInput],
        cfg: &FewShotConfig,
    ) -> Result<EnrollOutcome, ServeError> {
        if user.is_empty() {
            return Err(ServeError::bad("user", "is empty"));
        }
        cfg.validate().map_err(ServeError::settings)?;
        let asked = cfg;
        let (resolved, choice) = self.resolve_auto(asked).await?;
        let cfg = &resolved;
        if self.model.user_row(user).is_some() {
            return Err(ServeError::bad(
                "user",
                format!(
                    "'{}' is a user model '{}' was trained on; enrolment is for new users\nhint: pick another id",
                    shown(user),
                    self.name
                ),
            ));
        }
        if comps.is_empty() {
            return Err(ServeError::bad("comparisons", "is empty"));
        }
        let dp = self.model.config().dp;
        if dp > 0 {
            if let Some(i) = comps.iter().position(|c| c.prompt.is_none()) {
                return Err(ServeError::bad(
                    format!("comparison {}", i + 1),
                    format!(
                        "has no prompt; model '{}' compares responses to a prompt",
                        self.name
                    ),
                ));
            }
        }
        // Vectors: items are chosen/rejected rows, prompts one row per comparison.
        let mut contents: Vec<&Content> = Vec::with_capacity(3 * comps.len());
        for c in comps {
            contents.push(&c.chosen);
            contents.push(&c.rejected);
            if dp > 0 {
                contents.push(c.prompt.as_ref().expect("checked above"));
            }
        }
        let (vectors, _) = self.vectors(&contents).await?;
        let per = if dp > 0 { 3 } else { 2 };
        let mut items = Vec::with_capacity(2 * comps.len() * self.model.config().dx);
        let mut prompts = Vec::new();
        for c in vectors.chunks(per) {
            items.extend_from_slice(&c[0]);
            items.extend_from_slice(&c[1]);
            if dp > 0 {
                prompts.extend_from_slice(&c[2]);
            }
        }
        let set_of = |idx: &[usize]| -> Result<ComparisonSet, ServeError> {
            let comps = idx
                .iter()
                .map(|&i| Comparison {
                    user: 0,
                    prompt: (dp > 0).then_some(i as u32),
                    left: 2 * i as u32,
                    right: 2 * i as u32 + 1,
                    y: -1,
                    weight: crate::pal::Weight(comps[i].weight),
                })
                .collect();
            Ok(ComparisonSet::new(
                self.model.config().dx,
                dp,
                items.clone(),
                prompts.clone(),
                vec![user.to_string()],
                comps,
            )?)
        };
        // The fits are CPU work: run them where they do not hold up the runtime's other
        // tasks (a server's scoring and health checks go on meanwhile).
        let n = comps.len();
        let (held_out, held_out_accuracy, fit, mixture) =
            tokio::task::block_in_place(|| -> Result<_, ServeError> {
                let all: Vec<usize> = (0..n).collect();
                let (held_out, held_out_accuracy) = if n >= MIN_FOR_HELD_OUT {
                    let mut order = all.clone();
                    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
                    let h = (n / 5).max(2);
                    let (held, fit): (Vec<usize>, Vec<usize>) =
                        (order[..h].to_vec(), order[h..].to_vec());
                    let fit_set = set_of(&fit)?;
                    let model = &self.model;
                    let part = fit_enrolled_user(model, &fit_set, cfg)?;
                    let w = model.mixture_of_logits(&part.logits)?;
                    let mut correct = 0usize;
                    for &i in &held {
                        let job = ScoreJob {
                            mixture: &w,
                            offset: part.offset.as_deref(),
                            prompt: (dp > 0).then(|| vectors[per * i + 2].as_slice()),
                            candidates: vec![
                                vectors[per * i].as_slice(),
                                vectors[per * i + 1].as_slice(),
                            ],
                        };
                        let r = model.score_batch(&[job])?;
                        if r[0][0] > r[0][1] {
                            correct += 1;
                        }
                    }
                    (h, Some(correct as f64 / h as f64))
                } else {
                    (0, None)
                };
                let fit = fit_enrolled_user(&self.model, &set_of(&all)?, cfg)?;
                let mixture = self.model.mixture_of_logits(&fit.logits)?;
                Ok((held_out, held_out_accuracy, fit, mixture))
            })?;

        let mut h = blake3::Hasher::new();
        for c in &contents {
            h.update(format!("{c:?}").as_bytes());
            h.update(&[0]);
        }
        // Weights other than 1.0 change the fit; without them the fingerprint is as before.
        if comps.iter().any(|c| c.weight != 1.0) {
            for c in comps {
                h.update(&c.weight.to_le_bytes());
            }
        }
        h.update(
            format!(
                "{}:{}:{}:{}",
                asked.estimator, asked.prior_scale, asked.steps, asked.lr
            )
            .as_bytes(),
        );
        // The ridge changes only `offset`'s fit, and a seed other than the default the draws
        // and the held-out part; otherwise the fingerprint is as before.
        if asked.estimator == Estimator::Offset {
            h.update(format!(":ridge {}", asked.ridge).as_bytes());
        }
        // `auto` resolved by a recorded simulation: the settings it resolved to.
        if choice.is_some() {
            h.update(
                format!(":auto {}:{}:{}", cfg.estimator, cfg.prior_scale, cfg.steps).as_bytes(),
            );
            if cfg.estimator == Estimator::Offset {
                h.update(format!(":ridge {}", cfg.ridge).as_bytes());
            }
        }
        if cfg.seed != 0 {
            h.update(format!(":seed {}", cfg.seed).as_bytes());
        }
        let json =
            |v: &[f32]| serde_json::to_string(v).map_err(|e| ServeError::Internal(e.to_string()));
        let row = EnrollmentRow {
            model: self.name.clone(),
            user_id: user.to_string(),
            logits_json: json(&fit.logits)?,
            offset_json: fit.offset.as_deref().map(json).transpose()?,
            comparisons: n as i32,
            held_out: held_out as i32,
            held_out_accuracy,
            fingerprint: h.finalize().to_hex().to_string(),
            created_ms: crate::store::now_ms(),
        };
        let pred = format!(
            "model = {} AND user_id = {}",
            sql_str(&self.name),
            sql_str(user)
        );
        let replaced = {
            let _lock = self
                .store()
                .lock()
                .map_err(|e| ServeError::Busy(e.to_string()))?;
            let replaced = self
                .store()
                .count("enrollments", Some(pred.clone()))
                .await?
                > 0;
            self.store()
                .replace_where("enrollments", &pred, batches::enrollments(&[row])?)
                .await?;
            replaced
        };
        self.set_enrolled(
            user,
            UserParams {
                mixture: mixture.clone(),
                offset: fit.offset.clone(),
            },
        );
        let offset_norm = fit.offset.as_ref().map(|o| {
            o.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
        });
        Ok(EnrollOutcome {
            model: self.name.clone(),
            user: user.to_string(),
            estimator: fit.estimator,
            chosen_by: choice.map(|c| c.metric),
            prior_scale: cfg.prior_scale,
            ridge: (fit.estimator == Estimator::Offset).then_some(cfg.ridge),
            logits: fit.logits,
            mixture,
            offset: fit.offset,
            offset_norm,
            comparisons: n,
            held_out,
            held_out_accuracy,
            replaced,
        })
    }
}
