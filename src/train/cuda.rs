//! LoRA DPO on one GPU (feature `cuda`): the step of [`super::dpo_pair_grads_packed`] with every
//! op on the device, and the adapters' parameters, gradients and AdamW state kept there (f32).
//!
//! One pair, packed as [prefix | chosen | rejected] under the shared-prefix mask (the image and
//! prompt are encoded once), or as two causal sequences [prefix | chosen], [prefix | rejected]
//! when the model has a sliding window:
//!
//!   x [T, C]  = `Pipeline<Cuda>::embed` (frozen vision tower, projector and embedding, bf16)
//!   forward, per layer l (only its input x_l [T, C] bf16 is kept: per-layer recomputation, so
//!   the 7B model at T = 3,300 keeps 32 x 27 MB of activations):
//!       hn1 = rmsnorm(x); q, k, v = lora_fwd(hn1) (u = hn1 A^T kept for the backward);
//!       rope(q, k); a, lse = attention_fwd (FlashAttention-2, varlen, shared-prefix mask);
//!       x_mid = x + lora_fwd(a, o); hn2 = rmsnorm(x_mid); g, u = lora_fwd(hn2);
//!       x_out = x_mid + lora_fwd(swiglu(g, u), down)
//!   h = rmsnorm(x_L); the R = |chosen| + |rejected| response rows gathered -> `logprob` (lm_head
//!   fused with the log-softmax, chunked over V: never [T, V]) -> logp [R], lse [R]
//!   `dpo` kernel -> loss, rewards, dlogp [R] (f64 inside)
//!   `logprob_backward` -> dh [R, C] -> scattered back to the rows (the last prefix row predicts
//!   the first token of both responses: its two gradients add) -> rmsnorm backward
//!   backward, per layer from the last: recompute the layer from x_l, then down, swiglu, gate/up,
//!   post-norm, o, attention_bwd, rope backward, q/k/v, input norm (residual gradients added);
//!   every `lora_bwd` adds s dy^T u and s v^T x to the adapter's dB, dA (f32, accumulated over
//!   the pairs of a step).
//!
//! The step: the accumulated gradients are the raw sum over the step's pairs; the mean's 1/n and
//! clip_grad_norm_'s factor go into the fused AdamW as one gradient scale (`grad_sumsq` gives the
//! norm). The bf16 copy of the adapters that the kernels read is refreshed after each step.
//!
//! The projector (`--projector-lr`, STIC's `mm_projector_lr`) trains in full: its f32 master
//! weights, gradients and AdamW moments live on the device next to the adapters'; the image's
//! forward keeps the vision features v, linear_1's output h and the activation a; the decoder's
//! d(input embeddings) at the image rows is scattered back through the AnyRes row map to the
//! projector's rows, then dW2 += dy^T a, db2 += dy^T 1, da = dy W2, dh = da act'(h), dW1 += dh^T v,
//! db1 += dh^T 1 (`matmul_tn`, `matmul_nn`, `activation_backward`). After each step the bf16
//! weights the model runs with are refreshed from the f32 masters.
//!
//! LoRA dropout (PEFT's, on the adapter's input): the masks are the CPU's (`kernels/dropout.cu`
//! regenerates `Linear::dropout_mask` from the step's seed, the layer and the projection), the
//! LoRA path takes x * mask (`lora_fwd`'s x_drop), its dx is masked (`lora_bwd`'s dropout), and the
//! recomputed forward of the backward regenerates the same masks.
//!
//! SFT (`train_sft`, `stic train-sft --device cuda`): one conversation as a plain causal sequence,
//! the mean negative log-likelihood of its answer tokens (as [`super::sft_grads`]), through the
//! same forward and backward (`CudaLearner::sft_example`).
//!
//! Projector-only runs (`--lora-r 0 --projector-lr LR`, LLaVA's alignment stage) train the
//! projector alone and save `multi_modal_projector.safetensors`, as on the CPU.
//!
//! Not supported here (a clear error): biases on the decoder's projections (LLaMA, Vicuna and
//! Mistral have none).

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView};

use crate::adapter::{init_loras, proj_index, read_loras, save_loras, LoraSpec};
use crate::backend::cuda::{AdamWTensor, AttnTrainMask, Cuda, CudaDevice, CudaLinear, CudaTensor, Dropout, VarlenAttn};
use crate::backend::{Backend, Rows};
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::loss::DpoOut;
use crate::model::decoder::{mask_seed, Decoder, SeqLayout, PROJECTIONS};
use crate::model::llava::FeatureRow;
use crate::model::projector::Projector;
use crate::nn::Lora;
use crate::optim::{AdamWConfig, AdamWState};
use crate::tensor::Tensor;
use crate::trainer::{ExampleOut, Learner, TrainArgs};

use super::Pair;

/// One adapted projection: where its A [r, K] and B [N, r] live in the flat parameter buffers.
#[derive(Clone, Copy, Debug)]
struct Adapter {
    layer: usize,
    /// Index in [`PROJECTIONS`].
    proj: usize,
    /// K: in features; N: out features.
    k: usize,
    n: usize,
    off_a: usize,
    off_b: usize,
}

/// The trainable state on the device.
struct DeviceLoras {
    r: usize,
    scale: f32,
    /// LoRA dropout probability (0: none).
    dropout: f32,
    adapters: Vec<Adapter>,
    /// Per layer, per projection: the index in `adapters`.
    lookup: Vec<[Option<usize>; 7]>,
    /// f32 master parameters, gradients and AdamW moments, adapter after adapter (A then B).
    p: CudaSlice<f32>,
    g: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// The bf16 copy of p the LoRA kernels read.
    p16: CudaSlice<u16>,
    /// AdamW steps taken (the same for every tensor).
    step: u64,
}

/// The projector's trainable state on the device: its parameters in `params_mut` order
/// (`linear_1.weight`, `linear_1.bias`, `linear_2.weight`, `linear_2.bias`, or `weight`, `bias`),
/// back to back.
struct DeviceProjector {
    /// (name, shape, offset) of every parameter.
    params: Vec<(String, Vec<usize>, usize)>,
    p: CudaSlice<f32>,
    g: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    step: u64,
}

/// What the projector's backward needs from one image's forward.
struct ImageTape {
    /// Vision features [N*P, Cv], linear_1's output h and act(h) [N*P, C] (MLP).
    v: CudaTensor,
    h: Option<CudaTensor>,
    a: Option<CudaTensor>,
    /// (row of the sequence, row of the projector's output) of every projected feature row.
    map: Vec<(u32, u32)>,
}

/// One pair, ready for the decoder.
struct Prepared {
    x: CudaTensor,
    layouts: Vec<SeqLayout>,
    /// The rows whose next-token log-probs are scored, chosen's then rejected's, and their targets.
    rows: Vec<u32>,
    targets: Vec<u32>,
    /// |chosen|.
    chosen: usize,
    tapes: Vec<ImageTape>,
}

/// The scored rows of a forward: their hidden states [R, C], log-sum-exps and targets, the rows
/// themselves, and the batch's T.
struct Scored {
    hs: CudaTensor,
    lse: CudaSlice<f32>,
    targets: CudaSlice<u32>,
    rows: Vec<u32>,
    t: usize,
}

/// What one layer's forward produced (all kept only while that layer's backward runs).
struct LayerActs {
    hn1: CudaTensor,
    q: CudaTensor,
    k: CudaTensor,
    v: CudaTensor,
    attn: CudaTensor,
    lse: CudaSlice<f32>,
    x_mid: CudaTensor,
    hn2: CudaTensor,
    gate: CudaTensor,
    up: CudaTensor,
    act: CudaTensor,
    /// u = x A^T [T, r] of every adapted projection (PROJECTIONS order).
    u: [Option<CudaSlice<f32>>; 7],
    /// The LoRA path's input x * mask of every adapted projection under dropout.
    xd: [Option<CudaTensor>; 7],
}

/// A packed batch's attention description, owned.
struct Batch {
    cu_seqlens: CudaSlice<u32>,
    max_seqlen: usize,
    /// (prefix, chosen) per sequence for the shared-prefix mask.
    pairs: Option<CudaSlice<u32>>,
    window: Option<usize>,
    positions: CudaSlice<u32>,
}

/// The attention description of `b` for the model `tc`: the shared-prefix mask when the batch is
/// a packed DPO pair (`sp`: its (prefix, chosen) lengths on the device), causal otherwise.
fn varlen<'a>(tc: &crate::config::TextConfig, b: &'a Batch, cu: &'a CudaView<'a, u32>, sp: Option<&'a CudaView<'a, u32>>) -> VarlenAttn<'a> {
    VarlenAttn {
        cu_seqlens: cu,
        max_seqlen: b.max_seqlen,
        n_heads: tc.num_attention_heads,
        n_kv_heads: tc.num_key_value_heads,
        head_dim: tc.head_dim,
        scale: 1.0 / (tc.head_dim as f32).sqrt(),
        mask: match sp {
            Some(pairs) => AttnTrainMask::SharedPrefix { pairs },
            None => AttnTrainMask::Causal { window: b.window },
        },
    }
}

/// The GPU [`Learner`]: a frozen bf16 model and the adapters' training state on one device.
pub struct CudaLearner {
    pub pipe: Pipeline<Cuda>,
    dev: Arc<CudaDevice>,
    cfg: AdamWConfig,
    loras: Option<DeviceLoras>,
    /// Set when the projector trains.
    projector: Option<DeviceProjector>,
    /// A column of ones (bf16) for the bias gradients, grown as needed.
    ones: Option<CudaSlice<u16>>,
    /// The weight of the examples accumulated since the last step (all the same: 1 / n).
    pending_w: Option<f32>,
    /// The LoRA dropout seed of the example being run (None: no dropout, as in evaluation).
    dropout_seed: Option<u64>,
    inv_freq: CudaSlice<f32>,
    neg_inv_freq: CudaSlice<f32>,
}

impl CudaLearner {
    pub fn new(pipe: Pipeline<Cuda>, args: &TrainArgs) -> Result<Self> {
        let dev = pipe.model.decoder.backend().device().clone();
        let tc = &pipe.model.cfg.text;
        for li in 0..pipe.model.decoder.n_layers() {
            let (_, projs, _) = pipe.model.decoder.layer_weights(li);
            if let Some(p) = projs.iter().position(|l| l.bias.is_some()) {
                return Err(Error::Input(format!("layer {li} {} has a bias: LoRA training on --device cuda supports bias-free projections only", PROJECTIONS[p])));
            }
        }
        let inv_freq = dev.rope_inv_freq(tc.head_dim, tc.rope_theta)?;
        let neg_inv_freq = dev.rope_inv_freq_backward(tc.head_dim, tc.rope_theta)?;
        let mut learner = CudaLearner {
            dev,
            cfg: AdamWConfig { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() },
            loras: None,
            projector: None,
            ones: None,
            pending_w: None,
            dropout_seed: None,
            inv_freq,
            neg_inv_freq,
            pipe,
        };
        if args.projector_lr.is_some() {
            learner.projector = Some(learner.projector_state()?);
        }
        Ok(learner)
    }

    /// Start (fresh moments, masters from the current weights) or stop training the projector.
    pub fn train_projector(&mut self, on: bool) -> Result<()> {
        self.projector = if on { Some(self.projector_state()?) } else { None };
        Ok(())
    }

    /// The projector's current (bf16) weights as the f32 masters of a fresh training state.
    fn projector_state(&self) -> Result<DeviceProjector> {
        let mut params = Vec::new();
        let mut len = 0;
        for (prefix, l) in self.pipe.model.projector.linears() {
            params.push((format!("{prefix}weight"), vec![l.n, l.k], len));
            len += l.n * l.k;
            if l.bias.is_some() {
                params.push((format!("{prefix}bias"), vec![l.n], len));
                len += l.n;
            }
        }
        let mut p = self.dev.zeros::<f32>(len)?;
        for (prefix, l) in self.pipe.model.projector.linears() {
            let (_, _, off) = params.iter().find(|(n, _, _)| *n == format!("{prefix}weight")).expect("listed above");
            self.dev.cast_bf16_to_f32_into(&l.weight.as_view(), &mut p.slice_mut(*off..off + l.n * l.k))?;
            if let Some(b) = &l.bias {
                let (_, _, off) = params.iter().find(|(n, _, _)| *n == format!("{prefix}bias")).expect("listed above");
                self.dev.cast_bf16_to_f32_into(&b.as_view(), &mut p.slice_mut(*off..off + l.n))?;
            }
        }
        let z = || self.dev.zeros::<f32>(len);
        Ok(DeviceProjector { params, g: z()?, m: z()?, v: z()?, p, step: 0 })
    }

    /// Copy the f32 masters into the bf16 weights the model runs with.
    fn refresh_projector(&mut self) -> Result<()> {
        let Some(pr) = &self.projector else { return Ok(()) };
        let dev = self.dev.clone();
        let mut linears = self.pipe.model.projector.linears_mut();
        for (name, shape, off) in &pr.params {
            let len: usize = shape.iter().product();
            let (prefix, which) = name.rsplit_once('.').map(|(a, b)| (format!("{a}."), b)).unwrap_or((String::new(), name.as_str()));
            let l = linears.iter_mut().find(|(p, _)| *p == prefix).map(|(_, l)| l).ok_or_else(|| Error::Input(format!("no projector linear for `{name}`")))?;
            let dst = if which == "weight" { &mut l.weight } else { l.bias.as_mut().ok_or_else(|| Error::Input(format!("`{name}`: the projector has no bias")))? };
            dev.cast_f32_to_bf16_into(&pr.p.slice(*off..off + len), &mut dst.as_view_mut())?;
        }
        Ok(())
    }

    /// The projector's parameters from `ws` (keys `prefix` + name): into the f32 masters when the
    /// projector trains, and into the bf16 weights the model runs with either way (as the CPU's
    /// `load_adapter` does).
    fn load_projector(&mut self, ws: crate::weights::WeightStore, prefix: &str) -> Result<()> {
        let training = self.projector.is_some();
        let mut st = match self.projector.take() {
            Some(st) => st,
            None => self.projector_state()?,
        };
        let mut host = vec![0f32; st.p.len()];
        for (name, shape, off) in &st.params {
            let t = ws.get(&format!("{prefix}{name}"), shape)?;
            host[*off..off + t.data().len()].copy_from_slice(t.data());
        }
        ws.finish()?;
        st.p = self.dev.htod(&host)?;
        self.projector = Some(st);
        self.refresh_projector()?;
        if !training {
            self.projector = None;
        }
        Ok(())
    }

    /// A column of `n` ones (bf16).
    fn ones(&mut self, n: usize) -> Result<CudaView<'_, u16>> {
        if self.ones.as_ref().is_none_or(|o| o.len() < n) {
            self.ones = Some(self.dev.htod(&vec![0x3F80u16; n.max(1)])?);
        }
        Ok(self.ones.as_ref().expect("set above").slice(0..n))
    }

    fn decoder(&self) -> &Decoder<Cuda> {
        &self.pipe.model.decoder
    }

    /// Every projection as (layer, name, in, out), PEFT order.
    fn shapes(&self) -> Vec<(usize, &'static str, usize, usize)> {
        let s = Decoder::<Cuda>::projection_shapes(&self.pipe.model.cfg.text);
        (0..self.decoder().n_layers()).flat_map(|l| (0..7).map(move |p| (l, PROJECTIONS[p], s[p].0, s[p].1))).collect()
    }

    /// Put host adapters on the device (fresh gradients and moments).
    fn upload(&mut self, loras: Vec<(usize, &'static str, Lora)>) -> Result<()> {
        let first = loras.first().ok_or_else(|| Error::Input("no adapters to train".into()))?;
        let (r, scale, dropout) = (first.2.a.dim(0), first.2.scale, first.2.dropout);
        if let Some((l, n, x)) = loras.iter().find(|(_, _, x)| x.a.dim(0) != r || x.scale != scale || x.dropout != dropout) {
            return Err(Error::Input(format!(
                "layer {l} {n}: rank {} / scale {} / dropout {} differ from the first adapter's {r} / {scale} / {dropout}",
                x.a.dim(0),
                x.scale,
                x.dropout
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Input(format!("LoRA dropout {dropout} must be in [0, 1)")));
        }
        if r > crate::backend::cuda::LORA_MAX_RANK {
            return Err(Error::Input(format!("LoRA rank {r} > {} on --device cuda", crate::backend::cuda::LORA_MAX_RANK)));
        }
        let mut host = Vec::new();
        let mut adapters = Vec::new();
        let mut lookup = vec![[None; 7]; self.decoder().n_layers()];
        for (layer, name, l) in &loras {
            let proj = proj_index(name).expect("a projection name");
            let (k, n) = (l.a.dim(1), l.b.dim(0));
            let off_a = host.len();
            host.extend_from_slice(l.a.data());
            let off_b = host.len();
            host.extend_from_slice(l.b.data());
            lookup[*layer][proj] = Some(adapters.len());
            adapters.push(Adapter { layer: *layer, proj, k, n, off_a, off_b });
        }
        let p = self.dev.htod(&host)?;
        let p16 = self.dev.cast_f32_to_bf16(&p)?;
        let z = || self.dev.zeros::<f32>(host.len());
        self.loras = Some(DeviceLoras { r, scale, dropout, adapters, lookup, g: z()?, m: z()?, v: z()?, p, p16, step: 0 });
        self.pending_w = None;
        Ok(())
    }

    fn loras(&self) -> Result<&DeviceLoras> {
        self.loras.as_ref().ok_or_else(|| Error::Input("no adapters attached: init or load them first".into()))
    }

    /// Something trains: adapters, the projector, or both (projector only: LLaVA's alignment
    /// stage, `--lora-r 0 --projector-lr LR`).
    fn check_trainable(&self) -> Result<()> {
        if self.loras.is_none() && self.projector.is_none() {
            return Err(Error::Input("nothing to train: no adapters attached and the projector does not train".into()));
        }
        Ok(())
    }

    /// The adapters back on the host.
    fn download(&self) -> Result<Vec<(usize, &'static str, Lora)>> {
        let Some(l) = &self.loras else { return Ok(Vec::new()) };
        let p = self.dev.dtoh(&l.p)?;
        l.adapters
            .iter()
            .map(|a| {
                let at = Tensor::new(p[a.off_a..a.off_a + l.r * a.k].to_vec(), &[l.r, a.k])?;
                let bt = Tensor::new(p[a.off_b..a.off_b + a.n * l.r].to_vec(), &[a.n, l.r])?;
                Ok((a.layer, PROJECTIONS[a.proj], Lora { a: at, b: bt, scale: l.scale, dropout: l.dropout }))
            })
            .collect()
    }

    /// The attention batch and positions of `layouts` (one packed pair, or plain sequences).
    fn batch(&self, layouts: &[SeqLayout]) -> Result<Batch> {
        let mut cu = vec![0u32];
        let mut pairs = Vec::new();
        for l in layouts {
            cu.push(cu.last().copied().unwrap_or(0) + l.len as u32);
            let (p, c) = l.shared_prefix.unwrap_or((0, 0));
            pairs.extend([p as u32, c as u32]);
        }
        let positions: Vec<u32> = layouts.iter().flat_map(|l| l.positions()).map(|p| p as u32).collect();
        let shared = layouts.iter().any(|l| l.shared_prefix.is_some());
        let window = self.pipe.model.cfg.text.sliding_window;
        if shared && window.is_some() {
            return Err(Error::Input("a shared-prefix DPO pair cannot use a sliding window".into()));
        }
        Ok(Batch {
            cu_seqlens: self.dev.htod(&cu)?,
            max_seqlen: layouts.iter().map(|l| l.len).max().unwrap_or(1).max(1),
            pairs: if shared { Some(self.dev.htod(&pairs)?) } else { None },
            window,
            positions: self.dev.htod(&positions)?,
        })
    }

    /// The dropout of projection `proj` of layer `layer` in the example being run, if any.
    fn dropout_of(&self, layer: usize, proj: usize) -> Option<Dropout> {
        let p = self.loras.as_ref()?.dropout;
        let seed = self.dropout_seed?;
        (p > 0.0).then(|| Dropout { seed: mask_seed(seed, layer, proj), p })
    }

    /// y [T, N] = x W^T (+ s x A^T B^T when the projection is adapted and `lora`), u, and the
    /// LoRA path's input x * mask under dropout.
    #[allow(clippy::type_complexity)]
    fn linear_fwd(&self, x: &CudaTensor, w: &CudaLinear, layer: usize, proj: usize, lora: bool) -> Result<(CudaTensor, Option<CudaSlice<f32>>, Option<CudaTensor>)> {
        let t = x.rows;
        let (n, k) = (w.n, w.k);
        let adapter = if lora { self.loras.as_ref().and_then(|l| l.lookup[layer][proj].map(|i| (l, l.adapters[i]))) } else { None };
        // SAFETY: every element of y (and u) is written by the GEMMs below before any read.
        let mut y = unsafe { self.dev.alloc_uninit::<u16>(t * n) }?;
        let (u, xd) = match adapter {
            Some((l, a)) => {
                let mut u = unsafe { self.dev.alloc_uninit::<f32>(t * l.r) }?;
                let (pa, pb) = (l.p16.slice(a.off_a..a.off_a + l.r * k), l.p16.slice(a.off_b..a.off_b + n * l.r));
                // Under dropout the LoRA path takes x * mask (kept for the backward).
                let xd = match self.dropout_of(layer, proj) {
                    None => None,
                    Some(d) => {
                        // SAFETY: `dropout` writes every element.
                        let mut xd = CudaTensor { data: unsafe { self.dev.alloc_uninit::<u16>(t * k) }?, rows: t, cols: k };
                        self.dev.dropout(&x.data.as_view(), &mut xd.data.as_view_mut(), d)?;
                        Some(xd)
                    }
                };
                let xdv = xd.as_ref().map(|xd| xd.data.as_view());
                self.dev.lora_fwd(&x.data.as_view(), xdv.as_ref(), &w.weight.as_view(), &pa, &pb, l.scale, &mut y.as_view_mut(), &mut u.as_view_mut(), t, k, n, l.r)?;
                (Some(u), xd)
            }
            None => {
                self.dev.matmul(&x.data.as_view(), &w.weight.as_view(), None, &mut y.as_view_mut(), t, n, k, false)?;
                (None, None)
            }
        };
        Ok((CudaTensor { data: y, rows: t, cols: n }, u, xd))
    }

    /// dx [T, K] = dy W (+ s (dy B) A), and the adapter's dA, dB accumulated.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        dev: &CudaDevice,
        loras: Option<&mut DeviceLoras>,
        x: &CudaTensor,
        dy: &CudaTensor,
        w: &CudaLinear,
        layer: usize,
        proj: usize,
        u: Option<&CudaSlice<f32>>,
        dropout: Option<(&CudaTensor, Dropout)>,
    ) -> Result<CudaTensor> {
        let t = x.rows;
        let (n, k) = (w.n, w.k);
        // SAFETY: the GEMMs below write every element of dx.
        let mut dx = unsafe { dev.alloc_uninit::<u16>(t * k) }?;
        match (loras.and_then(|l| l.lookup[layer][proj].map(|i| (l.adapters[i], l))), u) {
            (Some((a, l)), Some(u)) => {
                let (pa, pb) = (l.p16.slice(a.off_a..a.off_a + l.r * k), l.p16.slice(a.off_b..a.off_b + n * l.r));
                let (mut ga, mut gb) = l.g.split_at_mut(a.off_b);
                let mut ga = ga.slice_mut(a.off_a..a.off_a + l.r * k);
                let mut gb = gb.slice_mut(0..n * l.r);
                // Under dropout the LoRA path's input is the forward's x * mask.
                let x_lora = dropout.map_or(x, |(xd, _)| xd);
                let (xv, wv, uv, dyv) = (x_lora.data.as_view(), w.weight.as_view(), u.as_view(), dy.data.as_view());
                dev.lora_bwd(&xv, &wv, &pa, &pb, l.scale, &uv, &dyv, &mut dx.as_view_mut(), &mut ga, &mut gb, t, k, n, l.r, true, dropout.map(|(_, d)| d))?;
            }
            _ => dev.matmul_nn(&dy.data.as_view(), &w.weight.as_view(), &mut dx.as_view_mut(), t, k, n, false)?,
        }
        Ok(CudaTensor { data: dx, rows: t, cols: k })
    }

    /// One layer's forward from its input x: the output and the activations of the backward.
    fn layer_fwd(&self, li: usize, x: &CudaTensor, b: &Batch, lora: bool) -> Result<(CudaTensor, LayerActs)> {
        let be = self.decoder().backend();
        let tc = &self.pipe.model.cfg.text;
        let (h, hkv, d) = (tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim);
        let (n1, w, n2) = self.decoder().layer_weights(li);
        let t = x.rows;
        let hn1 = be.rmsnorm(x, n1)?;
        let (mut q, uq, dq) = self.linear_fwd(&hn1, w[0], li, 0, lora)?;
        let (mut k, uk, dk) = self.linear_fwd(&hn1, w[1], li, 1, lora)?;
        let (v, uv, dv) = self.linear_fwd(&hn1, w[2], li, 2, lora)?;
        self.dev.rope_qk(&mut q.data.as_view_mut(), h, &mut k.data.as_view_mut(), hkv, &b.positions.as_view(), &self.inv_freq.as_view())?;
        // SAFETY: attention_fwd writes every row of out and lse (cu_seqlens covers all T rows).
        let mut attn = CudaTensor { data: unsafe { self.dev.alloc_uninit::<u16>(t * h * d) }?, rows: t, cols: h * d };
        let mut lse = unsafe { self.dev.alloc_uninit::<f32>(h * t) }?;
        {
            let cu = b.cu_seqlens.as_view();
            let sp = b.pairs.as_ref().map(|p| p.as_view());
            let batch = varlen(&self.pipe.model.cfg.text, b, &cu, sp.as_ref());
            self.dev.attention_fwd(&q.data.as_view(), &k.data.as_view(), &v.data.as_view(), &batch, &mut attn.data.as_view_mut(), &mut lse.as_view_mut())?;
        }
        let (o, uo, do_) = self.linear_fwd(&attn, w[3], li, 3, lora)?;
        let mut x_mid = x.clone();
        be.add(&mut x_mid, &o)?;
        let hn2 = be.rmsnorm(&x_mid, n2)?;
        let (gate, ug, dg) = self.linear_fwd(&hn2, w[4], li, 4, lora)?;
        let (up, uu, du) = self.linear_fwd(&hn2, w[5], li, 5, lora)?;
        let act = be.swiglu(&gate, &up)?;
        let (down, ud, dd) = self.linear_fwd(&act, w[6], li, 6, lora)?;
        let mut out = x_mid.clone();
        be.add(&mut out, &down)?;
        Ok((out, LayerActs { hn1, q, k, v, attn, lse, x_mid, hn2, gate, up, act, u: [uq, uk, uv, uo, ug, uu, ud], xd: [dq, dk, dv, do_, dg, du, dd] }))
    }

    /// The backward of layer li given d(output) `dx` (updated in place to d(input)).
    fn layer_bwd(&mut self, li: usize, x: &CudaTensor, b: &Batch, dx: &mut CudaTensor) -> Result<()> {
        let (_, a) = self.layer_fwd(li, x, b, true)?;
        let drops: [Option<Dropout>; 7] = std::array::from_fn(|p| self.dropout_of(li, p));
        let drop = |p: usize| a.xd[p].as_ref().zip(drops[p]);
        let CudaLearner { pipe, dev, loras, neg_inv_freq, .. } = self;
        let dev: &CudaDevice = dev;
        let dec = &pipe.model.decoder;
        let be = dec.backend();
        let tc = &pipe.model.cfg.text;
        let (h, hkv) = (tc.num_attention_heads, tc.num_key_value_heads);
        let eps = tc.rms_norm_eps as f32;
        let (n1, w, n2) = dec.layer_weights(li);
        let uninit_like = |r: &CudaTensor| -> Result<CudaTensor> {
            // SAFETY: every caller has a kernel overwrite all elements before reading.
            Ok(CudaTensor { data: unsafe { dev.alloc_uninit::<u16>(r.rows * r.cols) }?, rows: r.rows, cols: r.cols })
        };
        // out = x_mid + down(silu(gate) * up)
        let dact = Self::linear_bwd(dev, loras.as_mut(), &a.act, dx, w[6], li, 6, a.u[6].as_ref(), drop(6))?;
        let (mut dgate, mut dup) = (uninit_like(&a.gate)?, uninit_like(&a.up)?);
        dev.swiglu_backward(&a.gate.data.as_view(), &a.up.data.as_view(), &dact.data.as_view(), &mut dgate.data.as_view_mut(), &mut dup.data.as_view_mut())?;
        let mut dhn2 = Self::linear_bwd(dev, loras.as_mut(), &a.hn2, &dgate, w[4], li, 4, a.u[4].as_ref(), drop(4))?;
        let dh_u = Self::linear_bwd(dev, loras.as_mut(), &a.hn2, &dup, w[5], li, 5, a.u[5].as_ref(), drop(5))?;
        be.add(&mut dhn2, &dh_u)?;
        let mut dxm = uninit_like(&a.x_mid)?;
        dev.rmsnorm_backward(&a.x_mid.data.as_view(), &n2.weight.as_view(), &dhn2.data.as_view(), eps, &mut dxm.data.as_view_mut())?;
        be.add(dx, &dxm)?; // dx is now d(x_mid)
        // x_mid = x + o(attention(rope(q(hn1)), rope(k(hn1)), v(hn1)))
        let dattn = Self::linear_bwd(dev, loras.as_mut(), &a.attn, dx, w[3], li, 3, a.u[3].as_ref(), drop(3))?;
        let (mut dq, mut dk, mut dv) = (uninit_like(&a.q)?, uninit_like(&a.k)?, uninit_like(&a.v)?);
        {
            let cu = b.cu_seqlens.as_view();
            let sp = b.pairs.as_ref().map(|p| p.as_view());
            let batch = varlen(tc, b, &cu, sp.as_ref());
            dev.attention_bwd(
                &a.q.data.as_view(),
                &a.k.data.as_view(),
                &a.v.data.as_view(),
                &a.attn.data.as_view(),
                &dattn.data.as_view(),
                &a.lse.as_view(),
                &batch,
                &mut dq.data.as_view_mut(),
                &mut dk.data.as_view_mut(),
                &mut dv.data.as_view_mut(),
            )?;
        }
        dev.rope_backward_qk(&mut dq.data.as_view_mut(), h, &mut dk.data.as_view_mut(), hkv, &b.positions.as_view(), &neg_inv_freq.as_view())?;
        let mut dhn1 = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dq, w[0], li, 0, a.u[0].as_ref(), drop(0))?;
        let dh_k = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dk, w[1], li, 1, a.u[1].as_ref(), drop(1))?;
        be.add(&mut dhn1, &dh_k)?;
        let dh_v = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dv, w[2], li, 2, a.u[2].as_ref(), drop(2))?;
        be.add(&mut dhn1, &dh_v)?;
        let mut dxi = uninit_like(x)?;
        dev.rmsnorm_backward(&x.data.as_view(), &n1.weight.as_view(), &dhn1.data.as_view(), eps, &mut dxi.data.as_view_mut())?;
        be.add(dx, &dxi)?;
        Ok(())
    }

    /// Forward of every layer from x (keeping each layer's input when `keep`): the final-normed
    /// hidden states, the pre-norm output and the layer inputs.
    fn forward(&self, x: CudaTensor, b: &Batch, lora: bool, keep: bool) -> Result<(CudaTensor, CudaTensor, Vec<CudaTensor>)> {
        let be = self.decoder().backend();
        let mut inputs = Vec::new();
        let mut x = x;
        for li in 0..self.decoder().n_layers() {
            be.range_push(&format!("train layer {li}"));
            let (out, _) = self.layer_fwd(li, &x, b, lora)?;
            if keep {
                inputs.push(x);
            }
            x = out;
            be.range_pop();
        }
        let h = be.rmsnorm(&x, self.decoder().final_norm())?;
        Ok((h, x, inputs))
    }

    /// `Pipeline::embed`, keeping each image's projector tape when the projector trains (then
    /// `base` is the row where this sequence starts in the packed batch).
    fn embed(&self, ids: &[u32], images: &[crate::image::RgbImage], base: usize) -> Result<(CudaTensor, Vec<ImageTape>)> {
        if self.projector.is_none() {
            return Ok((self.pipe.embed(ids, images)?.0, Vec::new()));
        }
        let model = &self.pipe.model;
        let be = model.backend();
        let mut feats = Vec::new();
        let mut tapes = Vec::new();
        for img in images {
            let px = crate::image::preprocess(img, &self.pipe.processor)?;
            let v = model.vision_features(&px.pixel_values)?;
            let (y, h, a) = match &model.projector {
                Projector::Mlp { linear_1, act, linear_2 } => {
                    let h = be.matmul(&v, linear_1)?;
                    let mut a = h.clone();
                    be.activation(act, &mut a)?;
                    (be.matmul(&a, linear_2)?, Some(h), Some(a))
                }
                Projector::Linear(l) => (be.matmul(&v, l)?, None, None),
            };
            let n = px.pixel_values.dim(0);
            let rows = model.feature_rows(&px, n, y.rows / n.max(1))?;
            feats.push(model.gather_features(&y, &rows)?);
            tapes.push((v, h, a, rows));
        }
        let x = model.embed_with_images(ids, &feats)?;
        // Image j's rows start after the tokens before its <image> and the earlier images' rows.
        let mut out = Vec::new();
        let mut row = base;
        let mut tapes = tapes.into_iter();
        for &t in ids {
            if t == model.cfg.image_token_index {
                let (v, h, a, rows) = tapes.next().expect("embed_with_images checked the count");
                let map: Vec<(u32, u32)> =
                    rows.iter().enumerate().filter_map(|(r, fr)| if let FeatureRow::Projected(i) = *fr { Some(((row + r) as u32, i as u32)) } else { None }).collect();
                row += rows.len();
                out.push(ImageTape { v, h, a, map });
            } else {
                row += 1;
            }
        }
        Ok((x, out))
    }

    /// The pair's embeddings, layouts, response rows and targets (as `dpo_pair_grads_packed`,
    /// or two sequences under a sliding window), and the projector's tapes.
    fn prepare(&self, pair: &Pair) -> Result<Prepared> {
        let pipe = &self.pipe;
        let prompt_ids = pipe.prompt_ids(&pair.prompt, pair.images.len())?;
        let chosen = pipe.tokenizer.encode(&pair.chosen, false)?;
        let rejected = pipe.tokenizer.encode(&pair.rejected, false)?;
        if chosen.is_empty() || rejected.is_empty() {
            return Err(Error::Input("a response is empty after tokenization".into()));
        }
        let (c, r) = (chosen.len(), rejected.len());
        let targets: Vec<u32> = chosen.iter().chain(&rejected).copied().collect();
        if pipe.model.cfg.text.sliding_window.is_none() {
            let all: Vec<u32> = prompt_ids.iter().chain(&chosen).chain(&rejected).copied().collect();
            let (x, tapes) = self.embed(&all, &pair.images, 0)?;
            let t = x.n_rows();
            let p = t - c - r;
            // The last prefix row predicts the first token of both responses.
            let rows: Vec<u32> = (p - 1..p + c - 1).chain(std::iter::once(p - 1)).chain(p + c..p + c + r - 1).map(|i| i as u32).collect();
            Ok(Prepared { x, layouts: vec![SeqLayout { len: t, shared_prefix: Some((p, c)) }], rows, targets, chosen: c, tapes })
        } else {
            let a: Vec<u32> = prompt_ids.iter().chain(&chosen).copied().collect();
            let bq: Vec<u32> = prompt_ids.iter().chain(&rejected).copied().collect();
            let (xa, mut tapes) = self.embed(&a, &pair.images, 0)?;
            let (xb, tb_tapes) = self.embed(&bq, &pair.images, xa.n_rows())?;
            tapes.extend(tb_tapes);
            let (ta, tb) = (xa.n_rows(), xb.n_rows());
            let x = self.decoder().backend().concat_rows(&[&xa, &xb])?;
            let rows: Vec<u32> = (ta - c - 1..ta - 1).chain(ta + tb - r - 1..ta + tb - 1).map(|i| i as u32).collect();
            Ok(Prepared { x, layouts: vec![SeqLayout::plain(ta), SeqLayout::plain(tb)], rows, targets, chosen: c, tapes })
        }
    }

    /// Per-token log-probs of the response rows of h, and what their backward needs.
    fn response_logprobs(&self, h: &CudaTensor, rows: &[u32], targets: &CudaSlice<u32>) -> Result<(CudaTensor, CudaSlice<f32>, CudaSlice<f32>)> {
        let be = self.decoder().backend();
        let hs = be.embedding(h, None, rows)?;
        let (rn, c) = (hs.rows, hs.cols);
        let w = self.decoder().lm_head_weight();
        let v = w.rows;
        // SAFETY: logprob writes all R elements of logp and lse.
        let mut logp = unsafe { self.dev.alloc_uninit::<f32>(rn) }?;
        let mut lse = unsafe { self.dev.alloc_uninit::<f32>(rn) }?;
        self.dev.logprob(&hs.data.as_view(), &w.data.as_view(), &targets.as_view(), &mut logp.as_view_mut(), &mut lse.as_view_mut(), rn, c, v)?;
        Ok((hs, logp, lse))
    }

    /// Start an example of the current step: its gradients will be added with `weight` (the same
    /// for every example of a step) and its LoRA dropout masks drawn from `dropout_seed`.
    fn begin_example(&mut self, weight: f32, dropout_seed: Option<u64>) -> Result<()> {
        self.check_trainable()?;
        if self.pending_w.is_some_and(|w| w != weight) {
            return Err(Error::Input(format!("examples of one step must share a weight ({:?} then {weight})", self.pending_w)));
        }
        self.pending_w = Some(weight);
        self.dropout_seed = dropout_seed;
        Ok(())
    }

    /// Summed response log-probs (chosen, rejected) of the reference policy: the model with its
    /// adapters off (the same kernels, so an untrained adapter's B = 0 gives the same values).
    pub fn reference_logps(&mut self, pair: &Pair) -> Result<(f64, f64)> {
        // The reference embeds images without tapes (nothing flows back) and has no adapters
        // (so no dropout).
        self.dropout_seed = None;
        let saved = self.projector.take();
        let prepared = self.prepare(pair);
        self.projector = saved;
        let Prepared { x, layouts, rows, targets, chosen: c, .. } = prepared?;
        let b = self.batch(&layouts)?;
        let (h, _, _) = self.forward(x, &b, false, false)?;
        let td = self.dev.htod(&targets)?;
        let (_, logp, _) = self.response_logprobs(&h, &rows, &td)?;
        let lp = self.dev.dtoh(&logp)?;
        Ok((lp[..c].iter().map(|&v| v as f64).sum(), lp[c..].iter().map(|&v| v as f64).sum()))
    }

    /// One pair's DPO loss, with its gradients added to the step's (raw; `weight` is applied at
    /// the step). `alpha` = 0 is plain DPO, 1/1024 STIC's. Returns the loss and the tokens run.
    /// `dropout_seed`: the step's LoRA dropout seed (the trainer's `StepOpts::dropout_seed`; the
    /// masks are the CPU's).
    pub fn dpo_pair(&mut self, pair: &Pair, reference: (f64, f64), beta: f64, alpha: f64, weight: f32, dropout_seed: Option<u64>) -> Result<(DpoOut, usize)> {
        self.begin_example(weight, dropout_seed)?;
        let be = self.decoder().backend().clone();
        be.range_push("dpo pair");
        let Prepared { x, layouts, rows, targets, chosen: c, tapes } = self.prepare(pair)?;
        let t = x.rows;
        let b = self.batch(&layouts)?;
        let (h, x_last, inputs) = self.forward(x, &b, true, true)?;
        let td = self.dev.htod(&targets)?;
        let (hs, logp, lse) = self.response_logprobs(&h, &rows, &td)?;
        drop(h);
        let rn = rows.len();
        // One pair's DpoSpans (chosen_start, chosen_len, rejected_start, rejected_len).
        let spans = self.dev.htod(&[0, c as u32, c as u32, (rn - c) as u32])?;
        let refs = self.dev.htod(&[reference.0, reference.1])?;
        let mut out = self.dev.zeros::<f64>(7)?;
        let mut dlogp = self.dev.zeros::<f32>(rn)?;
        self.dev.dpo(&logp.as_view(), &spans.as_view(), &refs.as_view(), beta, alpha, &mut out.as_view_mut(), &mut dlogp.as_view_mut())?;
        self.backprop(Scored { hs, lse, targets: td, rows, t }, &dlogp, x_last, &inputs, &b, &tapes)?;
        let o = self.dev.dtoh(&out)?;
        be.range_pop();
        Ok((DpoOut { loss: o[0], d_chosen: o[1], d_rejected: o[2], chosen_reward: o[3], rejected_reward: o[4] }, t))
    }

    /// The backward from d loss / d logp of the scored rows: logprob backward, the rows' gradients
    /// back to their rows (a row scored twice, the packed pair's last prefix row, adds both),
    /// the final norm, every layer from the last (recomputed from its kept input), and the
    /// projector when it trains. Gradients are added to the step's.
    fn backprop(&mut self, sc: Scored, dlogp: &CudaSlice<f32>, x_last: CudaTensor, inputs: &[CudaTensor], b: &Batch, tapes: &[ImageTape]) -> Result<()> {
        let be = self.decoder().backend().clone();
        let Scored { hs, lse, targets, rows, t } = sc;
        let (rn, cdim) = (hs.rows, hs.cols);
        let w = self.decoder().lm_head_weight();
        let mut dhs = self.dev.zeros::<f32>(rn * cdim)?;
        self.dev.logprob_backward(&hs.data.as_view(), &w.data.as_view(), &targets.as_view(), &lse.as_view(), &dlogp.as_view(), &mut dhs.as_view_mut(), rn, cdim, w.rows, false)?;
        let dhs16 = CudaTensor { data: self.dev.cast_f32_to_bf16(&dhs)?, rows: rn, cols: cdim };
        drop((hs, dhs));
        let mut dh = be.zeros(t, cdim)?;
        let mut seen = std::collections::HashSet::new();
        let (mut first, mut dup) = (Vec::new(), Vec::new());
        for (i, &r) in rows.iter().enumerate() {
            if seen.insert(r) { first.push((i, r)) } else { dup.push((i, r)) }
        }
        let src = be.embedding(&dhs16, None, &first.iter().map(|&(i, _)| i as u32).collect::<Vec<_>>())?;
        be.scatter_rows(&src, &mut dh, &first.iter().map(|&(_, r)| r).collect::<Vec<_>>())?;
        for (i, r) in dup {
            let r = r as usize;
            self.dev.add(&mut dh.data.slice_mut(r * cdim..(r + 1) * cdim), &dhs16.data.slice(i * cdim..(i + 1) * cdim))?;
        }
        // SAFETY: rmsnorm_backward writes every element of dx.
        let mut dx = CudaTensor { data: unsafe { self.dev.alloc_uninit::<u16>(t * cdim) }?, rows: t, cols: cdim };
        let fnorm = self.decoder().final_norm();
        self.dev.rmsnorm_backward(&x_last.data.as_view(), &fnorm.weight.as_view(), &dh.data.as_view(), fnorm.eps, &mut dx.data.as_view_mut())?;
        drop((x_last, dh));
        for li in (0..inputs.len()).rev() {
            be.range_push(&format!("train layer {li} backward"));
            self.layer_bwd(li, &inputs[li], b, &mut dx)?;
            be.range_pop();
        }
        // dx is now d(input embeddings): into the projector when it trains.
        for tape in tapes {
            self.projector_bwd(tape, &dx)?;
        }
        Ok(())
    }

    /// One conversation's SFT loss (mean negative log-likelihood of the answer tokens, as
    /// [`super::sft_grads`]), with its gradients added to the step's (raw; `weight` is applied at
    /// the step). Returns the loss and the tokens run.
    pub fn sft_example(&mut self, turns: &[(String, String)], images: &[crate::image::RgbImage], weight: f32, dropout_seed: Option<u64>) -> Result<(f64, usize)> {
        self.begin_example(weight, dropout_seed)?;
        let (ids, mask) = super::sft_ids(&self.pipe, turns, images.len())?;
        let image_token = self.pipe.model.cfg.image_token_index;
        let n_img = ids.iter().filter(|&&t| t == image_token).count();
        if n_img != images.len() {
            return Err(Error::Input(format!("the conversation has {n_img} <image> token(s) for {} image(s)", images.len())));
        }
        let (x, tapes) = self.embed(&ids, images, 0)?;
        let t = x.rows;
        // Rows after <image> expansion (each image token became its feature rows).
        let per_image = (t - (ids.len() - n_img)).checked_div(n_img).unwrap_or(0);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        let mut pos = 0usize;
        for (&tok, &is_answer) in ids.iter().zip(&mask) {
            if is_answer {
                rows.push((pos - 1) as u32); // the row before a token predicts it
                targets.push(tok);
            }
            pos += if tok == image_token { per_image } else { 1 };
        }
        if rows.is_empty() {
            return Err(Error::Input("the conversation has no answer tokens".into()));
        }
        let b = self.batch(&[SeqLayout::plain(t)])?;
        let (h, x_last, inputs) = self.forward(x, &b, true, true)?;
        let td = self.dev.htod(&targets)?;
        let (hs, logp, lse) = self.response_logprobs(&h, &rows, &td)?;
        drop(h);
        let n = rows.len() as f64;
        let loss = -self.dev.dtoh(&logp)?.iter().map(|&v| v as f64).sum::<f64>() / n;
        let dlogp = self.dev.htod(&vec![(-1.0 / n) as f32; rows.len()])?;
        self.backprop(Scored { hs, lse, targets: td, rows, t }, &dlogp, x_last, &inputs, &b, &tapes)?;
        Ok((loss, t))
    }

    /// Add one image's projector gradients, given d(input embeddings) `dx` [T, C].
    fn projector_bwd(&mut self, tape: &ImageTape, dx: &CudaTensor) -> Result<()> {
        let be = self.decoder().backend().clone();
        let c = dx.cols;
        let np = tape.v.rows;
        // d(projector output) [N*P, C]: the image's feature rows back to the rows they came from
        // (each projected row is used at most once; the cropped padding's rows get 0).
        let src = be.embedding(dx, None, &tape.map.iter().map(|&(r, _)| r).collect::<Vec<_>>())?;
        let mut dy = be.zeros(np, c)?;
        be.scatter_rows(&src, &mut dy, &tape.map.iter().map(|&(_, i)| i).collect::<Vec<_>>())?;
        let dev = self.dev.clone();
        self.ones(np)?;
        let ones = self.ones.as_ref().expect("made above").slice(0..np);
        let pr = self.projector.as_mut().ok_or_else(|| Error::Input("the projector does not train".into()))?;
        let linears = self.pipe.model.projector.linears();
        // dW [N, K] += dy^T x, db [N] += dy^T 1 for the linear `prefix` with input x.
        let mut weight_grads = |prefix: &str, x: &CudaTensor, dy: &CudaTensor, l: &CudaLinear| -> Result<()> {
            let off = |name: String| pr.params.iter().find(|(n, _, _)| *n == name).map(|(_, _, o)| *o).ok_or_else(|| Error::Input(format!("no projector parameter `{name}`")));
            let ow = off(format!("{prefix}weight"))?;
            dev.matmul_tn(&dy.data.as_view(), &x.data.as_view(), &mut pr.g.slice_mut(ow..ow + l.n * l.k), l.n, l.k, np, true)?;
            if l.bias.is_some() {
                let ob = off(format!("{prefix}bias"))?;
                dev.matmul_tn(&dy.data.as_view(), &ones, &mut pr.g.slice_mut(ob..ob + l.n), l.n, 1, np, true)?;
            }
            Ok(())
        };
        match (tape.h.as_ref(), tape.a.as_ref(), &self.pipe.model.projector) {
            (Some(h), Some(a), Projector::Mlp { act, .. }) => {
                let (l1, l2) = (linears[0].1, linears[1].1);
                weight_grads("linear_2.", a, &dy, l2)?;
                // da = dy W2 [N*P, C], then dh = da act'(h) in place.
                let mut da = CudaTensor { data: unsafe { dev.alloc_uninit::<u16>(np * l2.k) }?, rows: np, cols: l2.k };
                // SAFETY (alloc above): matmul_nn writes every element of da.
                dev.matmul_nn(&dy.data.as_view(), &l2.weight.as_view(), &mut da.data.as_view_mut(), np, l2.k, l2.n, false)?;
                dev.activation_backward(act, &h.data.as_view(), &mut da.data.as_view_mut())?;
                weight_grads("linear_1.", &tape.v, &da, l1)?;
            }
            (_, _, Projector::Linear(l)) => weight_grads("", &tape.v, &dy, l)?,
            _ => return Err(Error::Input("projector tape and projector kind differ".into())),
        }
        Ok(())
    }

    /// The accumulated gradients as host tensors (layer, name, dA, dB), raw sums.
    pub fn grads(&self) -> Result<Vec<crate::model::decoder::LoraGrad>> {
        let l = self.loras()?;
        let g = self.dev.dtoh(&l.g)?;
        Ok(l.adapters.iter().map(|a| (a.layer, PROJECTIONS[a.proj], g[a.off_a..a.off_a + l.r * a.k].to_vec(), g[a.off_b..a.off_b + a.n * l.r].to_vec())).collect())
    }

    /// The accumulated projector gradients by parameter name (raw sums; empty when the
    /// projector does not train).
    pub fn projector_grads(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let Some(pr) = &self.projector else { return Ok(Vec::new()) };
        let g = self.dev.dtoh(&pr.g)?;
        Ok(pr.params.iter().map(|(name, shape, off)| (name.clone(), g[*off..off + shape.iter().product::<usize>()].to_vec())).collect())
    }

    fn adam_keys(l: &DeviceLoras) -> Vec<(String, usize, usize)> {
        l.adapters
            .iter()
            .flat_map(|a| {
                let name = PROJECTIONS[a.proj];
                [(format!("{}.{name}.A", a.layer), a.off_a, l.r * a.k), (format!("{}.{name}.B", a.layer), a.off_b, a.n * l.r)]
            })
            .collect()
    }
}

impl Learner for CudaLearner {
    fn init_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<()> {
        let loras = init_loras(&self.shapes(), spec, seed)?;
        self.upload(loras)
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let pfile = dir.join(crate::adapter::PROJECTOR_FILE);
        if !dir.join("adapter_config.json").exists() && pfile.exists() {
            // A projector-only folder (LLaVA's alignment stage).
            let ws = crate::weights::WeightStore::from_files(dir, &[pfile])?;
            return self.load_projector(ws, crate::adapter::PROJECTOR_KEY);
        }
        let shapes = Decoder::<Cuda>::projection_shapes(&self.pipe.model.cfg.text);
        let n_layers = self.decoder().n_layers();
        let (loras, projector) = read_loras(dir, |layer, proj| if layer < n_layers { proj_index(proj).map(|i| shapes[i]) } else { None })?;
        self.upload(loras)?;
        match projector {
            Some((ws, prefix)) => self.load_projector(ws, &prefix),
            None => Ok(()),
        }
    }

    fn adapted(&mut self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for a in self.loras.iter().flat_map(|l| &l.adapters) {
            if !names.contains(&PROJECTIONS[a.proj]) {
                names.push(PROJECTIONS[a.proj]);
            }
        }
        names
    }

    fn save_adapter(&mut self, dir: &Path, spec: &LoraSpec, projector: bool) -> Result<()> {
        let params = if projector {
            let pr = self.projector.as_ref().ok_or_else(|| Error::Input("the projector does not train: nothing to save for it".into()))?;
            let p = self.dev.dtoh(&pr.p)?;
            let t = pr
                .params
                .iter()
                .map(|(name, shape, off)| Ok((name.clone(), Tensor::new(p[*off..off + shape.iter().product::<usize>()].to_vec(), shape)?)))
                .collect::<Result<Vec<_>>>()?;
            Some(t)
        } else {
            None
        };
        save_loras(dir, spec, &self.download()?, params.as_deref())
    }

    /// The same file as [`crate::train::TrainAdamW::save`]: `{layer}.{proj}.{A,B}.{m,v,step}`.
    fn save_optimizer(&mut self, path: &Path) -> Result<()> {
        let mut opt = crate::train::TrainAdamW::new(self.cfg);
        if let Some(l) = &self.loras {
            let (m, v) = (self.dev.dtoh(&l.m)?, self.dev.dtoh(&l.v)?);
            for (key, off, len) in Self::adam_keys(l) {
                opt.set_state(key, AdamWState { step: l.step, m: m[off..off + len].to_vec(), v: v[off..off + len].to_vec() });
            }
        }
        if let Some(pr) = &self.projector {
            let (m, v) = (self.dev.dtoh(&pr.m)?, self.dev.dtoh(&pr.v)?);
            for (name, shape, off) in &pr.params {
                let len: usize = shape.iter().product();
                opt.set_state(format!("projector.{name}"), AdamWState { step: pr.step, m: m[*off..off + len].to_vec(), v: v[*off..off + len].to_vec() });
            }
        }
        opt.save(path)
    }

    fn load_optimizer(&mut self, path: &Path) -> Result<()> {
        let mut opt = crate::train::TrainAdamW::new(self.cfg);
        opt.load(path)?;
        if let Some(l) = self.loras.as_mut() {
            let n = l.p.len();
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let mut step = None;
            for (key, off, len) in Self::adam_keys(l) {
                let st = opt.state(&key).ok_or_else(|| Error::weights(path, format!("no optimiser state for `{key}`")))?;
                if st.m.len() != len || st.v.len() != len {
                    return Err(Error::weights(path, format!("`{key}`: {} moments for a tensor of {len}", st.m.len())));
                }
                if step.is_some_and(|s| s != st.step) {
                    return Err(Error::weights(path, format!("`{key}`: step {} differs from the other tensors' {step:?}", st.step)));
                }
                step = Some(st.step);
                m[off..off + len].copy_from_slice(&st.m);
                v[off..off + len].copy_from_slice(&st.v);
            }
            l.m = self.dev.htod(&m)?;
            l.v = self.dev.htod(&v)?;
            l.step = step.unwrap_or(0);
        }
        if let Some(pr) = self.projector.as_mut() {
            let n = pr.p.len();
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            for (name, shape, off) in &pr.params {
                let key = format!("projector.{name}");
                let len: usize = shape.iter().product();
                let st = opt.state(&key).ok_or_else(|| Error::weights(path, format!("no optimiser state for `{key}`")))?;
                if st.m.len() != len || st.v.len() != len {
                    return Err(Error::weights(path, format!("`{key}`: {} moments for a tensor of {len}", st.m.len())));
                }
                m[*off..off + len].copy_from_slice(&st.m);
                v[*off..off + len].copy_from_slice(&st.v);
                pr.step = st.step;
            }
            pr.m = self.dev.htod(&m)?;
            pr.v = self.dev.htod(&v)?;
        }
        Ok(())
    }

    fn grad_norm(&mut self) -> Result<f64> {
        self.check_trainable()?;
        let mut sumsq = match &self.loras {
            Some(l) => self.dev.grad_sumsq(&l.g.as_view())?,
            None => 0.0,
        };
        if let Some(pr) = &self.projector {
            sumsq += self.dev.grad_sumsq(&pr.g.as_view())?;
        }
        Ok(self.pending_w.unwrap_or(1.0) as f64 * sumsq.sqrt())
    }

    fn step(&mut self, gscale: f32, lr: f32, projector_lr: f32) -> Result<()> {
        let w = self.pending_w.take().unwrap_or(1.0);
        let cfg = self.cfg;
        self.check_trainable()?;
        let dev = self.dev.clone();
        if let Some(l) = self.loras.as_mut() {
            let tensors: Vec<AdamWTensor> = Self::adam_keys(l).iter().map(|&(_, _, len)| AdamWTensor { len, lr, weight_decay: cfg.weight_decay }).collect();
            l.step += 1;
            dev.adamw(&mut l.p.as_view_mut(), &l.g.as_view(), &mut l.m.as_view_mut(), &mut l.v.as_view_mut(), &tensors, &cfg, l.step, w * gscale)?;
            dev.cast_f32_to_bf16_into(&l.p.as_view(), &mut l.p16.as_view_mut())?;
            dev.stream().memset_zeros(&mut l.g).map_err(|e| crate::backend::cuda::cuda_err("memset_zeros", "adapter gradients", e))?;
        }
        if let Some(pr) = self.projector.as_mut() {
            // As TrainAdamW: the projector's own learning rate, no weight decay on biases.
            let tensors: Vec<AdamWTensor> = pr
                .params
                .iter()
                .map(|(name, shape, _)| AdamWTensor { len: shape.iter().product(), lr: projector_lr, weight_decay: if name.ends_with("bias") { 0.0 } else { cfg.weight_decay } })
                .collect();
            pr.step += 1;
            dev.adamw(&mut pr.p.as_view_mut(), &pr.g.as_view(), &mut pr.m.as_view_mut(), &mut pr.v.as_view_mut(), &tensors, &cfg, pr.step, w * gscale)?;
            dev.stream().memset_zeros(&mut pr.g).map_err(|e| crate::backend::cuda::cuda_err("memset_zeros", "projector gradients", e))?;
            self.refresh_projector()?;
        }
        Ok(())
    }
}

/// `stic train-dpo --device cuda`: DPO with the adapters trained on the GPU (see the module
/// docs); the same data, order, schedule, logs and checkpoints as [`crate::trainer::train_dpo`].
pub fn train_dpo(pipe: Pipeline<Cuda>, data: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<crate::trainer::LogLine>> {
    let (pairs, keys) = crate::trainer::read_pairs(&pipe, data)?;
    let mut learner = CudaLearner::new(pipe, args)?;
    let refs = crate::trainer::reference_cache(&keys, out, resume, |i| learner.reference_logps(&pairs[i]))?;
    crate::trainer::train_loop(&mut learner, pairs.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (o, tokens) = l.dpo_pair(&pairs[i], refs[i], args.beta, args.sft_weight, w, opts.dropout_seed)?;
        Ok(ExampleOut { loss: o.loss, rewards: Some((o.chosen_reward, o.rejected_reward)), tokens })
    })
}

/// `stic train-sft --device cuda`: SFT with the adapters (and the projector) trained on the GPU;
/// the same data, order, schedule, logs and checkpoints as [`crate::trainer::train_sft`].
pub fn train_sft(
    pipe: Pipeline<Cuda>,
    data: &Path,
    image_folder: &Path,
    out: &Path,
    args: &TrainArgs,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Vec<crate::trainer::LogLine>> {
    let (examples, images) = crate::trainer::read_sft_data(data, image_folder)?;
    let mut learner = CudaLearner::new(pipe, args)?;
    crate::trainer::train_loop(&mut learner, examples.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (loss, tokens) = l.sft_example(&examples[i].1, &images[i], w, opts.dropout_seed)?;
        Ok(ExampleOut { loss, rewards: None, tokens })
    })
}
