//! The DPO / STIC loss over a batch of pairs from per-token log-probs: `kernels/dpo.cu`.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

/// Where pair b's responses lie in the per-token log-prob rows: [chosen_start, +chosen_len) and
/// [rejected_start, +rejected_len). `#[repr(C)]`: the device reads them as u32[B, 4].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DpoSpans {
    pub chosen_start: u32,
    pub chosen_len: u32,
    pub rejected_start: u32,
    pub rejected_len: u32,
}

impl CudaDevice {
    /// For B pairs (`spans`: u32[B, 4], see [`DpoSpans`]; `reference`: f64[B, 2], the reference
    /// policy's summed log-probs (chosen, rejected)): `out` f64[B, 7] = (loss, d_chosen,
    /// d_rejected, chosen_reward, rejected_reward, policy chosen sum, policy rejected sum) as
    /// [`crate::loss::dpo`] with `beta` and `alpha` (0: plain DPO; STIC: 1/1024), and dlogp[t] =
    /// d loss / d logp[t] on every response row (other rows untouched).
    #[allow(clippy::too_many_arguments)]
    pub fn dpo(
        &self,
        logp: &CudaView<'_, f32>,
        spans: &CudaView<'_, u32>,
        reference: &CudaView<'_, f64>,
        beta: f64,
        alpha: f64,
        out: &mut CudaViewMut<'_, f64>,
        dlogp: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let op = "dpo";
        let t = logp.len();
        if spans.len() % 4 != 0 || reference.len() * 2 != spans.len() || out.len() * 4 != spans.len() * 7 || dlogp.len() != t {
            return Err(Error::shape(
                op,
                format!("logp [{t}], spans [{}] (B x 4), reference [{}] (B x 2), out [{}] (B x 7), dlogp [{}]", spans.len(), reference.len(), out.len(), dlogp.len()),
            ));
        }
        let b = spans.len() / 4;
        if b == 0 {
            return Ok(());
        }
        if b > i32::MAX as usize {
            return Err(Error::shape(op, format!("{b} pairs: more than 2^31-1")));
        }
        let f = self.function("dpo", op)?;
        let cfg = LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let t64 = t as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(logp).arg(spans).arg(reference).arg(&beta).arg(&alpha).arg(out).arg(dlogp).arg(&t64);
        // SAFETY: dpo(const float* logp, const u32* spans, const double* reference, double beta,
        // double alpha, double* out, float* dlogp, u64 T) reads spans[4b..4b+4) and
        // reference[2b..2b+2) and writes out[7b..7b+7) for b < B (the grid), and reads logp /
        // writes dlogp at rows clamped below T: all inside the views checked above. out and dlogp
        // are distinct &mut views.
        self.launched(op, format!("{b} pairs over logp [{t}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
