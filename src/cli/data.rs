//! Data and pipeline commands: `stic build-prefs`, `build-dif` (STIC's data stages), `eval` and
//! `run` (the whole STIC pipeline).

use std::path::PathBuf;

use stic::Result;

use super::args::{BuildDifCli, BuildPrefsCli, CsrPrefsCli, EvalCliArgs, RunArgs};

/// `stic build-prefs`: STIC stage 1, preference pairs from unlabeled images.
pub fn build_prefs(a: &BuildPrefsCli) -> Result<()> {
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
    Ok(())
}

/// `stic build-dif`: STIC stage 2, description-infused instruction-tuning JSON.
pub fn build_dif(a: &BuildDifCli) -> Result<()> {
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
    Ok(())
}

/// `stic eval`: answer and score a benchmark (or score a predictions file); the metrics on stdout.
pub fn eval(a: EvalCliArgs) -> Result<()> {
    if let Some(sub) = &a.submission {
        if a.bench != "mmbench" {
            return Err(stic::Error::Input(format!("--submission is MMBench's submission file; --bench is {}", a.bench)));
        }
        let answers = a.predictions.as_ref().expect("clap: --submission requires --predictions");
        let tsv = stic::eval::mmbench::find_tsv(&a.data)?;
        let n = stic::eval::mmbench_submission::write_submission(&tsv, answers, sub)?;
        eprintln!("submission: {} ({n} rows with a prediction), as convert_mmbench_for_submission.py writes it", sub.display());
    }
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
    Ok(())
}

/// `stic run`: the five STIC stages from `--config` (default: the embedded demo), or CSR's
/// iterations when the config says `method = "csr"`.
pub fn run(a: RunArgs) -> Result<()> {
    if let Some(p) = &a.config {
        let text = std::fs::read_to_string(p).map_err(|e| stic::Error::io(p, e))?;
        let method = toml::from_str::<toml::Table>(&text).ok().and_then(|t| t.get("method").and_then(|m| m.as_str().map(str::to_string)));
        match method.as_deref() {
            None | Some("stic") => {}
            Some("csr") => {
                let mut cfg = stic::run_csr::CsrRunConfig::parse(&text, p, p.parent().unwrap_or(std::path::Path::new(".")))?;
                cfg.quiet |= a.quiet;
                if a.stop_after.is_some() {
                    return Err(stic::Error::Input("--stop-after applies to STIC's stage 1; a CSR run is stopped and resumed as any other (each stage resumes)".into()));
                }
                let summary = stic::run_csr::run_csr(&cfg, p)?;
                eprint!("{}", stic::run::format_summary(&summary));
                eprintln!("summary in {}", cfg.out.join("summary.json").display());
                return Ok(());
            }
            Some("world") => {
                let mut cfg = stic::run_world::WorldRunConfig::parse(&text, p, p.parent().unwrap_or(std::path::Path::new(".")))?;
                cfg.quiet |= a.quiet;
                return run_world(&cfg, p, &a);
            }
            Some(other) => return Err(stic::Error::config(p, "method", format!("expected \"stic\", \"csr\" or \"world\", got \"{other}\""))),
        }
    } else if !a.demo {
        let mut cfg = stic::run_world::WorldRunConfig::default_run()?;
        cfg.quiet |= a.quiet;
        return run_world(&cfg, &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/world.toml"), &a);
    }
    if a.seed.is_some() || a.out.is_some() {
        return Err(stic::Error::Input("--seed and --out apply to world runs (method = \"world\"); set `seed` and `out` in a STIC config".into()));
    }
    let mut cfg = match &a.config {
        Some(p) => stic::run::RunConfig::from_file(p)?,
        None => stic::run::RunConfig::demo()?,
    };
    cfg.quiet |= a.quiet;
    let path = a.config.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml"));
    let summary = stic::run::run(&cfg, &path, a.stop_after)?;
    eprint!("{}", stic::run::format_summary(&summary));
    eprintln!("summary in {}", cfg.out.join("summary.json").display());
    Ok(())
}

/// A world run (`method = "world"`, or `stic run` with no --config): the stages, the before/after
/// table and where the summary and chart are.
fn run_world(cfg: &stic::run_world::WorldRunConfig, path: &std::path::Path, a: &RunArgs) -> Result<()> {
    let mut cfg = cfg.clone();
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(o) = &a.out {
        cfg.out = o.clone();
    }
    let cfg = &cfg;
    if a.stop_after.is_some() {
        return Err(stic::Error::Input("--stop-after applies to a STIC run's stage 1 (`stic run --demo` or a config with method = \"stic\")".into()));
    }
    let (summary, metrics) = stic::run_world::run_world(cfg, path)?;
    eprint!("{}", stic::run::format_summary(&summary));
    println!("{}", stic::run_world::table(&cfg.rows(), &metrics));
    eprintln!("summary in {}, chart in {}", cfg.out.join("summary.json").display(), cfg.out.join("chart.png").display());
    Ok(())
}

/// `stic csr-prefs`: CSR's sentence-level search, CLIP-calibrated ranks and the DPO pairs.
pub fn csr_prefs(a: &CsrPrefsCli) -> Result<()> {
    use stic::csr::{prefs, tree};
    let mut args = prefs::CsrPrefsArgs::official(&a.model, &a.clip, &a.data, &a.images, &a.out, a.sentence_end)?;
    args.reward = tree::Reward::parse(&a.reward, a.alpha).map_err(|e| stic::Error::Input(format!("--reward: {e}")))?;
    let b = &mut args.tree.beam;
    (b.num_beams, b.num_beam_groups, b.diversity_penalty, b.num_return_sequences) = (a.num_beams, a.num_beam_groups, a.diversity_penalty, a.candidates);
    (b.length_penalty, b.max_new_tokens) = (a.length_penalty, a.max_new_tokens);
    let t = &mut args.tree;
    (t.max_chars, t.keep_top, t.keep_bottom, t.prune_min, t.max_depth, t.kv_reuse) = (a.max_chars, a.keep_top, a.keep_bottom, a.prune_min, a.max_depth, !a.no_kv_reuse);
    args.image_prefix = a.image_prefix.clone();
    (args.min_chars, args.max_newlines, args.system) = (a.min_chars, a.max_newlines, a.system.clone());
    (args.limit, args.batch_size, args.quiet, args.stop_after) = (a.limit, a.batch_size, a.quiet, a.stop_after);
    let s = stic::generate::with_pipeline(a.device, &a.model, a.random_weights.then_some(a.weights_seed), None, prefs::CsrPrefsWork(args))?;
    let state = if s.items.stopped { "stopped early" } else { "done" };
    eprintln!(
        "csr-prefs: {state}: {} pairs written, {} already done, {} skipped, of {} prompts, in {:.1} s; {} candidates ({:.2}/s), {} beam-tokens decoded; output {}",
        s.items.written,
        s.items.resumed,
        s.items.skipped,
        s.items.selected,
        s.items.elapsed.as_secs_f64(),
        s.candidates,
        s.candidates_per_sec(),
        s.decoded,
        a.out.display()
    );
    Ok(())
}
