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
//! stic clip-score --clip DIR --image PATH --text T [--text T ...] [--device cpu|cuda] [--json]
//!               (CLIP image-text scores, `{"scores": [...]}` with --json)
//!
//! `--prompt` may be given several times to generate for a batch at once (with one `--image` shared
//! by all, or one `--image` per prompt); `--json` then prints one JSON object per line.
//!
//! stic world make --out DIR [--n 1000 --seed 0 --size 64 --heldout 0.2]   (the synthetic world)
//! stic world eval --predictions FILE --data DIR [--json]   (its metrics; docs/WORLD.md)
//!
//! `args`: the clap structs and shared option groups; one file per family of commands (`infer`,
//! `train`, `data`, `check`, `clip`, `world`); `run` dispatches to them.

mod args;
mod check;
mod clip;
mod data;
mod infer;
mod train;
mod world;

use std::process::ExitCode;

use stic::Result;

pub use args::Cli;
use args::Cmd;

/// Runs a parsed command line. `check` gives its own exit status; the other commands exit 0
/// unless they return an error.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Generate(a) => infer::generate(&a)?,
        Cmd::Score(a) => infer::score(&a)?,
        Cmd::Profile(a) => infer::profile(&a)?,
        Cmd::Demo(a) => infer::demo(&a)?,
        Cmd::TrainDpo(a) => train::train_dpo(&a)?,
        Cmd::TrainSft(a) => train::train_sft(&a)?,
        Cmd::Merge(a) => train::merge(&a)?,
        Cmd::BuildPrefs(a) => data::build_prefs(&a)?,
        Cmd::BuildDif(a) => data::build_dif(&a)?,
        Cmd::Eval(a) => data::eval(a)?,
        Cmd::Run(a) => data::run(a)?,
        Cmd::ClipScore(a) => clip::clip_score(&a)?,
        Cmd::CsrPrefs(a) => data::csr_prefs(&a)?,
        Cmd::World(a) => world::world(&a)?,
        Cmd::Check(a) => return Ok(check::check(&a)),
    }
    Ok(ExitCode::SUCCESS)
}
