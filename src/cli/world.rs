//! `stic world make` (a synthetic world folder), `stic world eval` (its metrics for a
//! predictions file) and `stic world train-clip` (a CLIP of the world); docs/WORLD.md.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use stic::Result;

#[derive(Args)]
pub struct WorldArgs {
    #[command(subcommand)]
    pub cmd: WorldCmd,
}

#[derive(Subcommand)]
pub enum WorldCmd {
    /// Write a world: images/, captions.json, instruct.json, probes.jsonl, questions.jsonl,
    /// objects.json (ground truth), train.txt, heldout.txt and world.json. The same seed gives
    /// byte-identical files.
    Make(WorldMakeArgs),
    /// Score predictions on a world's held-out questions and probes: CHAIR_i, CHAIR_s, object
    /// recall, POPE F1, counting accuracy.
    Eval(WorldEvalArgs),
    /// Write a fresh, untrained model for a world: config.json, the world's tokenizer, weights
    /// initialised from --seed (what `world train` starts from).
    Init(WorldInitArgs),
    /// Train a tiny LLaVA for a world from scratch (CPU): `init`, then LLaVA's stage 1 on
    /// captions.json and stage 2 on instruct.json; OUT becomes an HF checkpoint folder with
    /// world_train.json (settings and loss curves). Resumes; the same seed gives the same model.
    Train(WorldTrainCli),
    /// Train a tiny CLIP contrastively on the world's captions (an HF CLIPModel folder that
    /// `clip-score` loads); resumes after a kill at the last finished epoch.
    TrainClip(WorldTrainClipArgs),
    /// A CLIP's held-out caption retrieval on a world, and whether it sees shape and colour: its
    /// own caption against the caption with one object's shape (colour) swapped (JSON).
    EvalClip(WorldEvalClipArgs),
}

#[derive(Args)]
pub struct WorldEvalClipArgs {
    /// An HF CLIPModel folder (`world train-clip --out`).
    #[arg(long)]
    pub clip: PathBuf,
    /// The world folder.
    #[arg(long)]
    pub data: PathBuf,
}

#[derive(Args)]
pub struct WorldTrainCli {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// What stage 1 trains (LLaVA: the projector; a decoder from scratch needs its pretraining too).
    #[arg(long, default_value = "decoder,projector")]
    pub align_train: String,
    #[arg(long, default_value_t = 1)]
    pub align_epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub align_lr: f32,
    /// What stage 2 trains (LLaVA: decoder,projector; add vision to fine-tune the tower too).
    #[arg(long, default_value = "decoder,projector")]
    pub instruct_train: String,
    #[arg(long, default_value_t = 2)]
    pub instruct_epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub instruct_lr: f32,
    /// A CLIP folder (`stic world train-clip`) whose vision tower the model starts from (its sizes
    /// replace --vision-*); without it, stage 0-clip trains one (--clip-epochs).
    #[arg(long)]
    pub vision_from: Option<PathBuf>,
    /// Epochs of the world CLIP trained first (its vision tower becomes the model's; width
    /// --vision-hidden, depth --vision-layers); 0: a random frozen vision tower.
    #[arg(long, default_value_t = 10)]
    pub clip_epochs: usize,
    /// Train the world CLIP with shape-swapped hard-negative captions (`train-clip
    /// --hard-negatives`).
    #[arg(long)]
    pub clip_hard_negatives: bool,
    /// Examples per optimiser step (both stages).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct WorldInitArgs {
    /// The world folder (its texts make the vocabulary).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// The model's sizes (defaults: `world::model::ModelSpec::default()`).
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Decoder width, layers, heads and MLP width.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 384)]
    pub intermediate: usize,
    /// Vision tower width and layers.
    #[arg(long, default_value_t = 64)]
    pub vision_hidden: usize,
    #[arg(long, default_value_t = 3)]
    pub vision_layers: usize,
    #[arg(long, default_value_t = 8)]
    pub patch: usize,
}

impl SpecArgs {
    /// The spec for images of `image_size` pixels.
    pub fn spec(&self, image_size: usize) -> stic::world::model::ModelSpec {
        stic::world::model::ModelSpec {
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            intermediate: self.intermediate,
            vision_hidden: self.vision_hidden,
            vision_layers: self.vision_layers,
            vision_heads: (self.vision_hidden / 16).max(1),
            vision_intermediate: 4 * self.vision_hidden,
            patch: self.patch,
            image_size,
        }
    }
}

#[derive(Args)]
pub struct WorldTrainClipArgs {
    /// The world folder (`stic world make --out`).
    #[arg(long)]
    pub data: PathBuf,
    /// The output folder (created; holds the checkpoint and train_log.jsonl while training).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Width of both towers and of the projection (a multiple of 16: heads of 16).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Any HF tokenizer.json with CLIP's post-processor (BOS ... EOS); default: the repository's
    /// CLIP BPE tokenizer (tests/fixtures/clip_tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Add, for each caption of a batch, the caption with one shape swapped for one the image does
    /// not have, as an extra negative (otherwise colour and background alone meet the loss).
    #[arg(long)]
    pub hard_negatives: bool,
    /// Then print the caption retrieval on the held-out images as JSON.
    #[arg(long)]
    pub eval: bool,
    #[arg(long)]
    pub quiet: bool,
    /// Stop with an error after this epoch's checkpoint (tests of resume).
    #[arg(long, hide = true)]
    pub stop_after_epoch: Option<usize>,
}

#[derive(Args)]
pub struct WorldMakeArgs {
    /// The output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (train and held-out together).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Fraction of the images held out (the last ones).
    #[arg(long, default_value_t = 0.2)]
    pub heldout: f64,
}

#[derive(Args)]
pub struct WorldEvalArgs {
    /// JSON lines {"question_id", "text"} answering the world's questions.jsonl and probes.jsonl
    /// (instead of --model).
    #[arg(long, conflicts_with = "model")]
    pub predictions: Option<PathBuf>,
    /// A model to answer the questions with (greedy), as `stic eval --bench world` does.
    #[arg(long, required_unless_present = "predictions")]
    pub model: Option<PathBuf>,
    /// A LoRA adapter (PEFT format) on --model.
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    /// The world folder (`stic world make --out`).
    #[arg(long)]
    pub data: PathBuf,
    /// Where the predictions and metrics go with --model (default: DATA/eval/<model name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: stic::backend::Device,
    /// Print only {"chair_i", "chair_s", "recall", "pope_f1", "count_acc"} as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

pub fn world(a: &WorldArgs) -> Result<()> {
    match &a.cmd {
        WorldCmd::Make(m) => {
            if !(0.0..=1.0).contains(&m.heldout) {
                return Err(stic::Error::Input(format!("--heldout: expected a fraction in [0, 1], got {}", m.heldout)));
            }
            let args = stic::world::MakeArgs { n: m.n, seed: m.seed, size: m.size, heldout: m.heldout };
            let scenes = stic::world::make(&args, &m.out)?;
            let held = scenes.iter().filter(|s| s.split == "heldout").count();
            eprintln!("world: {} images ({} train, {held} held out) in {}", scenes.len(), scenes.len() - held, m.out.display());
        }
        WorldCmd::TrainClip(t) => train_clip(t)?,
        WorldCmd::EvalClip(e) => println!("{}", serde_json::to_string(&stic::world::clip::heldout_retrieval(&e.clip, &e.data)?).expect("serialisable")),
        WorldCmd::Eval(e) => {
            let m = match (&e.predictions, &e.model) {
                (Some(p), _) => serde_json::to_value(stic::world::eval::eval_predictions(p, &e.data)?).expect("serialisable"),
                (None, Some(model)) => {
                    let out = e.out.clone().unwrap_or_else(|| e.data.join("eval").join(stic::eval::model_id(model, e.adapter.as_deref())));
                    stic::eval::eval(&stic::eval::EvalArgs {
                        bench: stic::eval::Bench::World,
                        data: e.data.clone(),
                        image_folder: None,
                        model: Some(model.clone()),
                        adapter: e.adapter.clone(),
                        predictions: None,
                        out: Some(out),
                        max_new_tokens: None,
                        temperature: 0.0,
                        top_p: 1.0,
                        seed: 0,
                        batch_size: e.batch_size,
                        limit: e.limit,
                        quiet: e.quiet,
                        device: e.device,
                    })?
                }
                (None, None) => unreachable!("clap requires one"),
            };
            if e.json {
                let head: stic::world::eval::Headline = serde_json::from_value(m).map_err(|e| stic::Error::Input(format!("world metrics: {e}")))?;
                println!("{}", serde_json::to_string(&head).expect("serialisable"));
            } else {
                println!("{}", serde_json::to_string_pretty(&m).expect("serialisable"));
            }
        }
        WorldCmd::Train(a) => {
            let size = stic::world::image_size(&a.data)?;
            let parts = |s: &str, what: &str| s.parse::<stic::train::full::TrainParts>().map_err(|e| stic::Error::Input(format!("--{what}: {e}")));
            let stage = |p, epochs, lr| stic::world::train::StageArgs { parts: p, epochs, lr, batch_size: a.batch_size, warmup_ratio: 0.03, weight_decay: a.weight_decay };
            let args = stic::world::train::WorldTrainArgs {
                data: a.data.clone(),
                out: a.out.clone(),
                seed: a.seed,
                spec: a.spec.spec(size),
                align: stage(parts(&a.align_train, "align-train")?, a.align_epochs, a.align_lr),
                instruct: stage(parts(&a.instruct_train, "instruct-train")?, a.instruct_epochs, a.instruct_lr),
                vision_from: a.vision_from.clone(),
                clip: (a.clip_epochs > 0).then(|| clip_args(&a.data, &a.out, None, a.seed, a.clip_epochs, a.spec.vision_hidden, a.spec.vision_layers, a.spec.patch, a.clip_hard_negatives)),
                quiet: a.quiet,
            };
            let summary = stic::world::train::train(&args)?;
            eprint!("{}", stic::stage::format_summary(&summary));
            eprintln!("model in {} (curves in world_train.json)", a.out.display());
        }
        WorldCmd::Init(a) => {
            let size = stic::world::image_size(&a.data)?;
            let v = stic::world::model::create(&a.data, &a.out, &a.spec.spec(size), a.seed, None)?;
            eprintln!("world model: vocabulary {v}, written to {}", a.out.display());
        }
    }
    Ok(())
}

/// `train-clip`'s settings with its defaults (batch 64, lr 1e-3, weight decay 0.1), the
/// repository's CLIP BPE tokenizer unless `tokenizer` names another.
#[allow(clippy::too_many_arguments)]
fn clip_args(data: &std::path::Path, out: &std::path::Path, tokenizer: Option<PathBuf>, seed: u64, epochs: usize, width: usize, layers: usize, patch: usize, hard_negatives: bool) -> stic::world::clip::TrainClipArgs {
    let d = stic::world::clip::TrainClipArgs::defaults(data, out);
    stic::world::clip::TrainClipArgs { tokenizer: tokenizer.unwrap_or(d.tokenizer.clone()), seed, epochs, width, layers, patch, hard_negatives, ..d }
}

fn train_clip(t: &WorldTrainClipArgs) -> Result<()> {
    let args = stic::world::clip::TrainClipArgs {
        batch: t.batch,
        lr: t.lr,
        weight_decay: t.weight_decay,
        quiet: t.quiet,
        stop_after: t.stop_after_epoch,
        ..clip_args(&t.data, &t.out, t.tokenizer.clone(), t.seed, t.epochs, t.width, t.layers, 8, t.hard_negatives)
    };
    let s = stic::world::clip::train_clip(&args)?;
    eprintln!("train-clip: {} steps in {:.1}s, loss {:.4} -> {:.4} (last epoch mean); model in {}", s.steps, s.seconds, s.first_loss, s.last_epoch_loss, t.out.display());
    if t.eval {
        let r = stic::world::clip::heldout_retrieval(&t.out, &t.data)?;
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
    }
    Ok(())
}
