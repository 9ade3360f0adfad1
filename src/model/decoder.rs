//! Mistral / LLaMA decoder (HF `MistralModel`, `LlamaModel` + `lm_head`).
//!
//! x[T, C] -> L layers of: h = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))
//!                         x = h + down(silu(gate(n2(h))) * up(n2(h)))
//! -> final RMSNorm -> lm_head [V, C] (or the tied embedding).
//! q: [T, H*D], k/v: [T, Hkv*D] (GQA, H a multiple of Hkv). Causal attention, with Mistral's
//! optional sliding window.
//!
//! Batching: `forward` takes several sequences at once, their rows stacked into one x[sum T_b, C].
//! The projections run on all rows together; attention runs per sequence over that sequence's
//! `KvCache`, which grows by T_b rows per call. Prefill of a batch is one call with each prompt's
//! length; a decode step is one call with length 1 per active sequence.

use crate::backend::cpu;
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::model::clip::add_inplace;
use crate::nn::{Linear, RmsNorm};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

struct DecoderLayer {
    input_layernorm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_layernorm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Keys and values of one sequence: per layer, rows [len, Hkv*D].
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(cfg: &TextConfig, capacity: usize) -> Self {
        let w = cfg.num_key_value_heads * cfg.head_dim;
        KvCache {
            k: (0..cfg.num_hidden_layers).map(|_| Vec::with_capacity(capacity * w)).collect(),
            v: (0..cfg.num_hidden_layers).map(|_| Vec::with_capacity(capacity * w)).collect(),
            len: 0,
        }
    }
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Decoder {
    pub cfg: TextConfig,
    embed_tokens: Tensor, // [V, C]
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>, // None: tied to embed_tokens
    rope: cpu::RopeTable,
}

impl Decoder {
    /// `model_prefix` holds embed_tokens/layers/norm; `lm_head` is the lm_head weight's name.
    pub fn load(ws: &dyn WeightSource, model_prefix: &str, lm_head: &str, cfg: &TextConfig) -> Result<Self> {
        let (c, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let embed_tokens = ws.get(&format!("{model_prefix}.embed_tokens.weight"), &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{model_prefix}.layers.{i}");
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            ws.skip(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), c, eps)?,
                q: Linear::load(ws, &format!("{p}.self_attn.q_proj"), c, qd, ab)?,
                k: Linear::load(ws, &format!("{p}.self_attn.k_proj"), c, kvd, ab)?,
                v: Linear::load(ws, &format!("{p}.self_attn.v_proj"), c, kvd, ab)?,
                o: Linear::load(ws, &format!("{p}.self_attn.o_proj"), qd, c, ab)?,
                post_attention_layernorm: RmsNorm::load(ws, &format!("{p}.post_attention_layernorm"), c, eps)?,
                gate: Linear::load(ws, &format!("{p}.mlp.gate_proj"), c, f, mb)?,
                up: Linear::load(ws, &format!("{p}.mlp.up_proj"), c, f, mb)?,
                down: Linear::load(ws, &format!("{p}.mlp.down_proj"), f, c, mb)?,
            });
        }
        let norm = RmsNorm::load(ws, &format!("{model_prefix}.norm"), c, eps)?;
        // HF ties lm_head to the embedding whenever the config says so, whatever the file holds.
        let lm_head = if cfg.tie_word_embeddings {
            ws.skip(lm_head);
            None
        } else {
            Some(Linear::load(ws, lm_head.trim_end_matches(".weight"), c, v, false)?)
        };
        let rope = cpu::RopeTable::new(cfg.head_dim, cfg.rope_theta);
        Ok(Decoder { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Every projection of every layer, as (layer, name, linear), in PEFT's naming.
    pub fn projections_mut(&mut self) -> impl Iterator<Item = (usize, &'static str, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| {
            [
                ("q_proj", &mut l.q),
                ("k_proj", &mut l.k),
                ("v_proj", &mut l.v),
                ("o_proj", &mut l.o),
                ("gate_proj", &mut l.gate),
                ("up_proj", &mut l.up),
                ("down_proj", &mut l.down),
            ]
            .into_iter()
            .map(move |(n, lin)| (i, n, lin))
        })
    }

    /// The projection `name` (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) of
    /// layer `layer`, for attaching adapters.
    pub fn linear_mut(&mut self, layer: usize, name: &str) -> Option<&mut Linear> {
        let l = self.layers.get_mut(layer)?;
        Some(match name {
            "q_proj" => &mut l.q,
            "k_proj" => &mut l.k,
            "v_proj" => &mut l.v,
            "o_proj" => &mut l.o,
            "gate_proj" => &mut l.gate,
            "up_proj" => &mut l.up,
            "down_proj" => &mut l.down,
            _ => return None,
        })
    }

    /// Token embeddings [T, C].
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let c = self.cfg.hidden_size;
        let mut x = Vec::with_capacity(ids.len() * c);
        for &id in ids {
            if id as usize >= self.cfg.vocab_size {
                return Err(Error::Input(format!("token id {id} is outside the vocabulary ({})", self.cfg.vocab_size)));
            }
            x.extend_from_slice(self.embed_tokens.row(id as usize));
        }
        Tensor::new(x, &[ids.len(), c])
    }

    /// Run the stacked rows of several sequences (`lens[b]` rows each) through the decoder,
    /// appending to each sequence's cache. Returns the final-normed hidden states [sum T_b, C].
    pub fn forward(&self, x: Tensor, lens: &[usize], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let total: usize = lens.iter().sum();
        if lens.len() != caches.len() || x.rows_cols() != (total, cfg.hidden_size) {
            return Err(Error::shape(
                "decoder",
                format!("x {:?} with {} sequences of lengths {lens:?} and {} caches", x.shape(), lens.len(), caches.len()),
            ));
        }
        let (h, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qw, kw) = (h * d, hkv * d);
        // Absolute positions of every row: each sequence continues where its cache stops.
        let mut positions = Vec::with_capacity(total);
        for (b, &n) in lens.iter().enumerate() {
            let start = caches[b].len;
            if start + n > cfg.max_position_embeddings {
                return Err(Error::Input(format!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    start + n,
                    cfg.max_position_embeddings
                )));
            }
            positions.extend(start..start + n);
        }
        let mask = cpu::AttnMask::Causal { window: cfg.sliding_window };
        let mut x = x;
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = layer.input_layernorm.forward(&x)?;
            let mut q = layer.q.forward(&hn)?;
            let mut k = layer.k.forward(&hn)?;
            let v = layer.v.forward(&hn)?;
            cpu::rope(q.data_mut(), h, &positions, &self.rope);
            cpu::rope(k.data_mut(), hkv, &positions, &self.rope);
            let mut attn = Vec::with_capacity(total * qw);
            let mut row = 0;
            for (b, &n) in lens.iter().enumerate() {
                let cache = &mut *caches[b];
                let start = cache.len;
                cache.k[li].extend_from_slice(&k.data()[row * kw..(row + n) * kw]);
                cache.v[li].extend_from_slice(&v.data()[row * kw..(row + n) * kw]);
                attn.extend(cpu::attention(
                    &q.data()[row * qw..(row + n) * qw],
                    &cache.k[li],
                    &cache.v[li],
                    n,
                    start + n,
                    h,
                    hkv,
                    d,
                    start,
                    mask,
                ));
                row += n;
            }
            let a = layer.o.forward(&Tensor::new(attn, &[total, qw])?)?;
            add_inplace(&mut x, &a);
            let hn = layer.post_attention_layernorm.forward(&x)?;
            let mut g = layer.gate.forward(&hn)?;
            let u = layer.up.forward(&hn)?;
            cpu::swiglu(g.data_mut(), u.data());
            let m = layer.down.forward(&g)?;
            add_inplace(&mut x, &m);
        }
        for (b, &n) in lens.iter().enumerate() {
            caches[b].len += n;
        }
        self.norm.forward(&x)
    }

    /// Logits [R, V] for hidden rows [R, C].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(l) => l.forward(hidden),
            None => {
                let (r, c) = hidden.rows_cols();
                Tensor::new(cpu::matmul_t(hidden.data(), self.embed_tokens.data(), r, c, self.cfg.vocab_size), &[r, self.cfg.vocab_size])
            }
        }
    }
}

/// Activations one layer's training forward keeps for its backward.
#[derive(Default)]
struct LayerTape {
    x: Vec<f32>,    // layer input (residual stream) [N, C]
    hn1: Vec<f32>,  // input_layernorm(x)
    q: Vec<f32>,    // after RoPE [N, H*D]
    k: Vec<f32>,    // after RoPE [N, Hkv*D]
    v: Vec<f32>,    // [N, Hkv*D]
    attn: Vec<f32>, // attention output before o_proj [N, H*D]
    x_mid: Vec<f32>,
    hn2: Vec<f32>,
    gate: Vec<f32>, // before the activation [N, F]
    up: Vec<f32>,
    act: Vec<f32>, // silu(gate) * up
}

/// What `forward_train` saves: every layer's activations and the pre-norm output.
pub struct Tape {
    layers: Vec<LayerTape>,
    x_final: Vec<f32>,
    layouts: Vec<SeqLayout>,
    positions: Vec<usize>,
    /// Only the layer inputs were kept: recompute each layer in `backward`.
    recompute: bool,
    /// Seed of the LoRA dropout masks (regenerated, never stored).
    dropout_seed: Option<u64>,
}

/// Options of one training forward/backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOpts {
    /// Keep only each layer's input and recompute the rest in the backward pass.
    pub recompute: bool,
    /// Seed of this step's LoRA dropout masks (None: no dropout, as in evaluation).
    pub dropout_seed: Option<u64>,
    /// Also back-propagate into the projector and return its gradients (`train`; the decoder
    /// itself ignores this).
    pub projector: bool,
}

/// The dropout seed of projection `proj` (0..7) of layer `layer`.
fn mask_seed(seed: u64, layer: usize, proj: usize) -> u64 {
    seed ^ ((layer * 8 + proj + 1) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// How one training sequence is laid out: a plain causal sequence, or a DPO pair packed as
/// [prefix | chosen | rejected] whose responses both attend to the prefix (encoded once) but not
/// to each other; the rejected tokens take the positions right after the prefix, as the chosen
/// ones do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqLayout {
    pub len: usize,
    /// (prefix length, chosen length) for a packed pair.
    pub shared_prefix: Option<(usize, usize)>,
}

impl SeqLayout {
    pub fn plain(len: usize) -> Self {
        SeqLayout { len, shared_prefix: None }
    }

    fn positions(&self) -> Vec<usize> {
        match self.shared_prefix {
            None => (0..self.len).collect(),
            Some((p, c)) => (0..p + c).chain(p..p + (self.len - p - c)).collect(),
        }
    }

    fn mask(&self, window: Option<usize>) -> Result<cpu::AttnMask> {
        match self.shared_prefix {
            None => Ok(cpu::AttnMask::Causal { window }),
            Some((prefix, chosen)) => {
                if window.is_some() {
                    return Err(Error::Input("a shared-prefix DPO pair cannot use a sliding window".into()));
                }
                if prefix + chosen > self.len {
                    return Err(Error::shape("shared_prefix", format!("prefix {prefix} + chosen {chosen} > length {}", self.len)));
                }
                Ok(cpu::AttnMask::SharedPrefix { prefix, chosen })
            }
        }
    }
}

/// Gradient of one adapted projection: (layer, projection name, dA [r, in], dB [out, r]).
pub type LoraGrad = (usize, &'static str, Vec<f32>, Vec<f32>);

const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl Decoder {
    /// The lm_head weight [V, C] (the embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().map(|l| &l.weight).unwrap_or(&self.embed_tokens)
    }

    /// Training forward over whole causal sequences of `lens[b]` tokens (see `forward_train_layout`).
    pub fn forward_train(&self, x: Tensor, lens: &[usize]) -> Result<(Tensor, Tape)> {
        let layouts: Vec<SeqLayout> = lens.iter().map(|&n| SeqLayout::plain(n)).collect();
        self.forward_train_layout(x, &layouts)
    }

    /// Training forward (no KV cache) over sequences stacked in x[sum T_b, C], each laid out as
    /// `layouts[b]` says. Returns the final-normed hidden states and the tape for `backward`.
    pub fn forward_train_layout(&self, x: Tensor, layouts: &[SeqLayout]) -> Result<(Tensor, Tape)> {
        self.forward_train_opts(x, layouts, StepOpts::default())
    }

    /// `forward_train_layout`; with `recompute`, each layer keeps only its input and `backward`
    /// recomputes the rest of that layer's activations when it gets there (per-layer activation
    /// recomputation: memory O(L*T*C) instead of O(L*T*(C + F + ...)), one extra forward).
    pub fn forward_train_opts(&self, x: Tensor, layouts: &[SeqLayout], opts: StepOpts) -> Result<(Tensor, Tape)> {
        let recompute = opts.recompute;
        let cfg = &self.cfg;
        let total: usize = layouts.iter().map(|l| l.len).sum();
        if x.rows_cols() != (total, cfg.hidden_size) {
            return Err(Error::shape("decoder_train", format!("x {:?} for sequences {layouts:?}", x.shape())));
        }
        let positions: Vec<usize> = layouts.iter().flat_map(|l| l.positions()).collect();
        let masks = layouts.iter().map(|l| l.mask(cfg.sliding_window)).collect::<Result<Vec<_>>>()?;
        let mut x = x;
        let mut tapes = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let (out, tape) = self.layer_forward_train(layer, li, x, layouts, &masks, &positions, opts.dropout_seed)?;
            tapes.push(if recompute { LayerTape { x: tape.x, ..Default::default() } } else { tape });
            x = out;
        }
        let normed = self.norm.forward(&x)?;
        Ok((normed, Tape { layers: tapes, x_final: x.into_data(), layouts: layouts.to_vec(), positions, recompute, dropout_seed: opts.dropout_seed }))
    }

    /// One layer's training forward: its output and everything its backward needs.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward_train(
        &self,
        layer: &DecoderLayer,
        li: usize,
        x: Tensor,
        layouts: &[SeqLayout],
        masks: &[cpu::AttnMask],
        positions: &[usize],
        dropout_seed: Option<u64>,
    ) -> Result<(Tensor, LayerTape)> {
        let drop = |lin: &Linear, proj: usize, rows: usize| dropout_seed.and_then(|s| lin.dropout_mask(rows, mask_seed(s, li, proj)));
        let cfg = &self.cfg;
        let (h, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qw, kw) = (h * d, hkv * d);
        let total = x.dim(0);
        let hn1 = layer.input_layernorm.forward(&x)?;
        let mut q = layer.q.forward_masked(&hn1, drop(&layer.q, 0, total).as_deref())?;
        let mut k = layer.k.forward_masked(&hn1, drop(&layer.k, 1, total).as_deref())?;
        let v = layer.v.forward_masked(&hn1, drop(&layer.v, 2, total).as_deref())?;
        cpu::rope(q.data_mut(), h, positions, &self.rope);
        cpu::rope(k.data_mut(), hkv, positions, &self.rope);
        let mut attn = Vec::with_capacity(total * qw);
        let mut row = 0;
        for (l, &mask) in layouts.iter().zip(masks) {
            let n = l.len;
            let (qs, ks) = (row * qw..(row + n) * qw, row * kw..(row + n) * kw);
            attn.extend(cpu::attention(&q.data()[qs], &k.data()[ks.clone()], &v.data()[ks], n, n, h, hkv, d, 0, mask));
            row += n;
        }
        let attn = Tensor::new(attn, &[total, qw])?;
        let mut x_mid = x.clone();
        add_inplace(&mut x_mid, &layer.o.forward_masked(&attn, drop(&layer.o, 3, total).as_deref())?);
        let hn2 = layer.post_attention_layernorm.forward(&x_mid)?;
        let gate = layer.gate.forward_masked(&hn2, drop(&layer.gate, 4, total).as_deref())?;
        let up = layer.up.forward_masked(&hn2, drop(&layer.up, 5, total).as_deref())?;
        let mut act = gate.clone();
        cpu::swiglu(act.data_mut(), up.data());
        let mut out = x_mid.clone();
        add_inplace(&mut out, &layer.down.forward_masked(&act, drop(&layer.down, 6, total).as_deref())?);
        let tape = LayerTape {
            x: x.into_data(),
            hn1: hn1.into_data(),
            q: q.into_data(),
            k: k.into_data(),
            v: v.into_data(),
            attn: attn.into_data(),
            x_mid: x_mid.into_data(),
            hn2: hn2.into_data(),
            gate: gate.into_data(),
            up: up.into_data(),
            act: act.into_data(),
        };
        Ok((out, tape))
    }

    /// Backward from d(final-normed hidden) [sum T_b, C] to the LoRA gradients of every adapted
    /// projection (frozen weights get none). Returns also d(input embeddings).
    pub fn backward(&self, tape: &Tape, dnormed: &[f32]) -> Result<(Vec<LoraGrad>, Vec<f32>)> {
        let cfg = &self.cfg;
        let (h, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qw, kw) = (h * d, hkv * d);
        let masks = tape.layouts.iter().map(|l| l.mask(cfg.sliding_window)).collect::<Result<Vec<_>>>()?;
        let eps = cfg.rms_norm_eps;
        let (mut dx, _) = cpu::rmsnorm_backward(&tape.x_final, self.norm.weight.data(), dnormed, eps);
        let mut grads = Vec::new();
        let mut keep = |li: usize, name: &'static str, g: Option<(Vec<f32>, Vec<f32>)>| {
            if let Some((da, db)) = g {
                grads.push((li, name, da, db));
            }
        };
        for (li, (layer, kept)) in self.layers.iter().zip(&tape.layers).enumerate().rev() {
            let recomputed;
            let t = if tape.recompute {
                let x = Tensor::new(kept.x.clone(), &[kept.x.len() / cfg.hidden_size, cfg.hidden_size])?;
                recomputed = self.layer_forward_train(layer, li, x, &tape.layouts, &masks, &tape.positions, tape.dropout_seed)?.1;
                &recomputed
            } else {
                kept
            };
            // x_out = x_mid + down(silu(gate) * up)
            let rows = t.x.len() / cfg.hidden_size;
            let drop = |lin: &Linear, proj: usize| tape.dropout_seed.and_then(|s| lin.dropout_mask(rows, mask_seed(s, li, proj)));
            let (dact, g) = layer.down.backward(&t.act, &dx, drop(&layer.down, 6).as_deref());
            keep(li, PROJECTIONS[6], g);
            let (dgate, dup) = cpu::swiglu_backward(&t.gate, &t.up, &dact);
            let (dh_g, g) = layer.gate.backward(&t.hn2, &dgate, drop(&layer.gate, 4).as_deref());
            keep(li, PROJECTIONS[4], g);
            let (dh_u, g) = layer.up.backward(&t.hn2, &dup, drop(&layer.up, 5).as_deref());
            keep(li, PROJECTIONS[5], g);
            let dhn2: Vec<f32> = dh_g.iter().zip(&dh_u).map(|(a, b)| a + b).collect();
            let (dxm, _) = cpu::rmsnorm_backward(&t.x_mid, layer.post_attention_layernorm.weight.data(), &dhn2, eps);
            let dx_mid: Vec<f32> = dx.iter().zip(&dxm).map(|(a, b)| a + b).collect();
            // x_mid = x + o(attn(rope(q(hn1)), rope(k(hn1)), v(hn1)))
            let (dattn, g) = layer.o.backward(&t.attn, &dx_mid, drop(&layer.o, 3).as_deref());
            keep(li, PROJECTIONS[3], g);
            let (mut dq, mut dk, mut dv) = (Vec::with_capacity(t.q.len()), Vec::with_capacity(t.k.len()), Vec::with_capacity(t.v.len()));
            let mut row = 0;
            for (l, &mask) in tape.layouts.iter().zip(&masks) {
                let n = l.len;
                let (qs, ks) = (row * qw..(row + n) * qw, row * kw..(row + n) * kw);
                let (a, b, c) = cpu::attention_backward(
                    &t.q[qs.clone()],
                    &t.k[ks.clone()],
                    &t.v[ks.clone()],
                    &dattn[qs],
                    n,
                    n,
                    h,
                    hkv,
                    d,
                    0,
                    mask,
                );
                dq.extend(a);
                dk.extend(b);
                dv.extend(c);
                row += n;
            }
            cpu::rope_backward(&mut dq, h, &tape.positions, &self.rope);
            cpu::rope_backward(&mut dk, hkv, &tape.positions, &self.rope);
            let (dh_q, g) = layer.q.backward(&t.hn1, &dq, drop(&layer.q, 0).as_deref());
            keep(li, PROJECTIONS[0], g);
            let (dh_k, g) = layer.k.backward(&t.hn1, &dk, drop(&layer.k, 1).as_deref());
            keep(li, PROJECTIONS[1], g);
            let (dh_v, g) = layer.v.backward(&t.hn1, &dv, drop(&layer.v, 2).as_deref());
            keep(li, PROJECTIONS[2], g);
            let dhn1: Vec<f32> = dh_q.iter().zip(&dh_k).zip(&dh_v).map(|((a, b), c)| a + b + c).collect();
            let (dxi, _) = cpu::rmsnorm_backward(&t.x, layer.input_layernorm.weight.data(), &dhn1, eps);
            dx = dx_mid.iter().zip(&dxi).map(|(a, b)| a + b).collect();
        }
        grads.reverse();
        Ok((grads, dx))
    }
}
