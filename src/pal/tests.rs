//! Tests of the PAL heads as a whole: gradients against finite differences, losses and modes,
//! reproducibility, checkpoints, masking of absent users, scoring, and accuracy on a small
//! ideal-point simulation (paper App. C.2 / D.2). Unit tests of single pieces live beside them.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::model::{rng, stream};
use super::*;

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Ideal-point data: items and K* prototypes ~ N(0, I/d) (prototypes ≥ δ = 1 apart), a random
/// linear map f*, users in partition (user u on prototype u mod K*), and a user prefers the item
/// whose f*-image is closer to f*(a_u). Returns (train, test) with `n_train` / `n_test`
/// comparisons per user, over a shared pool of items.
fn ideal_points(
    n_users: usize,
    n_train: usize,
    n_test: usize,
    k_star: usize,
    seed: u64,
) -> (ComparisonSet, ComparisonSet) {
    let d = 2;
    let sd = (1.0 / d as f64).sqrt();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let normal = |r: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(r) };
    let f_star: Vec<f64> = (0..d * d).map(|_| normal(&mut r)).collect();
    let apply = |x: &[f64]| -> Vec<f64> {
        (0..d)
            .map(|i| (0..d).map(|j| f_star[i * d + j] * x[j]).sum())
            .collect()
    };
    let mut protos: Vec<Vec<f64>> = Vec::new();
    while protos.len() < k_star {
        let p: Vec<f64> = (0..d).map(|_| sd * normal(&mut r)).collect();
        if protos.iter().all(|q| {
            q.iter()
                .zip(&p)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
                >= 1.0
        }) {
            protos.push(p);
        }
    }
    let n_items = 2000;
    let items: Vec<Vec<f64>> = (0..n_items)
        .map(|_| (0..d).map(|_| sd * normal(&mut r)).collect())
        .collect();
    let f_items: Vec<Vec<f64>> = items.iter().map(|x| apply(x)).collect();
    let flat: Vec<f32> = items.iter().flatten().map(|&v| v as f32).collect();
    let user_ids: Vec<String> = (0..n_users).map(|u| format!("user{u:03}")).collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for u in 0..n_users {
        let fa = apply(&protos[u % k_star]);
        let dist = |i: usize| {
            f_items[i]
                .iter()
                .zip(&fa)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        };
        for j in 0..n_train + n_test {
            let (l, rr) = loop {
                let (a, b) = (r.random_range(0..n_items), r.random_range(0..n_items));
                if a != b {
                    break (a, b);
                }
            };
            let y = if dist(l) < dist(rr) { -1 } else { 1 };
            let c = Comparison {
                user: u as u32,
                prompt: None,
                left: l as u32,
                right: rr as u32,
                y,
                weight: crate::pal::Weight::ONE,
            };
            if j < n_train {
                train.push(c)
            } else {
                test.push(c)
            }
        }
    }
    let set = |comps| ComparisonSet {
        dx: d,
        dp: 0,
        items: flat.clone(),
        prompts: vec![],
        user_ids: user_ids.clone(),
        comps,
    };
    (set(train), set(test))
}

/// Random data with context: `n_users` users, prompts and items in small dims, random labels
/// from a hidden per-user linear reward so that a model can learn something.
fn with_context(n_users: usize, n_comps: usize, dx: usize, dp: usize, seed: u64) -> ComparisonSet {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let n_items = 40;
    let n_prompts = 8;
    let items: Vec<f32> = (0..n_items * dx)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let prompts: Vec<f32> = (0..n_prompts * dp)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let dirs: Vec<f32> = (0..n_users * dx)
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let comps = (0..n_comps)
        .map(|i| {
            let user = (i % n_users) as u32;
            let (left, right) = (
                r.random_range(0..n_items) as u32,
                r.random_range(0..n_items) as u32,
            );
            let score = |it: u32| -> f32 {
                (0..dx)
                    .map(|j| items[it as usize * dx + j] * dirs[user as usize * dx + j])
                    .sum()
            };
            let y = if score(left) >= score(right) { -1 } else { 1 };
            Comparison {
                user,
                prompt: (dp > 0).then(|| r.random_range(0..n_prompts) as u32),
                left,
                right,
                y,
                weight: crate::pal::Weight::ONE,
            }
        })
        .collect();
    ComparisonSet {
        dx,
        dp,
        items,
        prompts,
        user_ids: (0..n_users).map(|u| format!("u{u}")).collect(),
        comps,
    }
}

fn all_values(model: &PalModel) -> Vec<(String, Vec<u32>)> {
    model
        .params()
        .iter()
        .map(|p| {
            let v: Vec<f32> = p
                .var
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (p.name.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn quick(epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        seed,
        ..TrainConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------------

/// Batch loss of `model` on all of `set` in training mode without dropout (the archs here have
/// none), as a scalar tensor.
fn full_loss(model: &PalModel, set: &ComparisonSet) -> Tensor {
    let idx: Vec<usize> = (0..set.comps.len()).collect();
    let batch = model.gather(set, &idx, &|u| u).unwrap();
    let users = Tensor::new(batch.users.as_slice(), &model.device).unwrap();
    let w = model
        .train_mixture(&model.logits.as_tensor().index_select(&users, 0).unwrap())
        .unwrap();
    let mut r = rng(0, stream::DROPOUT);
    let (m, pen) = model.margins(&batch, &w, Some(&mut r)).unwrap();
    let t = loss::agreement(&m, &batch.y).unwrap();
    let l = loss::per_comparison(model.cfg.loss, &t)
        .unwrap()
        .mean_all()
        .unwrap();
    match pen {
        Some(p) => (l + p).unwrap(),
        None => l,
    }
}

fn gradient_check(cfg: ModelConfig, set: &ComparisonSet) {
    let mut cfg = cfg;
    cfg.resolve_dims(set.dx, set.dp).unwrap();
    let model = PalModel::new(cfg, set.user_ids.clone(), 11, DType::F64).unwrap();
    let grads = full_loss(&model, set).backward().unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for p in model.params() {
        let g: Vec<f64> = grads
            .get(p.var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = p.var.as_tensor().shape().clone();
        let n = base.len();
        for &i in &[0, n / 2, n - 1] {
            let eval_at = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[i] += delta;
                p.var
                    .set(&Tensor::from_vec(v, shape.clone(), &model.device).unwrap())
                    .unwrap();
                let l = full_loss(&model, set).to_scalar::<f64>().unwrap();
                p.var
                    .set(&Tensor::from_vec(base.clone(), shape.clone(), &model.device).unwrap())
                    .unwrap();
                l
            };
            let fd = (eval_at(h) - eval_at(-h)) / (2.0 * h);
            let err = (fd - g[i]).abs() / (1e-6 + fd.abs().max(g[i].abs()));
            assert!(
                err < 1e-4,
                "{} [{i}]: backward {} vs finite difference {fd} (rel err {err:e})",
                p.name,
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 9);
}

#[test]
fn gradients_match_finite_differences_pal_b_with_context() {
    let set = with_context(3, 24, 5, 4, 1);
    let cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 3,
        item_arch: "mlp1-gelu-dropout0".parse().unwrap(),
        prototype_arch: "mlp1-gelu-dropout0".parse().unwrap(),
        // ub small so the penalty is active
        norm_bound: Some(NormBound {
            ub: 0.05,
            lambda: 1.0,
        }),
        ..ModelConfig::default()
    };
    gradient_check(cfg, &set);
}

#[test]
fn gradients_match_finite_differences_pal_a() {
    let set = with_context(3, 24, 3, 2, 2);
    for (distance, loss) in [
        (Distance::Squared, LossKind::Logistic),
        (Distance::Plain, LossKind::SmoothHinge),
    ] {
        let cfg = ModelConfig {
            kind: ModelKind::PalA,
            k: 3,
            d: 4,
            item_arch: "mlp1-gelu-dropout0".parse().unwrap(),
            distance,
            loss,
            ..ModelConfig::default()
        };
        gradient_check(cfg, &set);
    }
}

// ---------------------------------------------------------------------------------------------
// Training behaviour
// ---------------------------------------------------------------------------------------------

#[test]
fn every_loss_and_mode_decreases_the_training_loss() {
    let set = with_context(6, 300, 4, 0, 3);
    for kind in [ModelKind::PalA, ModelKind::PalB] {
        for loss in [LossKind::Logistic, LossKind::Hinge, LossKind::SmoothHinge] {
            for mode in [Mode::Mixture, Mode::Partition] {
                let cfg = ModelConfig {
                    kind,
                    k: 2,
                    d: 4,
                    loss,
                    mode,
                    ..ModelConfig::default()
                };
                let (_, report) = train(&cfg, &quick(8, 5), &set, None, &mut |_| {}).unwrap();
                let first = report.epochs.first().unwrap().train_loss;
                let last = report.epochs.last().unwrap().train_loss;
                assert!(
                    last < first * 0.9,
                    "{kind:?} {loss:?} {mode:?}: {first} → {last}"
                );
            }
        }
    }
}

#[test]
fn same_seed_gives_bit_identical_weights() {
    let set = with_context(5, 200, 4, 3, 4);
    let cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 6,
        item_arch: "mlp2-relu-dropout25".parse().unwrap(),
        prototype_arch: "mlp1-gelu-dropout5".parse().unwrap(),
        ..ModelConfig::default()
    };
    let run = |seed| {
        let (m, r) = train(&cfg, &quick(3, seed), &set, Some(&set), &mut |_| {}).unwrap();
        (all_values(&m), r.epochs)
    };
    let (a, ha) = run(9);
    let (b, hb) = run(9);
    assert_eq!(a, b);
    assert_eq!(ha, hb);
    let (c, _) = run(10);
    assert_ne!(a, c);
}

#[test]
fn absent_users_keep_their_initial_logits() {
    let mut set = with_context(4, 120, 3, 0, 5);
    set.user_ids.push("ghost".into()); // row 4, no comparisons
    let cfg = ModelConfig {
        kind: ModelKind::PalA,
        k: 3,
        d: 3,
        ..ModelConfig::default()
    };
    let tc = TrainConfig {
        user_logits: GroupConfig {
            lr: 0.1,
            weight_decay: 0.1,
        },
        ..quick(3, 6)
    };
    let (trained, _) = train(&cfg, &tc, &set, None, &mut |_| {}).unwrap();
    let mut rc = cfg.clone();
    rc.resolve_dims(3, 0).unwrap();
    let fresh = PalModel::new(rc, set.user_ids.clone(), 6, DType::F32).unwrap();
    let row = |m: &PalModel, r: usize| {
        m.logits
            .as_tensor()
            .get(r)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(row(&trained, 4), row(&fresh, 4));
    assert_ne!(row(&trained, 0), row(&fresh, 0));
}

#[test]
fn dp_zero_and_dp_positive_both_train_and_score() {
    for (kind, dp) in [
        (ModelKind::PalB, 0),
        (ModelKind::PalB, 3),
        (ModelKind::PalA, 0),
        (ModelKind::PalA, 3),
    ] {
        let set = with_context(4, 160, 4, dp, 7);
        let cfg = ModelConfig {
            kind,
            k: 2,
            d: 4,
            ..ModelConfig::default()
        };
        let (model, _) = train(&cfg, &quick(2, 1), &set, None, &mut |_| {}).unwrap();
        let prompt = (dp > 0).then(|| set.prompt(0).to_vec());
        let s = model
            .score("u0", prompt.as_deref(), &[set.item(0), set.item(1)])
            .unwrap();
        assert_eq!(s.len(), 2);
        // wrong prompt presence is a dimension error
        let bad = if dp > 0 { None } else { Some(&[0.0f32][..]) };
        assert!(model.score("u0", bad, &[set.item(0)]).is_err());
    }
}

#[test]
fn save_and_load_give_identical_scores() {
    let set = with_context(4, 160, 4, 3, 8);
    let cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 5,
        mode: Mode::Partition,
        ..ModelConfig::default()
    };
    let (mut model, _) = train(&cfg, &quick(2, 2), &set, None, &mut |_| {}).unwrap();
    model.info.encoder_id = Some("test-encoder".into());
    model
        .info
        .metrics
        .insert("accuracy".into(), serde_json::json!(0.5));
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = PalModel::load(dir.path()).unwrap();
    assert_eq!(back.card(), model.card());
    assert_eq!(all_values(&back), all_values(&model));
    let cands = [set.item(0), set.item(1), set.item(2)];
    for user in ["u0", "u3", "nobody"] {
        assert_eq!(
            back.score(user, Some(set.prompt(1)), &cands).unwrap(),
            model.score(user, Some(set.prompt(1)), &cands).unwrap()
        );
    }
    let ea = evaluate(&model, &set, &EvalOptions::default()).unwrap();
    let eb = evaluate(&back, &set, &EvalOptions::default()).unwrap();
    assert_eq!(ea.outcomes, eb.outcomes);
    // a broken card is a checkpoint error naming the folder
    std::fs::write(dir.path().join(CARD_FILE), "{}").unwrap();
    let e = PalModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("card.json") && e.contains("does not parse"),
        "{e}"
    );
}

#[test]
fn score_agrees_with_evaluation_margins_and_unknown_users_get_the_mean_mixture() {
    let set = with_context(3, 90, 3, 2, 9);
    let cfg = ModelConfig {
        kind: ModelKind::PalA,
        k: 2,
        d: 3,
        ..ModelConfig::default()
    };
    let (model, _) = train(&cfg, &quick(2, 3), &set, None, &mut |_| {}).unwrap();
    let (margins, known) = model.margins_for(&set).unwrap();
    assert!(known.iter().all(|&k| k));
    for (i, c) in set.comps.iter().take(10).enumerate() {
        let user = &set.user_ids[c.user as usize];
        let s = model
            .score(
                user,
                Some(set.prompt(c.prompt.unwrap())),
                &[set.item(c.left), set.item(c.right)],
            )
            .unwrap();
        assert!(
            (s[0] - s[1] - margins[i]).abs() < 1e-4,
            "{} vs {}",
            s[0] - s[1],
            margins[i]
        );
    }
    let mean = model.zero_shot_mixture().unwrap();
    assert_eq!(model.mixture("stranger").unwrap(), mean);
    let ws: Vec<Vec<f64>> = set
        .user_ids
        .iter()
        .map(|u| model.mixture(u).unwrap())
        .collect();
    for k in 0..2 {
        let m = ws.iter().map(|w| w[k]).sum::<f64>() / ws.len() as f64;
        assert!((m - mean[k]).abs() < 1e-6);
    }
    let p = set.prompt(0);
    assert_eq!(
        model.score("stranger", Some(p), &[set.item(0)]).unwrap(),
        model.score_mixture(&mean, Some(p), &[set.item(0)]).unwrap()
    );
}

#[test]
fn validation_set_picks_the_checkpoint() {
    let (train_set, test_set) = ideal_points(30, 20, 10, 3, 21);
    let cfg = ModelConfig {
        kind: ModelKind::PalA,
        k: 3,
        ..ModelConfig::default()
    };
    let (model, report) =
        train(&cfg, &quick(6, 4), &train_set, Some(&test_set), &mut |_| {}).unwrap();
    let best = report
        .epochs
        .iter()
        .map(|e| e.val_loss.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(report.best_val_loss, Some(best));
    assert!((mean_loss(&model, &test_set).unwrap() - best).abs() < 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Accuracy on the ideal-point simulation
// ---------------------------------------------------------------------------------------------

#[test]
fn pal_a_k3_beats_k1_on_ideal_points() {
    let (train_set, test_set) = ideal_points(100, 50, 50, 3, 42);
    let acc = |k: usize| {
        let cfg = ModelConfig {
            kind: ModelKind::PalA,
            k,
            ..ModelConfig::default()
        };
        let t0 = std::time::Instant::now();
        let (model, _) =
            train(&cfg, &TrainConfig::default(), &train_set, None, &mut |_| {}).unwrap();
        let r = evaluate(&model, &test_set, &EvalOptions::default()).unwrap();
        eprintln!(
            "PAL-A K={k}: accuracy {:.4} (per-user mean {:.4} ± {:.4}) in {:.1}s",
            r.accuracy,
            r.per_user.mean,
            r.per_user.std,
            t0.elapsed().as_secs_f64()
        );
        (model, r)
    };
    let (model3, r3) = acc(3);
    let (_, r1) = acc(1);
    assert!(r3.accuracy >= 0.90, "K=3 accuracy {}", r3.accuracy);
    assert!(
        r3.accuracy - r1.accuracy >= 0.10,
        "K=3 {} vs K=1 {}",
        r3.accuracy,
        r1.accuracy
    );
    let mix = r3.mixture.unwrap();
    assert_eq!(mix.k, 3);
    assert!(r1.mixture.is_none());

    // Unseen users: same prototypes, new users; 40 shots within 5 points of seen accuracy.
    let (_, unseen) = ideal_points(130, 0, 100, 3, 42);
    let unseen = ComparisonSet {
        user_ids: unseen.user_ids[100..].to_vec(),
        comps: unseen
            .comps
            .iter()
            .filter(|c| c.user >= 100)
            .map(|c| Comparison {
                user: c.user - 100,
                ..*c
            })
            .collect(),
        ..unseen
    };
    let curve = few_shot_curve(
        &model3,
        &unseen,
        &[0, 10, 40],
        &FewShotConfig::default(),
        &EvalOptions::default(),
    )
    .unwrap();
    let at = |i: usize| curve.points[i].adapted.accuracy;
    eprintln!(
        "seen {:.4}; unseen zero-shot {:.4}, 10 shots {:.4}, 40 shots {:.4}, oracle {:.4}",
        r3.accuracy,
        curve.zero_shot.accuracy,
        at(1),
        at(2),
        curve.oracle.accuracy
    );
    // 100 comparisons per user: 50 queries each, scored at every N.
    assert_eq!(curve.user_ids.len(), 30);
    assert!(curve.excluded_users.is_empty());
    assert_eq!(curve.queries, 30 * 50);
    for p in &curve.points {
        assert_eq!(p.adapted.n, 30 * 50);
    }
    assert_eq!(curve.points[0].adapted, curve.zero_shot);
    assert!(
        at(2) >= r3.accuracy - 0.05,
        "few-shot {} vs seen {}",
        at(2),
        r3.accuracy
    );
    assert!(at(2) > curve.zero_shot.accuracy);
}

/// A trained PAL-B model without context (K = 2, dx = 4) and a pool of 400 random items.
fn small_pal_b() -> (PalModel, Vec<Vec<f32>>) {
    let set = with_context(6, 600, 4, 0, 11);
    let cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 4,
        ..ModelConfig::default()
    };
    let (model, _) = train(&cfg, &quick(3, 2), &set, None, &mut |_| {}).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(5);
    let items = (0..400)
        .map(|_| (0..4).map(|_| r.random_range(-1.0f32..1.0)).collect())
        .collect();
    (model, items)
}

/// `n` comparisons of one user whose mixture is `w`: labels drawn from the model's own
/// Bradley–Terry probability σ(r(x_l) − r(x_r)) under `w` (the model is the truth here).
fn comparisons_of(
    model: &PalModel,
    items: &[Vec<f32>],
    w: &[f64],
    n: usize,
    seed: u64,
) -> ComparisonSet {
    let refs: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
    let rew = model.score_mixture(w, None, &refs).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let comps = (0..n)
        .map(|_| {
            let (l, rr) = loop {
                let (a, b) = (
                    r.random_range(0..items.len()),
                    r.random_range(0..items.len()),
                );
                if a != b {
                    break (a, b);
                }
            };
            let p_left = 1.0 / (1.0 + (-(rew[l] - rew[rr]) as f64).exp());
            let y = if r.random::<f64>() < p_left { -1 } else { 1 };
            Comparison {
                user: 0,
                prompt: None,
                left: l as u32,
                right: rr as u32,
                y,
                weight: crate::pal::Weight::ONE,
            }
        })
        .collect();
    ComparisonSet {
        dx: 4,
        dp: 0,
        items: items.iter().flatten().copied().collect(),
        prompts: Vec::new(),
        user_ids: vec!["new".into()],
        comps,
    }
}

fn mixture_of(model: &PalModel, logits: &[f32]) -> Vec<f64> {
    let t = model.cfg.temperature;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn map_and_posterior_converge_to_the_true_mixture_and_start_at_zero_shot() {
    let (model, items) = small_pal_b();
    let zero = model.zero_shot_mixture().unwrap();
    let truth = [0.85, 0.15];
    for est in [Estimator::Map, Estimator::Posterior, Estimator::Empirical] {
        let cfg = FewShotConfig {
            estimator: est,
            ..FewShotConfig::default()
        };
        // No comparison: the zero-shot mixture (up to the f32 logits).
        let empty = comparisons_of(&model, &items, &truth, 0, 1);
        let w0 = mixture_of(&model, &fit_new_user(&model, &empty, &cfg).unwrap());
        for (a, b) in w0.iter().zip(&zero) {
            assert!(
                (a - b).abs() < 1e-5,
                "{est}: 0 shots {w0:?} vs zero-shot {zero:?}"
            );
        }
        let err = |n: usize| {
            let set = comparisons_of(&model, &items, &truth, n, 7);
            let w = mixture_of(&model, &fit_new_user(&model, &set, &cfg).unwrap());
            (w[0] - truth[0]).abs()
        };
        // The empirical prior puts 0.9 of its mass near the six seen users' mixtures, so at
        // 2,000 comparisons (w still loosely identified here: map is 0.22 off at 50) it may
        // sit on the nearest atom; 20,000 leave no doubt.
        let errs: Vec<f64> = [5, 50, 2000, 20000].iter().map(|&n| err(n)).collect();
        eprintln!(
            "{est}: |w - w*| at 5, 50, 2,000, 20,000 comparisons: {errs:?} (zero-shot {zero:?})"
        );
        assert!(errs[3] < 0.05, "{est}: {errs:?}");
        assert!(errs[3] < errs[0], "{est}: {errs:?}");
        assert!(errs[3] < (zero[0] - truth[0]).abs(), "{est}: {errs:?}");
        if est != Estimator::Empirical {
            assert!(errs[2] < 0.05, "{est}: {errs:?}");
        }
    }
}

#[test]
fn curve_scores_every_n_on_the_same_queries_and_counts_exclusions() {
    let (model, items) = small_pal_b();
    // Four users with 30, 25, 12 and 40 comparisons; shots up to 10. Queries per user:
    // max(⌈n/2⌉, 10) = 15, 13, 10, 20; the user with 12 lacks 10 + 10 and is excluded.
    let counts = [30usize, 25, 12, 40];
    let mut set = comparisons_of(&model, &items, &[0.3, 0.7], 0, 1);
    set.user_ids = (0..4).map(|u| format!("n{u}")).collect();
    for (u, &c) in counts.iter().enumerate() {
        let one = comparisons_of(&model, &items, &[0.3, 0.7], c, 20 + u as u64);
        set.comps.extend(one.comps.into_iter().map(|x| Comparison {
            user: u as u32,
            ..x
        }));
    }
    for est in [
        Estimator::Map,
        Estimator::Posterior,
        Estimator::Empirical,
        Estimator::Mle,
    ] {
        let cfg = FewShotConfig {
            estimator: est,
            ..FewShotConfig::default()
        };
        let c =
            few_shot_curve(&model, &set, &[0, 1, 5, 10], &cfg, &EvalOptions::default()).unwrap();
        assert_eq!(c.excluded_users, vec!["n2".to_string()]);
        assert_eq!(c.user_ids, vec!["n0", "n1", "n3"]);
        assert_eq!(c.queries, 15 + 13 + 20);
        for p in &c.points {
            assert_eq!(p.adapted.n, 48, "{est} at {}", p.shots);
        }
        assert_eq!(c.points[0].adapted, c.zero_shot);
        assert_eq!(c.oracle.n, 48);
    }
    // Nobody has enough comparisons for 40 shots: a data error naming the need.
    let e = few_shot_curve(
        &model,
        &set,
        &[40],
        &FewShotConfig::default(),
        &EvalOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("40 shots") && e.contains("hint:"), "{e}");
    // A shot count at the top of the range is the same data error, not an overflow.
    let e = few_shot_curve(
        &model,
        &set,
        &[usize::MAX],
        &FewShotConfig::default(),
        &EvalOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("{} shots", usize::MAX)), "{e}");
}

#[test]
fn heldout_oracle_is_the_mle_fit_on_every_non_query_comparison() {
    let (model, items) = small_pal_b();
    // Three users with 30 comparisons each: 15 queries and 15 others, so 15 shots are every
    // comparison but the queries, and `mle` at 15 shots (with the oracle's 600 steps) is the
    // held-out oracle's fit.
    let mut set = comparisons_of(&model, &items, &[0.3, 0.7], 0, 1);
    set.user_ids = (0..3).map(|u| format!("n{u}")).collect();
    for (u, w) in [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]].iter().enumerate() {
        let one = comparisons_of(&model, &items, w, 30, 60 + u as u64);
        set.comps.extend(one.comps.into_iter().map(|x| Comparison {
            user: u as u32,
            ..x
        }));
    }
    let cfg = FewShotConfig {
        estimator: Estimator::Mle,
        steps: 600,
        ..FewShotConfig::default()
    };
    let c = few_shot_curve(&model, &set, &[0, 5, 15], &cfg, &EvalOptions::default()).unwrap();
    assert_eq!(c.queries, 45);
    assert_eq!(c.heldout_oracle.n, 45);
    assert_eq!(c.heldout_oracle, c.points[2].adapted);
    // The curve's estimator (here mle, with the oracle's steps) on the same comparisons.
    assert_eq!(c.heldout_estimator, c.heldout_oracle);
    // With fewer shots the fit differs: the held-out oracle is not just another name for a
    // point of the curve.
    assert_ne!(c.points[1].logits, c.points[2].logits);
}

/// The small model with its six seen users set to two sharp groups: users 0-2 on w = (0.95,
/// 0.05) ("a"), users 3-5 on (0.05, 0.95) ("b").
fn two_group_model() -> (PalModel, Vec<Vec<f32>>, [Vec<f64>; 2]) {
    let (model, items) = small_pal_b();
    let t = model.cfg.temperature;
    let wa: Vec<f64> = vec![0.95, 0.05];
    let wb: Vec<f64> = vec![0.05, 0.95];
    let rows: Vec<f64> = (0..6)
        .flat_map(|u| {
            let w = if u < 3 { &wa } else { &wb };
            w.iter().map(|x| t * x.ln()).collect::<Vec<f64>>()
        })
        .collect();
    let l = Tensor::from_vec(rows, (6, 2), &model.device)
        .unwrap()
        .to_dtype(model.dtype)
        .unwrap();
    model.logits.set(&l).unwrap();
    (model, items, [wa, wb])
}

#[test]
fn group_bound_knows_the_groups_and_starts_at_zero_shot() {
    let (model, items, means) = two_group_model();
    let mut groups = std::collections::BTreeMap::new();
    for (u, id) in model.user_ids().iter().enumerate() {
        groups.insert(id.clone(), if u < 3 { "a" } else { "b" }.to_string());
    }
    // Eight new users, four per group, each answering 100 comparisons exactly as their group's
    // mixture ranks the two items (no noise; near-ties left out).
    let refs: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
    let mut set = comparisons_of(&model, &items, &means[0], 0, 1);
    set.user_ids = (0..8).map(|u| format!("n{u}")).collect();
    let mut r = ChaCha8Rng::seed_from_u64(9);
    for u in 0..8u32 {
        let g = (u / 4) as usize;
        groups.insert(format!("n{u}"), ["a", "b"][g].to_string());
        let rew = model.score_mixture(&means[g], None, &refs).unwrap();
        let mut made = 0;
        while made < 100 {
            let (a, b) = (
                r.random_range(0..items.len()),
                r.random_range(0..items.len()),
            );
            if a == b || (rew[a] - rew[b]).abs() < 1e-3 {
                continue;
            }
            set.comps.push(Comparison {
                user: u,
                prompt: None,
                left: a as u32,
                right: b as u32,
                y: if rew[a] > rew[b] { -1 } else { 1 },
                weight: crate::pal::Weight::ONE,
            });
            made += 1;
        }
    }
    let cfg = FewShotConfig::default();
    let ns = [0, 2, 40];
    let opts = EvalOptions::default();
    let b = group_bound(&model, &set, &ns, &cfg, &opts, &groups).unwrap();
    let c = few_shot_curve(&model, &set, &ns, &cfg, &opts).unwrap();
    assert_eq!(b.groups, vec!["a", "b"]);
    assert_eq!(b.seen_per_group, vec![3, 3]);
    // The same users and queries as the curve: 50 queries each.
    assert_eq!(b.user_ids, c.user_ids);
    assert_eq!((b.queries, c.queries), (400, 400));
    // Knowing the group, every query is answered as that group's mixture ranks it.
    assert_eq!(b.true_group.accuracy, 1.0);
    // The groups disagree on some pairs, so the zero-shot mixture (0.5, 0.5) misses some.
    assert!(c.zero_shot.accuracy < 1.0, "{}", c.zero_shot.accuracy);
    // 0 shots: the prior over groups (3 and 3 seen users) gives the seen users' mean mixture,
    // i.e. zero-shot.
    assert_eq!(b.points[0].posterior.accuracy, c.zero_shot.accuracy);
    // 40 noiseless answers tell the two groups apart for every user.
    assert_eq!(b.points[2].hit_rate, 1.0);
    assert_eq!(b.points[2].argmax.accuracy, 1.0);
    assert!(b.points[2].posterior.accuracy > c.zero_shot.accuracy);
    // A new user without a group: a data error naming them.
    groups.remove("n5");
    let e = group_bound(&model, &set, &ns, &cfg, &opts, &groups)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'n5'") && e.contains("hint:"), "{e}");
}

/// Eight new users of 1,000 random comparisons each (their own labels are replaced).
fn eight_new_users(items: &[Vec<f32>]) -> ComparisonSet {
    let mut r = ChaCha8Rng::seed_from_u64(21);
    let mut comps = Vec::new();
    for u in 0..8u32 {
        while comps.len() < 1000 * (u as usize + 1) {
            let (a, b) = (
                r.random_range(0..items.len()),
                r.random_range(0..items.len()),
            );
            if a != b {
                comps.push(Comparison {
                    user: u,
                    prompt: None,
                    left: a as u32,
                    right: b as u32,
                    y: 1,
                    weight: crate::pal::Weight::ONE,
                });
            }
        }
    }
    ComparisonSet {
        dx: 4,
        dp: 0,
        items: items.iter().flatten().copied().collect(),
        prompts: Vec::new(),
        user_ids: (0..8).map(|u| format!("n{u}")).collect(),
        comps,
    }
}

#[test]
fn model_world_draws_labels_from_the_true_mixture_and_bayes_finds_it() {
    let (model, items, means) = two_group_model();
    let set = eight_new_users(&items);
    let cfg = FewShotConfig::default();
    let ns = [0, 2, 200];
    let opts = EvalOptions::default();
    let w = model_world(&model, &set, &ns, &cfg, &opts).unwrap();
    // The protocol's users and queries, as on the data's own labels.
    let real = few_shot_curve(&model, &set, &ns, &cfg, &opts).unwrap();
    assert_eq!(w.curve.user_ids, real.user_ids);
    assert_eq!((w.curve.queries, real.queries), (4000, 4000));
    assert_eq!(w.atoms, 6);
    // Each truth is a seen user, drawn with the seed: the same again, and both groups drawn.
    assert_eq!(w, model_world(&model, &set, &ns, &cfg, &opts).unwrap());
    assert!(w.truths.iter().all(|t| model.user_row(t).is_some()));
    let group = |t: &str| usize::from(model.user_row(t).unwrap() >= 3);
    let groups: std::collections::BTreeSet<usize> = w.truths.iter().map(|t| group(t)).collect();
    assert_eq!(groups.len(), 2, "{:?}", w.truths);
    let other = FewShotConfig {
        seed: 1,
        ..FewShotConfig::default()
    };
    assert_ne!(
        w.truths,
        model_world(&model, &set, &ns, &other, &opts)
            .unwrap()
            .truths
    );

    // Labels follow σ(r(x_l) − r(x_r)) under the true mixture: the true mixture's calls are
    // right on about mean(max(p, 1 − p)) of the queries (computed here from the scoring path
    // over each user's comparisons; the queries are a random half of them).
    let refs: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
    let mut expected = 0.0;
    for (u, t) in w.truths.iter().enumerate() {
        let rew = model.score_mixture(&means[group(t)], None, &refs).unwrap();
        for c in set.comps.iter().filter(|c| c.user as usize == u) {
            let d = f64::from(rew[c.left as usize] - rew[c.right as usize]);
            let p = 1.0 / (1.0 + (-d).exp());
            expected += p.max(1.0 - p) / set.comps.len() as f64;
        }
    }
    assert!(
        (w.truth.accuracy - expected).abs() < 0.03,
        "true mixtures {} against the label law's {expected}",
        w.truth.accuracy
    );
    assert!(expected < 0.99, "the labels are noisy: {expected}");
    // With no shot the posterior is the prior: the two groups alike, below the truth; 200
    // shots tell the sharp groups apart for every user, and the predictive is the truth's.
    assert!(w.points[0].bayes.accuracy < w.truth.accuracy - 0.02);
    assert_eq!(w.points[2].bayes.accuracy, w.truth.accuracy);
    assert!(w.points[1].bayes.accuracy <= w.points[2].bayes.accuracy);
    // The estimator's curve on the drawn labels starts at zero-shot as always.
    assert_eq!(
        w.curve.points[0].adapted.accuracy,
        w.curve.zero_shot.accuracy
    );
}

#[test]
fn popularity_baseline_reports_like_pal() {
    let (train_set, test_set) = ideal_points(20, 30, 10, 3, 5);
    let p = Popularity::fit(&train_set).unwrap();
    let r = p
        .evaluate(
            &test_set,
            &EvalOptions {
                bootstrap_reps: 200,
                seed: 1,
            },
        )
        .unwrap();
    assert_eq!(r.n, 200);
    // most test items were never seen in training: their rate is 0.5, and equal rates tie
    assert!(r.ties > 0 && r.correct + r.ties <= r.n);
    assert!(r.accuracy > 0.0 && r.accuracy < 1.0, "{}", r.accuracy);
    assert!(r.ci95.lo <= r.accuracy && r.accuracy <= r.ci95.hi);
    assert!(r.ci95_users.is_some());
    assert_eq!(r.users.len(), 20);
}

#[test]
#[ignore = "sweep for choosing defaults; prints a table"]
fn sweep_ideal_points() {
    let kinds = [ModelKind::PalA, ModelKind::PalB];
    for seed in [1u64, 2, 3] {
        let (train_set, test_set) = ideal_points(100, 50, 50, 3, seed);
        for kind in kinds {
            for k in [1, 2, 3] {
                let cfg = ModelConfig {
                    kind,
                    k,
                    ..ModelConfig::default()
                };
                let tc = TrainConfig {
                    seed,
                    ..TrainConfig::default()
                };
                let t0 = std::time::Instant::now();
                let (model, _) = train(&cfg, &tc, &train_set, None, &mut |_| {}).unwrap();
                let r = evaluate(&model, &test_set, &EvalOptions::default()).unwrap();
                eprintln!(
                    "seed {seed} {kind:?} K={k}: {:.4} ({:.1}s)",
                    r.accuracy,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
}

#[test]
fn progress_is_reported_every_step_and_at_epoch_ends() {
    let set = with_context(3, 100, 3, 0, 12);
    let (train_set, val_set) = (set.clone(), set);
    let cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 3,
        ..ModelConfig::default()
    };
    let mut seen = Vec::new();
    let (model, report) = train(&cfg, &quick(2, 1), &train_set, Some(&val_set), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    let steps: Vec<_> = seen.iter().filter(|p| !p.epoch_end).collect();
    let ends: Vec<_> = seen.iter().filter(|p| p.epoch_end).collect();
    assert_eq!(steps.len(), report.steps);
    assert_eq!(report.steps, 2 * 100usize.div_ceil(32));
    assert_eq!(
        steps.last().unwrap().step,
        steps.last().unwrap().total_steps
    );
    assert_eq!(ends.len(), 2);
    assert!(ends.iter().all(|p| p.val_loss.is_some()));
    assert!((TAU_INIT - (1.0f64 / 0.07).ln()).abs() < 1e-15);
    assert!((model.scale().unwrap() - TAU_INIT.exp()).abs() > 0.0); // τ is trained
}

// ---------------------------------------------------------------------------------------------
// Weights (PAL-SPEC "Losses": the batch loss is Σ w·ℓ / Σ w)
// ---------------------------------------------------------------------------------------------

/// A PAL-B model without dropout, so that two sets holding the same comparisons in a
/// different order train to the same point up to rounding.
fn no_dropout_pal_b() -> ModelConfig {
    ModelConfig {
        kind: ModelKind::PalB,
        k: 2,
        d: 6,
        item_arch: "mlp2-relu-dropout0".parse().unwrap(),
        prototype_arch: "mlp1-gelu-dropout0".parse().unwrap(),
        ..ModelConfig::default()
    }
}

/// Every weight 1.0 and every weight 2.0 are the same mean: the same model bit for bit (and
/// 1.0 everywhere is what data without weights has, so such data trains as before weights).
#[test]
fn equal_weights_train_the_same_model_bit_for_bit() {
    let set = with_context(4, 120, 4, 3, 11);
    let mut doubled = set.clone();
    doubled
        .comps
        .iter_mut()
        .for_each(|c| c.weight = Weight(2.0));
    let cfg = no_dropout_pal_b();
    let run = |s: &ComparisonSet| {
        let (m, r) = train(&cfg, &quick(3, 5), s, Some(s), &mut |_| {}).unwrap();
        (all_values(&m), r.epochs)
    };
    assert_eq!(run(&set), run(&doubled));
}

/// A comparison of weight 2 trains as the same comparison given twice with weight 1, for
/// full-batch steps (Σ w·ℓ / Σ w is then the mean over the rows with the copy): the same
/// parameters up to summation order. And the weight matters: with weight 1 the model differs.
#[test]
fn a_weight_of_two_trains_as_the_comparison_given_twice() {
    let mut set = with_context(3, 60, 4, 0, 12);
    // Heavier rows, and the same rows given twice instead.
    let mut twice = set.clone();
    for i in [0usize, 7, 19] {
        set.comps[i].weight = Weight(2.0);
        twice.comps.push(twice.comps[i]);
    }
    let plain = {
        let mut s = set.clone();
        s.comps.iter_mut().for_each(|c| c.weight = Weight::ONE);
        s
    };
    let cfg = no_dropout_pal_b();
    let full = TrainConfig {
        epochs: 20,
        batch_size: 1000,
        seed: 3,
        ..TrainConfig::default()
    };
    let values = |s: &ComparisonSet| -> Vec<f32> {
        let (m, _) = train(&cfg, &full, s, None, &mut |_| {}).unwrap();
        all_values(&m)
            .into_iter()
            .flat_map(|(_, v)| v.into_iter().map(f32::from_bits))
            .collect()
    };
    let (weighted, copied, unweighted) = (values(&set), values(&twice), values(&plain));
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert_eq!(weighted.len(), copied.len());
    assert!(
        gap(&weighted, &copied) < 1e-4,
        "{}",
        gap(&weighted, &copied)
    );
    assert!(
        gap(&weighted, &unweighted) > 1e-3,
        "{}",
        gap(&weighted, &unweighted)
    );
}

/// The validation loss is weighted as training is: Σ w·ℓ / Σ w of the per-comparison losses,
/// computed here from the model's own per-comparison losses on single-comparison sets.
#[test]
fn validation_loss_is_the_weighted_mean() {
    let set = with_context(3, 12, 4, 0, 13);
    let (model, _) = train(&no_dropout_pal_b(), &quick(2, 1), &set, None, &mut |_| {}).unwrap();
    let ws = [0.5f32, 1.0, 3.0];
    let mut weighted = set.clone();
    for (i, c) in weighted.comps.iter_mut().enumerate() {
        c.weight = Weight(ws[i % 3]);
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (i, c) in set.comps.iter().enumerate() {
        let one = ComparisonSet {
            comps: vec![*c],
            ..set.clone()
        };
        let l = mean_loss(&model, &one).unwrap();
        num += f64::from(ws[i % 3]) * l;
        den += f64::from(ws[i % 3]);
    }
    let got = mean_loss(&model, &weighted).unwrap();
    // candle's gemm gives each comparison the same bits in a batch of one as in the batch;
    // MKL's sgemm picks its kernel by shape, so there the f32 losses agree to rounding only
    // (a wrong weighting moves the mean by far more: the weights span 0.5 to 3).
    let tol = if cfg!(feature = "mkl") { 1e-6 } else { 1e-9 };
    assert!((got - num / den).abs() < tol, "{got} vs {}", num / den);
    let unweighted = mean_loss(&model, &set).unwrap();
    assert!(
        (got - unweighted).abs() > 100.0 * tol,
        "{got} vs {unweighted}"
    );
}

// ---------------------------------------------------------------------------------------------
// Weights in adaptation; huge weights; the `offset` estimator
// ---------------------------------------------------------------------------------------------

/// Every estimator but `auto` (which is one of them).
const EVERY_ESTIMATOR: [Estimator; 5] = [
    Estimator::Mle,
    Estimator::Map,
    Estimator::Posterior,
    Estimator::Empirical,
    Estimator::Offset,
];

/// Largest absolute difference of two equally long vectors.
fn max_gap(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A new user's 16 comparisons with shots 3 and 11 weighing 2, and the same 16 with those two
/// given a second time instead: every estimator adapts to the same logits (and `offset` to the
/// same offset) up to rounding. The weight matters: with weight 1 the estimate moves.
#[test]
fn a_shot_of_weight_two_adapts_as_the_shot_given_twice() {
    let (model, items) = small_pal_b();
    let base = comparisons_of(&model, &items, &[0.8, 0.2], 16, 31);
    let mut weighted = base.clone();
    let mut twice = base.clone();
    for i in [3usize, 11] {
        weighted.comps[i].weight = Weight(2.0);
        twice.comps.push(base.comps[i]);
    }
    for est in EVERY_ESTIMATOR {
        let cfg = FewShotConfig {
            estimator: est,
            ridge: 1.0,
            ..FewShotConfig::default()
        };
        let fit = |s: &ComparisonSet| super::fewshot::fit_one_user(&model, s, &cfg).unwrap();
        let (lw, dw) = fit(&weighted);
        let (lt, dt) = fit(&twice);
        let (lu, du) = fit(&base);
        let same = max_gap(&lw, &lt);
        let moved = max_gap(&lw, &lu);
        eprintln!("{est}: weight 2 vs twice {same:e}, vs weight 1 {moved:e}");
        assert!(same < 1e-4, "{est}: weight 2 vs given twice: {same}");
        assert!(moved > 10.0 * same.max(1e-6), "{est}: {moved} vs {same}");
        match est {
            Estimator::Offset => {
                let (dw, dt, du) = (dw.unwrap(), dt.unwrap(), du.unwrap());
                assert_eq!(dw.len(), model.offset_dim());
                let same = max_gap(&dw, &dt);
                assert!(same < 1e-4, "offset δ: weight 2 vs given twice: {same}");
                assert!(max_gap(&dw, &du) > 10.0 * same.max(1e-6));
            }
            _ => assert!(dw.is_none() && dt.is_none() && du.is_none()),
        }
    }
}

/// Weights 1, 2, 3 (repeating) and the same weights times 1e30 and times 1e37 train the same
/// model: the loss is Σ w·ℓ / Σ w, which does not change when every weight is scaled. At 1e37,
/// Σ w·ℓ of a batch is above f32's largest number (3.4e38): the loss must not add it up
/// unscaled. The scaled sums differ from the unscaled ones by rounding only (tolerance 1e-5
/// on every parameter); the ratios 1 : 2 are a power of two and 1 : 3 is not.
#[test]
fn huge_weights_train_as_their_ratios_say() {
    let set = with_context(3, 60, 4, 0, 12);
    let cfg = no_dropout_pal_b();
    let full = TrainConfig {
        epochs: 10,
        batch_size: 1000,
        seed: 3,
        ..TrainConfig::default()
    };
    let values = |scale: f32| -> Vec<f64> {
        let mut s = set.clone();
        for (i, c) in s.comps.iter_mut().enumerate() {
            c.weight = Weight((1 + i % 3) as f32 * scale);
        }
        let (m, r) = train(&cfg, &full, &s, Some(&s), &mut |_| {}).unwrap();
        assert!(
            r.epochs
                .iter()
                .all(|e| e.train_loss.is_finite() && e.val_loss.is_some_and(|v| v.is_finite())),
            "scale {scale}: {:?}",
            r.epochs
        );
        all_values(&m)
            .into_iter()
            .flat_map(|(_, v)| v.into_iter().map(|b| f64::from(f32::from_bits(b))))
            .collect()
    };
    let (one, e30, e37) = (values(1.0), values(1e30), values(1e37));
    assert!(one.iter().all(|x| x.is_finite()));
    assert!(max_gap(&one, &e30) < 1e-5, "{}", max_gap(&one, &e30));
    assert!(max_gap(&one, &e37) < 1e-5, "{}", max_gap(&one, &e37));
}

/// Adaptation with weights 1, 2, 3 times 1e30 and times 1e37 (Σ w·ℓ over 30 shots ≈ 1e39 at
/// 1e37: infinite in f32): every estimator gives finite logits, and the same ones at both
/// scales (at either, the shots outweigh the prior by ≥ 1e30); `mle`, a weighted mean, also
/// equals its fit with weights 1, 2, 3 (tolerance 1e-5 on the logits).
#[test]
fn huge_weights_adapt_without_overflow() {
    let (model, items) = small_pal_b();
    let base = comparisons_of(&model, &items, &[0.3, 0.7], 30, 41);
    let scaled = |scale: f32| {
        let mut s = base.clone();
        for (i, c) in s.comps.iter_mut().enumerate() {
            c.weight = Weight((1 + i % 3) as f32 * scale);
        }
        s
    };
    for est in EVERY_ESTIMATOR {
        let cfg = FewShotConfig {
            estimator: est,
            ..FewShotConfig::default()
        };
        let fit = |s: &ComparisonSet| super::fewshot::fit_one_user(&model, s, &cfg).unwrap();
        let (l30, d30) = fit(&scaled(1e30));
        let (l37, d37) = fit(&scaled(1e37));
        let all = |l: &[f64], d: &Option<Vec<f64>>| {
            l.iter().chain(d.iter().flatten()).all(|x| x.is_finite())
        };
        assert!(all(&l30, &d30) && all(&l37, &d37), "{est}: {l37:?} {d37:?}");
        assert!(max_gap(&l30, &l37) < 1e-5, "{est}: {l30:?} vs {l37:?}");
        if let (Some(a), Some(b)) = (&d30, &d37) {
            assert!(max_gap(a, b) < 1e-5, "{est}: δ {}", max_gap(a, b));
        }
        if est == Estimator::Mle {
            let (l1, _) = fit(&scaled(1.0));
            assert!(max_gap(&l1, &l37) < 1e-5, "mle: {l1:?} vs {l37:?}");
        }
    }
}

/// Two new users adapted in one curve, the second ("heavy") with weights 1e30 times the first's
/// (weights 1, 2, 3 repeating for both): every estimator gives the first user, at 8 shots, the
/// logits (and `offset` the offset) of a curve of that user alone (same seed, so the same
/// queries and shots), to 1e-4, where the lone fit has moved off its 0-shot start. Each user is
/// scaled by their own weights only; one scale for the whole batch would shrink the first
/// user's gradients by 1e30, below AdamW's ε, and leave them at their start.
#[test]
fn a_users_fit_does_not_depend_on_another_users_weights() {
    let (model, items) = small_pal_b();
    let mut alone = comparisons_of(&model, &items, &[0.8, 0.2], 40, 51);
    for (i, c) in alone.comps.iter_mut().enumerate() {
        c.weight = Weight((1 + i % 3) as f32);
    }
    let heavy = comparisons_of(&model, &items, &[0.2, 0.8], 40, 52);
    let mut both = alone.clone();
    both.user_ids.push("heavy".into());
    both.comps
        .extend(heavy.comps.iter().enumerate().map(|(i, c)| Comparison {
            user: 1,
            weight: Weight((1 + i % 3) as f32 * 1e30),
            ..*c
        }));
    let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
    let (k, dim) = (model.cfg.k, model.offset_dim());
    let opts = EvalOptions::default();
    for est in EVERY_ESTIMATOR {
        let cfg = FewShotConfig {
            estimator: est,
            ridge: 1.0,
            ..FewShotConfig::default()
        };
        let joint = few_shot_curve(&model, &both, &[0, 8], &cfg, &opts).unwrap();
        let one = few_shot_curve(&model, &alone, &[0, 8], &cfg, &opts).unwrap();
        assert_eq!(joint.user_ids, ["new", "heavy"]);
        assert_eq!(one.user_ids, ["new"]);
        let (pj, p1) = (&joint.points[1], &one.points[1]);
        let gap = max_gap(&f64s(&pj.logits[..k]), &f64s(&p1.logits));
        let moved = max_gap(&f64s(&p1.logits), &f64s(&one.points[0].logits));
        eprintln!("{est}: joint vs alone {gap:e}, moved {moved:e}");
        assert!(gap < 1e-4, "{est}: {:?} vs {:?}", pj.logits, p1.logits);
        assert!(moved > 1e-2, "{est}: the lone fit did not move ({moved})");
        if est == Estimator::Offset {
            assert_eq!(p1.offsets.len(), dim);
            let gap = max_gap(&f64s(&pj.offsets[..dim]), &f64s(&p1.offsets));
            assert!(gap < 1e-4, "offset δ: {:?} vs {:?}", pj.offsets, p1.offsets);
            assert!(
                p1.offsets.iter().any(|x| x.abs() > 1e-3),
                "{:?}",
                p1.offsets
            );
        }
    }
}

/// New users whose true ideal point lies OFF the span of the prototypes: in the small PAL-B
/// model (dp = 0, K = 2, d = 4) the user side is z = w₁g₁ + w₂g₂; each new user's truth z*
/// is a unit vector orthogonal to g₁ and g₂ plus a small part inside their span, and they
/// prefer the item whose normalised f(x) is closer in angle to z* (noiseless labels computed
/// here from the model's own f, not from any estimator). No mixture can reach z*; `offset`
/// can. At 0 shots both are zero-shot exactly; at 100 shots `offset` (λ = 1) is well above
/// `empirical`; λ = ∞ is `empirical` to the bit.
#[test]
fn offset_reaches_ideal_points_off_the_prototypes_span() {
    let (model, items) = small_pal_b();
    let d = 4;
    // Normalised f(x) of every item, from the model's frozen item tower.
    let probe = ComparisonSet {
        dx: 4,
        dp: 0,
        items: items.iter().flatten().copied().collect(),
        prompts: Vec::new(),
        user_ids: vec!["probe".into()],
        comps: (0..items.len() as u32)
            .map(|i| Comparison {
                user: 0,
                prompt: None,
                left: i,
                right: i,
                y: 1,
                weight: Weight::ONE,
            })
            .collect(),
    };
    let idx: Vec<usize> = (0..items.len()).collect();
    let batch = model.gather(&probe, &idx, &|_| 0).unwrap();
    let fx: Vec<Vec<f64>> = model
        .features(&batch, None)
        .unwrap()
        .fx
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    let g: Vec<Vec<f64>> = match &model.protos {
        super::model::Prototypes::Vectors(v) => v
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2()
            .unwrap(),
        _ => unreachable!("dp = 0 PAL-B holds prototype vectors"),
    };
    // An orthonormal basis of span(g₁, g₂), then the complement's part of random vectors.
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let unit = |a: Vec<f64>| {
        let n = dot(&a, &a).sqrt();
        a.into_iter().map(|x| x / n).collect::<Vec<f64>>()
    };
    let b1 = unit(g[0].clone());
    let b2 = unit(
        g[1].iter()
            .zip(&b1)
            .map(|(x, u)| x - dot(&g[1], &b1) * u)
            .collect(),
    );
    let mut r = ChaCha8Rng::seed_from_u64(77);
    let n_users = 8;
    let per_user = 200;
    let mut set = comparisons_of(&model, &items, &[0.5, 0.5], 0, 1);
    set.user_ids = (0..n_users).map(|u| format!("off{u}")).collect();
    for u in 0..n_users {
        let v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut r)).collect();
        let off = unit(
            (0..d)
                .map(|j| v[j] - dot(&v, &b1) * b1[j] - dot(&v, &b2) * b2[j])
                .collect(),
        );
        assert!(dot(&off, &b1).abs() < 1e-9 && dot(&off, &b2).abs() < 1e-9);
        let z: Vec<f64> = (0..d).map(|j| off[j] + 0.2 * b1[j]).collect();
        for _ in 0..per_user {
            let (a, b) = loop {
                let (a, b) = (
                    r.random_range(0..items.len()),
                    r.random_range(0..items.len()),
                );
                if a != b {
                    break (a, b);
                }
            };
            let y = if dot(&fx[a], &z) > dot(&fx[b], &z) {
                -1
            } else {
                1
            };
            set.comps.push(Comparison {
                user: u as u32,
                prompt: None,
                left: a as u32,
                right: b as u32,
                y,
                weight: Weight::ONE,
            });
        }
    }
    let curve = |est: Estimator, ridge: f64| {
        let cfg = FewShotConfig {
            estimator: est,
            ridge,
            ..FewShotConfig::default()
        };
        few_shot_curve(&model, &set, &[0, 100], &cfg, &EvalOptions::default()).unwrap()
    };
    let mix = curve(Estimator::Empirical, 100.0);
    let off = curve(Estimator::Offset, 1.0);
    let inf = curve(Estimator::Offset, f64::INFINITY);
    let (m0, m100) = (
        mix.points[0].adapted.accuracy,
        mix.points[1].adapted.accuracy,
    );
    let (o0, o100) = (
        off.points[0].adapted.accuracy,
        off.points[1].adapted.accuracy,
    );
    eprintln!(
        "off-span users: empirical 0/100 shots {m0:.3}/{m100:.3}, offset {o0:.3}/{o100:.3}, \
         in-sample oracle mixture {:.3}",
        mix.oracle.accuracy
    );
    assert_eq!(off.points[0].adapted, mix.points[0].adapted);
    assert_eq!(off.points[0].adapted, off.zero_shot);
    assert!(off.points[0].offsets.iter().all(|&x| x == 0.0));
    assert_eq!(off.points[1].offsets.len(), n_users * model.offset_dim());
    assert!(o100 > m100 + 0.1, "offset {o100} vs empirical {m100}");
    assert!(
        o100 > mix.oracle.accuracy + 0.05,
        "{o100} vs {}",
        mix.oracle.accuracy
    );
    assert!(o100 >= 0.85, "{o100}");
    // λ = ∞: `empirical` exactly, every point, logits and the bounds.
    for (a, b) in inf.points.iter().zip(&mix.points) {
        assert_eq!(a.adapted, b.adapted);
        assert_eq!(a.logits, b.logits);
        assert!(a.offsets.is_empty());
    }
    assert_eq!(inf.heldout_estimator, mix.heldout_estimator);
    assert_eq!(inf.ridge, Some(f64::INFINITY));
}

/// An enrolled user's offset (`fit_enrolled_user` with `offset`) scores as adaptation scores
/// that user's queries: `score_batch` with the offset gives the margins of
/// `margins_with_offsets` (the few-shot path). A job without an offset batched beside it gets
/// the same bits as alone (its δ = 0 adds nothing), and a wrong-sized offset is refused.
#[test]
fn an_enrolled_offset_scores_as_adaptation_does_and_leaves_other_jobs_alone() {
    let (model, items) = small_pal_b();
    let set = comparisons_of(&model, &items, &[0.8, 0.2], 40, 3);
    let cfg = FewShotConfig {
        estimator: Estimator::Offset,
        ridge: 1.0,
        ..FewShotConfig::default()
    };
    let fit = fit_enrolled_user(&model, &set, &cfg).unwrap();
    assert_eq!(fit.estimator, Estimator::Offset);
    let offset = fit.offset.clone().unwrap();
    assert_eq!(offset.len(), model.offset_dim());
    assert!(offset.iter().any(|x| x.abs() > 1e-4), "{offset:?}");
    let plain = fit_enrolled_user(&model, &set, &FewShotConfig::default()).unwrap();
    assert_eq!(plain.estimator, Estimator::Empirical);
    assert!(plain.offset.is_none());
    assert_eq!(
        plain.logits, fit.logits,
        "offset's mixture part is empirical's"
    );

    let w = model.mixture_of_logits(&fit.logits).unwrap();
    let cands: Vec<&[f32]> = items[..10].iter().map(|v| v.as_slice()).collect();
    let short = [0.0f32; 1];
    let job = |offset| ScoreJob {
        mixture: &w,
        offset,
        prompt: None,
        candidates: cands.clone(),
    };
    let alone = model.score_batch(&[job(None)]).unwrap();
    let both = model.score_batch(&[job(None), job(Some(&offset))]).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&alone[0]), bits(&both[0]));
    assert_ne!(
        bits(&both[0]),
        bits(&both[1]),
        "the offset moves the rewards"
    );

    // The same user's comparisons through the few-shot path.
    let table = Tensor::from_vec(w.clone(), (1, w.len()), &model.device)
        .unwrap()
        .to_dtype(model.dtype)
        .unwrap();
    let delta = Tensor::from_vec(offset.clone(), (1, offset.len()), &model.device)
        .unwrap()
        .to_dtype(model.dtype)
        .unwrap();
    let idx: Vec<usize> = (0..set.comps.len()).collect();
    let margins = model
        .margins_with_offsets(&set, &table, Some(&delta), &|_| 0, idx)
        .unwrap();
    for (c, m) in set.comps.iter().zip(&margins) {
        let pair = [
            items[c.left as usize].as_slice(),
            items[c.right as usize].as_slice(),
        ];
        let r = model
            .score_batch(&[ScoreJob {
                mixture: &w,
                offset: Some(&offset),
                prompt: None,
                candidates: pair.to_vec(),
            }])
            .unwrap();
        let gap = ((r[0][0] - r[0][1]) - m).abs();
        assert!(gap < 1e-5, "margin {m} vs scored {}", r[0][0] - r[0][1]);
    }

    assert!(model.score_batch(&[job(Some(&short))]).is_err());

    // PAL-B adds δ before the ideal point is normalised: with ‖δ‖ ≫ ‖z‖, ẑ ≈ δ/‖δ‖ whatever
    // the mixture, so two mixtures score alike, and no reward is larger than s ≤ 100 (δ added
    // after normalising would give rewards of about s·⟨f̂(x), δ⟩, thousands here).
    let big: Vec<f32> = (0..offset.len())
        .map(|i| if i % 2 == 0 { 1e4 } else { -1e4 })
        .collect();
    let w2 = vec![0.1, 0.9];
    let jobs = [
        ScoreJob {
            mixture: &w,
            offset: Some(&big),
            prompt: None,
            candidates: cands.clone(),
        },
        ScoreJob {
            mixture: &w2,
            offset: Some(&big),
            prompt: None,
            candidates: cands.clone(),
        },
    ];
    let r = model.score_batch(&jobs).unwrap();
    for (a, b) in r[0].iter().zip(&r[1]) {
        assert!((a - b).abs() < 5e-2, "{a} vs {b}");
        assert!(a.abs() <= SCALE_MAX as f32 + 1e-3, "{a}");
    }
}

#[test]
fn one_pass_pal_b_margins_equal_the_composed_ops_bit_for_bit() {
    // d = 70: every row sum has two 32-value blocks and a tail of 6; d = 64: blocks only.
    // Several users, prompts and items in one batch, with and without per-user offsets.
    for (d, k) in [(70, 3), (64, 1)] {
        let set = with_context(5, 120, 6, 4, 21);
        let cfg = ModelConfig {
            kind: ModelKind::PalB,
            k,
            d,
            ..ModelConfig::default()
        };
        let (model, _) = train(&cfg, &quick(1, 4), &set, None, &mut |_| {}).unwrap();
        let idx: Vec<usize> = (0..set.comps.len()).collect();
        let batch = model.gather(&set, &idx, &|u| u).unwrap();
        let users = Tensor::new(batch.users.as_slice(), &candle_core::Device::Cpu).unwrap();
        let w = model
            .mixture_table()
            .unwrap()
            .index_select(&users, 0)
            .unwrap();
        let feats = model.features(&batch, None).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let offsets: Vec<f32> = (0..batch.users.len() * d)
            .map(|_| r.random_range(-0.5..0.5))
            .collect();
        let offsets =
            Tensor::from_vec(offsets, (batch.users.len(), d), &candle_core::Device::Cpu).unwrap();
        for delta in [None, Some(&offsets)] {
            let one_pass = model
                .pal_b_margins_in_one_pass(&feats, &batch, &w, delta)
                .unwrap();
            if !palpipe_kernels::sums_like_candle() {
                // candle sums in another order here: its own ops are used.
                assert!(one_pass.is_none());
                continue;
            }
            let one_pass = one_pass.expect("the one-pass path applies to PAL-B in f32 on the CPU");
            let (m, _) = model
                .margins_composed(&feats, &batch, &w, delta, None)
                .unwrap();
            let composed = m.to_vec1::<f32>().unwrap();
            if delta.is_none() {
                // Training's entry point takes the fused cosines node here (PAL-B, no offset,
                // no norm bound): the same values as the composed ops up to rounding.
                let (fused, _) = model
                    .margins_offset(&feats, &batch, &w, None, None)
                    .unwrap();
                for (a, b) in fused.to_vec1::<f32>().unwrap().iter().zip(&composed) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
            assert_eq!(one_pass.len(), set.comps.len());
            assert!(
                composed.iter().any(|&v| v != 0.0),
                "a trained model has margins"
            );
            if cfg!(feature = "mkl") {
                // candle's add, square and square root go through MKL's vector math there,
                // which may round differently: the last bits may differ (2 ulp seen).
                for (a, b) in one_pass.iter().zip(&composed) {
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
                }
                continue;
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&one_pass),
                bits(&composed),
                "d {d}, K {k}, offsets: {}",
                delta.is_some()
            );
        }
        // And through the evaluation entry point, chunk by chunk.
        let (margins, _) = model.margins_for(&set).unwrap();
        let (m, _) = model
            .margins_composed(&feats, &batch, &w, None, None)
            .unwrap();
        if !cfg!(feature = "mkl") {
            assert_eq!(margins, m.to_vec1::<f32>().unwrap());
        }
    }
}

/// The seen users of [`small_pal_b`]'s training data, split by comparison order into a
/// "shots" part (the first 420) and "queries" (the last 180; 30 a user; the model was trained
/// on all 600), with user u5's shots cut to 3 comparisons. The query part lists its users and
/// its item rows in reverse order (its comparisons renumbered to match), so that it shares no
/// row numbering with the shots part.
fn seen_parts() -> (ComparisonSet, ComparisonSet) {
    let set = with_context(6, 600, 4, 0, 11);
    let mut train = set.clone();
    let mut queries = set.clone();
    train.comps.truncate(420);
    let mut u5 = 0;
    train.comps.retain(|c| {
        u5 += usize::from(c.user == 5);
        c.user != 5 || u5 <= 3
    });
    queries.comps.drain(..420);
    let (n_users, n_items) = (queries.user_ids.len() as u32, queries.n_items() as u32);
    queries.user_ids.reverse();
    queries.items = (queries.items.chunks(queries.dx).rev().flatten())
        .copied()
        .collect();
    for c in &mut queries.comps {
        c.user = n_users - 1 - c.user;
        c.left = n_items - 1 - c.left;
        c.right = n_items - 1 - c.right;
    }
    (train, queries)
}

#[test]
fn refit_seen_scores_every_n_on_the_held_out_split_beside_the_trained_mixtures() {
    let (model, _) = small_pal_b();
    let (train, queries) = seen_parts();
    // The users scored: u0..u4 (u5 has 3 "train" comparisons, fewer than the largest N).
    let mut kept = queries.clone();
    kept.comps
        .retain(|c| kept.user_ids[c.user as usize] != "u5");
    assert_eq!(kept.comps.len(), 150);
    let trained = evaluate(&model, &kept, &EvalOptions::default()).unwrap();
    // Zero shots: every user on the zero-shot mixture, as `evaluate` scores unknown users.
    let mut strangers = kept.clone();
    strangers.user_ids = (0..6).map(|u| format!("stranger{u}")).collect();
    let zero = evaluate(&model, &strangers, &EvalOptions::default()).unwrap();
    for est in [Estimator::Mle, Estimator::Empirical, Estimator::Offset] {
        let cfg = FewShotConfig {
            estimator: est,
            ridge: 10.0,
            steps: 600,
            ..FewShotConfig::default()
        };
        let r = refit_seen(
            &model,
            &train,
            &queries,
            &[0, 5, 60],
            &cfg,
            &EvalOptions::default(),
        )
        .unwrap();
        assert_eq!(r.user_ids, vec!["u4", "u3", "u2", "u1", "u0"], "{est}");
        assert_eq!(r.excluded_users, vec!["u5".to_string()], "{est}");
        assert_eq!(r.queries, 150, "{est}");
        assert!(r.points.iter().all(|p| p.refit.n == 150), "{est}");
        assert_eq!(r.trained.accuracy, trained.accuracy, "{est}");
        assert_eq!(r.points[0].refit.accuracy, zero.accuracy, "{est}");
        // The users' own comparisons move them off the zero-shot mixture for the better
        // (this small model, 3 epochs, is under-trained: 60 shots may pass its trained fit).
        let at60 = r.points[2].refit.accuracy;
        eprintln!(
            "{est}: zero-shot {:.3}, 5 shots {:.3}, 60 shots {at60:.3}, trained {:.3}",
            zero.accuracy, r.points[1].refit.accuracy, trained.accuracy
        );
        assert!(
            at60 > zero.accuracy + 0.1,
            "{est}: {at60} vs {}",
            zero.accuracy
        );
    }
    // The shots come from the shots part: with its labels flipped, 60 shots place every user
    // against their queries, below the zero-shot mixture.
    let mut flipped = train.clone();
    for c in &mut flipped.comps {
        c.y = -c.y;
    }
    let cfg = FewShotConfig {
        estimator: Estimator::Mle,
        steps: 600,
        ..FewShotConfig::default()
    };
    let opts = EvalOptions::default();
    let r = refit_seen(&model, &flipped, &queries, &[0, 60], &cfg, &opts).unwrap();
    assert!(
        r.points[1].refit.accuracy < zero.accuracy,
        "{} vs {}",
        r.points[1].refit.accuracy,
        zero.accuracy
    );
    // No shot count, or too few shots for anybody: errors that say so.
    let e = refit_seen(&model, &train, &queries, &[], &cfg, &opts).unwrap_err();
    assert!(e.to_string().contains("shots"), "{e}");
    let e = refit_seen(&model, &train, &queries, &[1000], &cfg, &opts).unwrap_err();
    assert!(e.to_string().contains("at least 1000"), "{e}");
    assert_eq!(refit_seen_users(&train, &queries, 60).unwrap(), 5);
    assert_eq!(refit_seen_users(&train, &queries, 3).unwrap(), 6);
    assert!(refit_seen_users(&train, &queries, 1000).is_err());
    // A user of the query split the model never saw: refused by name.
    let mut stranger = queries.clone();
    stranger.user_ids[2] = "nobody".into();
    let e = refit_seen(
        &model,
        &train,
        &stranger,
        &[0, 5],
        &FewShotConfig::default(),
        &EvalOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("'nobody'"), "{e}");
}
