//! The CPU [`Learner`] (the reference): the pipeline's own adapters and projector, trained with
//! the gradients of [`super::dpo_pair_grads_packed`] / [`super::sft_grads`] and [`TrainAdamW`];
//! `train_dpo` / `train_sft` run [`train_loop`] with it. Each DPO pair runs as one packed
//! sequence [prompt | chosen | rejected] (shared-prefix mask), so the image and prompt are encoded
//! once (two sequences when the model has a sliding window).

use std::path::Path;

use crate::adapter::{init_lora, load_adapter, save_adapter, LoraSpec};
use crate::error::Result;
use crate::generate::Pipeline;
use crate::optim::AdamWConfig;

use super::data::{read_pairs, read_sft_data};
use super::run_loop::{reference_cache, train_loop, ExampleOut, Learner, LogLine, TrainArgs};
use super::{dpo_pair_grads, dpo_pair_grads_packed, reference_logps, sft_grads, Grads, TrainAdamW};

/// The CPU [`Learner`]: the pipeline's own adapters, [`TrainAdamW`], and the accumulated
/// [`Grads`] (each example's gradients added with their weight).
pub struct CpuLearner<'a> {
    pub pipe: &'a mut Pipeline,
    opt: TrainAdamW,
    acc: Option<Grads>,
}

impl<'a> CpuLearner<'a> {
    pub fn new(pipe: &'a mut Pipeline, args: &TrainArgs) -> Self {
        CpuLearner { pipe, opt: TrainAdamW::new(AdamWConfig { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() }), acc: None }
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
        Ok(self.acc.as_ref().map(Grads::norm).unwrap_or(0.0))
    }
    fn step(&mut self, gscale: f32, lr: f32, projector_lr: f32) -> Result<()> {
        let mut grads = self.acc.take().unwrap_or_default();
        if gscale != 1.0 {
            grads.scale(gscale);
        }
        self.opt.step(self.pipe, &grads, lr, projector_lr)
    }
}

/// DPO training on `prefs.jsonl`; `stop_after` ends the run right after that step's checkpoint
/// (a crash, for tests).
pub fn train_dpo(pipe: &mut Pipeline, data: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<LogLine>> {
    let (pairs, keys) = read_pairs(pipe, data)?;
    // Reference log-probs: the base model (no adapters yet), computed once per pair.
    let refs = reference_cache(&keys, out, resume, |i| reference_logps(pipe, &pairs[i]))?;
    let mut learner = CpuLearner::new(pipe, args);
    train_loop(&mut learner, pairs.len(), out, args, resume, stop_after, |l, i, opts, w| {
        // Encode image + prompt once per pair (shared-prefix packing) unless a sliding window
        // forbids it.
        let (o, grads, tokens) = if l.pipe.model.cfg.text.sliding_window.is_none() {
            dpo_pair_grads_packed(l.pipe, &pairs[i], refs[i], args.beta, args.sft_weight, opts)?
        } else {
            dpo_pair_grads(l.pipe, &pairs[i], refs[i], args.beta, args.sft_weight, opts)?
        };
        l.accumulate(grads, w);
        Ok(ExampleOut { loss: o.loss, rewards: Some((o.chosen_reward, o.rejected_reward)), tokens })
    })
}

/// SFT on LLaVA's instruction-tuning JSON (loss on the gpt turns only).
pub fn train_sft(pipe: &mut Pipeline, data: &Path, image_folder: &Path, out: &Path, args: &TrainArgs, resume: bool, stop_after: Option<usize>) -> Result<Vec<LogLine>> {
    let (examples, images) = read_sft_data(data, image_folder)?;
    let mut learner = CpuLearner::new(pipe, args);
    train_loop(&mut learner, examples.len(), out, args, resume, stop_after, |l, i, opts, w| {
        let (loss, grads, tokens) = sft_grads(l.pipe, &examples[i].1, &images[i], opts)?;
        l.accumulate(grads, w);
        Ok(ExampleOut { loss, rewards: None, tokens })
    })
}
