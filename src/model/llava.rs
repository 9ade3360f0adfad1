//! LLaVA-1.5 and LLaVA-NeXT: vision tower + projector + decoder, and the merge of image features
//! into the token sequence.
//!
//! Image path: pixels[N, 3, S, S] -> CLIP hidden_states[idx] (concat over idx) [N, 1+G*G, Cv*L]
//! -> drop the class token ("default") -> projector -> [N, G*G, C]. LLaVA-1.5: N = 1, K = G*G.
//! LLaVA-NeXT: tile 0 is the base image; tiles 1.. form a rows x cols grid that is laid out as a
//! (rows*G) x (cols*G) feature map, unpadded to the original aspect ratio, with `image_newline`
//! appended to every row: K = G*G + h'*(w'+1).
//! Each single `<image>` token in the prompt is replaced in place by its image's K feature rows.
//!
//! Checkpoint key layouts: the hub's llava-hf files use `language_model.model.*`,
//! `language_model.lm_head.weight`, `vision_tower.vision_model.*`, `multi_modal_projector.*`,
//! `image_newline`; the in-memory layout of newer transformers is `model.language_model.*`,
//! `model.vision_tower.*`, `lm_head.weight`, `model.image_newline`; transformers 5.23 saves
//! `vision_tower.*` without `vision_model.`. All load.

use std::path::Path;

use crate::backend::{Backend, Cpu, Rows};
use crate::config::{FeatureSelect, LlavaConfig, LlavaKind};
use crate::error::{Error, Result};
use crate::image::{anyres_grid_shape, ProcessedImage};
use crate::model::clip::ClipVision;
use crate::model::clip_grad::{self, VisionTape};
use crate::model::clip_params::ClipParams;
use crate::model::decoder::Decoder;
use crate::model::projector::{Projector, ProjectorTape};
use crate::tensor::Tensor;
use crate::weights::{RandomWeights, WeightSource, WeightStore};

/// Candidate prefixes of each component, newest layout first. Each component is located on its
/// own (by a tensor it must have), because writers mix styles: transformers 5.23 writes the hub's
/// `language_model.model.*` but a `vision_tower.*` without the `vision_model.` level.
const VISION: [&str; 4] = ["model.vision_tower.vision_model", "model.vision_tower", "vision_tower.vision_model", "vision_tower"];
const PROJECTOR: [&str; 2] = ["model.multi_modal_projector", "multi_modal_projector"];
/// The projector is found by its first weight: `linear_1` (mlp2x_gelu) or its own (linear).
pub fn locate_projector(ws: &dyn WeightSource) -> Result<&'static str> {
    locate(ws, &PROJECTOR, ".linear_1.weight", "projector").or_else(|_| locate(ws, &PROJECTOR, ".weight", "projector"))
}
const LM: [&str; 2] = ["model.language_model", "language_model.model"];
const LM_HEAD: [&str; 2] = ["lm_head.weight", "language_model.lm_head.weight"];
const NEWLINE: [&str; 2] = ["model.image_newline", "image_newline"];

/// The prefix of the vision tower's tensors (`vision_tower.vision_model`, `vision_tower`, ...).
pub fn locate_vision(ws: &dyn WeightSource) -> Result<&'static str> {
    locate(ws, &VISION, ".embeddings.class_embedding", "vision tower")
}

/// The prefix of the language model's tensors (`model.language_model` or `language_model.model`).
pub fn locate_lm(ws: &dyn WeightSource) -> Result<&'static str> {
    locate(ws, &LM, ".embed_tokens.weight", "language-model embedding")
}

/// The name of the lm_head weight in the checkpoint, when it has one (a tied one may not).
pub fn locate_lm_head(ws: &dyn WeightSource) -> Option<&'static str> {
    locate(ws, &LM_HEAD, "", "lm_head").ok()
}

/// The first prefix `p` for which `{p}{probe}` is in the checkpoint.
fn locate<'a>(ws: &dyn WeightSource, candidates: &[&'a str], probe: &str, what: &str) -> Result<&'a str> {
    candidates.iter().copied().find(|p| ws.contains(&format!("{p}{probe}"))).ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| format!("`{p}{probe}`")).collect();
        Error::weights(ws.dir(), format!("no {what} found: expected one of {}", tried.join(", ")))
    })
}

pub struct Llava<B: Backend = Cpu> {
    pub cfg: LlavaConfig,
    be: B,
    vision: ClipVision<B>,
    pub projector: Projector<B>,
    pub decoder: Decoder<B>,
    image_newline: Option<B::Tensor>, // [1, C]
    feature_states: Vec<usize>,
    /// The vision tower's parameters while it trains (`--train vision`, `train_vision`): the
    /// master copy that the optimiser updates; `vision` is rebuilt from it (`sync_vision`).
    pub(crate) vision_train: Option<ClipParams>,
}

impl Llava {
    /// Load `config.json` and the weights of the checkpoint in `dir` (on the CPU).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(&Cpu, dir)
    }

    /// A model of the config in `dir`/config.json with seeded random weights (no safetensors read).
    pub fn random(dir: &Path, seed: u64) -> Result<Self> {
        Self::random_on(&Cpu, dir, seed)
    }

    pub fn from_weights(cfg: LlavaConfig, ws: &dyn WeightSource) -> Result<Self> {
        Self::from_weights_on(&Cpu, cfg, ws)
    }
}

impl<B: Backend> Llava<B> {
    /// `load` on the backend `be`.
    pub fn load_on(be: &B, dir: &Path) -> Result<Self> {
        let cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        let ws = WeightStore::open(dir)?;
        let model = Self::from_weights_on(be, cfg, &ws)?;
        ws.finish()?;
        Ok(model)
    }

    /// `random` on the backend `be`.
    pub fn random_on(be: &B, dir: &Path, seed: u64) -> Result<Self> {
        let cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        Self::from_weights_on(be, cfg, &RandomWeights::new(dir, seed))
    }

    pub fn from_weights_on(be: &B, cfg: LlavaConfig, ws: &dyn WeightSource) -> Result<Self> {
        let lm = locate(ws, &LM, ".embed_tokens.weight", "language-model embedding")?;
        let vision_prefix = locate_vision(ws)?;
        let projector_prefix = locate_projector(ws)?;
        // A tied lm_head may be absent; the decoder then uses the embedding.
        let lm_head = locate(ws, &LM_HEAD, "", "lm_head").unwrap_or(LM_HEAD[0]);
        let feature_states = cfg.feature_state_indices();
        let n_layers = feature_states.iter().copied().max().unwrap_or(0);
        let vision = ClipVision::load(be, ws, vision_prefix, &cfg.vision, n_layers)?;
        let vdim = cfg.vision.hidden_size * feature_states.len();
        let projector = Projector::load(
            be,
            ws,
            projector_prefix,
            vdim,
            cfg.text.hidden_size,
            &cfg.projector_hidden_act,
            cfg.multimodal_projector_bias,
        )?;
        let decoder = Decoder::load(be, ws, lm, lm_head, &cfg.text)?;
        let image_newline = if cfg.kind == LlavaKind::LlavaNext {
            let c = cfg.text.hidden_size;
            Some(be.upload(&ws.get(locate(ws, &NEWLINE, "", "image_newline")?, &[c])?.reshape(&[1, c])?)?)
        } else {
            None
        };
        Ok(Llava { cfg, be: be.clone(), vision, projector, decoder, image_newline, feature_states, vision_train: None })
    }

    pub fn backend(&self) -> &B {
        &self.be
    }

    /// The selected vision hidden states, concatenated over the feature layers, with the class
    /// token dropped for the "default" strategy: [N*P, Cv*L] (tile-major) with P = G*G (or
    /// G*G+1 for "full").
    pub fn vision_features(&self, pixels: &Tensor) -> Result<B::Tensor> {
        let be = &self.be;
        let states = self.vision.forward(pixels, &self.feature_states)?;
        let n = pixels.dim(0);
        let tokens = self.cfg.vision.num_patches() + 1;
        let skip = self.feature_skip();
        let sources: Vec<u32> = (0..n).flat_map(|t| (skip..tokens).map(move |j| (t * tokens + j) as u32)).collect();
        let picked = states.iter().map(|s| be.embedding(s, None, &sources)).collect::<Result<Vec<_>>>()?;
        if picked.len() == 1 {
            return Ok(picked.into_iter().next().unwrap());
        }
        be.concat_cols(&picked.iter().collect::<Vec<_>>())
    }

    /// The vision tower (the GPU learner trains it in place: `train::cuda`).
    #[cfg(feature = "cuda")]
    pub(crate) fn vision_tower(&self) -> &ClipVision<B> {
        &self.vision
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn vision_tower_mut(&mut self) -> &mut ClipVision<B> {
        &mut self.vision
    }

    /// The hidden-state indices the features are read from (0 = the pre-LN embeddings).
    #[cfg(feature = "cuda")]
    pub(crate) fn feature_states(&self) -> &[usize] {
        &self.feature_states
    }

    /// The class rows dropped from each tile's hidden states (1 for "default", 0 for "full").
    pub(crate) fn feature_skip(&self) -> usize {
        match self.cfg.vision_feature_select_strategy {
            FeatureSelect::Default => 1,
            FeatureSelect::Full => 0,
        }
    }

    /// Projected features of every tile: [N*P, C] (tile-major).
    pub fn tile_features(&self, pixels: &Tensor) -> Result<B::Tensor> {
        self.projector.forward(&self.be, &self.vision_features(pixels)?)
    }

    /// The K feature rows [K, C] that replace one `<image>` token.
    pub fn image_features(&self, image: &ProcessedImage) -> Result<B::Tensor> {
        let feats = self.tile_features(&image.pixel_values)?;
        let n = image.pixel_values.dim(0);
        let rows = self.feature_rows(image, n, feats.n_rows() / n.max(1))?;
        self.gather_features(&feats, &rows)
    }

    /// Where each of the K feature rows comes from: a row of the projector's output [N*P, C]
    /// (tile-major) or `image_newline`. LLaVA: every row in order. LLaVA-NeXT (AnyRes): the base
    /// tile, then the grid tiles laid out as a (rows*G) x (cols*G) map with the padding cut off
    /// (HF `unpad_image`) and a newline after each map row; one tile only: base + newline.
    pub(crate) fn feature_rows(&self, image: &ProcessedImage, n: usize, p: usize) -> Result<Vec<FeatureRow>> {
        match self.cfg.kind {
            LlavaKind::Llava => Ok((0..n * p).map(FeatureRow::Projected).collect()),
            LlavaKind::LlavaNext => {
                let mut rows: Vec<FeatureRow> = (0..p).map(FeatureRow::Projected).collect();
                if n == 1 {
                    rows.push(FeatureRow::Newline);
                    return Ok(rows);
                }
                let g = self.cfg.vision.grid();
                let (gr, gc) = anyres_grid_shape(image.image_size, &self.cfg.image_grid_pinpoints, self.cfg.vision.image_size);
                if gr * gc != n - 1 || p != g * g {
                    return Err(Error::shape(
                        "anyres_merge",
                        format!("{} grid tiles of {p} features, expected a {gr}x{gc} grid of {g}x{g}", n - 1),
                    ));
                }
                let (r0, r1, c0, c1) = unpad_bounds(gr * g, gc * g, image.image_size);
                for y in r0..r1 {
                    let (tr, iy) = (y / g, y % g);
                    for x in c0..c1 {
                        let (tc, ix) = (x / g, x % g);
                        let tile = 1 + tr * gc + tc; // tile 0 is the base image
                        rows.push(FeatureRow::Projected((tile * g + iy) * g + ix));
                    }
                    rows.push(FeatureRow::Newline);
                }
                Ok(rows)
            }
        }
    }

    /// The AnyRes merge: rows of `projected` [N*P, C] and `image_newline` in the order of `rows`
    /// (one gather on the backend).
    pub(crate) fn gather_features(&self, projected: &B::Tensor, rows: &[FeatureRow]) -> Result<B::Tensor> {
        if self.cfg.kind == LlavaKind::Llava && rows.iter().enumerate().all(|(i, r)| *r == FeatureRow::Projected(i)) && rows.len() == projected.n_rows() {
            return Ok(projected.clone());
        }
        let np = projected.n_rows() as u32;
        let sources: Vec<u32> = rows
            .iter()
            .map(|r| match *r {
                FeatureRow::Projected(i) => i as u32,
                FeatureRow::Newline => np,
            })
            .collect();
        self.be.embedding(projected, self.image_newline.as_ref(), &sources)
    }

    /// Token embeddings with every `<image>` token replaced by its image's feature rows.
    pub fn embed_with_images(&self, ids: &[u32], images: &[B::Tensor]) -> Result<B::Tensor> {
        let image_token = self.cfg.image_token_index;
        let n_tok = ids.iter().filter(|&&t| t == image_token).count();
        if n_tok != images.len() {
            return Err(Error::Input(format!(
                "the prompt has {n_tok} <image> token(s) (id {image_token}) but {} image(s) were given",
                images.len()
            )));
        }
        if images.is_empty() {
            return self.decoder.embed(ids);
        }
        // One image token per feature row, then one gather from the table and the features.
        let mut expanded = Vec::with_capacity(ids.len() + images.iter().map(|f| f.n_rows()).sum::<usize>());
        let mut img = images.iter();
        for &id in ids {
            if id == image_token {
                expanded.extend(std::iter::repeat_n(image_token, img.next().unwrap().n_rows()));
            } else {
                expanded.push(id);
            }
        }
        let feats = if images.len() == 1 { images[0].clone() } else { self.be.concat_rows(&images.iter().collect::<Vec<_>>())? };
        self.decoder.embed_with_features(&expanded, image_token, Some(&feats))
    }
}

impl Llava {
    /// Train the vision tower from now on (`--train vision`): its weights become host
    /// parameters (`model::clip_params::ClipParams`, `vision_model.*` names) that
    /// `image_features_train` runs through `model::clip_grad`. LLaVA reads one hidden state;
    /// several feature layers are refused.
    pub fn train_vision(&mut self) -> Result<()> {
        if self.vision_train.is_some() {
            return Ok(());
        }
        if self.feature_states.len() != 1 {
            return Err(Error::Input(format!(
                "--train vision: the model reads {} vision feature layers; training the tower supports one (vision_feature_layer an integer)",
                self.feature_states.len()
            )));
        }
        self.vision_train = Some(ClipParams::vision_only(self.cfg.vision.clone(), self.vision.export()?));
        Ok(())
    }

    /// Whether the vision tower trains (`train_vision`).
    pub fn vision_trains(&self) -> bool {
        self.vision_train.is_some()
    }

    /// The trained vision parameters (`vision_model.*` names), when the tower trains.
    pub fn vision_params(&self) -> Option<&ClipParams> {
        self.vision_train.as_ref()
    }

    /// The trained vision parameters with their names relative to the tower's prefix
    /// (`embeddings.class_embedding`, `encoder.layers.0.mlp.fc1.weight`, ...), in the checkpoint's
    /// shapes; starts training the tower (`train_vision`). Call `sync_vision` after changing them.
    pub fn vision_params_mut(&mut self) -> Result<Vec<(String, &mut Tensor)>> {
        self.train_vision()?;
        Ok(vision_named(self.vision_train.as_mut().expect("train_vision set it")))
    }

    /// Rebuild the inference tower from the trained parameters (after an optimiser step or a
    /// load), so that generation sees them.
    pub fn sync_vision(&mut self) -> Result<()> {
        if let Some(p) = &self.vision_train {
            self.vision = ClipVision::load(&self.be, p, "vision_model", &self.cfg.vision, self.vision.n_layers())?;
        }
        Ok(())
    }

    /// `image_features` saving what `image_features_backward` needs (the projector and, when it
    /// trains, the vision tower).
    pub fn image_features_train(&self, image: &ProcessedImage) -> Result<(Tensor, ImageTape)> {
        let n = image.pixel_values.dim(0);
        let (v, vision) = match &self.vision_train {
            Some(p) => {
                let (hidden, tape) = clip_grad::vision_hidden(p, &image.pixel_values, self.feature_states[0])?;
                let (c, tokens) = (self.cfg.vision.hidden_size, self.cfg.vision.num_patches() + 1);
                let skip = self.feature_skip();
                let rows: Vec<f32> = hidden.chunks_exact(c).enumerate().filter(|(r, _)| r % tokens >= skip).flat_map(|(_, row)| row.iter().copied()).collect();
                (Tensor::new(rows, &[n * (tokens - skip), c])?, Some(tape))
            }
            None => (self.vision_features(&image.pixel_values)?, None),
        };
        let np = v.n_rows();
        let (y, proj) = self.projector.forward_train(v)?;
        let rows = self.feature_rows(image, n, np / n.max(1))?;
        Ok((self.gather_features(&y, &rows)?, ImageTape { proj, rows, projected: np, vision }))
    }

    /// From d loss / d features [K, C]: the projector's parameter gradients (when `projector`)
    /// and, when the tower trains (the tape has its part), the vision gradients added into
    /// `vision` (`vision_model.*` names): d(hidden_states[k]) is the projector input's gradient
    /// at the kept rows, 0 at the dropped class rows.
    pub fn image_features_backward(&self, tape: &ImageTape, dk: &[f32], projector: bool, vision: &mut clip_grad::Grads) -> Vec<(String, Vec<f32>)> {
        let c = self.cfg.text.hidden_size;
        let mut dy = vec![0f32; tape.projected * c];
        for (r, g) in tape.rows.iter().zip(dk.chunks_exact(c)) {
            if let FeatureRow::Projected(i) = *r {
                dy[i * c..(i + 1) * c].iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        let (p, vt) = match (&self.vision_train, &tape.vision) {
            (Some(p), Some(vt)) => (p, vt),
            _ => return if projector { self.projector.backward(&tape.proj, &dy) } else { Vec::new() },
        };
        let (grads, dx) = self.projector.backward_opts(&tape.proj, &dy, projector, true);
        let dx = dx.expect("asked for d(input)");
        let (cv, tokens, skip) = (self.cfg.vision.hidden_size, self.cfg.vision.num_patches() + 1, self.feature_skip());
        let kept = tokens - skip;
        let n = tape.projected / kept;
        let mut dh = vec![0f32; n * tokens * cv];
        for (i, row) in dx.chunks_exact(cv).enumerate() {
            let r = (i / kept) * tokens + skip + i % kept;
            dh[r * cv..][..cv].copy_from_slice(row);
        }
        clip_grad::vision_backward_hidden(p, vt, dh, vision);
        grads
    }
}

/// The tensors of `p` with their names relative to the tower (`vision_model.` cut off).
pub(crate) fn vision_named(p: &mut ClipParams) -> Vec<(String, &mut Tensor)> {
    p.tensors.iter_mut().map(|(n, t)| (n.strip_prefix("vision_model.").unwrap_or(n).to_string(), t)).collect()
}

/// The source of one image feature row (see `Llava::feature_rows`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FeatureRow {
    Projected(usize),
    Newline,
}

/// What `Llava::image_features_backward` needs: the projector's tape, the row map and, when the
/// tower trains, its tape.
pub struct ImageTape {
    proj: ProjectorTape,
    rows: Vec<FeatureRow>,
    projected: usize,
    vision: Option<VisionTape>,
}

impl ImageTape {
    /// K, the image's feature rows.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// HF `unpad_image`: the [r0, r1) x [c0, c1) window of an h x w feature map that holds the image
/// (the padding added by the aspect-preserving resize is cut off).
pub fn unpad_bounds(h: usize, w: usize, (oh, ow): (usize, usize)) -> (usize, usize, usize, usize) {
    // Python: int(round(x, 7)); rounding at 7 decimals only matters for values like 11.99999999.
    let round7 = |x: f64| ((x * 1e7).round_ties_even() / 1e7).trunc() as usize;
    let orig_aspect = ow as f64 / oh as f64;
    let cur_aspect = w as f64 / h as f64;
    if orig_aspect > cur_aspect {
        let new_h = round7(oh as f64 * (w as f64 / ow as f64));
        let pad = (h - new_h.min(h)) / 2;
        (pad, h - pad, 0, w)
    } else {
        let new_w = round7(ow as f64 * (h as f64 / oh as f64));
        let pad = (w - new_w.min(w)) / 2;
        (0, h, pad, w - pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpad_wide_and_tall() {
        // 200x120 (w x h) image on a 1x2 grid of 24: map 24 x 48, aspect 1.67 < 2:
        // w' = int(200 * 24/120) = 40, pad 4 columns each side.
        assert_eq!(unpad_bounds(24, 48, (120, 200)), (0, 24, 4, 44));
        // 500x300 image in a 48x48 map: aspect 1.67 > 1: h' = round(300*48/500) = 28, pad 10.
        assert_eq!(unpad_bounds(48, 48, (300, 500)), (10, 38, 0, 48));
        // tall 90x250 (w x h) in a 72x24 map: aspect .36 > .333: h' = round(250*24/90)=66, pad 3.
        assert_eq!(unpad_bounds(72, 24, (250, 90)), (3, 69, 0, 24));
    }
}
