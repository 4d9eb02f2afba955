//! bert_net: the BERT encoder network (Devlin et al. 2019) that palpipe's sentence encoders
//! run: token, position and segment embeddings, then N transformer layers, token ids
//! `[B, L]` → hidden states `[B, L, H]`. Owns loading a BERT-family checkpoint's weights
//! (Hugging Face names: `embeddings.*`, `encoder.layer.N.*`, optionally under `bert.`) and
//! the forward pass; tokenising and pooling live in `bert.rs`.
//!
//! The network is the one `candle_transformers::models::bert` runs (same weights, same
//! operations up to rounding), built here from candle's tensors for speed on the CPU, where
//! MiniLM spent most of its main thread outside the matrix products:
//! - GELU (`hidden_act: "gelu"`, the erf form) through `palpipe_kernels::gelu_erf_f32`, a
//!   vectorised loop; candle's `gelu_erf` calls libm's scalar `erff` per element;
//! - the query, key and value projections as one product `[B·L, H] × [H, 3H]`, with the
//!   1/√(head size) of the attention scores folded into the query's weights at load time;
//! - the attention softmax as candle-nn's `softmax_last_dim`, one op with rows in parallel,
//!   instead of candle's five separate element-wise ops.
//!
//! The outputs differ from candle-transformers' in the last bits only (tested on
//! all-MiniLM-L6-v2: cosine ≥ 1 − 1e-6 per token); parity with an independent numpy
//! implementation is tested in `bert.rs`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

/// A loaded BERT encoder.
pub(super) struct BertNet {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    act: HiddenAct,
}

/// One transformer layer (post-norm, as BERT).
struct Layer {
    /// Query (pre-scaled by 1/√(head size)), key and value, stacked: weight `[3H, H]`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    /// `[I, H]` then `[H, I]`, I the intermediate size.
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

impl BertNet {
    /// Loads the weights named as Hugging Face's `BertModel` names them, at the root of `vb`
    /// or under `bert.` (a checkpoint of a model with heads, e.g. `BertForMaskedLM`).
    ///
    /// # Errors
    /// candle's error for a missing tensor or one of another shape than `config` says.
    pub(super) fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), c))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                c.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            embed_norm: candle_nn::layer_norm(h, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            act: c.hidden_act,
        })
    }

    /// The last hidden states `[B, L, H]` of token ids and segment ids `[B, L]` (u32), with
    /// `mask` `[B, L]` (u32, 1 for a real token, 0 for padding: padded keys get no
    /// attention). Positions are 0..L for every row.
    pub(super) fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let positions = Tensor::arange(0u32, l as u32, ids.device())?;
        let x = self
            .word
            .forward(ids)?
            .add(&self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.embed_norm.forward(&x)?; // [B, L, H]

        // 0 where a key is a real token, f32::MIN where it is padding: [B, 1, 1, L].
        let key_bias =
            ((mask.to_dtype(DType::F32)? - 1.0)? * f64::from(f32::MAX))?.reshape((b, 1, 1, l))?;
        for layer in &self.layers {
            x = layer.forward(&x, &key_bias, self.heads, self.act)?;
        }
        Ok(x)
    }
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let a = vb.pp("attention");
        let s = a.pp("self");
        let scale = 1.0 / ((h / c.num_attention_heads) as f64).sqrt();
        let q = candle_nn::linear(h, h, s.pp("query"))?;
        let k = candle_nn::linear(h, h, s.pp("key"))?;
        let v = candle_nn::linear(h, h, s.pp("value"))?;
        let bias = |l: &Linear| {
            l.bias()
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("a projection without bias".into()))
        };
        let weight = Tensor::cat(
            &[
                (q.weight() * scale)?,
                k.weight().clone(),
                v.weight().clone(),
            ],
            0,
        )?;
        let b = Tensor::cat(&[(bias(&q)? * scale)?, bias(&k)?, bias(&v)?], 0)?;
        Ok(Self {
            qkv: Linear::new(weight, Some(b)),
            attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
            attn_norm: candle_nn::layer_norm(h, c.layer_norm_eps, a.pp("output.LayerNorm"))?,
            up: candle_nn::linear(h, i, vb.pp("intermediate.dense"))?,
            down: candle_nn::linear(i, h, vb.pp("output.dense"))?,
            out_norm: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// `x` `[B, L, H]` → `[B, L, H]`.
    fn forward(
        &self,
        x: &Tensor,
        key_bias: &Tensor,
        heads: usize,
        act: HiddenAct,
    ) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let dh = h / heads;
        // [B, L, 3, heads, dh]: q, k, v side by side, each head's slice contiguous.
        let qkv = self.qkv.forward(x)?.reshape((b, l, 3, heads, dh))?;
        let part = |i: usize| {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?); // [B, heads, L, dh]
        let scores = q.matmul(&k.t()?)?.broadcast_add(key_bias)?; // [B, heads, L, L]
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)? // [B, heads, L, dh]
            .transpose(1, 2)?
            .reshape((b, l, h))?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&context)? + x)?)?;
        let inner = activate(&self.up.forward(&x)?, act)?; // [B, L, I]
        self.out_norm.forward(&(self.down.forward(&inner)? + x)?)
    }
}

/// BERT's hidden activation. The erf GELU on f32 CPU tensors runs our vectorised kernel;
/// elsewhere (CUDA, other float types) candle's own op.
fn activate(x: &Tensor, act: HiddenAct) -> candle_core::Result<Tensor> {
    match act {
        HiddenAct::Gelu if x.device().is_cpu() && x.dtype() == DType::F32 => {
            x.contiguous()?.apply_op1_no_bwd(&GeluErf)
        }
        HiddenAct::Gelu => x.gelu_erf(),
        HiddenAct::GeluApproximate => x.gelu(),
        HiddenAct::Relu => x.relu(),
    }
}

/// `gelu_erf` on the CPU through `palpipe_kernels::gelu_erf_f32` (f32 only; inference only).
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-vectorised"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("gelu: f32 only, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu: the input must be contiguous");
        };
        let x = &all[start..end];
        let mut y = vec![0f32; x.len()];
        palpipe_kernels::gelu_erf_f32(x, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// GELU beside candle's own `gelu_erf` on −8 … 8, and the op's refusal of a strided view.
    #[test]
    fn the_gelu_op_agrees_with_candles() {
        let x = Tensor::arange(-400f32, 400.0, &Device::Cpu)
            .unwrap()
            .affine(0.02, 0.0) // −8 … 8
            .unwrap()
            .reshape((40, 20))
            .unwrap();
        let ours = activate(&x, HiddenAct::Gelu).unwrap();
        let theirs = x.gelu_erf().unwrap();
        let diff = (ours - &theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max |ours − candle's| = {diff}");
        // A transposed view is not contiguous: the op refuses it rather than misread it.
        assert!(x.t().unwrap().apply_op1_no_bwd(&GeluErf).is_err());
    }

    /// all-MiniLM-L6-v2's hidden states from this network and from candle-transformers'
    /// `BertModel`, on two rows (the second padded): every real token's vector agrees.
    #[test]
    fn minilm_hidden_states_match_candle_transformers() {
        use candle_transformers::models::bert::BertModel;
        let dir = match crate::embed::resolve_model_dir(None, crate::embed::MINILM_L6_V2) {
            Ok(d) => d,
            Err(e) => panic!("this test needs all-MiniLM-L6-v2 (make models): {e}"),
        };
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
        let load = || {
            VarBuilder::from_buffered_safetensors(weights.clone(), DType::F32, &Device::Cpu)
                .unwrap()
        };
        let ours = BertNet::load(load(), &config).unwrap();
        let theirs = BertModel::load(load(), &config).unwrap();
        // [CLS] … [SEP], then a shorter row padded with [PAD] = 0.
        let rows: [&[u32]; 2] = [
            &[101, 1037, 2158, 2003, 5983, 2833, 1012, 102, 2023],
            &[101, 7592, 2088, 102, 0, 0, 0, 0, 0],
        ];
        let ids = Tensor::new(
            &rows.map(|r| <[u32; 9]>::try_from(r).unwrap()),
            &Device::Cpu,
        )
        .unwrap();
        let mask = ids.ne(0u32).unwrap().to_dtype(DType::U32).unwrap();
        let types = ids.zeros_like().unwrap();
        let a = ours.forward(&ids, &types, &mask).unwrap();
        let b = theirs.forward(&ids, &types, Some(&mask)).unwrap();
        let (a, b) = (a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
        let real = [9usize, 4];
        for (row, &n) in real.iter().enumerate() {
            for t in 0..n {
                let (x, y) = (&a[row][t], &b[row][t]);
                let cos = crate::embed::cosine(x, y);
                assert!(cos > 1.0 - 1e-6, "row {row} token {t}: cosine {cos}");
                let max = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(max < 1e-4, "row {row} token {t}: max |diff| {max}");
            }
        }
    }
}
