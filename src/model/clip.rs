//! CLIP vision tower (HF `CLIPVisionModel`), as LLaVA uses it.
//!
//! pixels[N, 3, S, S] (N tiles) -> patch conv (P x P, stride P, no bias) -> [N, G*G, C]
//! -> prepend the class embedding -> + position embeddings [G*G + 1, C] -> pre_layrnorm
//! -> L pre-LN encoder layers: x + attn(LN1(x)), x + fc2(act(fc1(LN2(x)))), bidirectional attention.
//! LLaVA reads hidden_states[i] (0 = the pre-LN embeddings, i = output of layer i) for the selected
//! indices, so only layers up to the largest index are loaded and run; the later layers and
//! post_layernorm are skipped.

use crate::backend::cpu;
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

struct ClipLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipVision {
    cfg: VisionConfig,
    patch: Tensor, // [C, 3*P*P]
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<ClipLayer>,
}

impl ClipVision {
    /// Load from `{prefix}.embeddings...` etc. (`prefix` ends in `vision_model`). Only the first
    /// `n_layers` encoder layers are loaded; the others are marked as skipped.
    pub fn load(ws: &dyn WeightSource, prefix: &str, cfg: &VisionConfig, n_layers: usize) -> Result<Self> {
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let n_pos = cfg.num_patches() + 1;
        let patch = ws
            .get(&format!("{prefix}.embeddings.patch_embedding.weight"), &[c, cfg.num_channels, p, p])?
            .reshape(&[c, cfg.num_channels * p * p])?;
        let class_embedding = ws.get(&format!("{prefix}.embeddings.class_embedding"), &[c])?;
        let position_embedding = ws.get(&format!("{prefix}.embeddings.position_embedding.weight"), &[n_pos, c])?;
        ws.skip(&format!("{prefix}.embeddings.position_ids"));
        let eps = cfg.layer_norm_eps;
        let pre_ln = LayerNorm::load(ws, &format!("{prefix}.pre_layrnorm"), c, eps)?;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{prefix}.encoder.layers.{i}");
            if i >= n_layers {
                for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"] {
                    ws.skip(&format!("{lp}.{name}.weight"));
                    ws.skip(&format!("{lp}.{name}.bias"));
                }
                continue;
            }
            let f = cfg.intermediate_size;
            layers.push(ClipLayer {
                ln1: LayerNorm::load(ws, &format!("{lp}.layer_norm1"), c, eps)?,
                q: Linear::load(ws, &format!("{lp}.self_attn.q_proj"), c, c, true)?,
                k: Linear::load(ws, &format!("{lp}.self_attn.k_proj"), c, c, true)?,
                v: Linear::load(ws, &format!("{lp}.self_attn.v_proj"), c, c, true)?,
                o: Linear::load(ws, &format!("{lp}.self_attn.out_proj"), c, c, true)?,
                ln2: LayerNorm::load(ws, &format!("{lp}.layer_norm2"), c, eps)?,
                fc1: Linear::load(ws, &format!("{lp}.mlp.fc1"), c, f, true)?,
                fc2: Linear::load(ws, &format!("{lp}.mlp.fc2"), f, c, true)?,
            });
        }
        ws.skip(&format!("{prefix}.post_layernorm.weight"));
        ws.skip(&format!("{prefix}.post_layernorm.bias"));
        Ok(ClipVision { cfg: cfg.clone(), patch, class_embedding, position_embedding, pre_ln, layers })
    }

    /// Patch embeddings plus class token and positions, before pre-LN: [N*(G*G+1), C].
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (s, p, c) = (self.cfg.image_size, self.cfg.patch_size, self.cfg.hidden_size);
        let sh = pixels.shape();
        if sh.len() != 4 || sh[1] != 3 || sh[2] != s || sh[3] != s {
            return Err(Error::shape("clip_embed", format!("pixels {sh:?}, expected [N, 3, {s}, {s}]")));
        }
        let (n, g) = (sh[0], s / p);
        let kdim = 3 * p * p;
        // im2col: one row per patch, in the conv weight's (channel, ky, kx) order.
        let mut cols = vec![0f32; n * g * g * kdim];
        let px = pixels.data();
        for t in 0..n {
            for gy in 0..g {
                for gx in 0..g {
                    let row = &mut cols[((t * g + gy) * g + gx) * kdim..][..kdim];
                    for ch in 0..3 {
                        for ky in 0..p {
                            let src = ((t * 3 + ch) * s + gy * p + ky) * s + gx * p;
                            row[(ch * p + ky) * p..][..p].copy_from_slice(&px[src..src + p]);
                        }
                    }
                }
            }
        }
        let patches = cpu::matmul_t(&cols, self.patch.data(), n * g * g, kdim, c);
        let tokens = g * g + 1;
        let mut x = vec![0f32; n * tokens * c];
        let pos = self.position_embedding.data();
        for t in 0..n {
            for j in 0..tokens {
                let dst = &mut x[(t * tokens + j) * c..][..c];
                let src = if j == 0 { self.class_embedding.data() } else { &patches[(t * g * g + j - 1) * c..][..c] };
                for i in 0..c {
                    dst[i] = src[i] + pos[j * c + i];
                }
            }
        }
        Tensor::new(x, &[n * tokens, c])
    }

    /// hidden_states[i] for each requested index, each [N, G*G+1, C].
    pub fn forward(&self, pixels: &Tensor, indices: &[usize]) -> Result<Vec<Tensor>> {
        let n = pixels.dim(0);
        let (c, h) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let tokens = self.cfg.num_patches() + 1;
        let d = c / h;
        let mut x = self.pre_ln.forward(&self.embed(pixels)?)?;
        let mut out: Vec<(usize, Tensor)> = Vec::new();
        let keep = |i: usize, x: &Tensor, out: &mut Vec<(usize, Tensor)>| {
            if indices.contains(&i) {
                out.push((i, x.clone()));
            }
        };
        keep(0, &x, &mut out);
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = layer.ln1.forward(&x)?;
            let (q, k, v) = (layer.q.forward(&hn)?, layer.k.forward(&hn)?, layer.v.forward(&hn)?);
            let mut attn = Vec::with_capacity(n * tokens * c);
            for t in 0..n {
                let r = t * tokens * c..(t + 1) * tokens * c;
                attn.extend(cpu::attention(
                    &q.data()[r.clone()],
                    &k.data()[r.clone()],
                    &v.data()[r],
                    tokens,
                    tokens,
                    h,
                    h,
                    d,
                    0,
                    cpu::AttnMask::Bidirectional,
                ));
            }
            let a = layer.o.forward(&Tensor::new(attn, &[n * tokens, c])?)?;
            add_inplace(&mut x, &a);
            let mut f = layer.fc1.forward(&layer.ln2.forward(&x)?)?;
            cpu::activation::by_name(&self.cfg.hidden_act, f.data_mut());
            let m = layer.fc2.forward(&f)?;
            add_inplace(&mut x, &m);
            keep(li + 1, &x, &mut out);
        }
        indices
            .iter()
            .map(|i| {
                let t = out.iter().find(|(j, _)| j == i).map(|(_, t)| t.clone()).ok_or_else(|| {
                    Error::Input(format!("vision hidden state {i} was not computed ({} layers loaded)", self.layers.len()))
                })?;
                t.reshape(&[n, tokens, c])
            })
            .collect()
    }
}

pub(crate) fn add_inplace(x: &mut Tensor, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "residual add: shapes differ");
    x.data_mut().iter_mut().zip(y.data()).for_each(|(a, b)| *a += b);
}
