//! [`Cpu`]: the [`Backend`] on the host, in f32, over the reference ops of this module. Its
//! tensors are [`Tensor`]s and its linear layers are [`crate::nn::Linear`] (which may carry a
//! LoRA adapter), so the training code reads the same model structs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{AttnRow, PackedMask, RopeTable};
use crate::backend::profile::{summarize, OpTime};
use crate::backend::{shapes, Backend, Rows};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear, RmsNorm};
use crate::tensor::Tensor;

/// The CPU backend (rayon threads, the `gemm` crate for products).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// The CPU profile: (op, ms) samples while on. Process-wide: `Cpu` is a unit value.
static PROFILING: AtomicBool = AtomicBool::new(false);
static SAMPLES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Runs one op, timing it when profiling is on.
fn timed<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !PROFILING.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).push((op, t0.elapsed().as_secs_f64() * 1e3));
    r
}

impl Backend for Cpu {
    type Tensor = Tensor;
    type Linear = Linear;
    type RmsNorm = RmsNorm;
    type LayerNorm = LayerNorm;
    type Rope = RopeTable;
    type Logits = Tensor;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn upload(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn download(&self, x: &Tensor) -> Result<Tensor> {
        let (r, c) = x.rows_cols();
        x.clone().reshape(&[r, c])
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(&[rows, cols]))
    }
    fn linear_from(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Ok(Linear { weight, bias, lora: None })
    }
    fn rmsnorm_from(&self, weight: Tensor, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight, eps })
    }
    fn layernorm_from(&self, weight: Tensor, bias: Tensor, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm { weight, bias, eps })
    }
    fn rope_table(&self, head_dim: usize, theta: f64) -> Result<RopeTable> {
        Ok(RopeTable::new(head_dim, theta))
    }

    fn matmul(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        timed("matmul", || {
            l.forward(x)
        })
    }
    fn matmul_add(&self, x: &Tensor, l: &Linear, acc: &mut Tensor) -> Result<()> {
        timed("matmul_add", || {
            let y = l.forward(x)?;
            if y.rows_cols() != acc.rows_cols() {
                return Err(Error::shape("matmul_add", format!("product {:?} into accumulator {:?}", y.shape(), acc.shape())));
            }
            acc.data_mut().iter_mut().zip(y.data()).for_each(|(a, b)| *a += b);
            Ok(())
        })
    }
    fn rmsnorm(&self, x: &Tensor, n: &RmsNorm) -> Result<Tensor> {
        timed("rmsnorm", || {
            n.forward(x)
        })
    }
    fn layernorm(&self, x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
        timed("layernorm", || {
            n.forward(x)
        })
    }
    fn rope(&self, q: &mut Tensor, k: &mut Tensor, n_heads: usize, n_kv_heads: usize, positions: &[u32], rope: &RopeTable) -> Result<()> {
        timed("rope", || {
            shapes::rope(q, k, n_heads, n_kv_heads, rope.head_dim, positions.len())?;
            let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
            super::rope(q.data_mut(), n_heads, &pos, rope);
            super::rope(k.data_mut(), n_kv_heads, &pos, rope);
            Ok(())
        })
    }
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rows: &[AttnRow],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        cap: usize,
    ) -> Result<Tensor> {
        timed("attention", || {
            shapes::attention(q, k, v, rows, n_heads, n_kv_heads, head_dim, cap)?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            let out = super::attention_rows(q.data(), k.data(), v.data(), rows, n_heads, n_kv_heads, head_dim, cap, scale);
            Tensor::new(out, &[rows.len(), n_heads * head_dim])
        })
    }
    fn attention_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        lens: &[usize],
        mask: PackedMask,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Tensor> {
        timed("attention_packed", || {
            shapes::attention_packed(q, k, v, lens, mask, n_heads, n_kv_heads, head_dim)?;
            let out = super::attention_packed(q.data(), k.data(), v.data(), lens, n_heads, n_kv_heads, head_dim, mask);
            Tensor::new(out, &[q.n_rows(), n_heads * head_dim])
        })
    }
    fn scatter_rows(&self, src: &Tensor, dst: &mut Tensor, idx: &[u32]) -> Result<()> {
        timed("scatter_rows", || {
            shapes::scatter_rows(src, dst, idx)?;
            let c = dst.n_cols();
            super::scatter_rows(src.data(), dst.data_mut(), idx, c);
            Ok(())
        })
    }
    fn embedding(&self, table: &Tensor, features: Option<&Tensor>, sources: &[u32]) -> Result<Tensor> {
        timed("embedding", || {
            shapes::embedding(table, features, sources)?;
            let c = table.n_cols();
            let empty = Tensor::zeros(&[0, c]);
            let f = features.unwrap_or(&empty);
            let out = super::embedding(table.data(), f.data(), c, sources);
            Tensor::new(out, &[sources.len(), c])
        })
    }
    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        timed("swiglu", || {
            shapes::same("swiglu", gate, up)?;
            let mut g = gate.clone();
            super::swiglu(g.data_mut(), up.data());
            Ok(g)
        })
    }
    fn activation(&self, name: &str, x: &mut Tensor) -> Result<()> {
        timed("activation", || {
            if !matches!(name, "gelu" | "quick_gelu" | "silu") {
                return Err(Error::Input(format!("activation `{name}` is not supported (gelu, quick_gelu, silu)")));
            }
            super::activation::by_name(name, x.data_mut());
            Ok(())
        })
    }
    fn add(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        timed("add", || {
            shapes::add(x, y)?;
            super::add(x.data_mut(), y.data());
            Ok(())
        })
    }
    fn concat_rows(&self, parts: &[&Tensor]) -> Result<Tensor> {
        timed("concat_rows", || {
            Tensor::cat_rows(parts)
        })
    }
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor> {
        timed("concat_cols", || {
            let r = parts.first().map(|t| t.n_rows()).unwrap_or(0);
            if let Some(p) = parts.iter().find(|p| p.n_rows() != r) {
                return Err(Error::shape("concat_cols", format!("row counts differ: {:?} vs {r} rows", p.shape())));
            }
            let c: usize = parts.iter().map(|p| p.n_cols()).sum();
            let views: Vec<(&[f32], usize)> = parts.iter().map(|p| (p.data(), p.n_cols())).collect();
            Tensor::new(super::concat_cols(&views, r), &[r, c])
        })
    }
    fn logits(&self, hidden: &Tensor, weight: &Tensor) -> Result<Tensor> {
        timed("logits", || {
            let (r, c) = hidden.rows_cols();
            let (v, wc) = weight.rows_cols();
            if c != wc {
                return Err(Error::shape("logits", format!("hidden {:?} with lm_head {:?}", hidden.shape(), weight.shape())));
            }
            Tensor::new(super::matmul_t(hidden.data(), weight.data(), r, c, v), &[r, v])
        })
    }
    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        timed("argmax", || {
            let (r, v) = logits.rows_cols();
            if v == 0 {
                return Err(Error::shape("argmax", format!("logits {:?} have no columns", logits.shape())));
            }
            Ok((0..r).map(|i| super::argmax(logits.row(i)) as u32).collect())
        })
    }
    fn sample(&self, logits: &Tensor, temperature: f32, top_k: usize, top_p: f32, uniforms: &[f64]) -> Result<Vec<u32>> {
        timed("sample", || {
            let (r, v) = logits.rows_cols();
            if uniforms.len() != r || v == 0 {
                return Err(Error::shape("sample", format!("logits {:?} with {} uniforms", logits.shape(), uniforms.len())));
            }
            Ok((0..r).map(|i| super::sample::sample_row(logits.row(i), temperature, top_k, top_p, uniforms[i])).collect())
        })
    }
    fn logits_host(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(logits.clone())
    }

    fn set_profiling(&self, on: bool) {
        SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).clear();
        PROFILING.store(on, Ordering::Relaxed);
    }
    fn take_profile(&self) -> Result<Vec<OpTime>> {
        Ok(summarize(std::mem::take(&mut *SAMPLES.lock().unwrap_or_else(|p| p.into_inner()))))
    }
}
