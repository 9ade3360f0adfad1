//! The CPU [`Learner`] (the reference): the pipeline's own adapters and projector, trained with
//! the gradients of [`super::dpo_pair_grads_packed`] / [`super::sft_grads`] and [`TrainAdamW`];
//! `train_dpo` / `train_sft` run [`train_loop`] with it. Each DPO pair runs as one packed
//! sequence [prompt | chosen | rejected] (shared-prefix mask), so the image and prompt are encoded
//! once (two sequences when the model has a sliding window).

use std::path::{Path, PathBuf};

use crate::adapter::{init_lora, load_adapter, save_adapter, LoraSpec};
use crate::error::Result;
use crate::generate::Pipeline;
use crate::optim::AdamWConfig;

use crate::model::grads::DecoderGrads;

use super::data::{read_pairs, read_sft_data};
use super::full::{load_trained, save_model, TrainParts};
use super::run_loop::{reference_cache, train_loop, ExampleOut, Learner, LogLine, TrainArgs};
use super::{dpo_pair_grads_full, dpo_pair_grads_packed_full, reference_logps, sft_grads_full, FullAcc, Grads, TrainAdamW};

/// The CPU [`Learner`]: the pipeline's own adapters, [`TrainAdamW`], and the accumulated
/// [`Grads`] (each example's gradients added with their weight). With `--train`: the parts that
/// train in full, the base checkpoint (`base`, for the model directories it writes) and, when the
/// decoder trains, its gradient buffers (allocated once, accumulated into in place, zeroed by
/// each step).
pub struct CpuLearner<'a> {
    pub pipe: &'a mut Pipeline,
    opt: TrainAdamW,
    acc: Option<Grads>,
    full: Option<DecoderGrads>,
    parts: Option<TrainParts>,
    base: PathBuf,
    shard_bytes: u64,
}

impl<'a> CpuLearner<'a> {
    /// A learner for `pipe`, loaded from the checkpoint in `base` (with `--train vision`, the
    /// tower trains from now on: `Llava::train_vision`).
    pub fn new(pipe: &'a mut Pipeline, args: &TrainArgs, base: &Path) -> Result<Self> {
        let full = args.train.filter(|p| p.decoder).map(|_| DecoderGrads::zeros(&pipe.model.decoder.cfg));
        if args.train.is_some_and(|p| p.vision) {
            pipe.model.train_vision()?;
        }
        Ok(CpuLearner {
            pipe,
            opt: TrainAdamW::new(AdamWConfig { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() }),
            acc: None,
            full,
            parts: args.train,
            base: base.to_path_buf(),
            shard_bytes: args.shard_mib.max(1) << 20,
        })
    }

    /// The pipeline and, when the decoder trains in full, its gradient buffers with an example's
    /// weight `w` (for the `*_full` gradient functions).
    pub fn split(&mut self, w: f32) -> (&Pipeline, FullAcc<'_>) {
        (&*self.pipe, self.full.as_mut().map(|g| (g, w)))
    }

    /// Add `w` times an example's gradients to the step's.
    pub fn accumulate(&mut self, grads: Grads, w: f32) {
        match self.acc.as_mut() {
            None => {
                let mut g = grads;
                g.scale(w);
                self.acc = Some(g);
            }
            Some(a) => a.add_scaled(&grads, w),
        }
    }
}

impl Learner for CpuLearner<'_> {
    fn init_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<()> {
        init_lora(&mut self.pipe.model, spec, seed).map(|_| ())
    }
    fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        load_adapter(&mut self.pipe.model, dir).map(|_| ())
    }
    fn adapted(&mut self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for (_, name, l) in self.pipe.model.decoder.projections_mut() {
            if l.lora.is_some() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
    fn save_adapter(&mut self, dir: &Path, spec: &LoraSpec, projector: bool) -> Result<()> {
        save_adapter(&mut self.pipe.model, dir, spec, projector)
    }
    fn load_optimizer(&mut self, path: &Path) -> Result<()> {
        self.opt.load(path)
    }
    fn save_optimizer(&mut self, path: &Path) -> Result<()> {
        self.opt.save(path)
    }
    fn grad_norm(&mut self) -> Result<f64> {
        let n = self.acc.as_ref().map(Grads::norm).unwrap_or(0.0);
        Ok(match &self.full {
            Some(g) => (n * n + g.sum_sq()).sqrt(),
            None => n,
        })
    }
    fn step(&mut self, gscale: f32, lr: f32, projector_lr: f32) -> Result<()> {
        let mut grads = self.acc.take().unwrap_or_default();
        if gscale != 1.0 {
            grads.scale(gscale);
        }
        self.opt.step(self.pipe, &grads, lr, projector_lr)?;
        if let Some(g) = self.full.as_mut() {
            if gscale != 1.0 {
                g.scale(gscale);
            }
            self.opt.step_decoder(self.pipe, g, lr)?;
            g.zero();
        }
        Ok(())
    }
    fn save_model(&mut self, dir: &Path) -> Result<()> {
        save_model(&mut self.pipe.model, &self.base, dir, self.parts.unwrap_or_default(), self.shard_bytes)
    }
    fn load_model(&mut self, dir: &Path) -> Result<()> {
        load_trained(&mut self.pipe.model, dir, self.parts.unwrap_or_default())
    }
}

/// DPO training on `prefs.jsonl`; `stop_after` ends the run right after that step's checkpoint
/// (a crash, for tests).
/// `base`: the checkpoint `pipe` was loaded from.
#[allow(clippy::too_many_arguments)]
pub fn train_dpo(pipe: &mut Pipeline, base: &Path, data: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<LogLine>> {
    let (pairs, keys) = read_pairs(pipe, data)?;
    // Reference log-probs: the base model (no adapters yet, no weight trained yet), computed once
    // per pair before training starts.
    let refs = reference_cache(&keys, out, resume, |i| reference_logps(pipe, &pairs[i]))?;
    let mut learner = CpuLearner::new(pipe, args, base)?;
    train_loop(&mut learner, pairs.len(), out, args, resume, stop_after, |l, i, opts, w| {
        // Encode image + prompt once per pair (shared-prefix packing) unless a sliding window
        // forbids it.
        let (pipe, full) = l.split(w);
        let (o, grads, tokens) = if pipe.model.cfg.text.sliding_window.is_none() {
            dpo_pair_grads_packed_full(pipe, &pairs[i], refs[i], args.beta, args.sft_weight, opts, full)?
        } else {
            dpo_pair_grads_full(pipe, &pairs[i], refs[i], args.beta, args.sft_weight, opts, full)?
        };
        l.accumulate(grads, w);
        Ok(ExampleOut { loss: o.loss, rewards: Some((o.chosen_reward, o.rejected_reward)), tokens })
    })
}

/// SFT on LLaVA's instruction-tuning JSON (loss on the gpt turns only).
#[allow(clippy::too_many_arguments)]
pub fn train_sft(pipe: &mut Pipeline, base: &Path, data: &Path, image_folder: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<LogLine>> {
    let (examples, images) = read_sft_data(data, image_folder)?;
    let mut learner = CpuLearner::new(pipe, args, base)?;
    train_loop(&mut learner, examples.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (pipe, full) = l.split(w);
        let (loss, grads, tokens) = sft_grads_full(pipe, &examples[i].1, &images[i], opts, full)?;
        l.accumulate(grads, w);
        Ok(ExampleOut { loss, rewards: None, tokens })
    })
}
