//! Device dispatch of `train-dpo` / `train-sft` (and `stic run`'s training stages): the CPU
//! learner or, with `--device cuda`, the GPU one.

use std::path::Path;

use crate::backend::Device;
use crate::error::Error;
use crate::error::Result;
use crate::generate::Pipeline;

use super::cpu::{train_dpo, train_sft};
use super::run_loop::{LogLine, TrainArgs};

/// What [`train_on`] trains: DPO on a preference file, or SFT on LLaVA's JSON.
#[derive(Clone, Copy, Debug)]
pub enum TrainJob<'a> {
    Dpo { prefs: &'a Path },
    Sft { data: &'a Path, image_folder: &'a Path },
}

/// [`train_dpo`] / [`train_sft`] on `device`: the CPU reference, or the GPU learner
/// (`train::cuda`) with the model in bf16. `random_weights`: build the model of `model`'s config
/// with seeded random weights.
#[allow(clippy::too_many_arguments)]
pub fn train_on(
    device: Device,
    model: &Path,
    random_weights: Option<u64>,
    job: TrainJob,
    out: &Path,
    args: &TrainArgs,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<Vec<LogLine>> {
    if args.train.is_some() && random_weights.is_some() {
        return Err(Error::Input("--train writes a complete model directory from the checkpoint's safetensors: it needs real weights (not --random-weights)".into()));
    }
    match device {
        Device::Cpu => {
            let mut pipe = Pipeline::load_with(model, random_weights, None)?;
            match job {
                TrainJob::Dpo { prefs } => train_dpo(&mut pipe, model, prefs, out, args, resume, stop_after),
                TrainJob::Sft { data, image_folder } => train_sft(&mut pipe, model, data, image_folder, out, args, resume, stop_after),
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let pipe = Pipeline::load_on(&crate::backend::cuda::Cuda::new(n)?, model, random_weights, None)?;
            match job {
                TrainJob::Dpo { prefs } => super::cuda::train_dpo(pipe, model, prefs, out, args, resume, stop_after),
                TrainJob::Sft { data, image_folder } => super::cuda::train_sft(pipe, model, data, image_folder, out, args, resume, stop_after),
            }
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::Input("--device cuda: this binary was built without --features cuda".into())),
    }
}
