//! Token selection from logits: `kernels/sample.cu`.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{rows_of, CudaDevice};
use crate::error::{Error, Result};

const BLOCK: u32 = 512;
/// Threads per block of `sample_f32` (`SAMPLE_THREADS`, its `__launch_bounds__`).
const SAMPLE_BLOCK: u32 = 512;

impl CudaDevice {
    /// out[b] = argmax of row b of logits[B, V] (V = `vocab`, B = `out.len()`): the first index on
    /// ties, the first NaN if any, like torch.argmax. Reference: [`crate::backend::cpu::argmax`].
    pub fn argmax_f32(&self, logits: &CudaView<'_, f32>, vocab: usize, out: &mut CudaViewMut<'_, u32>) -> Result<()> {
        self.launch_argmax("argmax_f32", logits, vocab, out)
    }

    /// [`Self::argmax_f32`] for bf16 logits (raw bits).
    pub fn argmax_bf16(&self, logits: &CudaView<'_, u16>, vocab: usize, out: &mut CudaViewMut<'_, u32>) -> Result<()> {
        self.launch_argmax("argmax_bf16", logits, vocab, out)
    }

    fn launch_argmax<T>(&self, op: &'static str, logits: &CudaView<'_, T>, vocab: usize, out: &mut CudaViewMut<'_, u32>) -> Result<()> {
        // V < 2^32 - 1: the kernel's "no element yet" index is 0xFFFF_FFFF.
        if vocab >= u32::MAX as usize {
            return Err(Error::shape(op, format!("V={vocab} must be below 2^32-1")));
        }
        let b = rows_of(op, "logits", logits.len(), vocab)?;
        if out.len() != b {
            return Err(Error::shape(op, format!("logits [{b}, {vocab}] but out [{}]", out.len())));
        }
        if b == 0 {
            return Ok(());
        }
        let f = self.function("sample", op)?;
        let cfg = LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let v32 = vocab as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(logits).arg(&v32).arg(out);
        // SAFETY: argmax_*(const T* logits, u32 V, u32* out) reads row blockIdx.x < B of V
        // elements and writes out[blockIdx.x]: logits holds B*V elements and out B (checked).
        self.launched(op, format!("logits [{b}, {vocab}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// out[b] = a token sampled from row b of logits[B, V] (V = `vocab`, B = `out.len()`) with the
    /// uniform `uniforms[b]` in [0, 1): divide by `temperature`, top-k (0 or >= V: off), top-p
    /// (>= 1.0 or NaN: off) as HF's logits processors, then inverse-CDF sampling in index order.
    /// Reference: [`crate::backend::cpu::sample_row`]; it matches exactly except when a uniform
    /// or a top-p cut lies within f64 rounding of a CDF boundary (see `kernels/sample.cu`).
    /// `temperature` must be positive and finite: greedy decoding is [`Self::argmax_f32`].
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        logits: &CudaView<'_, f32>,
        vocab: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        uniforms: &CudaView<'_, f64>,
        out: &mut CudaViewMut<'_, u32>,
    ) -> Result<()> {
        const OP: &str = "sample_f32";
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::Input(format!(
                "{OP}: temperature {temperature} must be positive and finite (temperature 0 is greedy: use argmax_f32)"
            )));
        }
        if vocab > i32::MAX as usize {
            return Err(Error::shape(OP, format!("V={vocab} must be below 2^31")));
        }
        let b = rows_of(OP, "logits", logits.len(), vocab)?;
        if out.len() != b {
            return Err(Error::shape(OP, format!("logits [{b}, {vocab}] but out [{}]", out.len())));
        }
        if uniforms.len() != b {
            return Err(Error::shape(OP, format!("logits [{b}, {vocab}] but uniforms [{}]", uniforms.len())));
        }
        if b == 0 {
            return Ok(());
        }
        let f = self.function("sample", OP)?;
        let cfg = LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (SAMPLE_BLOCK, 1, 1), shared_mem_bytes: 0 };
        let v32 = vocab as u32;
        // k >= V is off, as k = 0: pass it clamped so that it fits a u32.
        let k32 = top_k.min(vocab) as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(logits).arg(&v32).arg(&temperature).arg(&k32).arg(&top_p).arg(uniforms).arg(out);
        // SAFETY: sample_f32(const float* logits, u32 V, float temperature, u32 top_k, float top_p,
        // const double* uniforms, u32* out) reads row blockIdx.x < B of V floats and uniforms[blockIdx.x],
        // and writes out[blockIdx.x]: logits holds B*V elements, uniforms and out B (checked).
        self.launched(OP, format!("logits [{b}, {vocab}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
