//! `stic world train`: a tiny LLaVA for the world, from scratch, in LLaVA's two stages, on the CPU.
//!
//! ```text
//! OUT/stages/0-clip      the world's CLIP (`world::clip::train_clip` on captions.json; unless
//!                        --vision-from names one, or --clip-epochs is 0)
//! OUT/stages/0-init      world::model::create: tokenizer from the world's texts, config, weights from --seed
//! OUT/stages/1-align     stage 1 on captions.json (LLaVA's feature alignment: one brief caption per image)
//! OUT/stages/2-instruct  stage 2 on instruct.json (LLaVA's visual instruction tuning, every weight of
//!                        the decoder and the projector; `--instruct-train` adds the vision tower)
//! OUT/                   the result: an HF checkpoint folder (config.json, model.safetensors, the
//!                        tokenizer, ...) and world_train.json (settings, data, loss curves)
//! ```
//! LLaVA's stage 1 trains the projector alone because its decoder is a pretrained LLM; this decoder
//! starts from random weights, so by default stage 1 trains it too (`--align-train`): the captions
//! are its language pretraining. The vision tower stays frozen by default: the world's CLIP
//! (`stic world train-clip`, `--vision-from`), as LLaVA's is OpenAI's CLIP, or its random
//! initialisation without one; `--instruct-train decoder,projector,vision` (or `--align-train`
//! with vision) fine-tunes it too.
//!
//! Each stage is skipped once done and resumes from its checkpoint; the same seed and data give
//! the same model (the CPU learner is deterministic).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::model::ModelSpec;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::stage::{stage, train_counts, write_atomic, StageSummary};
use crate::train::device::{train_on, TrainJob};
use crate::train::full::TrainParts;
use crate::train::run_loop::{Schedule, TrainArgs, DEFAULT_SHARD_MIB};

/// One training stage's settings.
#[derive(Clone, Debug, Serialize)]
pub struct StageArgs {
    #[serde(serialize_with = "parts_text")]
    pub parts: TrainParts,
    pub epochs: usize,
    pub lr: f32,
    pub batch_size: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f32,
}

fn parts_text<S: serde::Serializer>(p: &TrainParts, s: S) -> std::result::Result<S::Ok, S::Error> {
    let names: Vec<&str> = [(p.decoder, "decoder"), (p.projector, "projector"), (p.vision, "vision")].iter().filter(|x| x.0).map(|x| x.1).collect();
    s.serialize_str(&names.join(","))
}

/// What `stic world train` does.
#[derive(Clone, Debug, Serialize)]
pub struct WorldTrainArgs {
    pub data: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub spec: ModelSpec,
    pub align: StageArgs,
    pub instruct: StageArgs,
    /// The CLIP folder whose vision tower the model starts from (`stic world train-clip`); when
    /// absent and `clip` is set, stage `0-clip` trains one first.
    pub vision_from: Option<PathBuf>,
    /// The world CLIP to train in stage `0-clip` (`world::clip::train_clip`'s settings; its
    /// `data` and `out` are set here). None with no `vision_from`: a random frozen vision tower.
    pub clip: Option<super::clip::TrainClipArgs>,
    #[serde(skip)]
    pub quiet: bool,
}

impl StageArgs {
    fn train_args(&self, seed: u64, quiet: bool) -> TrainArgs {
        TrainArgs {
            lora: crate::adapter::LoraSpec { r: 0, alpha: 0.0, dropout: 0.0, targets: Vec::new() },
            projector_lr: None,
            init_adapter: None,
            beta: 0.0,
            sft_weight: 0.0,
            lr: self.lr,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: 1,
            max_steps: None,
            warmup_ratio: self.warmup_ratio,
            schedule: Schedule::Cosine,
            max_grad_norm: 1.0,
            seed,
            save_every: Some(200),
            recompute: false,
            quiet,
            train: Some(self.parts),
            shard_mib: DEFAULT_SHARD_MIB,
        }
    }
}

/// The files of a model folder that make the checkpoint (what is copied to OUT).
const MODEL_FILES: [&str; 7] =
    ["config.json", "generation_config.json", "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"];

/// (step, loss) of a train_log.jsonl.
pub fn losses(path: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
        .collect()
}

/// Train; returns the stages' summaries. OUT ends up a checkpoint folder.
pub fn train(a: &WorldTrainArgs) -> Result<Vec<StageSummary>> {
    a.spec.check()?;
    let st = a.out.join("stages");
    let mut summary = Vec::new();
    let mut vision = a.vision_from.clone();
    if let (None, Some(c)) = (&vision, &a.clip) {
        let dir = st.join("0-clip");
        summary.push(stage(&dir, "0-clip", a.quiet, || {
            let args = super::clip::TrainClipArgs { data: a.data.clone(), out: dir.join("model"), quiet: a.quiet, ..c.clone() };
            let s = super::clip::train_clip(&args)?;
            let r = super::clip::heldout_retrieval(&args.out, &a.data)?;
            Ok((json!({"steps": s.steps, "last_epoch_loss": s.last_epoch_loss, "heldout_retrieval": r}), None))
        })?);
        vision = Some(dir.join("model"));
    }
    let spec = match &vision {
        Some(clip) => super::model::spec_with_vision_of(&a.spec, clip)?,
        None => a.spec.clone(),
    };
    spec.check()?;
    let size = super::image_size(&a.data)?;
    if size != spec.image_size {
        return Err(Error::Input(format!("world train: the world's images are {size} pixels, the model's processor {}", spec.image_size)));
    }
    let (d0, d1, d2) = (st.join("0-init"), st.join("1-align"), st.join("2-instruct"));
    summary.push(stage(&d0, "0-init", a.quiet, || {
        let vocab = super::model::create(&a.data, &d0, &spec, a.seed, vision.as_deref())?;
        Ok((json!({"vocab": vocab}), None))
    })?);
    for (dir, from, name, file, s) in [(&d1, &d0, "1-align", "captions.json", &a.align), (&d2, &d1, "2-instruct", "instruct.json", &a.instruct)] {
        summary.push(stage(dir, name, a.quiet, || {
            let resume = dir.join("checkpoint").exists() || dir.join("checkpoint.old").exists();
            let job = TrainJob::Sft { data: &a.data.join(file), image_folder: &a.data };
            let log = train_on(Device::Cpu, from, None, job, dir, &s.train_args(a.seed, a.quiet), resume, None)?;
            Ok(train_counts(&log))
        })?);
    }
    for f in MODEL_FILES {
        let (src, dst) = (d2.join(f), a.out.join(f));
        std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
    }
    let world = std::fs::read_to_string(a.data.join("world.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let report = json!({
        "settings": a,
        "model": spec,
        "world": world.map(|w| json!({"seed": w["seed"], "n": w["n"], "image_size": w["image_size"], "heldout": w["heldout"]})),
        "curves": {"align": losses(&d1.join("train_log.jsonl")), "instruct": losses(&d2.join("train_log.jsonl"))},
        "stages": summary,
    });
    write_atomic(&a.out.join("world_train.json"), serde_json::to_string_pretty(&report).expect("json"))?;
    Ok(summary)
}
