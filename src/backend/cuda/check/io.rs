//! The checks' inputs and device buffers: seeded bf16 inputs (`Inputs`), widening, the shape
//! strings of the registry, the emulated device's reduced shapes (`sized`), and buffers with
//! poisoned guards (`upload`, `poisoned`, `download_*`, `pick_rows` / `select_guarded` for
//! outputs compared in part).

use crate::backend::cuda::DevBuf;
use half::bf16;

use super::metric::{f32_bits, guarded, Output, GUARD};
use crate::backend::cuda::{CudaDevice, DeviceRepr};
use crate::error::Result;
use crate::rng::Rng;

/// Test inputs drawn from the shared seeded generator.
pub(super) trait Inputs {
    fn bf16s(&mut self, n: usize, lo: f64, hi: f64) -> Vec<u16>;
}

impl Inputs for Rng {
    /// bf16 values with magnitude uniform in [lo, hi) (lo > 0, so never zero) and a random sign.
    fn bf16s(&mut self, n: usize, lo: f64, hi: f64) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let m = lo + (hi - lo) * self.uniform();
                let v = if self.next_u64() & 1 == 0 { m } else { -m };
                bf16::from_f64(v).to_bits()
            })
            .collect()
    }
}

/// `gpu` on a GPU; `emu` on the emulated device (`STIC_CUDA_EMU=1`), which runs every kernel on
/// the CPU 100-1000x slower than the CPU backend. The reduced shapes keep each kernel's code
/// paths: several tiles or blocks per row, ragged last tiles, misaligned buffers, every mask and
/// GQA ratio, D 64 and 128, grid-stride and tile loops that iterate more than once.
pub(super) fn sized<T>(gpu: T, emu: T) -> T {
    if crate::backend::cuda::emulated() {
        emu
    } else {
        gpu
    }
}

pub(super) fn widen(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

pub(super) fn widen64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f64()).collect()
}

pub(super) fn shape1(n: usize, off: usize) -> String {
    format!("[{n}]{}", if !off.is_multiple_of(8) { " misaligned" } else { "" })
}

pub(super) fn shape2(t: usize, c: usize, off: usize, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { " " };
    format!("[{t}, {c}]{sep}{extra}{}", if !off.is_multiple_of(8) { " misaligned" } else { "" })
}

/// `data` at offset `lo` of a new device buffer, poisoned guards around it.
pub(super) fn upload<T: DeviceRepr + Copy>(dev: &CudaDevice, data: &[T], lo: usize, poison: T) -> Result<DevBuf<T>> {
    dev.htod(&guarded(data, lo, poison))
}

/// A poisoned device buffer for an output of `n` elements at offset `lo`.
pub(super) fn poisoned<T: DeviceRepr + Copy>(dev: &CudaDevice, n: usize, lo: usize, poison: T) -> Result<DevBuf<T>> {
    dev.htod(&vec![poison; lo + n + GUARD])
}

pub(super) fn download_bf16(dev: &CudaDevice, buf: &DevBuf<u16>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::Bf16 { all: dev.dtoh(buf)?, lo, n })
}

pub(super) fn download_u32(dev: &CudaDevice, buf: &DevBuf<u32>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::U32 { all: dev.dtoh(buf)?, lo, n })
}

pub(super) fn download_f32(dev: &CudaDevice, buf: &DevBuf<f32>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::F32 { all: f32_bits(&dev.dtoh(buf)?), lo, n })
}

/// Rows `rows` (each `width` wide) of a downloaded output, keeping the buffer's real guards: for
/// checks whose host reference covers only some rows of a realistic shape.
pub(super) fn pick_rows(out: Output, rows: &[usize], width: usize) -> Output {
    fn pick<T: Copy>(all: &[T], lo: usize, n: usize, rows: &[usize], width: usize) -> Vec<T> {
        let mut v = all[..lo].to_vec();
        for &r in rows {
            v.extend_from_slice(&all[lo + r * width..lo + (r + 1) * width]);
        }
        v.extend_from_slice(&all[lo + n..]);
        v
    }
    let n2 = rows.len() * width;
    match out {
        Output::Bf16 { all, lo, n } => Output::Bf16 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
        Output::U32 { all, lo, n } => Output::U32 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
        Output::F32 { all, lo, n } => Output::F32 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
    }
}

/// The output elements `idx` of a downloaded buffer (output at `lo..lo + n`), keeping its real
/// guards around them.
pub(super) fn select_guarded<T: Copy>(all: &[T], lo: usize, n: usize, idx: &[usize]) -> Vec<T> {
    let mut v = all[..lo].to_vec();
    v.extend(idx.iter().map(|&i| all[lo + i]));
    v.extend_from_slice(&all[lo + n..]);
    v
}
