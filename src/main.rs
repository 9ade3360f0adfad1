//! The `stic` command line.
//!
//! stic generate --model DIR --image PATH --prompt TEXT [--max-new-tokens N] [--temperature T]
//!               [--top-p P] [--top-k K] [--seed S] [--raw-prompt] [--json]
//! stic score    --model DIR --image PATH --prompt TEXT --response TEXT [--raw-prompt] [--json]
//! (both: [--adapter DIR] a PEFT LoRA adapter; [--random-weights [--weights-seed S]];
//!  [--device cpu|cuda|cuda:N])
//! stic demo     (the bundled tiny checkpoint and image)
//! stic merge   --model DIR --adapter DIR --out DIR [--dtype keep|f32]
//! stic train-sft --model DIR --data llava.json --out DIR [same training options] [--image-folder DIR]
//! stic train-dpo --model DIR --data prefs.jsonl --out DIR [--lora-r 8 --lora-alpha 16 ...] [--resume]
//! stic check    [--op OP] [--seed S] [--list]   (CUDA kernels vs the CPU reference; needs a
//!               build with `--features cuda`)
//! stic build-prefs --model DIR --images DIR --out prefs.jsonl [--n N --seed S --batch-size B]
//! stic build-dif   --model DIR --adapter DIR --sft llava.json --images DIR --out dif.json [--n 5000]
//!               (both: [--max-new-tokens 1024 --temperature 0.2 --top-p 1 --top-k 0] [--quiet])
//! stic run     --config stic.toml   (the whole STIC pipeline: build-prefs, train-dpo, build-dif,
//!               train-sft, eval; finished stages skipped, interrupted ones resumed)
//! stic profile  --model DIR [--random-weights] [--device cuda] [--batch B --prompt-len T
//!               --decode-steps N] [--image PATH] [--json]   (per-op time table)
//! stic eval     --bench NAME --data PATH (--model DIR [--adapter DIR] --out DIR | --predictions FILE)
//!               [--image-folder DIR] [--max-new-tokens N] [--batch-size N] [--limit N] [--quiet]
//!
//! `--prompt` may be given several times to generate for a batch at once (with one `--image` shared
//! by all, or one `--image` per prompt); `--json` then prints one JSON object per line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use stic::backend::{Backend, Device};
use stic::generate::{Pipeline, Request, SamplingParams};
use stic::image::load_image;
use stic::Result;

#[derive(Parser)]
#[command(name = "stic", version, about = "Run and train LLaVA-style vision-language models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a response for an image and a prompt.
    Generate(GenerateArgs),
    /// Per-token log-probabilities of a response given an image and a prompt.
    Score(ScoreArgs),
    /// Train a LoRA adapter with DPO (STIC's with --sft-weight) on a preference file.
    TrainDpo(TrainDpoArgs),
    /// Train a LoRA adapter with SFT on LLaVA's instruction-tuning JSON (loss on gpt turns).
    TrainSft(TrainSftArgs),
    /// Fold a LoRA adapter into the checkpoint's weights and write a plain checkpoint.
    Merge {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Dtype of the merged weights: keep (the base weights', as PEFT) or f32.
        #[arg(long, default_value = "keep")]
        dtype: String,
    },
    /// Generate on the bundled tiny LLaVA-NeXT checkpoint and test image (no download needed).
    Demo {
        #[arg(long, default_value = DEMO_MODEL)]
        model: PathBuf,
        #[arg(long, default_value = DEMO_IMAGE)]
        image: PathBuf,
        #[arg(long, default_value = "What is shown in this image?")]
        prompt: String,
    },
    /// The whole STIC pipeline from a config file: build-prefs, train-dpo, build-dif, train-sft,
    /// eval, one folder per stage; finished stages are skipped, interrupted ones resume.
    Run {
        /// stic.toml (see README "STIC"; paths in it are relative to its folder). Without it: the
        /// embedded demo (examples/demo.toml: the bundled tiny checkpoint and images).
        #[arg(long)]
        config: Option<PathBuf>,
        /// No progress bars (overrides the config's `quiet`).
        #[arg(long)]
        quiet: bool,
        /// Stop after N new pairs of stage 1, as a crash would (for resume tests).
        #[arg(long, hide = true)]
        stop_after: Option<usize>,
    },
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
}

#[derive(Args)]
struct ProfileArgs {
    #[command(flatten)]
    common: Common,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Text tokens per prompt (after the image's feature rows when --image is given).
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    decode_steps: usize,
    /// Seed of the prompts' random token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs before the measured one (compilation caches, allocator, clocks).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
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
OUT gets predictions.jsonl (flushed per answer; rerunning with the same OUT resumes) and metrics.json;
the metrics are also printed to stdout.";

#[derive(Args)]
struct EvalCliArgs {
    /// The benchmark.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(stic::eval::Bench::NAMES))]
    bench: String,
    /// The benchmark's file or folder (see below).
    #[arg(long)]
    data: PathBuf,
    /// Where the images are (default: the benchmark's usual folder next to the data).
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// Checkpoint directory (not needed with --predictions).
    #[arg(long, required_unless_present = "predictions")]
    model: Option<PathBuf>,
    /// A LoRA adapter directory in PEFT format.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Score this predictions file (JSONL as written to OUT/predictions.jsonl) without a model.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Output directory: predictions.jsonl, metrics.json (and the judge's file for llava-bench, mm-vet).
    #[arg(long, required_unless_present = "predictions")]
    out: Option<PathBuf>,
    /// Default: 128 for the short-answer benchmarks, 1024 for mathvista, llava-bench, mm-vet.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 is greedy (the default, as LLaVA's evaluations).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Items per generate call.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// cpu, or cuda / cuda:N (a build with --features cuda; the adapter is merged at load).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Only the first N questions (an MMBench question is all its rotations).
    #[arg(long)]
    limit: Option<usize>,
    /// No progress bars (for logs).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// Only the checks of this op (kernel file, e.g. `rmsnorm`) or kernel (e.g. `rmsnorm_residual`).
    #[arg(long)]
    op: Option<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// List the checks without running them (needs no GPU).
    #[arg(long)]
    list: bool,
}

const DEMO_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llava_next_tiny");
const DEMO_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/wide.jpg");

#[derive(Args)]
struct Common {
    /// Checkpoint directory (HF format: config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Image file (JPEG or PNG).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Use the prompt as given, without the chat template (it must then contain `<image>`).
    #[arg(long)]
    raw_prompt: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Ignore the safetensors: build the model of DIR/config.json with seeded random weights
    /// (benches and profiling of any config without a download).
    #[arg(long)]
    random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    weights_seed: u64,
    /// A LoRA adapter directory in PEFT format (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// cpu, cuda or cuda:N (bf16 on the GPU; needs a build with --features cuda). On the GPU an
    /// adapter is merged into the weights as they load.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

impl Common {
    fn pipeline(&self) -> Result<Pipeline> {
        Pipeline::load_with(&self.model, self.random_weights.then_some(self.weights_seed), self.adapter.as_deref())
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn pipeline_on<B: Backend>(&self, be: &B) -> Result<Pipeline<B>> {
        Pipeline::load_on(be, &self.model, self.random_weights.then_some(self.weights_seed), self.adapter.as_deref())
    }
}

/// Runs `$body` with `$pipe` bound to the pipeline of `$common` on its `--device`.
macro_rules! on_device {
    ($common:expr, |$pipe:ident| $body:expr) => {
        match $common.device {
            Device::Cpu => {
                let $pipe = $common.pipeline()?;
                $body
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let be = stic::backend::cuda::Cuda::new(n)?;
                let $pipe = $common.pipeline_on(&be)?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                return Err(stic::Error::Input("--device cuda: this binary was built without --features cuda".into()));
            }
        }
    };
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: Common,
    /// Prompt; repeat for a batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Options shared by `train-dpo` and `train-sft`.
#[derive(Args)]
struct TrainCommon {
    #[arg(long)]
    model: PathBuf,
    /// Output directory: the adapter (PEFT format), train_log.jsonl, checkpoint/.
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank; 0 trains no adapters (with --projector-lr: the projector only, LLaVA's
    /// alignment stage, saved as multi_modal_projector.safetensors).
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA dropout on the adapter's input during training.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Comma-separated projections to adapt.
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    lora_targets: String,
    #[arg(long, default_value_t = 5e-5)]
    lr: f32,
    /// Continue training this adapter (its rank, alpha and targets) instead of fresh adapters
    /// (STIC's stage 2 starts from the stage-1 adapter).
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Also train the projector in full at this learning rate (same schedule); saved in the
    /// adapter as PEFT's modules_to_save.
    #[arg(long)]
    projector_lr: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// cosine or linear.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N optimiser steps (and always at the end).
    #[arg(long)]
    save_every: Option<usize>,
    /// Recompute each layer's activations in the backward pass instead of keeping them.
    #[arg(long)]
    recompute: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
    /// Continue from OUT/checkpoint with the same data order, optimiser state and schedule.
    #[arg(long)]
    resume: bool,
    /// Stop right after step N's checkpoint, as a crash would (for resume tests).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    /// cpu, or cuda / cuda:N (needs a build with --features cuda): the adapters, their
    /// gradients and AdamW state live on the GPU, the model in bf16.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Random weights of the checkpoint's shapes instead of its safetensors (benchmarks at the
    /// real shape without the weights).
    #[arg(long)]
    random_weights: bool,
    #[arg(long, default_value_t = 0)]
    weights_seed: u64,
}

impl TrainCommon {
    fn args(&self, beta: f64, sft_weight: f64) -> Result<stic::train::run_loop::TrainArgs> {
        let schedule = match self.schedule.as_str() {
            "cosine" => stic::train::run_loop::Schedule::Cosine,
            "linear" => stic::train::run_loop::Schedule::Linear,
            other => return Err(stic::Error::Input(format!("--schedule must be cosine or linear, got `{other}`"))),
        };
        Ok(stic::train::run_loop::TrainArgs {
            lora: stic::adapter::LoraSpec {
                r: self.lora_r,
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
        })
    }

    fn report(&self, log: &[stic::train::run_loop::LogLine]) {
        if let Some(l) = log.last() {
            let margin = l.reward_margin.map(|m| format!(", reward margin {m:.4}")).unwrap_or_default();
            let (tokens, secs) = log.iter().fold((0usize, 0f64), |(t, s), l| (t + l.tokens, s + l.seconds));
            eprintln!(
                "step {}: loss {:.4}{margin}; {:.0} tokens/s over {} steps; adapter in {}",
                l.step,
                l.loss,
                tokens as f64 / secs.max(1e-9),
                log.len(),
                self.out.display()
            );
        }
    }
}

#[derive(Args)]
struct TrainDpoArgs {
    /// prefs.jsonl: {"image", "prompt", "chosen", "rejected"} per line, images relative to it.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Weight of the likelihood term on the chosen response (STIC: 1/1024 = 0.0009765625).
    #[arg(long, default_value_t = 0.0)]
    sft_weight: f64,
    #[command(flatten)]
    common: TrainCommon,
}

#[derive(Args)]
struct TrainSftArgs {
    /// LLaVA instruction-tuning JSON: [{"id", "image", "conversations": [{"from", "value"}]}].
    #[arg(long)]
    data: PathBuf,
    /// Folder the "image" paths are relative to (default: the data file's folder).
    #[arg(long)]
    image_folder: Option<PathBuf>,
    #[command(flatten)]
    common: TrainCommon,
}

/// Options shared by `build-prefs` and `build-dif`: the model and the generation settings
/// (defaults: the official scripts', see docs/STIC.md).
#[derive(Args)]
struct DataGenCommon {
    /// Checkpoint directory (HF format).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory in PEFT format (build-dif: the stage-1 adapter).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Build the model of DIR/config.json with seeded random weights.
    #[arg(long)]
    random_weights: bool,
    #[arg(long, default_value_t = 0)]
    weights_seed: u64,
    /// Seed of the selection, prompts, corruptions and sampling (each item has its own stream).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per generation call.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// No progress bar (for logs); warnings and the summary still go to stderr.
    #[arg(long)]
    quiet: bool,
    /// Stop after writing K items, as a kill would (for resume tests).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    /// cpu, or cuda / cuda:N (a build with --features cuda; the adapter is merged at load).
    #[arg(long, default_value = "cpu")]
    device: Device,
}

impl DataGenCommon {
    fn sampling(&self) -> Result<SamplingParams> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(stic::Error::Input(format!("--top-p must be in (0, 1], got {}", self.top_p)));
        }
        if self.temperature < 0.0 {
            return Err(stic::Error::Input(format!("--temperature must be >= 0, got {}", self.temperature)));
        }
        Ok(SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        })
    }

    /// Run `work` on the model on `--device`.
    fn with_pipeline<W: stic::generate::WithPipeline>(&self, work: W) -> Result<W::Out> {
        stic::generate::with_pipeline(self.device, &self.model, self.random_weights.then_some(self.weights_seed), self.adapter.as_deref(), work)
    }

    fn report(&self, what: &str, out: &std::path::Path, s: &stic::stic::Summary) {
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

#[derive(Args)]
struct BuildPrefsCli {
    /// Folder of unlabeled images (.jpg, .jpeg, .png; searched recursively).
    #[arg(long)]
    images: PathBuf,
    /// Output preference JSONL (appended to and resumed when it exists).
    #[arg(long)]
    out: PathBuf,
    /// Use N images sampled with --seed (default: all).
    #[arg(long)]
    n: Option<usize>,
    #[command(flatten)]
    common: DataGenCommon,
}

#[derive(Args)]
struct BuildDifCli {
    /// LLaVA instruction-tuning JSON (e.g. llava_v1_5_mix665k.json).
    #[arg(long)]
    sft: PathBuf,
    /// The folder its "image" paths are relative to.
    #[arg(long)]
    images: PathBuf,
    /// Output LLaVA JSON (descriptions are kept in OUT.descriptions.jsonl for resuming).
    #[arg(long)]
    out: PathBuf,
    /// Examples to sample (among those with an image).
    #[arg(long, default_value_t = 5000)]
    n: usize,
    #[command(flatten)]
    common: DataGenCommon,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    response: String,
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Generate(a) => {
            let c = &a.common;
            if !(a.top_p > 0.0 && a.top_p <= 1.0) {
                return Err(stic::Error::Input(format!("--top-p must be in (0, 1], got {}", a.top_p)));
            }
            if a.temperature < 0.0 {
                return Err(stic::Error::Input(format!("--temperature must be >= 0, got {}", a.temperature)));
            }
            let images = c.image.iter().map(|p| load_image(p)).collect::<Result<Vec<_>>>()?;
            if images.len() > 1 && images.len() != a.prompt.len() {
                return Err(stic::Error::Input(format!(
                    "{} images for {} prompts: give one image for all prompts or one per prompt",
                    images.len(),
                    a.prompt.len()
                )));
            }
            on_device!(c, |pipe| generate_cmd(&pipe, &a, &images)?);
        }
        Cmd::Demo { model, image, prompt } => {
            let t0 = std::time::Instant::now();
            let pipe = Pipeline::load(&model)?;
            let img = load_image(&image)?;
            let req = Request { prompt: pipe.format_prompt(&prompt, 1, false), images: vec![img] };
            let g = pipe.generate(&[req], &SamplingParams { max_new_tokens: 16, ..Default::default() })?;
            println!("model:  {}", model.display());
            println!("image:  {} ({} image tokens)", image.display(), g[0].n_image_tokens);
            println!("prompt: {prompt}");
            println!("output: {:?}", g[0].text);
            println!("ids:    {:?}", g[0].output_ids);
            println!("(random tiny weights: the text is gibberish by design; {:.2} s)", t0.elapsed().as_secs_f64());
        }
        Cmd::Check(_) => unreachable!("handled in main"),
        Cmd::Eval(a) => {
            let metrics = stic::eval::eval(&stic::eval::EvalArgs {
                bench: stic::eval::Bench::from_name(&a.bench)?,
                data: a.data,
                image_folder: a.image_folder,
                model: a.model,
                adapter: a.adapter,
                predictions: a.predictions,
                out: a.out,
                max_new_tokens: a.max_new_tokens,
                temperature: a.temperature,
                top_p: a.top_p,
                seed: a.seed,
                batch_size: a.batch_size,
                limit: a.limit,
                quiet: a.quiet,
                device: a.device,
            })?;
            println!("{}", serde_json::to_string_pretty(&metrics).expect("serialisable"));
        }
        Cmd::Merge { model, adapter, out, dtype } => {
            let dt = match dtype.as_str() {
                "keep" => stic::adapter::MergeDtype::Keep,
                "f32" => stic::adapter::MergeDtype::F32,
                other => return Err(stic::Error::Input(format!("--dtype must be keep or f32, got `{other}`"))),
            };
            let n = stic::adapter::merge(&model, &adapter, &out, dt)?;
            eprintln!("merged {n} projections into {}", out.display());
        }
        Cmd::TrainDpo(a) => {
            let c = &a.common;
            let args = c.args(a.beta, a.sft_weight)?;
            let log = stic::train::device::train_on(c.device, &c.model, c.random_weights.then_some(c.weights_seed), stic::train::device::TrainJob::Dpo { prefs: &a.data }, &c.out, &args, c.resume, c.stop_after)?;
            c.report(&log);
        }
        Cmd::TrainSft(a) => {
            let c = &a.common;
            let args = c.args(0.0, 0.0)?;
            let folder = a.image_folder.clone().unwrap_or_else(|| a.data.parent().unwrap_or(std::path::Path::new(".")).to_path_buf());
            let random = c.random_weights.then_some(c.weights_seed);
            let log = stic::train::device::train_on(c.device, &c.model, random, stic::train::device::TrainJob::Sft { data: &a.data, image_folder: &folder }, &c.out, &args, c.resume, c.stop_after)?;
            c.report(&log);
        }
        Cmd::Run { config, quiet, stop_after } => {
            let mut cfg = match &config {
                Some(p) => stic::run::RunConfig::from_file(p)?,
                None => stic::run::RunConfig::demo()?,
            };
            cfg.quiet |= quiet;
            let path = config.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml"));
            let summary = stic::run::run(&cfg, &path, stop_after)?;
            eprint!("{}", stic::run::format_summary(&summary));
            eprintln!("summary in {}", cfg.out.join("summary.json").display());
        }
        Cmd::BuildPrefs(a) => {
            let c = &a.common;
            let args = stic::stic::BuildPrefsArgs {
                images: a.images.clone(),
                out: a.out.clone(),
                n: a.n,
                seed: c.seed,
                batch_size: c.batch_size,
                sampling: c.sampling()?,
                quiet: c.quiet,
                stop_after: c.stop_after,
            };
            c.report("build-prefs", &a.out, &c.with_pipeline(stic::stic::BuildPrefsWork(args))?);
        }
        Cmd::BuildDif(a) => {
            let c = &a.common;
            let args = stic::stic::BuildDifArgs {
                sft: a.sft.clone(),
                images: a.images.clone(),
                out: a.out.clone(),
                n: a.n,
                seed: c.seed,
                batch_size: c.batch_size,
                sampling: c.sampling()?,
                quiet: c.quiet,
                stop_after: c.stop_after,
            };
            c.report("build-dif", &a.out, &c.with_pipeline(stic::stic::BuildDifWork(args))?);
        }
        Cmd::Profile(a) => {
            let c = &a.common;
            on_device!(c, |pipe| profile_cmd(&pipe, &a)?);
        }
        Cmd::Score(a) => {
            let c = &a.common;
            let images = c.image.iter().map(|p| load_image(p)).collect::<Result<Vec<_>>>()?;
            on_device!(c, |pipe| score_cmd(&pipe, &a, &images)?);
        }
    }
    Ok(())
}

fn profile_cmd<B: Backend>(pipe: &Pipeline<B>, a: &ProfileArgs) -> Result<()> {
    use stic::perf::{prepare, run, Workload};
    let image = a.common.image.first().map(|p| load_image(p)).transpose()?;
    let w = Workload { batch: a.batch, prompt_len: a.prompt_len, decode_steps: a.decode_steps, image, seed: a.seed };
    let be = pipe.model.backend();
    let prep = prepare(pipe, &w)?;
    for _ in 0..a.warmup {
        run(pipe, &prep, a.decode_steps.min(4), false)?;
    }
    let (prefill, decode) = run(pipe, &prep, a.decode_steps, true)?;
    if a.common.json {
        let v = serde_json::json!({
            "device": be.describe(), "batch": a.batch, "prompt_rows": prep.rows_per_prompt(), "image_rows": prep.image_rows(),
            "decode_steps": a.decode_steps, "prefill": prefill, "decode": decode,
        });
        println!("{v}");
        return Ok(());
    }
    println!("device: {}", be.describe());
    println!(
        "prefill: {} prompt(s) x {} rows ({} image + {} text): {:.2} ms, {:.0} tokens/s",
        a.batch,
        prep.rows_per_prompt(),
        prep.image_rows(),
        prep.rows_per_prompt() - prep.image_rows(),
        prefill.ms,
        prefill.tokens_per_second()
    );
    print!("{}", stic::backend::profile::table(&prefill.ops));
    if a.decode_steps > 0 {
        println!(
            "decode: {} steps x batch {}: {:.3} ms/step, {:.1} tokens/s",
            a.decode_steps,
            a.batch,
            decode.ms / a.decode_steps as f64,
            decode.tokens_per_second()
        );
        print!("{}", stic::backend::profile::table(&decode.ops));
    }
    println!("(per-op times: CUDA events around each op on the GPU, wall time on the CPU; they add a little to the phase times)");
    Ok(())
}

fn generate_cmd<B: Backend>(pipe: &Pipeline<B>, a: &GenerateArgs, images: &[stic::image::RgbImage]) -> Result<()> {
    let c = &a.common;
    let reqs: Vec<Request> = a
        .prompt
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let imgs = match images.len() {
                0 => vec![],
                1 => vec![images[0].clone()],
                _ => vec![images[i].clone()],
            };
            Request { prompt: pipe.format_prompt(p, imgs.len(), c.raw_prompt), images: imgs }
        })
        .collect();
    let params = SamplingParams { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    for g in pipe.generate(&reqs, &params)? {
        if c.json {
            println!("{}", serde_json::to_string(&g).expect("serialisable"));
        } else {
            println!("{}", g.text);
        }
    }
    Ok(())
}

fn score_cmd<B: Backend>(pipe: &Pipeline<B>, a: &ScoreArgs, images: &[stic::image::RgbImage]) -> Result<()> {
    let c = &a.common;
    let prompt = pipe.format_prompt(&a.prompt, images.len(), c.raw_prompt);
    let s = pipe.score(&prompt, images, &a.response)?;
    if c.json {
        println!("{}", serde_json::to_string(&s).expect("serialisable"));
    } else {
        for (id, lp) in s.response_ids.iter().zip(&s.logprobs) {
            println!("{id}\t{lp:.6}");
        }
        println!("sum\t{:.6}", s.sum);
    }
    Ok(())
}

/// `stic check`: exit 0 all passed, 1 a failure, 2 no CUDA device, 3 no CUDA support built in.
#[cfg(feature = "cuda")]
fn check(a: &CheckArgs) -> ExitCode {
    use stic::backend::cuda::{check, cuda_available, CudaDevice};
    if a.list {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{:<12} {:<18} shape", "op", "kernel");
        for c in check::checks().iter().filter(|c| a.op.as_deref().is_none_or(|f| c.op == f || c.kernel == f)) {
            // A closed pipe (`| head`) just ends the listing.
            if writeln!(out, "{:<12} {:<18} {}", c.op, c.kernel, c.shape).is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    if !cuda_available() {
        println!("skipped: no CUDA device");
        return ExitCode::from(2);
    }
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match check::run_checks(&dev, a.seed, a.op.as_deref(), &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn check(_: &CheckArgs) -> ExitCode {
    eprintln!("error: `stic check` tests the CUDA kernels: rebuild with `cargo build --release --features cuda`");
    ExitCode::from(3)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Check(a) = &cli.cmd {
        return check(a);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
