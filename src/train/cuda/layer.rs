//! One decoder layer's forward and backward on the device, with the LoRA path (and its dropout)
//! on every adapted projection, and the forward of all layers.

use crate::backend::cuda::DevBuf;
use cudarc::driver::CudaViewMut;

use crate::backend::cuda::{CudaDevice, CudaLinear, CudaTensor, Dropout};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::decoder::mask_seed;

use super::batch::{varlen, Batch};
use super::state::{grad_of, layer_param, CudaLearner, DeviceLoras};

/// What one layer's forward produced (all kept only while that layer's backward runs).
struct LayerActs {
    hn1: CudaTensor,
    q: CudaTensor,
    k: CudaTensor,
    v: CudaTensor,
    attn: CudaTensor,
    lse: DevBuf<f32>,
    x_mid: CudaTensor,
    hn2: CudaTensor,
    gate: CudaTensor,
    up: CudaTensor,
    act: CudaTensor,
    /// u = x A^T [T, r] of every adapted projection (PROJECTIONS order).
    u: [Option<DevBuf<f32>>; 7],
    /// The LoRA path's input x * mask of every adapted projection under dropout.
    xd: [Option<CudaTensor>; 7],
}

impl CudaLearner {
    /// The dropout of projection `proj` of layer `layer` in the example being run, if any.
    fn dropout_of(&self, layer: usize, proj: usize) -> Option<Dropout> {
        let p = self.loras.as_ref()?.dropout;
        let seed = self.dropout_seed?;
        (p > 0.0).then(|| Dropout { seed: mask_seed(seed, layer, proj), p })
    }

    /// y [T, N] = x W^T (+ s x A^T B^T when the projection is adapted and `lora`), u, and the
    /// LoRA path's input x * mask under dropout.
    #[allow(clippy::type_complexity)]
    fn linear_fwd(&self, x: &CudaTensor, w: &CudaLinear, layer: usize, proj: usize, lora: bool) -> Result<(CudaTensor, Option<DevBuf<f32>>, Option<CudaTensor>)> {
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

    /// dx [T, K] = dy W (+ s (dy B) A), and the adapter's dA, dB accumulated; with `dw` (the
    /// weight trains in full) also dW [N, K] += dy^T x.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        dev: &CudaDevice,
        loras: Option<&mut DeviceLoras>,
        x: &CudaTensor,
        dy: &CudaTensor,
        w: &CudaLinear,
        layer: usize,
        proj: usize,
        u: Option<&DevBuf<f32>>,
        dropout: Option<(&CudaTensor, Dropout)>,
        dw: Option<CudaViewMut<'_, f32>>,
    ) -> Result<CudaTensor> {
        let t = x.rows;
        let (n, k) = (w.n, w.k);
        if let Some(mut dw) = dw {
            dev.matmul_tn(&dy.data.as_view(), &x.data.as_view(), &mut dw, n, k, t, true)?;
        }
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
    pub(super) fn layer_bwd(&mut self, li: usize, x: &CudaTensor, b: &Batch, dx: &mut CudaTensor) -> Result<()> {
        let (_, a) = self.layer_fwd(li, x, b, true)?;
        let drops: [Option<Dropout>; 7] = std::array::from_fn(|p| self.dropout_of(li, p));
        let drop = |p: usize| a.xd[p].as_ref().zip(drops[p]);
        let CudaLearner { pipe, dev, loras, neg_inv_freq, full, .. } = self;
        // The layer's weight gradients when the decoder trains in full (`layer_param`).
        let base = layer_param(li);
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
        let dact = Self::linear_bwd(dev, loras.as_mut(), &a.act, dx, w[6], li, 6, a.u[6].as_ref(), drop(6), grad_of(full, base + 7))?;
        let (mut dgate, mut dup) = (uninit_like(&a.gate)?, uninit_like(&a.up)?);
        dev.swiglu_backward(&a.gate.data.as_view(), &a.up.data.as_view(), &dact.data.as_view(), &mut dgate.data.as_view_mut(), &mut dup.data.as_view_mut())?;
        let mut dhn2 = Self::linear_bwd(dev, loras.as_mut(), &a.hn2, &dgate, w[4], li, 4, a.u[4].as_ref(), drop(4), grad_of(full, base + 5))?;
        let dh_u = Self::linear_bwd(dev, loras.as_mut(), &a.hn2, &dup, w[5], li, 5, a.u[5].as_ref(), drop(5), grad_of(full, base + 6))?;
        be.add(&mut dhn2, &dh_u)?;
        let mut dxm = uninit_like(&a.x_mid)?;
        dev.rmsnorm_backward(&a.x_mid.data.as_view(), &n2.weight.as_view(), &dhn2.data.as_view(), eps, &mut dxm.data.as_view_mut(), grad_of(full, base + 8).as_mut())?;
        be.add(dx, &dxm)?; // dx is now d(x_mid)
        // x_mid = x + o(attention(rope(q(hn1)), rope(k(hn1)), v(hn1)))
        let dattn = Self::linear_bwd(dev, loras.as_mut(), &a.attn, dx, w[3], li, 3, a.u[3].as_ref(), drop(3), grad_of(full, base + 4))?;
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
        let mut dhn1 = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dq, w[0], li, 0, a.u[0].as_ref(), drop(0), grad_of(full, base + 1))?;
        let dh_k = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dk, w[1], li, 1, a.u[1].as_ref(), drop(1), grad_of(full, base + 2))?;
        be.add(&mut dhn1, &dh_k)?;
        let dh_v = Self::linear_bwd(dev, loras.as_mut(), &a.hn1, &dv, w[2], li, 2, a.u[2].as_ref(), drop(2), grad_of(full, base + 3))?;
        be.add(&mut dhn1, &dh_v)?;
        let mut dxi = uninit_like(x)?;
        dev.rmsnorm_backward(&x.data.as_view(), &n1.weight.as_view(), &dhn1.data.as_view(), eps, &mut dxi.data.as_view_mut(), grad_of(full, base).as_mut())?;
        be.add(dx, &dxi)?;
        Ok(())
    }

    /// Forward of every layer from x (keeping each layer's input when `keep`): the final-normed
    /// hidden states, the pre-norm output and the layer inputs.
    pub(super) fn forward(&self, x: CudaTensor, b: &Batch, lora: bool, keep: bool) -> Result<(CudaTensor, CudaTensor, Vec<CudaTensor>)> {
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
}
