//! The inference pipeline: checkpoint directory -> tokenizer + image processor + model, and the two
//! jobs the CLI exposes: batched generation with a KV cache, and scoring a response
//! (per-token log-probabilities, what DPO consumes).
//!
//! Sampling follows HF `generate`'s order of logits processors: temperature, then top-k, then
//! top-p; temperature 0 is greedy (argmax, lowest index on ties, like torch.argmax). Each sequence
//! of a batch draws from its own random stream derived from the seed and its index, so a sequence's
//! output does not depend on what it is batched with.

use std::path::Path;

use crate::backend::cpu::logsumexp;
use crate::backend::{Backend, Cpu, Rows};
use crate::config::{generation_eos, CheckpointPaths};
use crate::error::{Error, Result};
use crate::image::{preprocess, ImageProcessorConfig, RgbImage};
use crate::model::{KvCache, Llava};
use crate::text::{ChatTemplate, Tokenizer, IMAGE_TOKEN};

#[derive(Clone, Debug)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    /// Temperature 0: the argmax, which backends compute on the device.
    pub fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { max_new_tokens: 64, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

use crate::rng::Rng;

/// Pick the next token from one row of logits [V]: greedy (no draw) or one uniform from `rng`
/// through [`crate::backend::cpu::sample_row`].
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.greedy() {
        return crate::backend::cpu::argmax(logits) as u32;
    }
    let u = rng.uniform();
    crate::backend::cpu::sample_row(logits, p.temperature, p.top_k, p.top_p, u)
}

/// The index of the last row of each sequence of `lens` rows stacked (the rows whose logits
/// pick the first new token after a prefill).
pub fn last_rows(lens: &[usize]) -> Vec<u32> {
    lens.iter()
        .scan(0usize, |end, &n| {
            *end += n;
            Some(*end as u32 - 1)
        })
        .collect()
}

/// The sampling seed of sequence `i` of a batch generated with `seed` (`Pipeline::generate`).
pub fn batch_seeds(seed: u64, n: usize) -> Vec<u64> {
    (0..n).map(|i| seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407)).collect()
}

/// One generation request: a prompt (already templated or raw) and its images.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: String,
    pub images: Vec<RgbImage>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub n_image_tokens: usize,
    pub output_ids: Vec<u32>,
    pub text: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Score {
    pub response_ids: Vec<u32>,
    pub logprobs: Vec<f64>,
    pub sum: f64,
}

pub struct Pipeline<B: Backend = Cpu> {
    pub model: Llava<B>,
    pub tokenizer: Tokenizer,
    pub processor: ImageProcessorConfig,
    pub template: ChatTemplate,
    pub eos: Vec<u32>,
}

impl Pipeline {
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, None, None)
    }

    /// Load the checkpoint in `dir` on the CPU; with `random_weights = Some(seed)`, build the
    /// model of `dir`/config.json with seeded random weights instead of reading safetensors; with
    /// `adapter`, attach that PEFT LoRA adapter (unmerged: it can be trained further).
    pub fn load_with(dir: &Path, random_weights: Option<u64>, adapter: Option<&Path>) -> Result<Self> {
        let mut model = match random_weights {
            Some(seed) => Llava::random(dir, seed)?,
            None => Llava::load(dir)?,
        };
        if let Some(a) = adapter {
            crate::adapter::load_adapter(&mut model, a)?;
        }
        Self::with_model(dir, model)
    }
}

/// Work to run on a pipeline of whichever backend `--device` names (see [`with_pipeline`]).
pub trait WithPipeline {
    type Out;
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> Result<Self::Out>;
}

/// Load `dir` (random weights from `random_weights`, `adapter` attached on the CPU or merged on a
/// GPU) on `device` and run `work` on it. A `cuda` device in a build without the feature is an
/// error naming it.
pub fn with_pipeline<W: WithPipeline>(device: crate::backend::Device, dir: &Path, random_weights: Option<u64>, adapter: Option<&Path>, work: W) -> Result<W::Out> {
    match device {
        crate::backend::Device::Cpu => work.run(Pipeline::load_with(dir, random_weights, adapter)?),
        #[cfg(feature = "cuda")]
        crate::backend::Device::Cuda(n) => work.run(Pipeline::load_on(&crate::backend::cuda::Cuda::new(n)?, dir, random_weights, adapter)?),
        #[cfg(not(feature = "cuda"))]
        crate::backend::Device::Cuda(_) => Err(Error::Input("--device cuda: this binary was built without --features cuda".into())),
    }
}

impl<B: Backend> Pipeline<B> {
    /// `load_with` on the backend `be`. An adapter is merged into the weights as they are read
    /// (W + scale B A, the projector replaced when the adapter carries it): inference only.
    pub fn load_on(be: &B, dir: &Path, random_weights: Option<u64>, adapter: Option<&Path>) -> Result<Self> {
        let cfg = crate::config::LlavaConfig::from_file(&dir.join("config.json"))?;
        let model = match (random_weights, adapter) {
            (Some(seed), None) => Llava::random_on(be, dir, seed)?,
            (Some(seed), Some(a)) => {
                let base = crate::weights::RandomWeights::new(dir, seed);
                Llava::from_weights_on(be, cfg, &crate::adapter::MergedWeights::new(&base, a)?)?
            }
            (None, None) => Llava::load_on(be, dir)?,
            (None, Some(a)) => {
                let base = crate::weights::WeightStore::open(dir)?;
                let merged = crate::adapter::MergedWeights::new(&base, a)?;
                let model = Llava::from_weights_on(be, cfg, &merged)?;
                merged.finish()?;
                base.finish()?;
                model
            }
        };
        Self::with_model(dir, model)
    }

    /// The tokenizer, processor, template and EOS of the checkpoint in `dir`, around `model`.
    pub fn with_model(dir: &Path, model: Llava<B>) -> Result<Self> {
        let paths = CheckpointPaths::new(dir);
        let tokenizer = Tokenizer::from_file(&paths.tokenizer)?;
        let mut processor = ImageProcessorConfig::from_file(&paths.preprocessor)?;
        if processor.image_grid_pinpoints.is_none() && !model.cfg.image_grid_pinpoints.is_empty() {
            processor.image_grid_pinpoints = Some(model.cfg.image_grid_pinpoints.clone());
        }
        let eos = generation_eos(&paths.generation)?.unwrap_or_else(|| model.cfg.text.eos_token_ids.clone());
        let template = ChatTemplate::for_decoder(model.cfg.text.arch);
        Ok(Pipeline { model, tokenizer, processor, template, eos })
    }

    /// The prompt text the model sees: templated unless `raw`.
    pub fn format_prompt(&self, prompt: &str, n_images: usize, raw: bool) -> String {
        if raw {
            prompt.to_string()
        } else {
            self.template.apply(prompt, n_images > 0)
        }
    }

    /// Token ids (BOS first) of a formatted prompt, before `<image>` expansion; checks that the
    /// prompt has one `<image>` per image.
    pub fn prompt_ids(&self, text: &str, n_images: usize) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text, true)?;
        let n_tok = ids.iter().filter(|&&t| t == self.model.cfg.image_token_index).count();
        if n_tok != n_images {
            return Err(Error::Input(format!(
                "the prompt has {n_tok} {IMAGE_TOKEN} token(s) but {n_images} image(s) were given; \
                 put one {IMAGE_TOKEN} where each image goes (or drop --raw-prompt to use the chat template)"
            )));
        }
        Ok(ids)
    }

    /// Input embeddings [T, C] for prompt ids and images, and the number of image feature rows.
    pub fn embed(&self, ids: &[u32], images: &[RgbImage]) -> Result<(B::Tensor, usize)> {
        let feats = images
            .iter()
            .map(|img| self.model.image_features(&preprocess(img, &self.processor)?))
            .collect::<Result<Vec<_>>>()?;
        let k = feats.iter().map(|f| f.n_rows()).sum();
        Ok((self.model.embed_with_images(ids, &feats)?, k))
    }

    /// Generate for a batch of requests at once (one prefill call, then one decode call per step
    /// over every unfinished sequence).
    pub fn generate(&self, reqs: &[Request], params: &SamplingParams) -> Result<Vec<Generation>> {
        self.generate_seeded(reqs, params, &batch_seeds(params.seed, reqs.len()))
    }

    /// `generate` with one sampling seed per request: request i draws from `Rng::new(seeds[i])`
    /// (`params.seed` is not used), so its stream does not depend on its place in the batch.
    pub fn generate_seeded(&self, reqs: &[Request], params: &SamplingParams, seeds: &[u64]) -> Result<Vec<Generation>> {
        let mut prompt_ids = Vec::new();
        let mut inputs = Vec::new();
        let mut n_img = Vec::new();
        for r in reqs {
            let ids = self.prompt_ids(&r.prompt, r.images.len())?;
            let (x, k) = self.embed(&ids, &r.images)?;
            prompt_ids.push(ids);
            inputs.push(x);
            n_img.push(k);
        }
        let outputs = self.generate_from_embeds_seeded(inputs, params, seeds)?;
        reqs.iter()
            .enumerate()
            .map(|(i, _)| {
                Ok(Generation {
                    prompt_ids: prompt_ids[i].clone(),
                    n_image_tokens: n_img[i],
                    text: self.tokenizer.decode(&outputs[i], true)?,
                    output_ids: outputs[i].clone(),
                })
            })
            .collect()
    }

    /// The decode loop over prepared input embeddings (each [T_b, C]). Output ids include the EOS
    /// token that stopped a sequence, as HF's `generate` returns them.
    pub fn generate_from_embeds(&self, inputs: Vec<B::Tensor>, params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
        let seeds = batch_seeds(params.seed, inputs.len());
        self.generate_from_embeds_seeded(inputs, params, &seeds)
    }

    /// `generate_from_embeds` with one sampling seed per sequence (see `generate_seeded`).
    ///
    /// Sequence b lives in slot b of one KV cache sized for the longest prompt plus
    /// `max_new_tokens`. One prefill call covers every prompt; then each step decodes every
    /// unfinished sequence in one call. Tokens are picked on the backend (argmax, or the sampling
    /// kernel with one host-drawn uniform per sequence), so a step moves only B token ids to the
    /// host (CUDA: one sync per step).
    pub fn generate_from_embeds_seeded(&self, inputs: Vec<B::Tensor>, params: &SamplingParams, seeds: &[u64]) -> Result<Vec<Vec<u32>>> {
        let dec = &self.model.decoder;
        let be = self.model.backend();
        let b = inputs.len();
        if seeds.len() != b {
            return Err(Error::Input(format!("{} sampling seeds for {b} sequences", seeds.len())));
        }
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        if params.max_new_tokens == 0 || b == 0 {
            return Ok(out);
        }
        let lens: Vec<usize> = inputs.iter().map(|x| x.n_rows()).collect();
        let cap = lens.iter().max().copied().unwrap_or(0) + params.max_new_tokens;
        let mut cache = KvCache::new(be, &dec.cfg, b, cap)?;
        let mut rngs: Vec<Rng> = seeds.iter().map(|&s| Rng::new(s)).collect();
        let x = if b == 1 { inputs.into_iter().next().unwrap() } else { be.concat_rows(&inputs.iter().collect::<Vec<_>>())? };
        let slots: Vec<usize> = (0..b).collect();
        let h = dec.forward(x, &slots, &lens, &mut cache)?;
        let mut hidden = be.embedding(&h, None, &last_rows(&lens))?;
        let mut active: Vec<usize> = slots;
        loop {
            let logits = dec.logits(&hidden)?;
            let tokens: Vec<u32> = if params.greedy() {
                be.argmax(&logits)?
            } else {
                // One uniform per active sequence from its own stream, as `sample` draws it.
                let u: Vec<f64> = active.iter().map(|&s| rngs[s].uniform()).collect();
                be.sample(&logits, params.temperature, params.top_k, params.top_p, &u)?
            };
            let mut next_active = Vec::new();
            let mut next_tokens = Vec::new();
            for (&s, &t) in active.iter().zip(&tokens) {
                out[s].push(t);
                if !self.eos.contains(&t) && out[s].len() < params.max_new_tokens {
                    next_active.push(s);
                    next_tokens.push(t);
                }
            }
            if next_active.is_empty() {
                break;
            }
            let x = dec.embed(&next_tokens)?;
            hidden = dec.forward(x, &next_active, &vec![1; next_active.len()], &mut cache)?;
            active = next_active;
        }
        Ok(out)
    }

    /// Log-probabilities of `response` (tokenized without BOS, appended right after the prompt)
    /// given the formatted prompt and its images.
    pub fn score(&self, prompt: &str, images: &[RgbImage], response: &str) -> Result<Score> {
        let ids = self.prompt_ids(prompt, images.len())?;
        let response_ids = self.tokenizer.encode(response, false)?;
        if response_ids.is_empty() {
            return Err(Error::Input("the response is empty after tokenization".into()));
        }
        let all: Vec<u32> = ids.iter().chain(&response_ids).copied().collect();
        let (x, _) = self.embed(&all, images)?;
        let logprobs = self.score_embeds(x, &response_ids)?;
        let sum = logprobs.iter().sum();
        Ok(Score { response_ids, logprobs, sum })
    }

    /// Per-token log-probs of the last `targets.len()` rows of `x` [T, C].
    pub fn score_embeds(&self, x: B::Tensor, targets: &[u32]) -> Result<Vec<f64>> {
        let dec = &self.model.decoder;
        let be = self.model.backend();
        let t = x.n_rows();
        let r = targets.len();
        if r == 0 || r >= t {
            return Err(Error::Input(format!("scoring {r} response tokens after a sequence of {t} rows")));
        }
        let mut cache = KvCache::new(be, &dec.cfg, 1, t)?;
        let h = dec.forward(x, &[0], &[t], &mut cache)?;
        // Row t-r-1 predicts target 0, ..., row t-2 predicts target r-1.
        let rows: Vec<u32> = (t - r - 1..t - 1).map(|i| i as u32).collect();
        let logits = be.logits_host(&dec.logits(&be.embedding(&h, None, &rows)?)?)?;
        Ok(targets.iter().enumerate().map(|(i, &tok)| logits.row(i)[tok as usize] as f64 - logsumexp(logits.row(i))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freqs(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<f64> {
        let mut rng = Rng::new(p.seed);
        let mut c = vec![0f64; logits.len()];
        for _ in 0..n {
            c[sample(logits, p, &mut rng) as usize] += 1.0;
        }
        c.iter().map(|x| x / n as f64).collect()
    }

    #[test]
    fn greedy_takes_first_max() {
        let p = SamplingParams::default();
        assert_eq!(sample(&[0.0, 2.0, 2.0, 1.0], &p, &mut Rng::new(0)), 1);
    }

    #[test]
    fn temperature_sampling_follows_softmax() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let f = freqs(&logits, &p, 40_000);
        for (a, b) in f.iter().zip([0.5, 0.3, 0.2]) {
            assert!((a - b).abs() < 0.01, "{f:?}");
        }
    }

    #[test]
    fn top_p_drops_the_tail_like_hf() {
        // HF TopPLogitsWarper with top_p 0.6: ascending cumulative probs 0.2, 0.5, 1.0; the tokens
        // whose cumulative mass is <= 0.4 go, so 0.2 is dropped and 0.5 / 0.3 renormalise.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = SamplingParams { temperature: 1.0, top_p: 0.6, seed: 5, ..Default::default() };
        let f = freqs(&logits, &p, 40_000);
        assert_eq!(f[2], 0.0);
        assert!((f[0] - 0.625).abs() < 0.01 && (f[1] - 0.375).abs() < 0.01, "{f:?}");
        // A tiny top_p keeps only the most likely token.
        let p = SamplingParams { top_p: 0.01, ..p };
        assert_eq!(freqs(&logits, &p, 1000)[0], 1.0);
    }

    #[test]
    fn top_k_keeps_k_tokens() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let p = SamplingParams { temperature: 2.0, top_k: 2, seed: 9, ..Default::default() };
        let f = freqs(&logits, &p, 20_000);
        assert_eq!(f[0] + f[3], 0.0);
        // softmax([3, 2] / 2): e^0.5 / (1 + e^0.5)
        let want = 0.5f64.exp() / (1.0 + 0.5f64.exp());
        assert!((f[1] - want).abs() < 0.015, "{f:?}");
    }
}
