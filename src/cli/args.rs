//! The clap argument structs: `Cli`, its subcommands `Cmd` and their arguments; the option
//! groups shared by several commands (`Common`: generate, score, profile; `TrainCommon`:
//! train-dpo, train-sft; `DataGenCommon`: build-prefs, build-dif) with their checks.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use stic::backend::Device;
use stic::generate::{with_pipeline, SamplingParams, WithPipeline};
use stic::image::{load_image, RgbImage};
use stic::Result;

#[derive(Parser)]
#[command(name = "stic", version, about = "Run and train LLaVA-style vision-language models")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Generate a response for an image and a prompt.
    Generate(GenerateArgs),
    /// Per-token log-probabilities of a response given an image and a prompt.
    Score(ScoreArgs),
    /// Train a LoRA adapter with DPO (STIC's with --sft-weight) on a preference file.
    TrainDpo(TrainDpoArgs),
    /// Train a LoRA adapter with SFT on LLaVA's instruction-tuning JSON (loss on gpt turns).
    TrainSft(TrainSftArgs),
    /// Fold a LoRA adapter into the checkpoint's weights and write a plain checkpoint.
    Merge(MergeArgs),
    /// Generate on the bundled tiny LLaVA-NeXT checkpoint and test image (no download needed).
    Demo(DemoArgs),
    /// The whole STIC pipeline from a config file: build-prefs, train-dpo, build-dif, train-sft,
    /// eval, one folder per stage; finished stages are skipped, interrupted ones resume.
    Run(RunArgs),
    /// STIC stage 1: build preference pairs (chosen, rejected descriptions) from unlabeled images.
    BuildPrefs(BuildPrefsCli),
    /// STIC stage 2: describe the images of sampled instruction-tuning examples and put the
    /// descriptions into their first human turn (LLaVA JSON for train-sft).
    BuildDif(BuildDifCli),
    /// Check the CUDA kernels against the CPU reference on GPU 0 (one table row per check).
    ///
    /// Exit status: 0 all passed; 1 a check failed (or could not run); 2 no CUDA device (prints
    /// `skipped: no CUDA device`); 3 this binary was built without `--features cuda`.
    Check(CheckArgs),
    /// Answer a benchmark and score it with the official rules (or score a predictions file).
    #[command(after_help = EVAL_HELP)]
    Eval(EvalCliArgs),
    /// Time one prefill and N greedy decode steps on seeded random prompts, with a per-op table
    /// (CUDA events on the GPU). With --random-weights any config runs without a download.
    Profile(ProfileArgs),
    /// CLIP image-text relevance: exp(logit_scale) * cos of the projected embeddings (100 * cos
    /// for the OpenAI checkpoints), one score per --text, the texts in one batch.
    ClipScore(ClipScoreArgs),
    /// CSR: preference pairs from a sentence-level diverse beam search, each sentence ranked by
    /// the model's score and CLIP's (defaults: the official code's; docs/CSR.md).
    CsrPrefs(CsrPrefsCli),
    /// The synthetic world: `world make` writes one, `world eval` scores predictions on it.
    World(super::world::WorldArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Prompt; repeat for a batch.
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub response: String,
}

#[derive(Args)]
pub struct ClipScoreArgs {
    /// A Hugging Face `CLIPModel` directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json), e.g. openai/clip-vit-large-patch14-336.
    #[arg(long)]
    pub clip: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// A text to score; repeat for several (over 77 CLIP tokens: truncated, EOS kept last).
    #[arg(long, required = true)]
    pub text: Vec<String>,
    /// cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Print `{"scores": [...]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub common: Common,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Text tokens per prompt (after the image's feature rows when --image is given).
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    pub decode_steps: usize,
    /// Seed of the prompts' random token ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Runs before the measured one (compilation caches, allocator, clocks).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
}

const DEMO_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llava_next_tiny");
const DEMO_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/wide.jpg");

#[derive(Args)]
pub struct MergeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub adapter: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Dtype of the merged weights: keep (the base weights', as PEFT) or f32.
    #[arg(long, default_value = "keep")]
    pub dtype: String,
}

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = DEMO_MODEL)]
    pub model: PathBuf,
    #[arg(long, default_value = DEMO_IMAGE)]
    pub image: PathBuf,
    #[arg(long, default_value = "What is shown in this image?")]
    pub prompt: String,
}

#[derive(Args)]
pub struct RunArgs {
    /// stic.toml (see README "STIC"; paths in it are relative to its folder; `method = "csr"` runs
    /// CSR's iterations, `method = "world"` STIC on the synthetic world, or CSR there with a
    /// `[csr]` section: examples/world-csr.toml). Without it: STIC on the synthetic world from the
    /// bundled world model (examples/world.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Without --config: the plumbing demo instead (examples/demo.toml: every STIC stage on the
    /// bundled random tiny LLaVA-NeXT checkpoint, in seconds).
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
    /// A world run (`method = "world"`, the default): this seed instead of the config's (STIC's
    /// sampling, corruptions and data order, or CSR's DPO order and dropout; one run per seed for
    /// the spread).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A world run: this output folder instead of the config's.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars (overrides the config's `quiet`).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after N new pairs of stage 1, as a crash would (for resume tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

#[derive(Args)]
pub struct TrainDpoArgs {
    /// prefs.jsonl: {"image", "prompt", "chosen", "rejected"} per line, images relative to it.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Weight of the likelihood term on the chosen response (STIC: 1/1024 = 0.0009765625).
    #[arg(long, default_value_t = 0.0)]
    pub sft_weight: f64,
    #[command(flatten)]
    pub common: TrainCommon,
}

#[derive(Args)]
pub struct TrainSftArgs {
    /// LLaVA instruction-tuning JSON: [{"id", "image", "conversations": [{"from", "value"}]}].
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the "image" paths are relative to (default: the data file's folder).
    #[arg(long)]
    pub image_folder: Option<PathBuf>,
    #[command(flatten)]
    pub common: TrainCommon,
}

#[derive(Args)]
pub struct BuildPrefsCli {
    /// Folder of unlabeled images (.jpg, .jpeg, .png; searched recursively).
    #[arg(long)]
    pub images: PathBuf,
    /// Output preference JSONL (appended to and resumed when it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Use N images sampled with --seed (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    #[command(flatten)]
    pub common: DataGenCommon,
}

#[derive(Args)]
pub struct BuildDifCli {
    /// LLaVA instruction-tuning JSON (e.g. llava_v1_5_mix665k.json).
    #[arg(long)]
    pub sft: PathBuf,
    /// The folder its "image" paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Output LLaVA JSON (descriptions are kept in OUT.descriptions.jsonl for resuming).
    #[arg(long)]
    pub out: PathBuf,
    /// Examples to sample (among those with an image).
    #[arg(long, default_value_t = 5000)]
    pub n: usize,
    #[command(flatten)]
    pub common: DataGenCommon,
}

const EVAL_HELP: &str = "\
--data per benchmark (LLaVA's playground/data/eval/<bench> layouts; a folder or the file itself):
  scienceqa    folder with llava_test_CQM-A.json + problems.json, images in images/test/
  textvqa      folder with TextVQA_0.5.1_val.json (+ llava_textvqa_val_v051_ocr.jsonl), images in train_images/
  chartqa      ChartQA test/ folder with test_human.json / test_augmented.json, images in png/
  mmbench      mmbench_dev_20230712.tsv (images base64 in the TSV; circular evaluation)
  pope         folder with coco_pope_{adversarial,popular,random}.json (or coco/), images in val2014/ or ../val2014/
  mathvista    MathVista data/testmini.json (+ query.json), images relative to it
  llava-bench  folder with questions.jsonl + images/ (writes llava_bench_answers.jsonl for the GPT-4 judge)
  mm-vet       folder with mm-vet.json + images/ (writes mmvet_results.json for the GPT-4 grader)
  chair        folder with COCO instances_*.json (+ captions_*.json), val2014/ (CHAIR_S, CHAIR_I)
  mme          MME_Benchmark_release_version/ (perception and cognition scores)
OUT gets predictions.jsonl (flushed per answer; rerunning with the same OUT resumes) and metrics.json;
the metrics are also printed to stdout.";

#[derive(Args)]
pub struct EvalCliArgs {
    /// The benchmark.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(stic::eval::Bench::NAMES))]
    pub bench: String,
    /// The benchmark's file or folder (see below).
    #[arg(long)]
    pub data: PathBuf,
    /// Where the images are (default: the benchmark's usual folder next to the data).
    #[arg(long)]
    pub image_folder: Option<PathBuf>,
    /// Checkpoint directory (not needed with --predictions).
    #[arg(long, required_unless_present = "predictions")]
    pub model: Option<PathBuf>,
    /// A LoRA adapter directory in PEFT format.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Score this predictions file (JSONL as written to OUT/predictions.jsonl) without a model.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Output directory: predictions.jsonl, metrics.json (and the judge's file for llava-bench, mm-vet).
    #[arg(long, required_unless_present = "predictions")]
    pub out: Option<PathBuf>,
    /// mmbench with --predictions: also write the submission .xlsx here, as LLaVA's
    /// scripts/convert_mmbench_for_submission.py does from the same TSV and answer file.
    #[arg(long, requires = "predictions")]
    pub submission: Option<PathBuf>,
    /// Default: 128 for the short-answer benchmarks, 1024 for mathvista, llava-bench, mm-vet, chair.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 is greedy (the default, as LLaVA's evaluations).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Items per generate call.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// cpu, or cuda / cuda:N (a build with --features cuda; the adapter is merged at load).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Only the first N questions (an MMBench question is all its rotations).
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bars (for logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Only the checks of this op (kernel file, e.g. `rmsnorm`) or kernel (e.g. `rmsnorm_residual`).
    #[arg(long)]
    pub op: Option<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// List the checks without running them (needs no GPU).
    #[arg(long)]
    pub list: bool,
}

#[derive(Args)]
pub struct Common {
    /// Checkpoint directory (HF format: config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Image file (JPEG or PNG).
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// Use the prompt as given, without the chat template (it must then contain `<image>`).
    #[arg(long)]
    pub raw_prompt: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Ignore the safetensors: build the model of DIR/config.json with seeded random weights
    /// (benches and profiling of any config without a download).
    #[arg(long)]
    pub random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// A LoRA adapter directory in PEFT format (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// cpu, cuda or cuda:N (bf16 on the GPU; needs a build with --features cuda). On the GPU an
    /// adapter is merged into the weights as they load.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

impl Common {
    /// Run `work` on the model on `--device`.
    pub fn with_pipeline<W: WithPipeline>(&self, work: W) -> Result<W::Out> {
        with_pipeline(self.device, &self.model, self.random_weights.then_some(self.weights_seed), self.adapter.as_deref(), work)
    }

    /// Every `--image`, decoded.
    pub fn images(&self) -> Result<Vec<RgbImage>> {
        self.image.iter().map(|p| load_image(p)).collect()
    }
}

/// Options shared by `train-dpo` and `train-sft`.
#[derive(Args)]
pub struct TrainCommon {
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory: the adapter (PEFT format), train_log.jsonl, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank (default 8); 0 trains no adapters (with --projector-lr: the projector only,
    /// LLaVA's alignment stage, saved as multi_modal_projector.safetensors). Not with --train.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// Train these parts in full instead of LoRA adapters, comma-separated: decoder (every weight
    /// of the language model), projector (alone: LLaVA's stage-1 alignment), vision (the CLIP
    /// tower up to the feature layer, at --lr; on --device cuda for vision head dims 64 and 128).
    /// OUT is then a complete HF model directory (and OUT/checkpoint one plus the optimiser).
    #[arg(long, value_parser = parse_train_parts)]
    pub train: Option<stic::train::full::TrainParts>,
    /// With --train: shard the saved safetensors above this many MiB (HF's default 5 GB).
    #[arg(long, default_value_t = stic::train::run_loop::DEFAULT_SHARD_MIB)]
    pub shard_mib: u64,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// LoRA dropout on the adapter's input during training.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Comma-separated projections to adapt.
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub lora_targets: String,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f32,
    /// Continue training this adapter (its rank, alpha and targets) instead of fresh adapters
    /// (STIC's stage 2 starts from the stage-1 adapter).
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Also train the projector in full at this learning rate (same schedule); saved in the
    /// adapter as PEFT's modules_to_save.
    #[arg(long)]
    pub projector_lr: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    /// cosine or linear.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N optimiser steps (and always at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Recompute each layer's activations in the backward pass instead of keeping them.
    #[arg(long)]
    pub recompute: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
    /// Continue from OUT/checkpoint with the same data order, optimiser state and schedule.
    #[arg(long)]
    pub resume: bool,
    /// Stop right after step N's checkpoint, as a crash would (for resume tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// cpu, or cuda / cuda:N (needs a build with --features cuda): the adapters, their
    /// gradients and AdamW state live on the GPU, the model in bf16.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Random weights of the checkpoint's shapes instead of its safetensors (benchmarks at the
    /// real shape without the weights).
    #[arg(long)]
    pub random_weights: bool,
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
}

/// `--train`'s value parser (the error names the option and the accepted parts).
fn parse_train_parts(s: &str) -> std::result::Result<stic::train::full::TrainParts, String> {
    s.parse()
}

impl TrainCommon {
    pub fn args(&self, beta: f64, sft_weight: f64) -> Result<stic::train::run_loop::TrainArgs> {
        let schedule = match self.schedule.as_str() {
            "cosine" => stic::train::run_loop::Schedule::Cosine,
            "linear" => stic::train::run_loop::Schedule::Linear,
            other => return Err(stic::Error::Input(format!("--schedule must be cosine or linear, got `{other}`"))),
        };
        if let (Some(parts), Some(r)) = (self.train, self.lora_r) {
            if r > 0 {
                return Err(stic::Error::Input(format!(
                    "--lora-r {r} with --train {}: full-parameter training uses no LoRA adapters; drop --lora-r",
                    if parts.decoder { "decoder" } else { "projector" }
                )));
            }
        }
        Ok(stic::train::run_loop::TrainArgs {
            lora: stic::adapter::LoraSpec {
                r: self.lora_r.unwrap_or(8),
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                targets: self.lora_targets.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            },
            projector_lr: self.projector_lr,
            init_adapter: self.init_adapter.clone(),
            beta,
            sft_weight,
            lr: self.lr,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_steps: self.max_steps,
            warmup_ratio: self.warmup_ratio,
            schedule,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            save_every: self.save_every,
            recompute: self.recompute,
            quiet: self.quiet,
            train: self.train,
            shard_mib: self.shard_mib,
        })
    }

    pub fn report(&self, log: &[stic::train::run_loop::LogLine]) {
        if let Some(l) = log.last() {
            let margin = l.reward_margin.map(|m| format!(", reward margin {m:.4}")).unwrap_or_default();
            let (tokens, secs) = log.iter().fold((0usize, 0f64), |(t, s), l| (t + l.tokens, s + l.seconds));
            eprintln!(
                "step {}: loss {:.4}{margin}; {:.0} tokens/s over {} steps; {} in {}",
                l.step,
                l.loss,
                tokens as f64 / secs.max(1e-9),
                log.len(),
                if self.train.is_some() { "model" } else { "adapter" },
                self.out.display()
            );
        }
    }
}

/// Options shared by `build-prefs` and `build-dif`: the model and the generation settings
/// (defaults: the official scripts', see docs/STIC.md).
#[derive(Args)]
pub struct DataGenCommon {
    /// Checkpoint directory (HF format).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory in PEFT format (build-dif: the stage-1 adapter).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Build the model of DIR/config.json with seeded random weights.
    #[arg(long)]
    pub random_weights: bool,
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// Seed of the selection, prompts, corruptions and sampling (each item has its own stream).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per generation call.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// No progress bar (for logs); warnings and the summary still go to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Stop after writing K items, as a kill would (for resume tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// cpu, or cuda / cuda:N (a build with --features cuda; the adapter is merged at load).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

impl DataGenCommon {
    pub fn sampling(&self) -> Result<SamplingParams> {
        sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed)
    }

    /// Run `work` on the model on `--device`.
    pub fn with_pipeline<W: WithPipeline>(&self, work: W) -> Result<W::Out> {
        with_pipeline(self.device, &self.model, self.random_weights.then_some(self.weights_seed), self.adapter.as_deref(), work)
    }

    pub fn report(&self, what: &str, out: &Path, s: &stic::stic::Summary) {
        let state = if s.stopped { "stopped early" } else { "done" };
        eprintln!(
            "{what}: {state}: {} images written, {} already done, {} skipped, of {} selected, in {:.1} s ({:.3} images/s); output {}",
            s.written,
            s.resumed,
            s.skipped,
            s.selected,
            s.elapsed.as_secs_f64(),
            s.images_per_sec(),
            out.display()
        );
    }
}

/// Sampling settings, `--top-p` and `--temperature` checked (generate, build-prefs, build-dif).
pub fn sampling(max_new_tokens: usize, temperature: f32, top_p: f32, top_k: usize, seed: u64) -> Result<SamplingParams> {
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(stic::Error::Input(format!("--top-p must be in (0, 1], got {top_p}")));
    }
    if temperature < 0.0 {
        return Err(stic::Error::Input(format!("--temperature must be >= 0, got {temperature}")));
    }
    Ok(SamplingParams { max_new_tokens, temperature, top_k, top_p, seed })
}

/// `stic csr-prefs` (every default is the official code's; docs/CSR.md).
#[derive(Args)]
pub struct CsrPrefsCli {
    /// Prompt file: a JSON list of {id, image, input} (CSR-Prompt-Dataset-12k.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder of the images.
    #[arg(long)]
    pub images: PathBuf,
    /// Prepended to each entry's image name (sample.py).
    #[arg(long, default_value = "COCO_train2014_")]
    pub image_prefix: String,
    /// CLIP checkpoint directory (HF CLIPModel, e.g. openai/clip-vit-large-patch14-336).
    #[arg(long)]
    pub clip: PathBuf,
    /// Output JSONL (appended to and resumed when it exists; OUT.skipped lists skipped prompts).
    #[arg(long)]
    pub out: PathBuf,
    /// Checkpoint directory (HF format).
    #[arg(long)]
    pub model: PathBuf,
    /// Build the model of DIR/config.json with seeded random weights.
    #[arg(long)]
    pub random_weights: bool,
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// The token that ends a sentence (the beam search's EOS); default: the id of "." in the
    /// tokenizer's vocabulary (29889 for LLaMA's, as sample.py's --period_id).
    #[arg(long)]
    pub sentence_end: Option<u32>,
    #[arg(long, default_value_t = 5)]
    pub num_beams: usize,
    #[arg(long, default_value_t = 5)]
    pub num_beam_groups: usize,
    #[arg(long, default_value_t = 3.0)]
    pub diversity_penalty: f32,
    /// Candidates per expansion (num_return_sequences).
    #[arg(long, default_value_t = 5)]
    pub candidates: usize,
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// New tokens per sentence at most.
    #[arg(long, default_value_t = 70)]
    pub max_new_tokens: usize,
    /// A node is final once prompt + response decode to this many characters.
    #[arg(long, default_value_t = 1024)]
    pub max_chars: usize,
    /// Pruning: expand the best N and the worst M pooled children when there are at least K.
    #[arg(long, default_value_t = 1)]
    pub keep_top: usize,
    #[arg(long, default_value_t = 2)]
    pub keep_bottom: usize,
    #[arg(long, default_value_t = 5)]
    pub prune_min: usize,
    /// Stop expanding at this depth (not in the official code).
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// code (rank costs, construct.py) or paper (raw scores, lambda mix, clamp at 0).
    #[arg(long, default_value = "code")]
    pub reward: String,
    /// The CLIP weight: alpha of the rank cost, or lambda of the paper's mix.
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f64,
    /// Sentences whose cleaned text is shorter are dropped.
    #[arg(long, default_value_t = 4)]
    pub min_chars: usize,
    /// Sentences with more newlines are dropped.
    #[arg(long, default_value_t = 5)]
    pub max_newlines: usize,
    /// The system line before " USER: ..." (conv v1); "" for none.
    #[arg(long, default_value = stic::csr::prefs::V1_SYSTEM)]
    pub system: String,
    /// Re-prefill every node's whole context instead of continuing its parent's KV cache.
    #[arg(long)]
    pub no_kv_reuse: bool,
    /// Only the first N prompts of the file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompts whose trees grow together (one batched beam search per level for all of them).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long)]
    pub quiet: bool,
    /// Stop after writing K lines, as a kill would (for resume tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// cpu, or cuda / cuda:N (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}
