//! CLIP training on the CPU: the forward of both towers with a tape, their backward, and CLIP's
//! symmetric contrastive loss. Gradients are keyed by the HF parameter names of
//! `model::clip_params::ClipParams`.
//!
//! Vision: pixels [N, 3, S, S] -> im2col (`model::clip::im2col`) -> patch conv as a product with
//! W [C, 3*P*P] -> per tile [class; patches] + position embeddings -> pre_layrnorm (= hidden_states[0])
//! -> L pre-LN layers (bidirectional attention per tile; hidden_states[i] = output of layer i) ->
//! class rows -> post_layernorm -> visual_projection = image_embeds [N, P].
//! Text: ids (packed, no padding) -> token + position embeddings -> L causal layers -> final LN ->
//! the row at `clip_text::pool_index` -> text_projection = text_embeds [B, P].
//! Loss (transformers' `clip_loss`): logits = exp(logit_scale) * cos(text_b, image_j) [B, B];
//! (CE(logits, arange) + CE(logits^T, arange)) / 2, each CE a mean over rows.
//!
//! Backward of a layer y = x1 + fc2(act(fc1(LN2 x1))), x1 = x + o(attn(q, k, v of LN1 x)):
//! the Linear gradients dW = dy^T x, db = sum dy, dx = dy W; `cpu::activation::backward_by_name`,
//! `cpu::layernorm_backward`, `cpu::attention_packed_backward`. The tape keeps each layer's inputs
//! and intermediates (f32); nothing is recomputed.
//!
//! `vision_hidden` + `vision_backward_hidden`: the vision tower up to hidden_states[k] and its
//! backward from d(hidden_states[k]), what LLaVA's `--train vision` needs (LLaVA reads
//! hidden_states[vision_feature_layer]).

use std::collections::BTreeMap;

use crate::backend::cpu::{self, activation, PackedMask};
use crate::error::{Error, Result};
use crate::model::clip::im2col;
use crate::model::clip_params::ClipParams;
use crate::model::clip_text::pool_index;
use crate::tensor::Tensor;

/// Gradients by HF parameter name (only the parameters the pass reached).
pub type Grads = BTreeMap<String, Vec<f32>>;

/// grads[name] += v.
pub fn accumulate(g: &mut Grads, name: &str, v: Vec<f32>) {
    match g.get_mut(name) {
        Some(a) => {
            assert_eq!(a.len(), v.len(), "gradient of {name}: sizes differ");
            a.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
        None => {
            g.insert(name.to_string(), v);
        }
    }
}

fn add_into(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "add: sizes differ");
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// y[M, N] = x[M, K] W[N, K]^T (+ b), the `Linear` `name`.
fn linear(p: &ClipParams, name: &str, x: &[f32]) -> Vec<f32> {
    let w = p.get(&format!("{name}.weight"));
    let (n, k) = (w.dim(0), w.len() / w.dim(0));
    let mut y = cpu::matmul_t(x, w.data(), x.len() / k, k, n);
    let bias = format!("{name}.bias");
    if p.has(&bias) {
        let b = p.get(&bias).data();
        y.chunks_mut(n).for_each(|row| add_into(row, b));
    }
    y
}

/// Backward of [`linear`]: accumulates dW (and db) and returns dx = dy W (empty unless `need_dx`).
fn linear_back(p: &ClipParams, name: &str, x: &[f32], dy: &[f32], g: &mut Grads, need_dx: bool) -> Vec<f32> {
    let wname = format!("{name}.weight");
    let w = p.get(&wname);
    let (n, k) = (w.dim(0), w.len() / w.dim(0));
    let m = x.len() / k;
    assert_eq!(dy.len(), m * n, "{name}: dy is not [{m}, {n}]");
    accumulate(g, &wname, cpu::matmul_tn(dy, x, m, n, k));
    let bias = format!("{name}.bias");
    if p.has(&bias) {
        let mut db = vec![0f64; n];
        for row in dy.chunks_exact(n) {
            db.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
        }
        accumulate(g, &bias, db.into_iter().map(|v| v as f32).collect());
    }
    if need_dx {
        cpu::matmul(dy, w.data(), m, n, k)
    } else {
        Vec::new()
    }
}

fn ln(p: &ClipParams, name: &str, x: &[f32], eps: f64) -> Vec<f32> {
    cpu::layernorm(x, p.get(&format!("{name}.weight")).data(), p.get(&format!("{name}.bias")).data(), eps)
}

fn ln_back(p: &ClipParams, name: &str, x: &[f32], dy: &[f32], eps: f64, g: &mut Grads) -> Vec<f32> {
    let (dx, dw, db) = cpu::layernorm_backward(x, p.get(&format!("{name}.weight")).data(), dy, eps);
    accumulate(g, &format!("{name}.weight"), dw);
    accumulate(g, &format!("{name}.bias"), db);
    dx
}

/// What a tower's layers share: sequence lengths (packed), mask, heads, activation, eps.
struct Stack<'a> {
    prefix: String,
    lens: &'a [usize],
    mask: PackedMask,
    heads: usize,
    act: &'a str,
    eps: f64,
}

/// One layer's saved values.
struct LayerTape {
    x: Vec<f32>,
    h1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    x1: Vec<f32>,
    h2: Vec<f32>,
    f: Vec<f32>,
    g: Vec<f32>,
}

impl Stack<'_> {
    fn lp(&self, i: usize) -> String {
        format!("{}.encoder.layers.{i}", self.prefix)
    }

    fn layer_forward(&self, p: &ClipParams, i: usize, x: Vec<f32>) -> (Vec<f32>, LayerTape) {
        let lp = self.lp(i);
        let c = p.get(&format!("{lp}.layer_norm1.weight")).len();
        let d = c / self.heads;
        let h1 = ln(p, &format!("{lp}.layer_norm1"), &x, self.eps);
        let q = linear(p, &format!("{lp}.self_attn.q_proj"), &h1);
        let k = linear(p, &format!("{lp}.self_attn.k_proj"), &h1);
        let v = linear(p, &format!("{lp}.self_attn.v_proj"), &h1);
        let a = cpu::attention_packed(&q, &k, &v, self.lens, self.heads, self.heads, d, self.mask);
        let mut x1 = linear(p, &format!("{lp}.self_attn.out_proj"), &a);
        add_into(&mut x1, &x);
        let h2 = ln(p, &format!("{lp}.layer_norm2"), &x1, self.eps);
        let f = linear(p, &format!("{lp}.mlp.fc1"), &h2);
        let mut g = f.clone();
        activation::by_name(self.act, &mut g);
        let mut y = linear(p, &format!("{lp}.mlp.fc2"), &g);
        add_into(&mut y, &x1);
        (y, LayerTape { x, h1, q, k, v, a, x1, h2, f, g })
    }

    /// d(layer input) from d(layer output); accumulates the layer's parameter gradients.
    fn layer_backward(&self, p: &ClipParams, i: usize, t: &LayerTape, dy: Vec<f32>, gr: &mut Grads) -> Vec<f32> {
        let lp = self.lp(i);
        let d = p.get(&format!("{lp}.layer_norm1.weight")).len() / self.heads;
        let mut dgv = linear_back(p, &format!("{lp}.mlp.fc2"), &t.g, &dy, gr, true);
        activation::backward_by_name(self.act, &t.f, &mut dgv);
        let dh2 = linear_back(p, &format!("{lp}.mlp.fc1"), &t.h2, &dgv, gr, true);
        let mut dx1 = ln_back(p, &format!("{lp}.layer_norm2"), &t.x1, &dh2, self.eps, gr);
        add_into(&mut dx1, &dy);
        let da = linear_back(p, &format!("{lp}.self_attn.out_proj"), &t.a, &dx1, gr, true);
        let (dq, dk, dv) = cpu::attention_packed_backward(&t.q, &t.k, &t.v, &da, self.lens, self.heads, self.heads, d, self.mask);
        let mut dh1 = linear_back(p, &format!("{lp}.self_attn.q_proj"), &t.h1, &dq, gr, true);
        add_into(&mut dh1, &linear_back(p, &format!("{lp}.self_attn.k_proj"), &t.h1, &dk, gr, true));
        add_into(&mut dh1, &linear_back(p, &format!("{lp}.self_attn.v_proj"), &t.h1, &dv, gr, true));
        let mut dx = ln_back(p, &format!("{lp}.layer_norm1"), &t.x, &dh1, self.eps, gr);
        add_into(&mut dx, &dx1);
        dx
    }
}

/// The vision tower's tape up to hidden_states[k].
pub struct VisionTape {
    n: usize,
    cols: Vec<f32>,
    emb: Vec<f32>,
    layers: Vec<LayerTape>,
    lens: Vec<usize>,
}

/// hidden_states[k] [N*(G*G+1), C] of pixels [N, 3, S, S] (tile-major, class row first in each
/// tile; k = 0 is the pre_layrnorm output), with the tape for [`vision_backward_hidden`].
pub fn vision_hidden(p: &ClipParams, pixels: &Tensor, k: usize) -> Result<(Vec<f32>, VisionTape)> {
    let v = &p.cfg.vision;
    if k > v.num_hidden_layers {
        return Err(Error::Input(format!("vision hidden state {k}: the tower has {} layers", v.num_hidden_layers)));
    }
    let cols = im2col(pixels, v.image_size, v.patch_size)?.into_data();
    let n = pixels.dim(0);
    let (c, gg) = (v.hidden_size, v.num_patches());
    let tokens = gg + 1;
    let patches = cpu::matmul_t(&cols, p.get("vision_model.embeddings.patch_embedding.weight").data(), n * gg, 3 * v.patch_size * v.patch_size, c);
    let (cls, pos) = (p.get("vision_model.embeddings.class_embedding").data(), p.get("vision_model.embeddings.position_embedding.weight").data());
    let mut emb = vec![0f32; n * tokens * c];
    for t in 0..n {
        for j in 0..tokens {
            let row = &mut emb[(t * tokens + j) * c..][..c];
            row.copy_from_slice(if j == 0 { cls } else { &patches[(t * gg + j - 1) * c..][..c] });
            add_into(row, &pos[j * c..][..c]);
        }
    }
    let mut x = ln(p, "vision_model.pre_layrnorm", &emb, v.layer_norm_eps);
    let lens = vec![tokens; n];
    let stack = vision_stack(p, &lens);
    let mut layers = Vec::with_capacity(k);
    for i in 0..k {
        let (y, t) = stack.layer_forward(p, i, x);
        layers.push(t);
        x = y;
    }
    Ok((x, VisionTape { n, cols, emb, layers, lens }))
}

fn vision_stack<'a>(p: &'a ClipParams, lens: &'a [usize]) -> Stack<'a> {
    let v = &p.cfg.vision;
    Stack { prefix: "vision_model".into(), lens, mask: PackedMask::Bidirectional, heads: v.num_attention_heads, act: &v.hidden_act, eps: v.layer_norm_eps }
}

/// Backward of [`vision_hidden`] from d(hidden_states[k]): accumulates the gradients of the
/// embeddings, pre_layrnorm and layers 0..k into `gr`.
pub fn vision_backward_hidden(p: &ClipParams, tape: &VisionTape, d_hidden: Vec<f32>, gr: &mut Grads) {
    let v = &p.cfg.vision;
    let stack = vision_stack(p, &tape.lens);
    let mut dx = d_hidden;
    for i in (0..tape.layers.len()).rev() {
        dx = stack.layer_backward(p, i, &tape.layers[i], dx, gr);
    }
    let demb = ln_back(p, "vision_model.pre_layrnorm", &tape.emb, &dx, v.layer_norm_eps, gr);
    let (c, gg) = (v.hidden_size, v.num_patches());
    let tokens = gg + 1;
    let (mut dcls, mut dpos) = (vec![0f32; c], vec![0f32; tokens * c]);
    let mut dpatch = vec![0f32; tape.n * gg * c];
    for t in 0..tape.n {
        for j in 0..tokens {
            let row = &demb[(t * tokens + j) * c..][..c];
            add_into(&mut dpos[j * c..][..c], row);
            if j == 0 {
                add_into(&mut dcls, row);
            } else {
                dpatch[(t * gg + j - 1) * c..][..c].copy_from_slice(row);
            }
        }
    }
    accumulate(gr, "vision_model.embeddings.class_embedding", dcls);
    accumulate(gr, "vision_model.embeddings.position_embedding.weight", dpos);
    let kdim = 3 * v.patch_size * v.patch_size;
    accumulate(gr, "vision_model.embeddings.patch_embedding.weight", cpu::matmul_tn(&dpatch, &tape.cols, tape.n * gg, c, kdim));
}

/// The full vision forward: image_embeds [N, P] and the tape of [`image_backward`].
pub struct ImageTape {
    tower: VisionTape,
    hidden: Vec<f32>,
    pooled: Vec<f32>,
    post: Vec<f32>,
}

pub fn image_forward(p: &ClipParams, pixels: &Tensor) -> Result<(Vec<f32>, ImageTape)> {
    let v = &p.cfg.vision;
    let (hidden, tower) = vision_hidden(p, pixels, v.num_hidden_layers)?;
    let (c, tokens) = (v.hidden_size, v.num_patches() + 1);
    let pooled: Vec<f32> = (0..tower.n).flat_map(|t| hidden[t * tokens * c..][..c].to_vec()).collect();
    let post = ln(p, "vision_model.post_layernorm", &pooled, v.layer_norm_eps);
    let embeds = linear(p, "visual_projection", &post);
    Ok((embeds, ImageTape { tower, hidden, pooled, post }))
}

pub fn image_backward(p: &ClipParams, t: &ImageTape, d_embeds: &[f32], gr: &mut Grads) {
    let v = &p.cfg.vision;
    let (c, tokens) = (v.hidden_size, v.num_patches() + 1);
    let dpost = linear_back(p, "visual_projection", &t.post, d_embeds, gr, true);
    let dpooled = ln_back(p, "vision_model.post_layernorm", &t.pooled, &dpost, v.layer_norm_eps, gr);
    let mut dh = vec![0f32; t.hidden.len()];
    for i in 0..t.tower.n {
        dh[i * tokens * c..][..c].copy_from_slice(&dpooled[i * c..][..c]);
    }
    vision_backward_hidden(p, &t.tower, dh, gr);
}

/// The text tower's tape.
pub struct TextTape {
    flat: Vec<u32>,
    positions: Vec<u32>,
    lens: Vec<usize>,
    layers: Vec<LayerTape>,
    rows: Vec<usize>,
    last: Vec<f32>,
    post: Vec<f32>,
}

fn text_stack<'a>(p: &'a ClipParams, lens: &'a [usize]) -> Stack<'a> {
    let t = &p.cfg.text;
    Stack { prefix: "text_model".into(), lens, mask: PackedMask::Causal { window: None }, heads: t.num_attention_heads, act: &t.hidden_act, eps: t.layer_norm_eps }
}

/// text_embeds [B, P] of id sequences (each with BOS and EOS, at most max_position_embeddings).
pub fn text_forward(p: &ClipParams, ids: &[Vec<u32>]) -> Result<(Vec<f32>, TextTape)> {
    let cfg = &p.cfg.text;
    for (i, s) in ids.iter().enumerate() {
        if s.is_empty() || s.len() > cfg.max_position_embeddings || s.iter().any(|&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!("clip text {i}: {} ids, expected 1..={} ids below {}", s.len(), cfg.max_position_embeddings, cfg.vocab_size)));
        }
    }
    let c = cfg.hidden_size;
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let flat: Vec<u32> = ids.concat();
    let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
    let (tok, pos) = (p.get("text_model.embeddings.token_embedding.weight").data(), p.get("text_model.embeddings.position_embedding.weight").data());
    let mut x = cpu::embedding(tok, &[], c, &flat);
    add_into(&mut x, &cpu::embedding(pos, &[], c, &positions));
    let stack = text_stack(p, &lens);
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let (y, t) = stack.layer_forward(p, i, x);
        layers.push(t);
        x = y;
    }
    let mut start = 0;
    let rows: Vec<usize> = ids
        .iter()
        .map(|s| {
            let r = start + pool_index(s, cfg.eos_token_id);
            start += s.len();
            r
        })
        .collect();
    // The final LayerNorm is per row: only the pooled rows reach the loss.
    let last: Vec<f32> = rows.iter().flat_map(|&r| x[r * c..][..c].to_vec()).collect();
    let post = ln(p, "text_model.final_layer_norm", &last, cfg.layer_norm_eps);
    let embeds = linear(p, "text_projection", &post);
    Ok((embeds, TextTape { flat, positions, lens, layers, rows, last, post }))
}

pub fn text_backward(p: &ClipParams, t: &TextTape, d_embeds: &[f32], gr: &mut Grads) {
    let cfg = &p.cfg.text;
    let c = cfg.hidden_size;
    let dpost = linear_back(p, "text_projection", &t.post, d_embeds, gr, true);
    let dlast = ln_back(p, "text_model.final_layer_norm", &t.last, &dpost, cfg.layer_norm_eps, gr);
    let mut dx = vec![0f32; t.flat.len() * c];
    for (b, &r) in t.rows.iter().enumerate() {
        dx[r * c..][..c].copy_from_slice(&dlast[b * c..][..c]);
    }
    let stack = text_stack(p, &t.lens);
    for i in (0..t.layers.len()).rev() {
        dx = stack.layer_backward(p, i, &t.layers[i], dx, gr);
    }
    let (mut dtok, mut dpos) = (vec![0f32; cfg.vocab_size * c], vec![0f32; cfg.max_position_embeddings * c]);
    for (r, (&id, &ps)) in t.flat.iter().zip(&t.positions).enumerate() {
        let row = &dx[r * c..][..c];
        add_into(&mut dtok[id as usize * c..][..c], row);
        add_into(&mut dpos[ps as usize * c..][..c], row);
    }
    accumulate(gr, "text_model.embeddings.token_embedding.weight", dtok);
    accumulate(gr, "text_model.embeddings.position_embedding.weight", dpos);
}

/// CLIP's loss over B matched pairs (row b of `image` [B, P] with row b of `text` [T, P], T >= B):
/// (loss, d image, d text, d logit_scale), in f64 inside. Text rows past B are extra negatives
/// (hard negatives): they enter each image's softmax over texts, and have no image of their own.
/// With T = B this is CLIP's symmetric loss.
pub fn contrastive_loss(image: &[f32], text: &[f32], p: usize, logit_scale: f32) -> (f64, Vec<f32>, Vec<f32>, f32) {
    let b = image.len() / p;
    let n_text = text.len() / p;
    assert!(n_text >= b && text.len() == n_text * p, "contrastive_loss: {} text rows for {b} images", text.len() / p);
    let unit = |x: &[f32]| -> (Vec<f64>, Vec<f64>) {
        let mut u = Vec::with_capacity(x.len());
        let mut norms = Vec::with_capacity(x.len() / p);
        for r in x.chunks(p) {
            let nr = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            norms.push(nr);
            u.extend(r.iter().map(|&v| v as f64 / nr));
        }
        (u, norms)
    };
    let ((ui, ni), (ut, nt)) = (unit(image), unit(text));
    let s = (logit_scale as f64).exp();
    // logits[t][i] = s cos(text t, image i), t < T, i < B
    let mut cos = vec![0f64; n_text * b];
    for t in 0..n_text {
        for i in 0..b {
            cos[t * b + i] = (0..p).map(|k| ut[t * p + k] * ui[i * p + k]).sum();
        }
    }
    let logits: Vec<f64> = cos.iter().map(|c| s * c).collect();
    // dlogits of both cross-entropies (each a mean over its B rows, then halved): text t -> the B
    // images (t < B), image i -> the T texts.
    let mut dl = vec![0f64; n_text * b];
    let mut loss = 0.0;
    for transpose in [false, true] {
        let width = if transpose { n_text } else { b };
        let at = |r: usize, j: usize| if transpose { logits[j * b + r] } else { logits[r * b + j] };
        for r in 0..b {
            let m = (0..width).map(|j| at(r, j)).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..width).map(|j| (at(r, j) - m).exp()).sum();
            loss += (m + z.ln() - at(r, r)) / (2.0 * b as f64);
            for j in 0..width {
                let g = ((at(r, j) - m).exp() / z - if r == j { 1.0 } else { 0.0 }) / (2.0 * b as f64);
                if transpose {
                    dl[j * b + r] += g;
                } else {
                    dl[r * b + j] += g;
                }
            }
        }
    }
    let dscale: f64 = dl.iter().zip(&logits).map(|(d, l)| d * l).sum();
    // d unit vectors, then through the normalisation: dx = (du - u (u . du)) / |x|.
    let (mut dut, mut dui) = (vec![0f64; n_text * p], vec![0f64; b * p]);
    for t in 0..n_text {
        for i in 0..b {
            let g = s * dl[t * b + i];
            for k in 0..p {
                dut[t * p + k] += g * ui[i * p + k];
                dui[i * p + k] += g * ut[t * p + k];
            }
        }
    }
    let back = |u: &[f64], du: &[f64], norms: &[f64]| -> Vec<f32> {
        let mut out = Vec::with_capacity(u.len());
        for (r, nr) in norms.iter().enumerate() {
            let (ur, dr) = (&u[r * p..][..p], &du[r * p..][..p]);
            let dot: f64 = ur.iter().zip(dr).map(|(a, b)| a * b).sum();
            out.extend(ur.iter().zip(dr).map(|(a, d)| ((d - a * dot) / nr) as f32));
        }
        out
    };
    (loss, back(&ui, &dui, &ni), back(&ut, &dut, &nt), dscale as f32)
}

/// The loss of a batch of matched (image, text) pairs and the gradient of every parameter; texts
/// past the images' count are extra negatives (`contrastive_loss`).
pub fn clip_loss_grads(p: &ClipParams, pixels: &Tensor, ids: &[Vec<u32>]) -> Result<(f64, Grads)> {
    if pixels.dim(0) > ids.len() || pixels.dim(0) < 2 {
        return Err(Error::Input(format!("clip loss: {} images and {} texts (need at least 2 images and a text for each)", pixels.dim(0), ids.len())));
    }
    let (ie, itape) = image_forward(p, pixels)?;
    let (te, ttape) = text_forward(p, ids)?;
    let (loss, di, dt, ds) = contrastive_loss(&ie, &te, p.cfg.projection_dim, p.get("logit_scale").data()[0]);
    let mut gr = Grads::new();
    image_backward(p, &itape, &di, &mut gr);
    text_backward(p, &ttape, &dt, &mut gr);
    gr.insert("logit_scale".into(), vec![ds]);
    Ok((loss, gr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrastive_loss_gradient_matches_finite_differences() {
        // 3 pairs; then the same with 2 extra negative texts (hard negatives).
        for extra in [0usize, 2] {
            let (b, p) = (3, 4);
            let nt = b + extra;
            let img: Vec<f32> = (0..b * p).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
            let txt: Vec<f32> = (0..nt * p).map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0).collect();
            let ls = 1.3f32;
            let (_, di, dt, ds) = contrastive_loss(&img, &txt, p, ls);
            assert_eq!((di.len(), dt.len()), (b * p, nt * p));
            let h = 1e-3f32;
            let f = |i: &[f32], t: &[f32], s: f32| contrastive_loss(i, t, p, s).0;
            for k in 0..b * p {
                let (mut a, mut m) = (img.clone(), img.clone());
                a[k] += h;
                m[k] -= h;
                let fd = (f(&a, &txt, ls) - f(&m, &txt, ls)) / (2.0 * h as f64);
                assert!((fd - di[k] as f64).abs() < 1e-3 * (1.0 + fd.abs()), "extra {extra}: d image[{k}]: {fd} vs {}", di[k]);
            }
            for k in 0..nt * p {
                let (mut a, mut m) = (txt.clone(), txt.clone());
                a[k] += h;
                m[k] -= h;
                let fd = (f(&img, &a, ls) - f(&img, &m, ls)) / (2.0 * h as f64);
                assert!((fd - dt[k] as f64).abs() < 1e-3 * (1.0 + fd.abs()), "extra {extra}: d text[{k}]: {fd} vs {}", dt[k]);
            }
            let fd = (f(&img, &txt, ls + h) - f(&img, &txt, ls - h)) / (2.0 * h as f64);
            assert!((fd - ds as f64).abs() < 1e-3 * (1.0 + fd.abs()), "extra {extra}: d logit_scale: {fd} vs {ds}");
        }
    }
}
