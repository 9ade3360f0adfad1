//! Training commands: `stic train-dpo`, `train-sft` (on `--device`) and `merge`.

use std::path::Path;

use stic::train::device::{train_on, TrainJob};
use stic::Result;

use super::args::{MergeArgs, TrainCommon, TrainDpoArgs, TrainSftArgs};

/// `stic train-dpo`: DPO (STIC's with `--sft-weight`) on a preference file.
pub fn train_dpo(a: &TrainDpoArgs) -> Result<()> {
    let c = &a.common;
    train(c, c.args(a.beta, a.sft_weight)?, TrainJob::Dpo { prefs: &a.data })
}

/// `stic train-sft`: SFT on LLaVA JSON, images relative to `--image-folder` (default: the data
/// file's folder).
pub fn train_sft(a: &TrainSftArgs) -> Result<()> {
    let c = &a.common;
    let args = c.args(0.0, 0.0)?;
    let folder = a.image_folder.clone().unwrap_or_else(|| a.data.parent().unwrap_or(Path::new(".")).to_path_buf());
    train(c, args, TrainJob::Sft { data: &a.data, image_folder: &folder })
}

/// Train `job` on `--device` into `--out` and print the last step's summary.
fn train(c: &TrainCommon, args: stic::train::run_loop::TrainArgs, job: TrainJob<'_>) -> Result<()> {
    let log = train_on(c.device, &c.model, c.random_weights.then_some(c.weights_seed), job, &c.out, &args, c.resume, c.stop_after)?;
    c.report(&log);
    Ok(())
}

/// `stic merge`: fold an adapter into the checkpoint's weights.
pub fn merge(a: &MergeArgs) -> Result<()> {
    let dt = match a.dtype.as_str() {
        "keep" => stic::adapter::MergeDtype::Keep,
        "f32" => stic::adapter::MergeDtype::F32,
        other => return Err(stic::Error::Input(format!("--dtype must be keep or f32, got `{other}`"))),
    };
    let n = stic::adapter::merge(&a.model, &a.adapter, &a.out, dt)?;
    eprintln!("merged {n} projections into {}", a.out.display());
    Ok(())
}
