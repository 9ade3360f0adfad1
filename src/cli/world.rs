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
    /// Train a tiny CLIP contrastively on the world's captions (an HF CLIPModel folder that
    /// `clip-score` loads); resumes after a kill at the last finished epoch.
    TrainClip(WorldTrainClipArgs),
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
    /// JSON lines {"question_id", "text"} answering the world's questions.jsonl and probes.jsonl.
    #[arg(long)]
    pub predictions: PathBuf,
    /// The world folder (`stic world make --out`).
    #[arg(long)]
    pub data: PathBuf,
    /// Print only {"chair_i", "chair_s", "recall", "pope_f1", "count_acc"} as JSON.
    #[arg(long)]
    pub json: bool,
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
        WorldCmd::Eval(e) => {
            let m = stic::world::eval::eval_predictions(&e.predictions, &e.data)?;
            if e.json {
                println!("{}", serde_json::to_string(&m.headline()).expect("serialisable"));
            } else {
                println!("{}", serde_json::to_string_pretty(&m).expect("serialisable"));
            }
        }
    }
    Ok(())
}

fn train_clip(t: &WorldTrainClipArgs) -> Result<()> {
    let default_tok = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tokenizer/tokenizer.json"));
    let args = stic::world::clip::TrainClipArgs {
        data: t.data.clone(),
        out: t.out.clone(),
        tokenizer: t.tokenizer.clone().unwrap_or(default_tok),
        seed: t.seed,
        epochs: t.epochs,
        batch: t.batch,
        lr: t.lr,
        weight_decay: t.weight_decay,
        width: t.width,
        layers: t.layers,
        patch: 8,
        quiet: t.quiet,
        stop_after: t.stop_after_epoch,
    };
    let s = stic::world::clip::train_clip(&args)?;
    eprintln!("train-clip: {} steps in {:.1}s, loss {:.4} -> {:.4} (last epoch mean); model in {}", s.steps, s.seconds, s.first_loss, s.last_epoch_loss, t.out.display());
    if t.eval {
        let r = stic::world::clip::heldout_retrieval(&t.out, &t.data)?;
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
    }
    Ok(())
}
