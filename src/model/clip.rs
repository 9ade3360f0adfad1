//! CLIP vision tower (HF `CLIPVisionModel`), as LLaVA uses it.
//!
//! pixels[N, 3, S, S] (N tiles) -> patch conv (P x P, stride P, no bias) -> [N, G*G, C]
//! -> prepend the class embedding -> + position embeddings [G*G + 1, C] -> pre_layrnorm
//! -> L pre-LN encoder layers: x + attn(LN1(x)), x + fc2(act(fc1(LN2(x)))), bidirectional attention
//! within each tile (`Backend::attention_packed`, the tiles packed as sequences).
//! LLaVA reads hidden_states[i] (0 = the pre-LN embeddings, i = output of layer i) for the selected
//! indices, so only layers up to the largest index are loaded and run; the later layers and
//! post_layernorm are skipped.

use crate::backend::{Backend, Cpu, PackedMask, Rows};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// One CLIP encoder layer (`CLIPEncoderLayer`), shared by the vision and text towers.
pub(crate) struct ClipLayer<B: Backend> {
    pub(crate) ln1: B::LayerNorm,
    pub(crate) q: B::Linear,
    pub(crate) k: B::Linear,
    pub(crate) v: B::Linear,
    pub(crate) o: B::Linear,
    pub(crate) ln2: B::LayerNorm,
    pub(crate) fc1: B::Linear,
    pub(crate) fc2: B::Linear,
}

impl<B: Backend> ClipLayer<B> {
    /// The layer `{lp}.*` (HF names): hidden size `c`, MLP width `f`.
    pub(crate) fn load(be: &B, ws: &dyn WeightSource, lp: &str, c: usize, f: usize, eps: f64) -> Result<Self> {
        Ok(ClipLayer {
            ln1: be.layernorm_weights(ws, &format!("{lp}.layer_norm1"), c, eps)?,
            q: be.linear(ws, &format!("{lp}.self_attn.q_proj"), c, c, true)?,
            k: be.linear(ws, &format!("{lp}.self_attn.k_proj"), c, c, true)?,
            v: be.linear(ws, &format!("{lp}.self_attn.v_proj"), c, c, true)?,
            o: be.linear(ws, &format!("{lp}.self_attn.out_proj"), c, c, true)?,
            ln2: be.layernorm_weights(ws, &format!("{lp}.layer_norm2"), c, eps)?,
            fc1: be.linear(ws, &format!("{lp}.mlp.fc1"), c, f, true)?,
            fc2: be.linear(ws, &format!("{lp}.mlp.fc2"), f, c, true)?,
        })
    }

    /// x += attn(LN1 x); x += fc2(act(fc1(LN2 x))), over the packed sequences `lens` with `mask`
    /// and `h` heads (head dim C / h, scores scaled by its inverse square root, as HF's `scale`).
    pub(crate) fn forward(&self, be: &B, x: &mut B::Tensor, lens: &[usize], mask: PackedMask, h: usize, act: &str) -> Result<()> {
        let d = x.n_cols() / h;
        let hn = be.layernorm(x, &self.ln1)?;
        let (q, k, v) = (be.matmul(&hn, &self.q)?, be.matmul(&hn, &self.k)?, be.matmul(&hn, &self.v)?);
        let attn = be.attention_packed(&q, &k, &v, lens, mask, h, h, d)?;
        be.matmul_add(&attn, &self.o, x)?;
        let mut f = be.matmul(&be.layernorm(x, &self.ln2)?, &self.fc1)?;
        be.activation(act, &mut f)?;
        be.matmul_add(&f, &self.fc2, x)
    }
}

pub struct ClipVision<B: Backend = Cpu> {
    cfg: VisionConfig,
    be: B,
    pub(crate) patch: B::Linear,              // the conv as a product: [C, 3*P*P], no bias
    pub(crate) class_embedding: B::Tensor,    // [1, C]
    pub(crate) position_embedding: B::Tensor, // [G*G + 1, C]
    pub(crate) pre_ln: B::LayerNorm,
    pub(crate) layers: Vec<ClipLayer<B>>,
}

impl<B: Backend> ClipVision<B> {
    pub fn load(be: &B, ws: &dyn WeightSource, prefix: &str, cfg: &VisionConfig, n_layers: usize) -> Result<Self> {
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let n_pos = cfg.num_patches() + 1;
        let patch = ws
            .get(&format!("{prefix}.embeddings.patch_embedding.weight"), &[c, cfg.num_channels, p, p])?
            .reshape(&[c, cfg.num_channels * p * p])?;
        let patch = be.linear_from(patch, None)?;
        let class_embedding = be.upload(&ws.get(&format!("{prefix}.embeddings.class_embedding"), &[c])?.reshape(&[1, c])?)?;
        let position_embedding = be.tensor(ws, &format!("{prefix}.embeddings.position_embedding.weight"), &[n_pos, c])?;
        ws.skip(&format!("{prefix}.embeddings.position_ids"));
        let eps = cfg.layer_norm_eps;
        let pre_ln = be.layernorm_weights(ws, &format!("{prefix}.pre_layrnorm"), c, eps)?;
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
            layers.push(ClipLayer::load(be, ws, &lp, c, cfg.intermediate_size, eps)?);
        }
        ws.skip(&format!("{prefix}.post_layernorm.weight"));
        ws.skip(&format!("{prefix}.post_layernorm.bias"));
        Ok(ClipVision { cfg: cfg.clone(), be: be.clone(), patch, class_embedding, position_embedding, pre_ln, layers })
    }

    /// Embeddings [N*(G*G+1), C]: per tile the class embedding, then the patches, plus the
    /// position embeddings.
    pub(crate) fn embed(&self, pixels: &Tensor) -> Result<B::Tensor> {
        let be = &self.be;
        let n = pixels.dim(0);
        let gg = self.cfg.num_patches();
        let patches = be.matmul(&be.upload(&im2col(pixels, self.cfg.image_size, self.cfg.patch_size)?)?, &self.patch)?;
        // Sources: patch rows are table rows 0..N*G*G, the class embedding is "feature" row 0.
        let v = (n * gg) as u32;
        let sources: Vec<u32> = (0..n).flat_map(|t| std::iter::once(v).chain((0..gg).map(move |j| (t * gg + j) as u32))).collect();
        let mut x = be.embedding(&patches, Some(&self.class_embedding), &sources)?;
        be.add(&mut x, &self.position_embedding)?;
        Ok(x)
    }

    /// hidden_states[i] for each i of `indices`, each [N*(G*G+1), C] (tile-major).
    pub fn forward(&self, pixels: &Tensor, indices: &[usize]) -> Result<Vec<B::Tensor>> {
        let be = &self.be;
        let n = pixels.dim(0);
        let h = self.cfg.num_attention_heads;
        let tokens = self.cfg.num_patches() + 1;
        let mut x = be.layernorm(&self.embed(pixels)?, &self.pre_ln)?;
        // Every tile is one packed sequence of `tokens` rows; every row sees all of its tile.
        let lens = vec![tokens; n];
        let mut out: Vec<(usize, B::Tensor)> = Vec::new();
        if indices.contains(&0) {
            out.push((0, x.clone()));
        }
        for (li, layer) in self.layers.iter().enumerate() {
            be.range_push(&format!("vision layer {li}"));
            layer.forward(be, &mut x, &lens, PackedMask::Bidirectional, h, &self.cfg.hidden_act)?;
            if indices.contains(&(li + 1)) {
                out.push((li + 1, x.clone()));
            }
            be.range_pop();
        }
        indices
            .iter()
            .map(|i| {
                out.iter().find(|(j, _)| j == i).map(|(_, t)| t.clone()).ok_or_else(|| {
                    Error::Input(format!("vision hidden state {i} was not computed ({} layers loaded)", self.layers.len()))
                })
            })
            .collect()
    }
}

impl ClipVision<Cpu> {
    /// Every loaded weight (embeddings, pre_layrnorm, the layers that run) under its
    /// `vision_model.*` name in the checkpoint's shape: the parameters `model::clip_grad` trains.
    pub fn export(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let (c, p, ch) = (self.cfg.hidden_size, self.cfg.patch_size, self.cfg.num_channels);
        let mut out = std::collections::BTreeMap::new();
        let e = "vision_model.embeddings";
        out.insert(format!("{e}.patch_embedding.weight"), self.patch.weight.clone().reshape(&[c, ch, p, p])?);
        out.insert(format!("{e}.class_embedding"), self.class_embedding.clone().reshape(&[c])?);
        out.insert(format!("{e}.position_embedding.weight"), self.position_embedding.clone());
        let mut ln = |name: String, l: &crate::nn::LayerNorm| {
            out.insert(format!("{name}.weight"), l.weight.clone());
            out.insert(format!("{name}.bias"), l.bias.clone());
        };
        ln("vision_model.pre_layrnorm".into(), &self.pre_ln);
        for (i, l) in self.layers.iter().enumerate() {
            let lp = format!("vision_model.encoder.layers.{i}");
            ln(format!("{lp}.layer_norm1"), &l.ln1);
            ln(format!("{lp}.layer_norm2"), &l.ln2);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let lp = format!("vision_model.encoder.layers.{i}");
            for (name, lin) in [("self_attn.q_proj", &l.q), ("self_attn.k_proj", &l.k), ("self_attn.v_proj", &l.v), ("self_attn.out_proj", &l.o), ("mlp.fc1", &l.fc1), ("mlp.fc2", &l.fc2)] {
                out.insert(format!("{lp}.{name}.weight"), lin.weight.clone());
                if let Some(b) = &lin.bias {
                    out.insert(format!("{lp}.{name}.bias"), b.clone());
                }
            }
        }
        Ok(out)
    }

    /// The number of encoder layers loaded (those up to the deepest feature layer).
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
}

/// The patch rows of every tile, im2col on the host: pixels [N, 3, S, S] -> [N*G*G, 3*P*P] in the
/// conv weight's (channel, ky, kx) order (G = S / P). Shared by the inference tower and
/// `model::clip_grad`.
pub(crate) fn im2col(pixels: &Tensor, s: usize, p: usize) -> Result<Tensor> {
    let sh = pixels.shape();
    if sh.len() != 4 || sh[1] != 3 || sh[2] != s || sh[3] != s {
        return Err(Error::shape("clip_embed", format!("pixels {sh:?}, expected [N, 3, {s}, {s}]")));
    }
    let (n, g) = (sh[0], s / p);
    let kdim = 3 * p * p;
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
    Tensor::new(cols, &[n * g * g, kdim])
}

pub(crate) fn add_inplace(x: &mut Tensor, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "residual add: shapes differ");
    x.data_mut().iter_mut().zip(y.data()).for_each(|(a, b)| *a += b);
}
