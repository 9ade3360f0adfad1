//! Rotary position embedding (rotate_half form) in place on q and k: `kernels/rope.cu`.

use crate::backend::cuda::DevBuf;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::backend::cpu::RopeTable;
use crate::error::{Error, Result};

const BLOCK: u32 = 128;

impl CudaDevice {
    /// The inverse-frequency table the `rope` kernels take: `1 / theta^(2i/D)` for i < D/2,
    /// computed on the host exactly as [`RopeTable`] does (so the bits match the CPU reference)
    /// and copied to the device. Make it once per model, not per call.
    pub fn rope_inv_freq(&self, head_dim: usize, theta: f64) -> Result<DevBuf<f32>> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::shape("rope_inv_freq", format!("head dim D={head_dim} must be even and > 0")));
        }
        self.htod(RopeTable::new(head_dim, theta).inv_freq())
    }

    /// RoPE in place on x[T, H*D] (H = `n_heads`), row t at absolute position `positions[t]`;
    /// D = 2 * `inv_freq.len()` (see [`Self::rope_inv_freq`]). Reference: [`crate::backend::cpu::rope`].
    pub fn rope(&self, x: &mut CudaViewMut<'_, u16>, n_heads: usize, positions: &CudaView<'_, u32>, inv_freq: &CudaView<'_, f32>) -> Result<()> {
        self.launch_rope("rope", x, n_heads, None, 0, positions, inv_freq)
    }

    /// RoPE in place on q[T, H*D] and k[T, Hkv*D] in one launch (same positions and table).
    pub fn rope_qk(
        &self,
        q: &mut CudaViewMut<'_, u16>,
        n_heads: usize,
        k: &mut CudaViewMut<'_, u16>,
        n_kv_heads: usize,
        positions: &CudaView<'_, u32>,
        inv_freq: &CudaView<'_, f32>,
    ) -> Result<()> {
        self.launch_rope("rope_qk", q, n_heads, Some(k), n_kv_heads, positions, inv_freq)
    }

    /// The table of [`Self::rope_backward_qk`]: `-inv_freq`. Rotating by the negated angle is the
    /// transpose of the rotation (sin is odd, cos even; the negation is exact).
    pub fn rope_inv_freq_backward(&self, head_dim: usize, theta: f64) -> Result<DevBuf<f32>> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::shape("rope_inv_freq_backward", format!("head dim D={head_dim} must be even and > 0")));
        }
        let neg: Vec<f32> = RopeTable::new(head_dim, theta).inv_freq().iter().map(|&f| -f).collect();
        self.htod(&neg)
    }

    /// The backward of [`Self::rope_qk`], in place on dq and dk: the same kernel with the
    /// negated table of [`Self::rope_inv_freq_backward`]. Reference:
    /// [`crate::backend::cpu::rope_backward`].
    pub fn rope_backward_qk(
        &self,
        dq: &mut CudaViewMut<'_, u16>,
        n_heads: usize,
        dk: &mut CudaViewMut<'_, u16>,
        n_kv_heads: usize,
        positions: &CudaView<'_, u32>,
        neg_inv_freq: &CudaView<'_, f32>,
    ) -> Result<()> {
        self.launch_rope("rope_backward_qk", dq, n_heads, Some(dk), n_kv_heads, positions, neg_inv_freq)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_rope(
        &self,
        op: &'static str,
        q: &mut CudaViewMut<'_, u16>,
        n_heads: usize,
        k: Option<&mut CudaViewMut<'_, u16>>,
        n_kv_heads: usize,
        positions: &CudaView<'_, u32>,
        inv_freq: &CudaView<'_, f32>,
    ) -> Result<()> {
        let (t, half) = (positions.len(), inv_freq.len());
        let d = 2 * half;
        let shapes = || {
            let k = k.as_ref().map(|k| format!(", k [{}] for Hkv={n_kv_heads}", k.len())).unwrap_or_default();
            format!("T={t} positions, D={d} (inv_freq [{half}]): q [{}] for H={n_heads}{k}", q.len())
        };
        if half == 0 {
            return Err(Error::shape(op, format!("{}: empty inv_freq", shapes())));
        }
        let fits = |x: usize| x <= u32::MAX as usize;
        if !fits(t) || !fits(n_heads) || !fits(n_kv_heads) || !fits(half) {
            return Err(Error::shape(op, format!("{}: sizes must fit u32", shapes())));
        }
        if t.checked_mul(n_heads).and_then(|n| n.checked_mul(d)) != Some(q.len()) {
            return Err(Error::shape(op, format!("{}: q is not [T, H*D]", shapes())));
        }
        if let Some(k) = &k {
            if t.checked_mul(n_kv_heads).and_then(|n| n.checked_mul(d)) != Some(k.len()) {
                return Err(Error::shape(op, format!("{}: k is not [T, Hkv*D]", shapes())));
            }
        }
        if t == 0 {
            return Ok(());
        }
        let msg = shapes();
        let f = self.function("rope", "rope")?;
        let cfg = self.grid_stride_config(t * half, BLOCK);
        let (t32, half32, h32) = (t as u32, half as u32, n_heads as u32);
        let hkv32 = if k.is_some() { n_kv_heads as u32 } else { 0 };
        let null = 0u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(q);
        match k {
            Some(k) => launch.arg(k),
            None => launch.arg(&null),
        };
        launch.arg(positions).arg(inv_freq).arg(&t32).arg(&half32).arg(&h32).arg(&hkv32);
        // SAFETY: rope(u16* q, u16* k, const u32* positions, const float* inv_freq, u32 T,
        // u32 half, u32 H, u32 Hkv) touches q[0, T*H*D), k[0, T*Hkv*D) (k null and Hkv 0 when
        // absent), positions[0, T) and inv_freq[0, D/2): the lengths checked above. q and k are
        // distinct &mut views, so they do not overlap.
        self.launched(op, msg, unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
