//! `stic world make` (a synthetic world folder) and `stic world eval` (its metrics for a
//! predictions file); docs/WORLD.md.

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
