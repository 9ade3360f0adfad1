//! The GPU learner's struct and its training state on the device (adapters, projector), shared
//! by the other files of `train::cuda`.

use crate::backend::cuda::DevBuf;
use std::path::PathBuf;
use std::sync::Arc;


use crate::backend::cuda::{Cuda, CudaDevice};
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::model::decoder::Decoder;
use crate::optim::AdamWConfig;
use crate::train::full::TrainParts;

/// One adapted projection: where its A [r, K] and B [N, r] live in the flat parameter buffers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Adapter {
    pub(super) layer: usize,
    /// Index in [`PROJECTIONS`](crate::model::decoder::PROJECTIONS).
    pub(super) proj: usize,
    /// K: in features; N: out features.
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) off_a: usize,
    pub(super) off_b: usize,
}

/// The trainable state on the device.
pub(super) struct DeviceLoras {
    pub(super) r: usize,
    pub(super) scale: f32,
    /// LoRA dropout probability (0: none).
    pub(super) dropout: f32,
    pub(super) adapters: Vec<Adapter>,
    /// Per layer, per projection: the index in `adapters`.
    pub(super) lookup: Vec<[Option<usize>; 7]>,
    /// f32 master parameters, gradients and AdamW moments, adapter after adapter (A then B).
    pub(super) p: DevBuf<f32>,
    pub(super) g: DevBuf<f32>,
    pub(super) m: DevBuf<f32>,
    pub(super) v: DevBuf<f32>,
    /// The bf16 copy of p the LoRA kernels read.
    pub(super) p16: DevBuf<u16>,
    /// AdamW steps taken (the same for every tensor).
    pub(super) step: u64,
}

/// The projector's trainable state on the device: its parameters in `params_mut` order
/// (`linear_1.weight`, `linear_1.bias`, `linear_2.weight`, `linear_2.bias`, or `weight`, `bias`),
/// back to back.
pub(super) struct DeviceProjector {
    /// (name, shape, offset) of every parameter.
    pub(super) params: Vec<(String, Vec<usize>, usize)>,
    pub(super) p: DevBuf<f32>,
    pub(super) g: DevBuf<f32>,
    pub(super) m: DevBuf<f32>,
    pub(super) v: DevBuf<f32>,
    pub(super) step: u64,
}

/// The language model trained in full (`--train decoder`) on the device: every weight's f32
/// master, gradient and AdamW moments, weight after weight in `Decoder::params_mut` order
/// (`embed_tokens`, per layer the input norm, the 7 projections, the post-attention norm, the
/// final norm, lm_head unless tied), as [`DeviceLoras`] and [`DeviceProjector`] keep theirs.
pub(super) struct DeviceDecoder {
    /// (name relative to the language model, elements, offset) of every weight.
    pub(super) params: Vec<(String, usize, usize)>,
    pub(super) p: DevBuf<f32>,
    pub(super) g: DevBuf<f32>,
    pub(super) m: DevBuf<f32>,
    pub(super) v: DevBuf<f32>,
    pub(super) step: u64,
}

/// The index in [`DeviceDecoder::params`] of a layer's weights: its input norm (+ 1 + p: its
/// projection p, [`PROJECTIONS`](crate::model::decoder::PROJECTIONS) order; + 8: its
/// post-attention norm).
pub(super) fn layer_param(li: usize) -> usize {
    1 + 9 * li
}

impl DeviceDecoder {
    /// Weight i's gradient.
    pub(super) fn grad(&mut self, i: usize) -> cudarc::driver::CudaViewMut<'_, f32> {
        let (_, len, off) = self.params[i];
        self.g.slice_mut(off..off + len)
    }
}

/// Weight i's gradient when the decoder trains in full.
pub(super) fn grad_of(full: &mut Option<DeviceDecoder>, i: usize) -> Option<cudarc::driver::CudaViewMut<'_, f32>> {
    full.as_mut().map(|f| f.grad(i))
}

/// The GPU [`Learner`](crate::train::run_loop::Learner): a frozen bf16 model and the adapters' training state on one device.
pub struct CudaLearner {
    pub pipe: Pipeline<Cuda>,
    pub(super) dev: Arc<CudaDevice>,
    pub(super) cfg: AdamWConfig,
    pub(super) loras: Option<DeviceLoras>,
    /// Set when the projector trains.
    pub(super) projector: Option<DeviceProjector>,
    /// A column of ones (bf16) for the bias gradients, grown as needed.
    pub(super) ones: Option<DevBuf<u16>>,
    /// The weight of the examples accumulated since the last step (all the same: 1 / n).
    pub(super) pending_w: Option<f32>,
    /// The LoRA dropout seed of the example being run (None: no dropout, as in evaluation).
    pub(super) dropout_seed: Option<u64>,
    pub(super) inv_freq: DevBuf<f32>,
    pub(super) neg_inv_freq: DevBuf<f32>,
    /// `--train decoder`: the language model's training state.
    pub(super) full: Option<DeviceDecoder>,
    /// `--train vision`: the vision tower's training state (`train::cuda::vision`; the same flat
    /// buffer set as the decoder's, its tensors named relative to the tower).
    pub(super) tower: Option<DeviceDecoder>,
    /// `--train`: the parts that train in full, the base checkpoint (the model directories it
    /// writes take every other tensor from it) and the shard size of those directories.
    pub(super) parts: Option<TrainParts>,
    pub(super) base: Option<PathBuf>,
    pub(super) shard_bytes: u64,
}

impl CudaLearner {
    pub(super) fn decoder(&self) -> &Decoder<Cuda> {
        &self.pipe.model.decoder
    }

    pub(super) fn loras(&self) -> Result<&DeviceLoras> {
        self.loras.as_ref().ok_or_else(|| Error::Input("no adapters attached: init or load them first".into()))
    }

    /// Something trains: adapters, the projector, or both (projector only: LLaVA's alignment
    /// stage, `--lora-r 0 --projector-lr LR`).
    pub(super) fn check_trainable(&self) -> Result<()> {
        if self.loras.is_none() && self.projector.is_none() && self.full.is_none() && self.tower.is_none() {
            return Err(Error::Input("nothing to train: no adapters attached, and neither the projector, the decoder nor the vision tower trains".into()));
        }
        Ok(())
    }
}
