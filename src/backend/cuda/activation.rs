//! Elementwise activations and SwiGLU on bf16: `kernels/activation.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

impl CudaDevice {
    /// `x <- x * sigmoid(x)` in place. Reference: [`crate::backend::cpu::silu`].
    pub fn silu(&self, x: &mut CudaViewMut<'_, u16>) -> Result<()> {
        self.launch_activation("silu", x)
    }

    /// `x <- 0.5 x (1 + erf(x / sqrt 2))` (exact GELU) in place. Reference: [`crate::backend::cpu::gelu`].
    pub fn gelu(&self, x: &mut CudaViewMut<'_, u16>) -> Result<()> {
        self.launch_activation("gelu", x)
    }

    /// `x <- x * sigmoid(1.702 x)` (CLIP) in place. Reference: [`crate::backend::cpu::quick_gelu`].
    pub fn quick_gelu(&self, x: &mut CudaViewMut<'_, u16>) -> Result<()> {
        self.launch_activation("quick_gelu", x)
    }

    /// An activation by its HF name (`silu`, `gelu`, `quick_gelu`), in place, like
    /// [`crate::backend::cpu::activation::by_name`].
    pub fn activation(&self, name: &str, x: &mut CudaViewMut<'_, u16>) -> Result<()> {
        match name {
            "silu" => self.silu(x),
            "gelu" => self.gelu(x),
            "quick_gelu" => self.quick_gelu(x),
            other => Err(Error::Input(format!("activation `{other}` has no CUDA kernel (silu, gelu, quick_gelu)"))),
        }
    }

    /// dy <- dy * act'(x) in place for the activation `name` (`silu`, `gelu`, `quick_gelu`; x is
    /// its input), x and dy of one length. Reference:
    /// [`crate::backend::cpu::activation::backward_by_name`].
    pub fn activation_backward(&self, name: &str, x: &CudaView<'_, u16>, dy: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let op = match name {
            "silu" => "silu_backward",
            "gelu" => "gelu_backward",
            "quick_gelu" => "quick_gelu_backward",
            other => return Err(Error::Input(format!("activation `{other}` has no CUDA backward kernel (silu, gelu, quick_gelu)"))),
        };
        let n = x.len();
        if dy.len() != n {
            return Err(Error::shape(op, format!("x [{n}] but dy [{}]", dy.len())));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("activation", op)?;
        let cfg = self.grid_stride_config(n, BLOCK);
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(dy).arg(&n64);
        // SAFETY: the kernel (const u16* x, u16* dy, u64 n) touches x[0, n) and dy[0, n) (both of
        // length n, checked); dy is a distinct &mut view.
        self.launched(op, format!("x, dy [{n}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    fn launch_activation(&self, op: &'static str, x: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let f = self.function("activation", op)?;
        // One thread per 16-byte vector: the kernel's vector loop covers n / 8, the tail the rest.
        let cfg = self.grid_stride_config(n.div_ceil(8), BLOCK);
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(&n64);
        // SAFETY: the kernel (u16* x, u64 n) touches x[0, n) only, n = the view's length.
        self.launched(op, format!("x [{n}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// `out = silu(gate) * up` elementwise, gate, up and out of one length (any shape, e.g.
    /// [T, F]). Reference: [`crate::backend::cpu::swiglu`].
    pub fn swiglu(&self, gate: &CudaView<'_, u16>, up: &CudaView<'_, u16>, out: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let op = "swiglu";
        let n = gate.len();
        if up.len() != n || out.len() != n {
            return Err(Error::shape(op, format!("gate [{n}], up [{}], out [{}] must be equal", up.len(), out.len())));
        }
        // Flat: one row of n elements (the kernel's vector path needs n % 8 == 0).
        self.launch_swiglu(op, gate, up, out, 1, n, n)
    }

    /// out[T, F] = silu(gate) * up for the fused layout gate_up[T, 2F] (each row: F gate values,
    /// then F up values, as one GEMM with the gate and up weights stacked produces).
    /// Reference: [`crate::backend::cpu::swiglu_fused`].
    pub fn swiglu_fused(&self, gate_up: &CudaView<'_, u16>, f: usize, out: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let op = "swiglu_fused";
        let n = gate_up.len();
        if f == 0 || n % (2 * f) != 0 || out.len() != n / 2 {
            return Err(Error::shape(op, format!("gate_up [{n}] must be [T, 2F] with F={f} and out [T, F], out has {} elements", out.len())));
        }
        let t = n / (2 * f);
        if t == 0 {
            return Ok(());
        }
        let up = gate_up.slice(f..);
        self.launch_swiglu(op, gate_up, &up, out, t, f, 2 * f)
    }

    /// dgate = dout * up * silu'(gate), dup = dout * silu(gate), all [n] bf16. Reference:
    /// [`crate::backend::cpu::swiglu_backward`].
    pub fn swiglu_backward(
        &self,
        gate: &CudaView<'_, u16>,
        up: &CudaView<'_, u16>,
        dout: &CudaView<'_, u16>,
        dgate: &mut CudaViewMut<'_, u16>,
        dup: &mut CudaViewMut<'_, u16>,
    ) -> Result<()> {
        let op = "swiglu_backward";
        let n = gate.len();
        if up.len() != n || dout.len() != n || dgate.len() != n || dup.len() != n {
            return Err(Error::shape(
                op,
                format!("gate [{n}], up [{}], dout [{}], dgate [{}], dup [{}] must be equal", up.len(), dout.len(), dgate.len(), dup.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let func = self.function("activation", op)?;
        let cfg = self.grid_stride_config(n, BLOCK);
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&func);
        launch.arg(gate).arg(up).arg(dout).arg(dgate).arg(dup).arg(&n64);
        // SAFETY: swiglu_backward(const u16* gate, const u16* up, const u16* dout, u16* dgate,
        // u16* dup, u64 n) touches [0, n) of each (their lengths, checked); dgate and dup are
        // distinct &mut views.
        self.launched(op, format!("[{n}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_swiglu(
        &self,
        op: &'static str,
        gate: &CudaView<'_, u16>,
        up: &CudaView<'_, u16>,
        out: &mut CudaViewMut<'_, u16>,
        t: usize,
        f: usize,
        in_stride: usize,
    ) -> Result<()> {
        let n = t * f;
        if n == 0 {
            return Ok(());
        }
        let func = self.function("activation", "swiglu")?;
        let cfg = self.grid_stride_config(n.div_ceil(8), BLOCK);
        let (t64, f64_, s64) = (t as u64, f as u64, in_stride as u64);
        let mut launch = self.stream().launch_builder(&func);
        launch.arg(gate).arg(up).arg(out).arg(&t64).arg(&f64_).arg(&s64);
        // SAFETY: swiglu(const u16* gate, const u16* up, u16* out, u64 T, u64 F, u64 in_stride)
        // reads gate and up at t*in_stride + j (t < T, j < F), at most (T-1)*in_stride + F - 1,
        // which is inside both views (flat: T = 1, in_stride = F = n; fused: gate_up holds
        // T*2F and up starts F later), and writes out[0, T*F) = out's length. out is a distinct
        // &mut view.
        self.launched(op, format!("[{t}, {f}] (input row stride {in_stride})"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
