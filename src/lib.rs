//! stic: run and train LLaVA-style vision-language models.
//!
//! Module map (see docs/ARCHITECTURE.md):
//! - `config`    HF config.json / preprocessor_config.json with HF defaults for missing keys
//! - `weights`   memory-mapped (sharded) safetensors, dtype widening, missing/extra tensor checks
//! - `tensor`    the host f32 tensor
//! - `backend`   ops: `backend::cpu` is the reference; `backend::cuda` (feature `cuda`) the GPU
//! - `nn`        `Linear` (one type for every projection, with an optional LoRA adapter)
//! - `model`     CLIP vision tower, projector, Mistral/LLaMA decoder, LLaVA(-NeXT) glue
//! - `image`     PIL-exact preprocessing: CLIP resize/crop/normalise, AnyRes tiling
//! - `text`      tokenizer and chat templates
//! - `generate`  KV cache, sampling, batched generation, response scoring
//! - `adapter`   LoRA adapters in PEFT format
//! - `loss`      DPO and STIC's DPO over sequence log-probs
//! - `optim`     AdamW (torch semantics)
//! - `train`     gradients of response log-probs w.r.t. LoRA adapters, DPO pair and SFT steps;
//!   `train::run_loop` the DPO / SFT training loop (schedule, accumulation, clipping, checkpoints,
//!   resume) over a device's `Learner`; `train::data` its data; `train::cpu`, `train::cuda` the
//!   learners; `train::device` picks one
//! - `rng`       the one seeded generator (SplitMix64)
//! - `stic`      STIC's data stages: prompts, stage-1 preference pairs (`build-prefs`), stage-2
//!   description-infused data (`build-dif`)
//! - `eval`      `stic eval`: benchmark loaders, prompts, ports of the official scorers, the runner
//! - `run`       `stic run`: the whole STIC pipeline from stic.toml, one folder per stage
//! - `run_world` `stic run` on the synthetic world (the default): STIC from the bundled world model,
//!   metrics before and after each stage, table, summary.json, chart.png
//! - `chart`     PNG charts (plotters)
//! - `stage`     what multi-stage jobs share: stage folders closed by `stage.json`, skip on re-run
//! - `progress`  the progress bar of every long stage
//! - `world`     the synthetic world: seeded images of shapes with ground truth, captions with
//!   co-occurrence statistics, instruction data, probes (`stic world make`) and its scorer
//!   (`stic world eval`)

pub mod adapter;
pub mod chart;
pub mod backend;
pub mod config;
pub mod csr;
pub mod error;
pub mod eval;
pub mod generate;
pub mod image;
pub mod loss;
pub mod model;
pub mod nn;
pub mod optim;
pub mod perf;
pub mod progress;
pub mod rng;
pub mod run;
pub mod run_csr;
pub mod run_world;
pub mod stage;
pub mod stic;
pub mod tensor;
pub mod text;
pub mod train;
pub mod weights;
pub mod world;

pub use error::{Error, Result};
pub use tensor::Tensor;
