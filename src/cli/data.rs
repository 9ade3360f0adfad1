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
            Some(other) => return Err(stic::Error::config(p, "method", format!("expected \"stic\" or \"csr\", got \"{other}\""))),
        }
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

/// `stic csr-prefs`: CSR's sentence-level search, CLIP-calibrated ranks and the DPO pairs.
pub fn csr_prefs(a: &CsrPrefsCli) -> Result<()> {
    use stic::csr::{beam::GroupBeamParams, prefs, tree};
    let tok = stic::text::Tokenizer::from_file(&stic::config::CheckpointPaths::new(&a.model).tokenizer)?;
    let sentence_end = match a.sentence_end {
        Some(id) => id,
        None => tok.token_id(".").ok_or_else(|| stic::Error::Input("the tokenizer has no \".\" token; pass --sentence-end".into()))?,
    };
    let cfg = stic::config::LlavaConfig::from_file(&a.model.join("config.json"))?;
    let pad = cfg.pad_token_id.unwrap_or(0);
    let finals = cfg.text.eos_token_ids.clone();
    let reward = match a.reward.as_str() {
        "code" => tree::Reward::Code { alpha: a.alpha },
        "paper" => tree::Reward::Paper { lambda: a.alpha },
        other => return Err(stic::Error::Input(format!("--reward must be code or paper, got `{other}`"))),
    };
    let args = prefs::CsrPrefsArgs {
        data: a.data.clone(),
        images: a.images.clone(),
        image_prefix: a.image_prefix.clone(),
        clip: a.clip.clone(),
        out: a.out.clone(),
        tree: tree::TreeParams {
            beam: GroupBeamParams {
                num_beams: a.num_beams,
                num_beam_groups: a.num_beam_groups,
                diversity_penalty: a.diversity_penalty,
                num_return_sequences: a.candidates,
                eos: vec![sentence_end],
                pad,
                length_penalty: a.length_penalty,
                max_new_tokens: a.max_new_tokens,
            },
            final_ids: finals,
            max_chars: a.max_chars,
            keep_top: a.keep_top,
            keep_bottom: a.keep_bottom,
            prune_min: a.prune_min,
            max_depth: a.max_depth,
            kv_reuse: !a.no_kv_reuse,
        },
        reward,
        min_chars: a.min_chars,
        max_newlines: a.max_newlines,
        system: a.system.clone(),
        limit: a.limit,
        batch_size: a.batch_size,
        quiet: a.quiet,
        stop_after: a.stop_after,
    };
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
