//! The training loop shared by DPO and SFT on every device (`stic train-dpo`, `stic train-sft`):
//! the [`Learner`] a device implements, schedule, accumulation, clipping, logs, checkpoints, resume
//! and the cache of DPO's reference log-probs.
//!
//! - Each epoch visits the examples in an order shuffled from `seed` and the epoch number, so a
//!   resumed run sees exactly the examples the uninterrupted one would.
//! - One optimiser step = `batch_size * grad_accum` examples; the gradient is the mean over them,
//!   clipped to a global norm of `max_grad_norm`. Learning rate: linear warmup over
//!   ceil(warmup_ratio * total) steps, then cosine (HF `get_cosine_schedule_with_warmup`) or linear
//!   decay to 0.
//! - `out/checkpoint/` (every `save_every` steps and at the end) holds the adapter, the AdamW state
//!   and `trainer_state.json`; it is written to `checkpoint.tmp/` and renamed, so a crash never
//!   leaves a torn checkpoint. `--resume` restores all of it and truncates `train_log.jsonl` to the
//!   checkpoint's step. The final adapter goes to `out/` in PEFT's format.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::adapter::LoraSpec;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::model::decoder::StepOpts;
use super::full::TrainParts;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Cosine,
    Linear,
}

#[derive(Clone, Debug)]
/// Options of `train-dpo` and `train-sft` (beta and sft_weight are DPO's).
pub struct TrainArgs {
    /// The adapters to train (r = 0: none, only the projector).
    pub lora: LoraSpec,
    /// Train the projector in full at this learning rate (STIC's `mm_projector_lr`).
    pub projector_lr: Option<f32>,
    /// Continue training this adapter (STIC's stage 2 starts from the stage-1 adapter, LLaVA's
    /// `--load_peft`) instead of fresh adapters; its rank, alpha and targets replace `lora`'s.
    pub init_adapter: Option<PathBuf>,
    pub beta: f64,
    /// STIC's likelihood weight on the chosen response (0 = plain DPO; STIC uses 1/1024).
    pub sft_weight: f64,
    pub lr: f32,
    pub weight_decay: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_steps: Option<usize>,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub save_every: Option<usize>,
    /// Per-layer activation recomputation (the 7B model needs it on the GPU).
    pub recompute: bool,
    /// No progress bar (logs).
    pub quiet: bool,
    /// `--train`: train these parts in full (no LoRA); `out/` is then a complete HF model
    /// directory (`train::full::save_model`).
    pub train: Option<TrainParts>,
    /// Shard the saved model above this many MiB (`--shard-mib`; HF's default is 5 GB).
    pub shard_mib: u64,
}

/// HF's `max_shard_size` default (5 GB) in MiB.
pub const DEFAULT_SHARD_MIB: u64 = 5000 * 1000 * 1000 / (1 << 20);

/// The learning rate of optimiser step `step` (0-based) out of `total`, as HF's
/// `get_cosine_schedule_with_warmup` / `get_linear_schedule_with_warmup` give it (the first
/// warmup step runs at 0).
pub fn lr_at(args: &TrainArgs, step: usize, total: usize) -> f32 {
    (args.lr as f64 * lr_factor(args, step, total)) as f32
}

/// The schedule's multiplier of the peak learning rate at `step`.
fn lr_factor(args: &TrainArgs, step: usize, total: usize) -> f64 {
    let warmup = (args.warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return step as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    let f = match args.schedule {
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Linear => 1.0 - progress,
    };
    f.max(0.0)
}

/// The pair index visited at global position `pos` (epoch-wise shuffles from the seed).
fn order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
}

/// One line of `train_log.jsonl`; the rewards are DPO's (absent for SFT).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogLine {
    pub step: usize,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_reward: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_margin: Option<f64>,
    pub lr: f32,
    /// Tokens run through the model in this step (forward and backward), for throughput.
    #[serde(skip)]
    pub tokens: usize,
    /// Wall time of the step in seconds.
    #[serde(skip)]
    pub seconds: f64,
}

/// What one example contributes to a step (its gradients stay with the [`Learner`]).
pub struct ExampleOut {
    pub loss: f64,
    /// (chosen, rejected) rewards, for DPO.
    pub rewards: Option<(f64, f64)>,
    /// Sequence length after image expansion.
    pub tokens: usize,
}

/// What the training loop drives: the adapters (and projector) being trained, their AdamW state
/// and the gradient accumulated over the current step. `train::cpu::CpuLearner` is the reference;
/// `train::cuda::CudaLearner` (feature `cuda`) keeps everything on a GPU. Both save the same
/// files (PEFT adapter, `optimizer.safetensors`), so a run may resume on the other device.
pub trait Learner {
    /// Fresh adapters as PEFT initialises them, drawn from `seed`.
    fn init_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<()>;
    /// Attach the adapter (and projector) saved in `dir`.
    fn load_adapter(&mut self, dir: &Path) -> Result<()>;
    /// The names of the projections that carry an adapter (q_proj, ...), in first-seen order.
    fn adapted(&mut self) -> Vec<&'static str>;
    fn save_adapter(&mut self, dir: &Path, spec: &LoraSpec, projector: bool) -> Result<()>;
    fn load_optimizer(&mut self, path: &Path) -> Result<()>;
    fn save_optimizer(&mut self, path: &Path) -> Result<()>;
    /// The global L2 norm of the accumulated gradient.
    fn grad_norm(&mut self) -> Result<f64>;
    /// One AdamW step on the accumulated gradient times `gscale` (torch's clip_grad_norm_
    /// factor, or 1): adapters at `lr`, the projector at `projector_lr`. Clears the gradient.
    fn step(&mut self, gscale: f32, lr: f32, projector_lr: f32) -> Result<()>;
    /// `--train`: write the model as an HF model directory in `dir`.
    fn save_model(&mut self, _dir: &Path) -> Result<()> {
        Err(Error::Input("--train (full-parameter training): this learner does not train weights in full".into()))
    }
    /// `--train`: read the trained weights back from the model directory `dir` (resume).
    fn load_model(&mut self, _dir: &Path) -> Result<()> {
        Err(Error::Input("--train (full-parameter training): this learner does not train weights in full".into()))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefLine {
    i: usize,
    key: String,
    chosen: f64,
    rejected: f64,
}

/// The reference log-probs of every pair: read back from `out/reference_logps.jsonl` when
/// resuming (lines whose key matches), the rest computed and appended as they come.
/// `reference(i)` computes pair i's; the pairs are identified by `keys`.
pub fn reference_cache(keys: &[String], out: &Path, resume: bool, mut reference: impl FnMut(usize) -> Result<(f64, f64)>) -> Result<Vec<(f64, f64)>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join("reference_logps.jsonl");
    let mut refs: Vec<Option<(f64, f64)>> = vec![None; keys.len()];
    if resume {
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A torn last line (a crash mid-write) simply fails to parse and is recomputed.
            for l in text.lines().filter_map(|l| serde_json::from_str::<RefLine>(l).ok()) {
                if keys.get(l.i) == Some(&l.key) {
                    refs[l.i] = Some((l.chosen, l.rejected));
                }
            }
        }
    }
    // Rewrite the kept lines, then append the new ones.
    let kept: String = refs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|(c, rj)| serde_json::to_string(&RefLine { i, key: keys[i].clone(), chosen: c, rejected: rj }).expect("json") + "\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    for i in 0..keys.len() {
        if refs[i].is_none() {
            let (c, r) = reference(i)?;
            writeln!(f, "{}", serde_json::to_string(&RefLine { i, key: keys[i].clone(), chosen: c, rejected: r }).expect("json")).map_err(|e| Error::io(&path, e))?;
            f.flush().map_err(|e| Error::io(&path, e))?;
            refs[i] = Some((c, r));
        }
    }
    Ok(refs.into_iter().map(|r| r.expect("every pair has its reference")).collect())
}

/// The loop shared by DPO and SFT on every device: initialise or resume adapters and
/// optimiser, visit examples in the seeded order (`example(learner, i, opts, w)` runs example i
/// and adds w times its gradients to the step's), clip, step, log, checkpoint, and write the
/// final adapter.
#[allow(clippy::too_many_arguments)]
pub fn train_loop<L: Learner>(
    learner: &mut L,
    n: usize,
    out: &Path,
    args: &TrainArgs,
    resume: bool,
    stop_after: Option<usize>,
    mut example: impl FnMut(&mut L, usize, StepOpts, f32) -> Result<ExampleOut>,
) -> Result<Vec<LogLine>> {
    let per_step = args.batch_size.max(1) * args.grad_accum.max(1);
    let total = args.max_steps.unwrap_or((n * args.epochs).div_ceil(per_step)).max(1);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt = out.join("checkpoint");
    let log_path = out.join("train_log.jsonl");
    let mut start = 0;
    let mut args = args.clone();
    let args = &mut args;
    if let Some(parts) = args.train {
        if args.init_adapter.is_some() {
            return Err(Error::Input("--train trains weights in full: it cannot continue a LoRA adapter (--init-adapter)".into()));
        }
        if !parts.decoder && !parts.projector && !parts.vision {
            return Err(Error::Input("--train: nothing to train".into()));
        }
        // LoRA is off; the projector trains at --projector-lr, else --lr.
        args.lora.r = 0;
        args.projector_lr = parts.projector.then_some(args.projector_lr.unwrap_or(args.lr));
    } else if args.lora.r == 0 && args.projector_lr.is_none() && args.init_adapter.is_none() {
        return Err(Error::Input("nothing to train: LoRA rank 0 and no projector learning rate".into()));
    }
    // A crash between the two renames of `save_checkpoint` leaves only checkpoint.old.
    let old = out.join("checkpoint.old");
    if resume && !ckpt.join("trainer_state.json").exists() && old.join("trainer_state.json").exists() {
        std::fs::rename(&old, &ckpt).map_err(|e| Error::io(&old, e))?;
    }
    if resume && ckpt.join("trainer_state.json").exists() {
        if args.train.is_some() {
            learner.load_model(&ckpt)?;
        } else {
            learner.load_adapter(&ckpt)?;
        }
        learner.load_optimizer(&ckpt.join("optimizer.safetensors"))?;
        let st: TrainerState = serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).map_err(|e| Error::io(&ckpt, e))?)
            .map_err(|e| Error::Json { path: ckpt.join("trainer_state.json"), source: e })?;
        start = st.step;
        truncate_log(&log_path, start)?;
    } else {
        if let Some(dir) = &args.init_adapter {
            learner.load_adapter(dir)?;
        } else if args.lora.r > 0 {
            learner.init_lora(&args.lora, args.seed)?;
        }
        let _ = std::fs::remove_file(&log_path);
    }
    // A continued adapter (or its checkpoint, when resuming) is attached now: save it as it is.
    if let Some(dir) = &args.init_adapter {
        args.lora = attached_spec(learner, dir)?;
    }
    let projector = args.projector_lr.is_some();
    let mut log = Vec::new();
    let mut logf = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let pb = crate::progress::Progress::new(total, start, "steps", args.quiet);
    for step in start..total {
        let t0 = std::time::Instant::now();
        let mut tokens = 0;
        let (mut loss, mut rewards) = (0.0, None::<(f64, f64)>);
        for k in 0..per_step {
            let pos = step * per_step + k;
            let i = order(n, args.seed, pos / n)[pos % n];
            // Dropout masks depend only on the seed and the position in the data stream, so a
            // resumed run draws the same ones.
            let opts = StepOpts { recompute: args.recompute, dropout_seed: Some(args.seed ^ (pos as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)), projector };
            let o = example(learner, i, opts, 1.0 / per_step as f32)?;
            tokens += o.tokens;
            loss += o.loss / per_step as f64;
            if let Some((c, r)) = o.rewards {
                let acc_r = rewards.get_or_insert((0.0, 0.0));
                acc_r.0 += c / per_step as f64;
                acc_r.1 += r / per_step as f64;
            }
        }
        // torch's clip_grad_norm_ over everything that trains.
        let coef = args.max_grad_norm / (learner.grad_norm()? + 1e-6);
        let factor = lr_factor(args, step, total);
        let lr = (args.lr as f64 * factor) as f32;
        learner.step(if coef < 1.0 { coef as f32 } else { 1.0 }, lr, (args.projector_lr.unwrap_or(0.0) as f64 * factor) as f32)?;
        let line = LogLine {
            step: step + 1,
            loss,
            chosen_reward: rewards.map(|r| r.0),
            rejected_reward: rewards.map(|r| r.1),
            reward_margin: rewards.map(|r| r.0 - r.1),
            lr,
            tokens,
            seconds: t0.elapsed().as_secs_f64(),
        };
        pb.message(format!("loss {loss:.4}"));
        pb.inc();
        writeln!(logf, "{}", serde_json::to_string(&line).expect("json")).map_err(|e| Error::io(&log_path, e))?;
        log.push(line);
        let done = step + 1 == total;
        if done || args.save_every.is_some_and(|n| n > 0 && (step + 1) % n == 0) {
            save_checkpoint(learner, out, args, TrainerState { step: step + 1, total_steps: total })?;
        }
        if stop_after == Some(step + 1) {
            return Ok(log);
        }
    }
    if args.train.is_some() {
        learner.save_model(out)?;
    } else {
        learner.save_adapter(out, &args.lora, projector)?;
    }
    pb.finish();
    Ok(log)
}

/// The LoRA settings of the adapters attached from `dir` (rank and alpha from its config, targets
/// from the projections that carry one), so that a continued adapter is saved as it was.
fn attached_spec<L: Learner>(learner: &mut L, dir: &Path) -> Result<LoraSpec> {
    let cfg = crate::adapter::AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
    if cfg.use_rslora {
        return Err(Error::config(dir.join("adapter_config.json"), "use_rslora", "continuing an rsLoRA adapter is not supported"));
    }
    let targets = learner.adapted().into_iter().map(str::to_string).collect();
    Ok(LoraSpec { r: cfg.r, alpha: cfg.lora_alpha, dropout: cfg.lora_dropout, targets })
}

fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step))
        .collect();
    std::fs::write(path, kept.iter().map(|l| format!("{l}\n")).collect::<String>()).map_err(|e| Error::io(path, e))
}

fn save_checkpoint<L: Learner>(learner: &mut L, out: &Path, args: &TrainArgs, st: TrainerState) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    if args.train.is_some() {
        learner.save_model(&tmp)?;
    } else {
        learner.save_adapter(&tmp, &args.lora, args.projector_lr.is_some())?;
    }
    learner.save_optimizer(&tmp.join("optimizer.safetensors"))?;
    let sp = tmp.join("trainer_state.json");
    std::fs::write(&sp, serde_json::to_string_pretty(&st).expect("json")).map_err(|e| Error::io(&sp, e))?;
    let dst = out.join("checkpoint");
    let old = out.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
