//! Mistral / LLaMA decoder (HF `MistralModel`, `LlamaModel` + `lm_head`).
//!
//! x[T, C] -> L layers of: h = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))
//!                         x = h + down(silu(gate(n2(h))) * up(n2(h)))
//! -> final RMSNorm -> lm_head [V, C] (or the tied embedding).
//! q: [T, H*D], k/v: [T, Hkv*D] (GQA, H a multiple of Hkv). Causal attention, with Mistral's
//! optional sliding window.
//!
//! Inference (`forward`) is written once against the [`Backend`] ops and runs on the CPU and on
//! CUDA. Batching: several sequences at once, their rows stacked into one x[sum T_b, C]. The
//! projections run on all rows together; one attention call covers every row. Every call writes
//! its k, v into each sequence's slot of the preallocated `KvCache`, which grows by T_b rows per
//! call. A fresh prefill (every slot empty) attends over the new rows themselves
//! (`Backend::attention_packed`: the tensor-core FlashAttention-2 forward on CUDA); decode steps
//! and continued prefills attend over the cache (`Backend::attention`, a key range per row).
//! Training (`forward_train*`, `backward`: CPU, f32, LoRA) saves activations on a tape.

use crate::backend::{cpu, AttnRow, Backend, Cpu, PackedMask, Rows};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::model::clip::add_inplace;
use crate::model::grads::{add_scaled, DecoderGrads, PROJ_PATHS};
use crate::nn::Linear;
use crate::tensor::Tensor;
use crate::weights::WeightSource;

struct DecoderLayer<B: Backend = Cpu> {
    input_layernorm: B::RmsNorm,
    q: B::Linear,
    k: B::Linear,
    v: B::Linear,
    o: B::Linear,
    post_attention_layernorm: B::RmsNorm,
    gate: B::Linear,
    up: B::Linear,
    down: B::Linear,
}

/// Keys and values of S sequences (slots) of at most `cap` tokens each, preallocated on the
/// backend: per layer k, v [S*cap, Hkv*D]; slot s holds rows [s*cap, s*cap + len(s)).
pub struct KvCache<B: Backend = Cpu> {
    k: Vec<B::Tensor>,
    v: Vec<B::Tensor>,
    cap: usize,
    lens: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    /// `slots` empty sequences of capacity `cap` tokens for every layer of `cfg`.
    pub fn new(be: &B, cfg: &TextConfig, slots: usize, cap: usize) -> Result<Self> {
        let w = cfg.num_key_value_heads * cfg.head_dim;
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(be.zeros(slots * cap, w)?);
            v.push(be.zeros(slots * cap, w)?);
        }
        Ok(KvCache { k, v, cap, lens: vec![0; slots] })
    }
    /// Tokens held by `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }
    pub fn slots(&self) -> usize {
        self.lens.len()
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Forget the tokens of `slot` (it can take a new sequence).
    pub fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// Copy sequences between caches of the same model: slot `dst[i]` of `self` becomes a copy of
    /// slot `src[i]` of `from`. One row gather (`embedding`) and one `scatter_rows` per layer and
    /// tensor.
    pub fn copy_slots(&mut self, be: &B, from: &KvCache<B>, src: &[usize], dst: &[usize]) -> Result<()> {
        let (gather, scatter) = self.copy_rows(from.cap, &from.lens, src, dst)?;
        if !gather.is_empty() {
            for li in 0..self.k.len() {
                be.scatter_rows(&be.embedding(&from.k[li], None, &gather)?, &mut self.k[li], &scatter)?;
                be.scatter_rows(&be.embedding(&from.v[li], None, &gather)?, &mut self.v[li], &scatter)?;
            }
        }
        self.set_lens(&from.lens, src, dst);
        Ok(())
    }

    /// `copy_slots` within this cache (beam reordering): every source row is gathered before any
    /// is overwritten, so any mapping is safe.
    pub fn reorder_slots(&mut self, be: &B, src: &[usize], dst: &[usize]) -> Result<()> {
        let lens = self.lens.clone();
        let (gather, scatter) = self.copy_rows(self.cap, &lens, src, dst)?;
        if !gather.is_empty() {
            for li in 0..self.k.len() {
                let k = be.embedding(&self.k[li], None, &gather)?;
                be.scatter_rows(&k, &mut self.k[li], &scatter)?;
                let v = be.embedding(&self.v[li], None, &gather)?;
                be.scatter_rows(&v, &mut self.v[li], &scatter)?;
            }
        }
        self.set_lens(&lens, src, dst);
        Ok(())
    }

    /// Source and destination cache rows of a slot copy (sources in a cache of capacity `cap`
    /// holding `lens`).
    fn copy_rows(&self, cap: usize, lens: &[usize], src: &[usize], dst: &[usize]) -> Result<(Vec<u32>, Vec<u32>)> {
        if src.len() != dst.len() || src.iter().any(|&s| s >= lens.len()) {
            return Err(Error::shape("kv copy", format!("sources {src:?} ({} slots) for destinations {dst:?}", lens.len())));
        }
        let (mut gather, mut scatter) = (Vec::new(), Vec::new());
        for (&s, &d) in src.iter().zip(dst) {
            let n = lens[s];
            if n > self.cap || d >= self.slots() {
                return Err(Error::Input(format!("kv copy: {n} tokens into slot {d} of a cache of {} slots x {}", self.slots(), self.cap)));
            }
            gather.extend((0..n).map(|p| (s * cap + p) as u32));
            scatter.extend((0..n).map(|p| (d * self.cap + p) as u32));
        }
        Ok((gather, scatter))
    }

    fn set_lens(&mut self, lens: &[usize], src: &[usize], dst: &[usize]) {
        for (&s, &d) in src.iter().zip(dst) {
            self.lens[d] = lens[s];
        }
    }
}

pub struct Decoder<B: Backend = Cpu> {
    pub cfg: TextConfig,
    be: B,
    embed_tokens: B::Tensor, // [V, C]
    layers: Vec<DecoderLayer<B>>,
    norm: B::RmsNorm,
    lm_head: Option<B::Tensor>, // [V, C]; None: tied to embed_tokens
    rope: B::Rope,
}

impl<B: Backend> Decoder<B> {
    /// `model_prefix` holds embed_tokens/layers/norm; `lm_head` is the lm_head weight's name.
    pub fn load(be: &B, ws: &dyn WeightSource, model_prefix: &str, lm_head: &str, cfg: &TextConfig) -> Result<Self> {
        let (c, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let embed_tokens = be.tensor(ws, &format!("{model_prefix}.embed_tokens.weight"), &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{model_prefix}.layers.{i}");
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            ws.skip(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            layers.push(DecoderLayer {
                input_layernorm: be.rmsnorm_weights(ws, &format!("{p}.input_layernorm"), c, eps)?,
                q: be.linear(ws, &format!("{p}.self_attn.q_proj"), c, qd, ab)?,
                k: be.linear(ws, &format!("{p}.self_attn.k_proj"), c, kvd, ab)?,
                v: be.linear(ws, &format!("{p}.self_attn.v_proj"), c, kvd, ab)?,
                o: be.linear(ws, &format!("{p}.self_attn.o_proj"), qd, c, ab)?,
                post_attention_layernorm: be.rmsnorm_weights(ws, &format!("{p}.post_attention_layernorm"), c, eps)?,
                gate: be.linear(ws, &format!("{p}.mlp.gate_proj"), c, f, mb)?,
                up: be.linear(ws, &format!("{p}.mlp.up_proj"), c, f, mb)?,
                down: be.linear(ws, &format!("{p}.mlp.down_proj"), f, c, mb)?,
            });
        }
        let norm = be.rmsnorm_weights(ws, &format!("{model_prefix}.norm"), c, eps)?;
        // HF ties lm_head to the embedding whenever the config says so, whatever the file holds.
        let lm_head = if cfg.tie_word_embeddings {
            ws.skip(lm_head);
            None
        } else {
            Some(be.tensor(ws, lm_head, &[v, c])?)
        };
        let rope = be.rope_table(cfg.head_dim, cfg.rope_theta)?;
        Ok(Decoder { cfg: cfg.clone(), be: be.clone(), embed_tokens, layers, norm, lm_head, rope })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s frozen weights, for a backend's own training code (`train::cuda`): its two
    /// norms and its projections in PEFT order ([`PROJECTIONS`]: q, k, v, o, gate, up, down).
    pub fn layer_weights(&self, i: usize) -> (&B::RmsNorm, [&B::Linear; 7], &B::RmsNorm) {
        let l = &self.layers[i];
        (&l.input_layernorm, [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down], &l.post_attention_layernorm)
    }

    /// Every weight, mutable, for a backend's own training code (`train::cuda` writes its bf16
    /// weights from f32 masters): the embedding, each layer's (input norm, projections in
    /// [`PROJECTIONS`] order, post-attention norm), the final norm, and lm_head (None: tied).
    #[allow(clippy::type_complexity)]
    pub fn weights_mut(&mut self) -> (&mut B::Tensor, Vec<(&mut B::RmsNorm, [&mut B::Linear; 7], &mut B::RmsNorm)>, &mut B::RmsNorm, Option<&mut B::Tensor>) {
        let layers = self
            .layers
            .iter_mut()
            .map(|l| (&mut l.input_layernorm, [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down], &mut l.post_attention_layernorm))
            .collect();
        (&mut self.embed_tokens, layers, &mut self.norm, self.lm_head.as_mut())
    }

    /// The final norm.
    pub fn final_norm(&self) -> &B::RmsNorm {
        &self.norm
    }

    /// (in, out) features of every projection of a layer, in [`PROJECTIONS`] order.
    pub fn projection_shapes(cfg: &TextConfig) -> [(usize, usize); 7] {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        [(c, qd), (c, kvd), (c, kvd), (qd, c), (c, f), (c, f), (f, c)]
    }

    pub fn backend(&self) -> &B {
        &self.be
    }

    /// The lm_head weight [V, C] (the embedding when tied).
    pub fn lm_head_weight(&self) -> &B::Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Token embeddings [T, C].
    pub fn embed(&self, ids: &[u32]) -> Result<B::Tensor> {
        let sources = cpu::embedding_sources(ids, self.cfg.vocab_size, None, 0)?;
        self.be.embedding(&self.embed_tokens, None, &sources)
    }

    /// Token embeddings [T, C] with image feature rows scattered in: the i-th occurrence of
    /// `image_token` in `ids` takes row i of `features` [K, C] (K = the number of occurrences).
    pub fn embed_with_features(&self, ids: &[u32], image_token: u32, features: Option<&B::Tensor>) -> Result<B::Tensor> {
        let k = features.map(|f| f.n_rows()).unwrap_or(0);
        let sources = cpu::embedding_sources(ids, self.cfg.vocab_size, features.map(|_| image_token), k)?;
        self.be.embedding(&self.embed_tokens, features, &sources)
    }

    /// Run the stacked rows of several sequences through the decoder: sequence b has `lens[b]`
    /// rows in x and lives in cache slot `slots[b]`, which it extends. Returns the final-normed
    /// hidden states [sum T_b, C]. Prefill of a batch is one call with each prompt's length; a
    /// decode step is one call with length 1 per active sequence.
    pub fn forward(&self, x: B::Tensor, slots: &[usize], lens: &[usize], cache: &mut KvCache<B>) -> Result<B::Tensor> {
        let be = &self.be;
        let cfg = &self.cfg;
        let total: usize = lens.iter().sum();
        if lens.len() != slots.len() || x.n_rows() != total || x.n_cols() != cfg.hidden_size || cache.k.len() != self.layers.len() {
            return Err(Error::shape(
                "decoder",
                format!("x [{}, {}] with sequences of lengths {lens:?} in slots {slots:?}", x.n_rows(), x.n_cols()),
            ));
        }
        let (h, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let cap = cache.cap;
        // Absolute positions, cache rows and key ranges of every row: each sequence continues
        // where its slot stops.
        let mut positions = Vec::with_capacity(total);
        let mut dst = Vec::with_capacity(total);
        // A fresh prefill (every sequence starts in an empty slot) attends over its own rows
        // only: `attention_packed` on the new k, v (tensor cores on CUDA); otherwise (decode,
        // continued prefill) the rows attend over the cache. Both write k, v into the cache.
        let fresh = slots.iter().all(|&s| s < cache.slots() && cache.lens[s] == 0);
        let mut rows = Vec::with_capacity(if fresh { 0 } else { total });
        let mask = cpu::AttnMask::Causal { window: cfg.sliding_window };
        for (&slot, &n) in slots.iter().zip(lens) {
            if slot >= cache.slots() || slots.iter().filter(|&&s| s == slot).count() > 1 {
                return Err(Error::shape("decoder", format!("slots {slots:?} for a cache of {} slots", cache.slots())));
            }
            let start = cache.lens[slot];
            if start + n > cfg.max_position_embeddings {
                return Err(Error::Input(format!(
                    "sequence of {} tokens exceeds max_position_embeddings {}",
                    start + n,
                    cfg.max_position_embeddings
                )));
            }
            if start + n > cap {
                return Err(Error::Input(format!("sequence of {} tokens exceeds the KV cache's capacity of {cap}", start + n)));
            }
            for p in start..start + n {
                positions.push(p as u32);
                dst.push((slot * cap + p) as u32);
                if !fresh {
                    rows.push(AttnRow::for_mask(mask, slot, p, start + n));
                }
            }
        }
        let mut x = x;
        for (li, layer) in self.layers.iter().enumerate() {
            be.range_push(&format!("decoder layer {li}"));
            let hn = be.rmsnorm(&x, &layer.input_layernorm)?;
            let mut q = be.matmul(&hn, &layer.q)?;
            let mut k = be.matmul(&hn, &layer.k)?;
            let v = be.matmul(&hn, &layer.v)?;
            be.rope(&mut q, &mut k, h, hkv, &positions, &self.rope)?;
            be.scatter_rows(&k, &mut cache.k[li], &dst)?;
            be.scatter_rows(&v, &mut cache.v[li], &dst)?;
            let attn = if fresh {
                be.attention_packed(&q, &k, &v, lens, PackedMask::Causal { window: cfg.sliding_window }, h, hkv, d)?
            } else {
                be.attention(&q, &cache.k[li], &cache.v[li], &rows, h, hkv, d, cap)?
            };
            be.matmul_add(&attn, &layer.o, &mut x)?;
            let hn = be.rmsnorm(&x, &layer.post_attention_layernorm)?;
            let g = be.matmul(&hn, &layer.gate)?;
            let u = be.matmul(&hn, &layer.up)?;
            let act = be.swiglu(&g, &u)?;
            be.matmul_add(&act, &layer.down, &mut x)?;
            be.range_pop();
        }
        for (&slot, &n) in slots.iter().zip(lens) {
            cache.lens[slot] += n;
        }
        be.rmsnorm(&x, &self.norm)
    }

    /// f32 logits [R, V] for hidden rows [R, C].
    pub fn logits(&self, hidden: &B::Tensor) -> Result<B::Logits> {
        self.be.logits(hidden, self.lm_head_weight())
    }
}

impl Decoder {
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

    /// Every weight with its name relative to the language model's prefix, in
    /// [`DecoderGrads::named`] order (a decoder trained in full; `lm_head.weight` only when untied).
    pub fn params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![("embed_tokens.weight".to_string(), &mut self.embed_tokens)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.push((format!("layers.{i}.input_layernorm.weight"), &mut l.input_layernorm.weight));
            for (p, lin) in PROJ_PATHS.iter().zip([&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down]) {
                out.push((format!("layers.{i}.{p}.weight"), &mut lin.weight));
                if let Some(b) = lin.bias.as_mut() {
                    out.push((format!("layers.{i}.{p}.bias"), b));
                }
            }
            out.push((format!("layers.{i}.post_attention_layernorm.weight"), &mut l.post_attention_layernorm.weight));
        }
        out.push(("norm.weight".to_string(), &mut self.norm.weight));
        if let Some(h) = self.lm_head.as_mut() {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
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
pub fn mask_seed(seed: u64, layer: usize, proj: usize) -> u64 {
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

    pub fn positions(&self) -> Vec<usize> {
        match self.shared_prefix {
            None => (0..self.len).collect(),
            Some((p, c)) => (0..p + c).chain(p..p + (self.len - p - c)).collect(),
        }
    }

    fn mask(&self, window: Option<usize>) -> Result<cpu::AttnMask> {
        match self.shared_prefix {
            None => Ok(cpu::AttnMask::Causal { window }),
            Some((prefix, chosen)) => {
                shared_prefix_fits_window(self.len, window)?;
                if prefix + chosen > self.len {
                    return Err(Error::shape("shared_prefix", format!("prefix {prefix} + chosen {chosen} > length {}", self.len)));
                }
                Ok(cpu::AttnMask::SharedPrefix { prefix, chosen })
            }
        }
    }
}

/// A shared-prefix DPO pair (prompt | chosen | rejected packed as one sequence of `len` rows) is
/// attended with the shared-prefix mask alone, which has no sliding window (on the CPU and in the
/// CUDA kernels alike). That is exact when no two positions of the pair are `window` or more apart,
/// i.e. `len <= window`, so then the window is simply irrelevant; a longer pair is refused, naming
/// the config field, rather than attended without its window.
pub fn shared_prefix_fits_window(len: usize, window: Option<usize>) -> Result<()> {
    match window {
        Some(w) if len > w => Err(Error::Input(format!(
            "a DPO pair of {len} tokens (prompt + chosen + rejected, packed with a shared prefix) is longer than the model's sliding window of {w} \
             (text_config.sliding_window in config.json): the shared-prefix mask does not apply a sliding window; shorten the pair or use a model without one"
        ))),
        _ => Ok(()),
    }
}

/// Gradient of one adapted projection: (layer, projection name, dA [r, in], dB [out, r]).
pub type LoraGrad = (usize, &'static str, Vec<f32>, Vec<f32>);

pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl Decoder {
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
        self.backward_into(tape, dnormed, None)
    }

    /// `backward`; with `full = Some((acc, s))` (the decoder trains in full) also adds s times
    /// the gradient of every layer weight and norm into `acc` (embed_tokens and lm_head are the
    /// caller's: they need the token ids and the log-prob backward).
    pub fn backward_into(&self, tape: &Tape, dnormed: &[f32], mut full: Option<(&mut DecoderGrads, f32)>) -> Result<(Vec<LoraGrad>, Vec<f32>)> {
        let cfg = &self.cfg;
        let (h, hkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qw, kw) = (h * d, hkv * d);
        let masks = tape.layouts.iter().map(|l| l.mask(cfg.sliding_window)).collect::<Result<Vec<_>>>()?;
        let eps = cfg.rms_norm_eps;
        let (mut dx, dw) = cpu::rmsnorm_backward(&tape.x_final, self.norm.weight.data(), dnormed, eps);
        if let Some((acc, s)) = full.as_mut() {
            add_scaled(&mut acc.norm, &dw, *s);
        }
        // dW of projection p of layer li / a norm's dw, when the decoder trains in full.
        fn wgrad(full: &mut Option<(&mut DecoderGrads, f32)>, li: usize, p: usize, lin: &Linear, x: &[f32], dy: &[f32]) {
            if let Some((acc, s)) = full.as_mut() {
                lin.weight_grads_into(x, dy, &mut acc.layers[li].proj[p], *s);
            }
        }
        fn ngrad(full: &mut Option<(&mut DecoderGrads, f32)>, li: usize, post: bool, dw: &[f32]) {
            if let Some((acc, s)) = full.as_mut() {
                let l = &mut acc.layers[li];
                add_scaled(if post { &mut l.post_attention_layernorm } else { &mut l.input_layernorm }, dw, *s);
            }
        }
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
            wgrad(&mut full, li, 6, &layer.down, &t.act, &dx);
            let (dgate, dup) = cpu::swiglu_backward(&t.gate, &t.up, &dact);
            let (dh_g, g) = layer.gate.backward(&t.hn2, &dgate, drop(&layer.gate, 4).as_deref());
            keep(li, PROJECTIONS[4], g);
            wgrad(&mut full, li, 4, &layer.gate, &t.hn2, &dgate);
            let (dh_u, g) = layer.up.backward(&t.hn2, &dup, drop(&layer.up, 5).as_deref());
            keep(li, PROJECTIONS[5], g);
            wgrad(&mut full, li, 5, &layer.up, &t.hn2, &dup);
            let dhn2: Vec<f32> = dh_g.iter().zip(&dh_u).map(|(a, b)| a + b).collect();
            let (dxm, dw) = cpu::rmsnorm_backward(&t.x_mid, layer.post_attention_layernorm.weight.data(), &dhn2, eps);
            ngrad(&mut full, li, true, &dw);
            let dx_mid: Vec<f32> = dx.iter().zip(&dxm).map(|(a, b)| a + b).collect();
            // x_mid = x + o(attn(rope(q(hn1)), rope(k(hn1)), v(hn1)))
            let (dattn, g) = layer.o.backward(&t.attn, &dx_mid, drop(&layer.o, 3).as_deref());
            keep(li, PROJECTIONS[3], g);
            wgrad(&mut full, li, 3, &layer.o, &t.attn, &dx_mid);
            let (mut dq, mut dk, mut dv) = (Vec::with_capacity(t.q.len()), Vec::with_capacity(t.k.len()), Vec::with_capacity(t.v.len()));
            let mut row = 0;
            for (l, &mask) in tape.layouts.iter().zip(&masks) {
                let n = l.len;
                let (qs, ks) = (row * qw..(row + n) * qw, row * kw..(row + n) * kw);
                let (a, b, c) = cpu::attention_backward_gemm(
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
            wgrad(&mut full, li, 0, &layer.q, &t.hn1, &dq);
            let (dh_k, g) = layer.k.backward(&t.hn1, &dk, drop(&layer.k, 1).as_deref());
            keep(li, PROJECTIONS[1], g);
            wgrad(&mut full, li, 1, &layer.k, &t.hn1, &dk);
            let (dh_v, g) = layer.v.backward(&t.hn1, &dv, drop(&layer.v, 2).as_deref());
            keep(li, PROJECTIONS[2], g);
            wgrad(&mut full, li, 2, &layer.v, &t.hn1, &dv);
            let dhn1: Vec<f32> = dh_q.iter().zip(&dh_k).zip(&dh_v).map(|((a, b), c)| a + b + c).collect();
            let (dxi, dw) = cpu::rmsnorm_backward(&t.x, layer.input_layernorm.weight.data(), &dhn1, eps);
            ngrad(&mut full, li, false, &dw);
            dx = dx_mid.iter().zip(&dxi).map(|(a, b)| a + b).collect();
        }
        grads.reverse();
        Ok((grads, dx))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_prefix_pairs_within_the_sliding_window_pass_and_longer_ones_name_the_field() {
        assert!(shared_prefix_fits_window(4096, Some(4096)).is_ok());
        assert!(shared_prefix_fits_window(100_000, None).is_ok());
        let e = shared_prefix_fits_window(4097, Some(4096)).unwrap_err().to_string();
        assert!(e.contains("text_config.sliding_window") && e.contains("4097") && e.contains("4096"), "{e}");
        let l = SeqLayout { len: 12, shared_prefix: Some((4, 3)) };
        assert!(l.mask(Some(12)).is_ok());
        assert!(l.mask(Some(11)).is_err());
    }

    use super::*;
    use crate::config::LlavaConfig;
    use crate::rng::Rng;
    use crate::weights::RandomWeights;

    /// A 2-layer decoder of the tiny fixture's text config (C 32, H 4, Hkv 2, D 8) with random
    /// weights and the given sliding window.
    fn tiny_decoder(window: Option<usize>) -> Decoder {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava_next_tiny");
        let mut cfg = LlavaConfig::from_file(&dir.join("config.json")).unwrap().text;
        cfg.sliding_window = window;
        Decoder::load(&Cpu, &RandomWeights::new(&dir, 17), "model.language_model", "lm_head.weight", &cfg).unwrap()
    }

    fn ids(rng: &mut Rng, n: usize) -> Vec<u32> {
        (0..n).map(|_| 1 + rng.below(32_000) as u32).collect()
    }

    /// Rows [lo, hi) of `x` [R, C].
    fn rows(x: &Tensor, lo: usize, hi: usize) -> Vec<f32> {
        x.rows(lo, hi).into_data()
    }

    /// The two computations agree to f32 summation order (docs/TOLERANCES.md: "decoder: fresh
    /// prefill vs the cache path"): |a - b| <= 1e-5 (1 + |b|). Returns the largest |a - b|.
    fn assert_close(what: &str, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let mut worst = 0f32;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let e = (x - y).abs();
            assert!(e <= 1e-5 * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
            worst = worst.max(e);
        }
        worst
    }

    #[test]
    fn fresh_prefill_matches_the_cache_path() {
        // Three prompts (slots 2, 0, 1 of a 4-slot cache), with and without a sliding window
        // shorter than the prompts. A: one fresh prefill (attention_packed). B: the same prompts
        // in one call with a fourth sequence that continues slot 3 (so the call takes the cache
        // path, attention over the cache). C: each prompt in two chunks (a fresh prefill, then a
        // continued one over the cache). D: A plus one decode step vs E: one fresh prefill of the
        // prompts one token longer.
        for window in [None, Some(5)] {
            let dec = tiny_decoder(window);
            let mut rng = Rng::new(23);
            let lens = [9usize, 4, 13];
            let slots = [2usize, 0, 1];
            let total: usize = lens.iter().sum();
            let prompts: Vec<Vec<u32>> = lens.iter().map(|&n| ids(&mut rng, n + 1)).collect();
            let prompt_ids: Vec<u32> = prompts.iter().zip(&lens).flat_map(|(p, &n)| p[..n].to_vec()).collect();
            let x = dec.embed(&prompt_ids).unwrap();
            let cap = 32;
            let new_cache = || KvCache::new(&Cpu, &dec.cfg, 4, cap).unwrap();
            let what = |s: &str| format!("window {window:?}: {s}");

            // A
            let mut cache_a = new_cache();
            let ha = dec.forward(x.clone(), &slots, &lens, &mut cache_a).unwrap();

            // B: slot 3 holds 2 tokens first; then the prompts and one more token of slot 3.
            let mut cache_b = new_cache();
            let extra = ids(&mut rng, 3);
            dec.forward(dec.embed(&extra[..2]).unwrap(), &[3], &[2], &mut cache_b).unwrap();
            let xb = Tensor::cat_rows(&[&x, &dec.embed(&extra[2..]).unwrap()]).unwrap();
            let hb = dec.forward(xb, &[2, 0, 1, 3], &[9, 4, 13, 1], &mut cache_b).unwrap();
            let mut worst = assert_close(&what("cache path vs fresh prefill"), &rows(&hb, 0, total), ha.data());

            // C: chunks of [4, 2, 6] then [5, 2, 7].
            let mut cache_c = new_cache();
            let first = [4usize, 2, 6];
            let (mut part1, mut part2) = (Vec::new(), Vec::new());
            for (p, (&n, &f)) in prompts.iter().zip(lens.iter().zip(&first)) {
                part1.extend_from_slice(&p[..f]);
                part2.extend_from_slice(&p[f..n]);
            }
            let h1 = dec.forward(dec.embed(&part1).unwrap(), &slots, &first, &mut cache_c).unwrap();
            let second: Vec<usize> = lens.iter().zip(&first).map(|(n, f)| n - f).collect();
            let h2 = dec.forward(dec.embed(&part2).unwrap(), &slots, &second, &mut cache_c).unwrap();
            let (mut at_a, mut at1, mut at2) = (0, 0, 0);
            for (&n, &f) in lens.iter().zip(&first) {
                worst = worst.max(assert_close(&what("first chunk"), &rows(&h1, at1, at1 + f), &rows(&ha, at_a, at_a + f)));
                worst = worst.max(assert_close(&what("continued chunk"), &rows(&h2, at2, at2 + n - f), &rows(&ha, at_a + f, at_a + n)));
                at_a += n;
                at1 += f;
                at2 += n - f;
            }

            // D vs E
            let next: Vec<u32> = prompts.iter().zip(&lens).map(|(p, &n)| p[n]).collect();
            let hd = dec.forward(dec.embed(&next).unwrap(), &slots, &[1, 1, 1], &mut cache_a).unwrap();
            let longer: Vec<usize> = lens.iter().map(|n| n + 1).collect();
            let all_ids: Vec<u32> = prompts.concat();
            let mut cache_e = new_cache();
            let he = dec.forward(dec.embed(&all_ids).unwrap(), &slots, &longer, &mut cache_e).unwrap();
            let mut end = 0;
            for (b, &n) in longer.iter().enumerate() {
                end += n;
                worst = worst.max(assert_close(&what("decode step vs longer prefill"), &rows(&hd, b, b + 1), &rows(&he, end - 1, end)));
            }
            eprintln!("window {window:?}: largest difference {worst:e}");
        }
    }
}
