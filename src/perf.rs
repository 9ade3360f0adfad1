//! Performance drivers shared by `stic profile` and the model benches (`benches/cuda_model.rs`):
//! one prefill of B prompts (optionally each with an image) and N greedy decode steps, on any
//! backend, with per-op times.
//!
//! The prompts are seeded random token ids (the vocabulary without the special ids below 3), so
//! a random-weights model of any config (`--random-weights`) runs without a tokenizer's help.
//! Decode runs exactly N steps (EOS does not stop it): the numbers are for a fixed amount of work.

use std::time::Instant;

use crate::backend::profile::OpTime;
use crate::backend::{Backend, Rows};
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::image::{preprocess, RgbImage};
use crate::model::KvCache;
use crate::rng::Rng;

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub batch: usize,
    /// Text tokens per prompt.
    pub prompt_len: usize,
    pub decode_steps: usize,
    /// Prepended to every prompt (its feature rows count as prefill tokens).
    pub image: Option<RgbImage>,
    pub seed: u64,
}

/// One phase: wall time (synchronised), tokens processed, and the time per op when profiled.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub ms: f64,
    pub tokens: usize,
    pub ops: Vec<OpTime>,
}

impl Phase {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / (self.ms / 1e3)
    }
}

/// The inputs of a workload on `pipe`'s backend: B sequences of [K image rows +] T tokens.
pub struct Prepared<B: Backend> {
    inputs: Vec<B::Tensor>,
    image_rows: usize,
}

/// Embeds the prompts (and runs the vision tower once per prompt: that is part of prefill).
pub fn prepare<B: Backend>(pipe: &Pipeline<B>, w: &Workload) -> Result<Prepared<B>> {
    if w.batch == 0 || w.prompt_len == 0 {
        return Err(Error::Input(format!("a workload needs batch >= 1 and prompt_len >= 1 (got {} and {})", w.batch, w.prompt_len)));
    }
    let model = &pipe.model;
    let vocab = model.cfg.text.vocab_size.min(model.cfg.image_token_index as usize).max(4);
    let mut rng = Rng::new(w.seed);
    let mut inputs = Vec::with_capacity(w.batch);
    let mut image_rows = 0;
    for _ in 0..w.batch {
        let mut ids: Vec<u32> = (0..w.prompt_len).map(|_| 3 + rng.below(vocab - 3) as u32).collect();
        let feats = match &w.image {
            Some(img) => {
                ids.insert(0, model.cfg.image_token_index);
                let f = model.image_features(&preprocess(img, &pipe.processor)?)?;
                image_rows = f.n_rows();
                vec![f]
            }
            None => Vec::new(),
        };
        inputs.push(model.embed_with_images(&ids, &feats)?);
    }
    Ok(Prepared { inputs, image_rows })
}

impl<B: Backend> Prepared<B> {
    /// Rows of each prompt: the image's feature rows plus the text tokens.
    pub fn rows_per_prompt(&self) -> usize {
        self.inputs.first().map(|x| x.n_rows()).unwrap_or(0)
    }
    pub fn image_rows(&self) -> usize {
        self.image_rows
    }
}

/// Prefill of every prompt (one forward over all of them, then the logits and argmax of each
/// last row), then `decode_steps` greedy steps over the whole batch. Each phase is timed with a
/// sync at its end; with `profile`, per-op times too (CUDA: events, which cost a little).
pub fn run<B: Backend>(pipe: &Pipeline<B>, prep: &Prepared<B>, decode_steps: usize, profile: bool) -> Result<(Phase, Phase)> {
    let be = pipe.model.backend();
    let dec = &pipe.model.decoder;
    let b = prep.inputs.len();
    let lens: Vec<usize> = prep.inputs.iter().map(|x| x.n_rows()).collect();
    let cap = lens.iter().max().copied().unwrap_or(0) + decode_steps + 1;
    let mut cache = KvCache::new(be, &dec.cfg, b, cap)?;
    let slots: Vec<usize> = (0..b).collect();
    let x = be.concat_rows(&prep.inputs.iter().collect::<Vec<_>>())?;
    // Everything queued before this point (uploads, the cache's zeroing) is not prefill.
    be.argmax(&dec.logits(&be.embedding(&x, None, &[0])?)?)?;

    be.set_profiling(profile);
    let t0 = Instant::now();
    be.range_push("prefill");
    let h = dec.forward(x, &slots, &lens, &mut cache)?;
    let mut tokens = be.argmax(&dec.logits(&be.embedding(&h, None, &crate::generate::last_rows(&lens))?)?)?;
    be.range_pop();
    let prefill_ops = be.take_profile()?;
    let prefill = Phase { ms: t0.elapsed().as_secs_f64() * 1e3, tokens: lens.iter().sum(), ops: prefill_ops };

    be.set_profiling(profile);
    let t0 = Instant::now();
    let ones = vec![1; b];
    for step in 0..decode_steps {
        be.range_push(&format!("decode step {step}"));
        let x = dec.embed(&tokens)?;
        let h = dec.forward(x, &slots, &ones, &mut cache)?;
        tokens = be.argmax(&dec.logits(&h)?)?;
        be.range_pop();
    }
    let decode_ops = be.take_profile()?;
    be.set_profiling(false);
    let decode = Phase { ms: t0.elapsed().as_secs_f64() * 1e3, tokens: b * decode_steps, ops: decode_ops };
    Ok((prefill, decode))
}
