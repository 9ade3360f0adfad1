//! The vision tower trained in full on the device (`--train vision`; LLaVA-1.5 and LLaVA-NeXT):
//! its weights up to the feature layer (patch embedding, class and position embeddings,
//! pre_layrnorm, each encoder layer's norms, q/k/v/out and fc1/fc2 with their biases) as f32
//! masters, gradients and AdamW moments in one flat buffer set ([`DeviceDecoder`]'s), the bf16
//! tower weights written from the masters after each step.
//!
//! Forward ([`CudaLearner::tower_forward`]): the inference tower's own ops (host im2col, patch
//! GEMM, class and position embeddings, pre_layrnorm, the encoder layers with bidirectional
//! packed attention per tile), keeping the patch rows, the embeddings before pre_layrnorm and
//! each layer's input. Backward ([`CudaLearner::tower_bwd`]), from d(features) at the
//! projector's input: the feature rows back into the selected hidden state (0 at the dropped
//! class rows), then per layer from the last: the layer recomputed from its input, fc2, the
//! activation, fc1, layer_norm2 (`layernorm_backward` with dw, db), out_proj, `attention_bwd`
//! (bidirectional), q/k/v, layer_norm1; each linear's dW += dy^T x and db += dy^T 1 (a ones
//! column, as the projector's); then pre_layrnorm, the position embedding (the tiles' rows
//! summed), the class embedding (the class rows summed) and the patch weight (d(patch rows)^T
//! times the im2col rows). The attention backward takes head dims 64 and 128 (a clear error
//! otherwise, at the start of the run).

use cudarc::driver::CudaViewMut;

use crate::backend::cuda::{AttnTrainMask, Cuda, CudaDevice, CudaLinear, CudaTensor, DevBuf, VarlenAttn};
use crate::backend::{Backend, PackedMask};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::model::clip::ClipVision;
use crate::tensor::Tensor;

use super::state::{CudaLearner, DeviceDecoder};

/// Tensors per encoder layer in [`tower_params`] order: layer_norm1 (weight, bias), q, k, v,
/// out_proj, layer_norm2, fc1, fc2 (weight, bias each).
const PER_LAYER: usize = 16;
/// Tensors before the first layer's: patch, class, position, pre_layrnorm weight and bias.
const HEAD: usize = 5;

/// What the tower's backward needs from one image's forward.
pub(super) struct TowerTape {
    /// The im2col patch rows [N*G*G, 3*P*P] (bf16), the embeddings before pre_layrnorm and each
    /// trained layer's input [N*(G*G+1), C].
    cols: CudaTensor,
    emb: CudaTensor,
    inputs: Vec<CudaTensor>,
    tiles: usize,
}

/// Every trained tensor of the tower as (name relative to the tower, elements): the names of
/// `Llava::vision_params_mut`, the layers up to the feature layer.
fn tower_params(cfg: &VisionConfig, n_layers: usize) -> Vec<(String, usize)> {
    let (c, f, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.patch_size);
    let mut out = vec![
        ("embeddings.patch_embedding.weight".to_string(), c * cfg.num_channels * p * p),
        ("embeddings.class_embedding".to_string(), c),
        ("embeddings.position_embedding.weight".to_string(), (cfg.num_patches() + 1) * c),
        ("pre_layrnorm.weight".to_string(), c),
        ("pre_layrnorm.bias".to_string(), c),
    ];
    for i in 0..n_layers {
        let lp = format!("encoder.layers.{i}");
        for (name, w) in [
            ("layer_norm1", c),
            ("self_attn.q_proj", c * c),
            ("self_attn.k_proj", c * c),
            ("self_attn.v_proj", c * c),
            ("self_attn.out_proj", c * c),
            ("layer_norm2", c),
            ("mlp.fc1", f * c),
            ("mlp.fc2", c * f),
        ] {
            let b = if name == "mlp.fc1" { f } else { c };
            out.push((format!("{lp}.{name}.weight"), w));
            out.push((format!("{lp}.{name}.bias"), b));
        }
    }
    out
}

/// The tower's bf16 weights in [`tower_params`] order.
fn tower_weights_mut(t: &mut ClipVision<Cuda>, n_layers: usize) -> Result<Vec<&mut DevBuf<u16>>> {
    let no_bias = || Error::Input("--train vision on --device cuda: a vision linear has no bias".into());
    let mut out = vec![&mut t.patch.weight, &mut t.class_embedding.data, &mut t.position_embedding.data, &mut t.pre_ln.weight, &mut t.pre_ln.bias];
    for l in t.layers.iter_mut().take(n_layers) {
        out.extend([&mut l.ln1.weight, &mut l.ln1.bias]);
        for lin in [&mut l.q, &mut l.k, &mut l.v, &mut l.o] {
            let CudaLinear { weight, bias, .. } = lin;
            out.extend([weight, bias.as_mut().ok_or_else(no_bias)?]);
        }
        out.extend([&mut l.ln2.weight, &mut l.ln2.bias]);
        for lin in [&mut l.fc1, &mut l.fc2] {
            let CudaLinear { weight, bias, .. } = lin;
            out.extend([weight, bias.as_mut().ok_or_else(no_bias)?]);
        }
    }
    Ok(out)
}

impl DeviceDecoder {
    /// `f` on the gradients of tensors i and i + 1 (a weight and the bias after it).
    fn with_grad2(&mut self, i: usize, f: impl FnOnce(&mut CudaViewMut<'_, f32>, &mut CudaViewMut<'_, f32>) -> Result<()>) -> Result<()> {
        let ((_, lw, ow), (_, lb, ob)) = (self.params[i].clone(), self.params[i + 1].clone());
        let (mut a, mut b) = self.g.split_at_mut(ob);
        f(&mut a.slice_mut(ow..ow + lw), &mut b.slice_mut(0..lb))
    }
}

/// dx [T, K] = dy W for the linear `w` with input x, and its dW [N, K] += dy^T x, db [N] += dy^T 1
/// into the tensors i, i + 1 of `g` (`ones`: at least T ones).
fn linear_bwd(dev: &CudaDevice, x: &CudaTensor, dy: &CudaTensor, w: &CudaLinear, g: &mut DeviceDecoder, i: usize, ones: &DevBuf<u16>) -> Result<CudaTensor> {
    let (t, n, k) = (x.rows, w.n, w.k);
    g.with_grad2(i, |dw, db| {
        dev.matmul_tn(&dy.data.as_view(), &x.data.as_view(), dw, n, k, t, true)?;
        dev.matmul_tn(&dy.data.as_view(), &ones.slice(0..t), db, n, 1, t, true)
    })?;
    // SAFETY: matmul_nn writes every element of dx.
    let mut dx = unsafe { dev.alloc_uninit::<u16>(t * k) }?;
    dev.matmul_nn(&dy.data.as_view(), &w.weight.as_view(), &mut dx.as_view_mut(), t, k, n, false)?;
    Ok(CudaTensor { data: dx, rows: t, cols: k })
}

impl CudaLearner {
    /// The number of encoder layers that train: up to the (single) feature layer.
    fn tower_depth(&self) -> Result<usize> {
        let model = &self.pipe.model;
        match model.feature_states() {
            [d] if *d <= model.vision_tower().layers.len() => Ok(*d),
            s => Err(Error::Input(format!("--train vision on --device cuda: one vision feature layer is supported, the model reads hidden states {s:?}"))),
        }
    }

    /// A fresh training state of the tower: masters from the current bf16 weights (the runs then
    /// load the base checkpoint's f32 values), zero gradients and moments. Refuses head dims the
    /// attention backward does not take and a tower whose state does not fit the device.
    pub(super) fn tower_state(&mut self) -> Result<DeviceDecoder> {
        let cfg = self.pipe.model.cfg.vision.clone();
        let d = cfg.hidden_size / cfg.num_attention_heads.max(1);
        if d != 64 && d != 128 {
            return Err(Error::Input(format!(
                "--train vision on --device cuda: the vision tower's head dim is {d}; the attention backward takes 64 and 128 (train it on --device cpu)"
            )));
        }
        let depth = self.tower_depth()?;
        let mut params = Vec::new();
        let mut len = 0;
        for (name, n) in tower_params(&cfg, depth) {
            params.push((name, n, len));
            len += n;
        }
        super::full::check_fits("vision", len)?;
        let dev = self.dev.clone();
        let mut p = dev.zeros::<f32>(len)?;
        for (w, (_, n, off)) in tower_weights_mut(self.pipe.model.vision_tower_mut(), depth)?.into_iter().zip(&params) {
            dev.cast_bf16_to_f32_into(&w.slice(0..*n), &mut p.slice_mut(*off..off + n))?;
        }
        let z = || dev.zeros::<f32>(len);
        Ok(DeviceDecoder { params, g: z()?, m: z()?, v: z()?, p, step: 0 })
    }

    /// Write the tower's f32 masters into the bf16 weights the model runs with.
    pub(super) fn refresh_tower(&mut self) -> Result<()> {
        let Some(tw) = self.tower.take() else { return Ok(()) };
        let dev = self.dev.clone();
        let result = (|| {
            let depth = self.tower_depth()?;
            for (w, (_, n, off)) in tower_weights_mut(self.pipe.model.vision_tower_mut(), depth)?.into_iter().zip(&tw.params) {
                dev.cast_f32_to_bf16_into(&tw.p.slice(*off..off + n), &mut w.slice_mut(0..*n))?;
            }
            Ok(())
        })();
        self.tower = Some(tw);
        result
    }

    /// The selected hidden state's feature rows [N*P, C] of `pixels` (as
    /// `Llava::vision_features`, the same ops), and the tower's tape.
    pub(super) fn tower_forward(&self, pixels: &Tensor) -> Result<(CudaTensor, TowerTape)> {
        let model = &self.pipe.model;
        let be = model.backend();
        let tw = model.vision_tower();
        let cfg = &model.cfg.vision;
        let depth = self.tower_depth()?;
        let (n, tokens) = (pixels.dim(0), cfg.num_patches() + 1);
        let cols = be.upload(&crate::model::clip::im2col(pixels, cfg.image_size, cfg.patch_size)?)?;
        let emb = tw.embed(pixels)?;
        let mut x = be.layernorm(&emb, &tw.pre_ln)?;
        let lens = vec![tokens; n];
        let mut inputs = Vec::with_capacity(depth);
        for layer in &tw.layers[..depth] {
            inputs.push(x.clone());
            layer.forward(be, &mut x, &lens, PackedMask::Bidirectional, cfg.num_attention_heads, &cfg.hidden_act)?;
        }
        let skip = model.feature_skip();
        let rows: Vec<u32> = (0..n).flat_map(|i| (skip..tokens).map(move |j| (i * tokens + j) as u32)).collect();
        Ok((be.embedding(&x, None, &rows)?, TowerTape { cols, emb, inputs, tiles: n }))
    }

    /// Add the tower's gradients of one image given d(features) `dv` [N*P, C] at the projector's
    /// input.
    pub(super) fn tower_bwd(&mut self, tape: &TowerTape, dv: &CudaTensor) -> Result<()> {
        let cfg = self.pipe.model.cfg.vision.clone();
        let (n, gg, c) = (tape.tiles, cfg.num_patches(), cfg.hidden_size);
        let tokens = gg + 1;
        let skip = self.pipe.model.feature_skip();
        self.ones(n * tokens)?;
        let CudaLearner { pipe, dev, tower, ones, .. } = self;
        let (dev, ones): (&CudaDevice, &DevBuf<u16>) = (dev, ones.as_ref().expect("grown above"));
        let g = tower.as_mut().ok_or_else(|| Error::Input("the vision tower does not train".into()))?;
        let be = pipe.model.backend();
        let tw = pipe.model.vision_tower();
        let rows: Vec<u32> = (0..n).flat_map(|i| (skip..tokens).map(move |j| (i * tokens + j) as u32)).collect();
        let mut dx = be.zeros(n * tokens, c)?;
        be.scatter_rows(dv, &mut dx, &rows)?;
        let cu = dev.htod(&crate::backend::cpu::cu_seqlens(&vec![tokens; n]))?;
        let cuv = cu.as_view();
        let h = cfg.num_attention_heads;
        let d = c / h;
        let batch = VarlenAttn { cu_seqlens: &cuv, max_seqlen: tokens, n_heads: h, n_kv_heads: h, head_dim: d, scale: 1.0 / (d as f32).sqrt(), mask: AttnTrainMask::Bidirectional };
        let uninit_like = |r: &CudaTensor| -> Result<CudaTensor> {
            // SAFETY: every caller has a kernel overwrite all elements before reading.
            Ok(CudaTensor { data: unsafe { dev.alloc_uninit::<u16>(r.rows * r.cols) }?, rows: r.rows, cols: r.cols })
        };
        for (li, x) in tape.inputs.iter().enumerate().rev() {
            be.range_push(&format!("vision layer {li} backward"));
            let l = &tw.layers[li];
            let base = HEAD + PER_LAYER * li;
            // The layer recomputed from its input, as `ClipLayer::forward`.
            let hn1 = be.layernorm(x, &l.ln1)?;
            let (q, k, v) = (be.matmul(&hn1, &l.q)?, be.matmul(&hn1, &l.k)?, be.matmul(&hn1, &l.v)?);
            let mut attn = uninit_like(&q)?;
            // SAFETY: attention_fwd writes every (head, row) of lse (cu_seqlens covers all rows).
            let mut lse = unsafe { dev.alloc_uninit::<f32>(h * x.rows) }?;
            dev.attention_fwd(&q.data.as_view(), &k.data.as_view(), &v.data.as_view(), &batch, &mut attn.data.as_view_mut(), &mut lse.as_view_mut())?;
            let mut x_mid = x.clone();
            be.matmul_add(&attn, &l.o, &mut x_mid)?;
            let hn2 = be.layernorm(&x_mid, &l.ln2)?;
            let f = be.matmul(&hn2, &l.fc1)?;
            let mut a = f.clone();
            be.activation(&cfg.hidden_act, &mut a)?;
            // out = x_mid + fc2(act(fc1(LN2 x_mid)))
            let mut df = linear_bwd(dev, &a, &dx, &l.fc2, g, base + 14, ones)?;
            dev.activation_backward(&cfg.hidden_act, &f.data.as_view(), &mut df.data.as_view_mut())?;
            let dhn2 = linear_bwd(dev, &hn2, &df, &l.fc1, g, base + 12, ones)?;
            let mut dxm = uninit_like(&x_mid)?;
            g.with_grad2(base + 10, |dw, db| {
                dev.layernorm_backward(&x_mid.data.as_view(), &l.ln2.weight.as_view(), &dhn2.data.as_view(), l.ln2.eps, &mut dxm.data.as_view_mut(), Some((dw, db)))
            })?;
            be.add(&mut dx, &dxm)?; // dx is now d(x_mid)
            // x_mid = x + out_proj(attention(q(hn1), k(hn1), v(hn1)))
            let dattn = linear_bwd(dev, &attn, &dx, &l.o, g, base + 8, ones)?;
            let (mut dq, mut dk, mut dvv) = (uninit_like(&q)?, uninit_like(&k)?, uninit_like(&v)?);
            dev.attention_bwd(
                &q.data.as_view(),
                &k.data.as_view(),
                &v.data.as_view(),
                &attn.data.as_view(),
                &dattn.data.as_view(),
                &lse.as_view(),
                &batch,
                &mut dq.data.as_view_mut(),
                &mut dk.data.as_view_mut(),
                &mut dvv.data.as_view_mut(),
            )?;
            let mut dhn1 = linear_bwd(dev, &hn1, &dq, &l.q, g, base + 2, ones)?;
            be.add(&mut dhn1, &linear_bwd(dev, &hn1, &dk, &l.k, g, base + 4, ones)?)?;
            be.add(&mut dhn1, &linear_bwd(dev, &hn1, &dvv, &l.v, g, base + 6, ones)?)?;
            let mut dxi = uninit_like(x)?;
            g.with_grad2(base, |dw, db| {
                dev.layernorm_backward(&x.data.as_view(), &l.ln1.weight.as_view(), &dhn1.data.as_view(), l.ln1.eps, &mut dxi.data.as_view_mut(), Some((dw, db)))
            })?;
            be.add(&mut dx, &dxi)?;
            be.range_pop();
        }
        // dx is d(pre_layrnorm's output): its norm, then the embeddings.
        let mut demb = uninit_like(&tape.emb)?;
        g.with_grad2(3, |dw, db| {
            dev.layernorm_backward(&tape.emb.data.as_view(), &tw.pre_ln.weight.as_view(), &dx.data.as_view(), tw.pre_ln.eps, &mut demb.data.as_view_mut(), Some((dw, db)))
        })?;
        // Position embedding [tokens, C] += the tiles' rows summed: ones[N]^T demb [N, tokens*C].
        let (_, lp, op) = g.params[2].clone();
        dev.matmul_tn(&ones.slice(0..n), &demb.data.as_view(), &mut g.g.slice_mut(op..op + lp), 1, tokens * c, n, true)?;
        // Class embedding [C] += the class rows summed.
        let class_rows: Vec<u32> = (0..n).map(|i| (i * tokens) as u32).collect();
        let dcls = be.embedding(&demb, None, &class_rows)?;
        let (_, lc, oc) = g.params[1].clone();
        dev.matmul_tn(&ones.slice(0..n), &dcls.data.as_view(), &mut g.g.slice_mut(oc..oc + lc), 1, c, n, true)?;
        // Patch weight [C, 3*P*P] += d(patch rows)^T im2col.
        let patch_rows: Vec<u32> = (0..n).flat_map(|i| (1..tokens).map(move |j| (i * tokens + j) as u32)).collect();
        let dpatch = be.embedding(&demb, None, &patch_rows)?;
        let (_, lw, ow) = g.params[0].clone();
        let kdim = tape.cols.cols;
        dev.matmul_tn(&dpatch.data.as_view(), &tape.cols.data.as_view(), &mut g.g.slice_mut(ow..ow + lw), c, kdim, n * gg, true)?;
        Ok(())
    }

    /// The accumulated tower gradients by `vision_model.*` name (the CPU learner's
    /// `Grads::vision` names; raw sums; empty when the tower does not train).
    pub fn vision_grads(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let Some(tw) = &self.tower else { return Ok(Vec::new()) };
        let g = self.dev.dtoh(&tw.g)?;
        Ok(tw.params.iter().map(|(n, len, off)| (format!("vision_model.{n}"), g[*off..off + len].to_vec())).collect())
    }
}
