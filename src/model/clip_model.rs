//! HF `CLIPModel` as an image-text scorer (CSR's relevance reward).
//!
//! A checkpoint directory laid out like `openai/clip-vit-large-patch14-336`:
//! - `config.json`: `text_config` ([`ClipTextConfig`]), `vision_config` (`config::VisionConfig`),
//!   `projection_dim`, `logit_scale_init_value` (HF `CLIPConfig` defaults when absent);
//! - `model.safetensors` (or sharded): `text_model.*`, `vision_model.*`, `text_projection.weight`
//!   [P, Ct], `visual_projection.weight` [P, Cv] (no biases), `logit_scale` (a scalar, a log);
//! - `tokenizer.json` (CLIP BPE; `scripts/make_clip_tokenizer.py` builds one) and
//!   `preprocessor_config.json` (`CLIPImageProcessor`: shortest side, bicubic, center crop, CLIP
//!   mean/std).
//!
//! image -> `image::preprocess_clip` -> `model::clip::ClipVision` (all layers) -> class row ->
//! post_layernorm -> visual_projection = image_embeds [1, P];
//! texts -> tokenizer (BOS ... EOS, truncated to 77 tokens as transformers' `truncation=True`) ->
//! `ClipText` -> text_projection = text_embeds [B, P].
//!
//! Score = exp(logit_scale) * cos(image_embeds, text_embeds): transformers' `logits_per_image`,
//! which is what CSR's official code (score.py) records. The OpenAI checkpoints hold logit_scale =
//! ln 100, so this is 100 * cos. No max(., 0) clamp: the paper writes one, the code has none (and
//! it ranks the scores, so it would not matter).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::{Backend, Cpu};
use crate::config::{read_json, VisionConfig};
use crate::error::{Error, Result};
use crate::image::{preprocess_clip, ImageProcessorConfig, RgbImage};
use crate::model::clip::ClipVision;
use crate::model::clip_text::{ClipText, ClipTextConfig};
use crate::tensor::Tensor;
use crate::text::Tokenizer;
use crate::weights::{WeightSource, WeightStore};

/// HF `CLIPConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub text: ClipTextConfig,
    pub vision: VisionConfig,
    pub projection_dim: usize,
    /// Only the initial value; the score uses the checkpoint's `logit_scale` tensor.
    pub logit_scale_init_value: f64,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawConfig {
    text_config: ClipTextConfig,
    vision_config: serde_json::Value,
    projection_dim: usize,
    logit_scale_init_value: f64,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            text_config: ClipTextConfig::default(),
            vision_config: serde_json::Value::Object(Default::default()),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
            if mt != "clip" {
                return Err(Error::config(path, "model_type", format!("`{mt}` is not a CLIPModel config (expected `clip`)")));
            }
        }
        let raw: RawConfig = serde_path_to_error::deserialize(v).map_err(|e| Error::config(path, e.path().to_string(), e.inner().to_string()))?;
        raw.text_config.validate(path, "text_config")?;
        let vision = VisionConfig::from_json(&raw.vision_config, path, "vision_config")?;
        if raw.projection_dim == 0 {
            return Err(Error::config(path, "projection_dim", "must be positive"));
        }
        Ok(ClipConfig { text: raw.text_config, vision, projection_dim: raw.projection_dim, logit_scale_init_value: raw.logit_scale_init_value })
    }
}

/// CLIP's BPE tokenizer (`tokenizer.json`) with transformers' truncation.
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_length: usize,
}

impl ClipTokenizer {
    /// `max_length`: the text tower's `max_position_embeddings` (77).
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        Ok(ClipTokenizer { inner: Tokenizer::from_file(path)?, path: path.to_path_buf(), max_length })
    }

    /// Token ids of each text as transformers' `CLIPTokenizerFast(text, truncation=True,
    /// max_length=77)` gives them: BOS, the text's tokens, EOS; a text over the limit keeps its
    /// first 75 tokens and EOS stays last (the backend truncates before the post-processor adds
    /// BOS and EOS).
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                let mut ids = self.inner.encode(t, true)?;
                if ids.len() < 2 {
                    return Err(Error::Tokenizer {
                        path: self.path.clone(),
                        msg: "the post-processor added no BOS/EOS: not a CLIP tokenizer.json".into(),
                    });
                }
                if ids.len() > self.max_length {
                    let eos = ids[ids.len() - 1];
                    ids.truncate(self.max_length - 1);
                    ids.push(eos);
                }
                Ok(ids)
            })
            .collect()
    }
}

/// A loaded `CLIPModel` with its tokenizer and image processor, on backend `B`.
pub struct ClipModel<B: Backend = Cpu> {
    pub cfg: ClipConfig,
    be: B,
    text: ClipText<B>,
    vision: ClipVision<B>,
    post_ln: B::LayerNorm,
    visual_projection: B::Linear,
    text_projection: B::Linear,
    /// The checkpoint's `logit_scale` (a log value).
    pub logit_scale: f32,
    tokenizer: ClipTokenizer,
    pub processor: ImageProcessorConfig,
}

impl ClipModel<Cpu> {
    /// Load `dir` on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(&Cpu, dir)
    }
}

impl<B: Backend> ClipModel<B> {
    /// Load the checkpoint in `dir` on `be`; every tensor of the file must be used.
    pub fn load_on(be: &B, dir: &Path) -> Result<Self> {
        let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
        let ws = WeightStore::open(dir)?;
        let model = Self::from_weights(be, dir, cfg, &ws)?;
        ws.finish()?;
        Ok(model)
    }

    fn from_weights(be: &B, dir: &Path, cfg: ClipConfig, ws: &dyn WeightSource) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_file(&dir.join("tokenizer.json"), cfg.text.max_position_embeddings)?;
        let processor_path = dir.join("preprocessor_config.json");
        let processor = ImageProcessorConfig::from_file(&processor_path)?;
        let s = cfg.vision.image_size;
        if processor.do_center_crop && (processor.crop_height != s || processor.crop_width != s) {
            let msg = format!("{}x{} pixels, but vision_config.image_size is {s}", processor.crop_height, processor.crop_width);
            return Err(Error::config(processor_path, "crop_size", msg));
        }
        let (cv, ct, p) = (cfg.vision.hidden_size, cfg.text.hidden_size, cfg.projection_dim);
        let text = ClipText::load(be, ws, "text_model", &cfg.text)?;
        let vision = ClipVision::load(be, ws, "vision_model", &cfg.vision, cfg.vision.num_hidden_layers)?;
        // ClipVision skips post_layernorm (LLaVA never runs it); the score does.
        let post_ln = be.layernorm_weights(ws, "vision_model.post_layernorm", cv, cfg.vision.layer_norm_eps)?;
        let visual_projection = be.linear(ws, "visual_projection", cv, p, false)?;
        let text_projection = be.linear(ws, "text_projection", ct, p, false)?;
        let scale = ws.get("logit_scale", &[])?;
        let logit_scale = scale.data()[0];
        if !logit_scale.is_finite() {
            return Err(Error::weights(ws.dir(), format!("tensor `logit_scale` is {logit_scale}")));
        }
        let eos = cfg.text.eos_token_id;
        if eos != 2 && eos as usize >= cfg.text.vocab_size {
            let msg = format!("{eos} is outside the vocabulary ({})", cfg.text.vocab_size);
            return Err(Error::config(dir.join("config.json"), "text_config.eos_token_id", msg));
        }
        Ok(ClipModel { cfg, be: be.clone(), text, vision, post_ln, visual_projection, text_projection, logit_scale, tokenizer, processor })
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Projected text embeddings [B, P] (not normalised) of token id sequences.
    pub fn text_embeds_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let pooled = self.text.forward(ids)?;
        self.be.download(&self.be.matmul(&pooled, &self.text_projection)?)
    }

    /// Projected text embeddings [B, P] (not normalised), all texts in one batch.
    pub fn text_embeds(&self, texts: &[String]) -> Result<Tensor> {
        self.text_embeds_ids(&self.tokenizer.encode(texts)?)
    }

    /// pixel_values [1, 3, S, S] of an image, as `CLIPImageProcessor` makes them.
    pub fn pixels(&self, img: &RgbImage) -> Result<Tensor> {
        Ok(preprocess_clip(img, &self.processor)?.pixel_values)
    }

    /// Projected image embeddings [N, P] (not normalised) of pixel_values [N, 3, S, S].
    pub fn image_embeds_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let be = &self.be;
        let n = pixels.dim(0);
        let layers = self.cfg.vision.num_hidden_layers;
        let last = self.vision.forward(pixels, &[layers])?.pop().expect("one hidden state asked for");
        let tokens = self.cfg.vision.num_patches() + 1;
        let cls: Vec<u32> = (0..n).map(|t| (t * tokens) as u32).collect();
        let pooled = be.layernorm(&be.embedding(&last, None, &cls)?, &self.post_ln)?;
        be.download(&be.matmul(&pooled, &self.visual_projection)?)
    }

    pub fn image_embeds(&self, img: &RgbImage) -> Result<Tensor> {
        self.image_embeds_pixels(&self.pixels(img)?)
    }

    /// exp(logit_scale) * cos(image, text) for each text (batched over the texts).
    pub fn scores(&self, img: &RgbImage, texts: &[String]) -> Result<Vec<f32>> {
        let image = self.image_embeds(img)?;
        let text = self.text_embeds(texts)?;
        Ok(scores_from_embeds(image.data(), &text, self.logit_scale))
    }
}

/// exp(logit_scale) * cos(image, text_b) for every row b of `text` [B, P] (f64 sums).
pub fn scores_from_embeds(image: &[f32], text: &Tensor, logit_scale: f32) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let ni = norm(image);
    let scale = (logit_scale as f64).exp();
    let p = text.dim(1);
    text.data()
        .chunks(p)
        .map(|t| {
            let dot: f64 = t.iter().zip(image).map(|(&a, &b)| a as f64 * b as f64).sum();
            (scale * dot / (ni * norm(t))) as f32
        })
        .collect()
}

/// Load the checkpoint in `dir` on `device` and score `texts` against `img` (`stic clip-score`).
pub fn clip_scores(device: crate::backend::Device, dir: &Path, img: &RgbImage, texts: &[String]) -> Result<Vec<f32>> {
    match device {
        crate::backend::Device::Cpu => ClipModel::load(dir)?.scores(img, texts),
        #[cfg(feature = "cuda")]
        crate::backend::Device::Cuda(n) => ClipModel::load_on(&crate::backend::cuda::Cuda::new(n)?, dir)?.scores(img, texts),
        #[cfg(not(feature = "cuda"))]
        crate::backend::Device::Cuda(_) => Err(Error::Input("--device cuda: this binary was built without --features cuda".into())),
    }
}
