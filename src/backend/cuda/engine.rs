//! [`Cuda`]: the [`Backend`] on one GPU. Weights and activations are bf16 on the device (raw
//! bits in `DevBuf<u16>`), every kernel accumulates in f32, logits are f32. Dense products go
//! through cuBLASLt (`matmul`), everything else through our kernels (`kernels/*.cu`).
//!
//! Nothing waits for the GPU except the methods that return host data (`argmax`, `download`,
//! `logits_host`): a greedy decode step costs one sync (its B token ids). The small per-call
//! index arrays (positions, attention rows, KV-cache rows, embedding sources) are uploaded once
//! per distinct content and reused by every layer of a forward.

use crate::backend::cuda::DevBuf;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use half::bf16;
use rayon::prelude::*;

use cudarc::driver::CudaEvent;

use super::{nvtx, CudaDevice};
use crate::backend::profile::{summarize, OpTime};
use crate::backend::{cpu, shapes, AttnRow, Backend, PackedMask, Rows};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A bf16 matrix [rows, cols] on the device.
#[derive(Clone, Debug)]
pub struct CudaTensor {
    pub data: DevBuf<u16>,
    pub rows: usize,
    pub cols: usize,
}

impl Rows for CudaTensor {
    fn n_rows(&self) -> usize {
        self.rows
    }
    fn n_cols(&self) -> usize {
        self.cols
    }
}

/// f32 logits [rows, V] on the device.
#[derive(Debug)]
pub struct CudaLogits {
    pub data: DevBuf<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Rows for CudaLogits {
    fn n_rows(&self) -> usize {
        self.rows
    }
    fn n_cols(&self) -> usize {
        self.cols
    }
}

/// weight [N, K] and bias [N], bf16.
pub struct CudaLinear {
    pub weight: DevBuf<u16>,
    pub bias: Option<DevBuf<u16>>,
    pub n: usize,
    pub k: usize,
}

pub struct CudaRmsNorm {
    pub(crate) weight: DevBuf<u16>,
    pub(crate) eps: f32,
}

pub struct CudaLayerNorm {
    pub(crate) weight: DevBuf<u16>,
    pub(crate) bias: DevBuf<u16>,
    pub(crate) eps: f32,
}

pub struct CudaRope {
    pub(crate) inv_freq: DevBuf<f32>,
    pub(crate) head_dim: usize,
}

/// Uploaded index arrays by kind: the host copy (to compare) and the device buffer.
type IndexCache = HashMap<&'static str, (Vec<u32>, Arc<DevBuf<u32>>)>;
/// One profiled op: its name and its start and end events.
type OpEvents = (&'static str, CudaEvent, CudaEvent);

/// The CUDA backend: a shared [`CudaDevice`] and the cache of uploaded index arrays.
#[derive(Clone)]
pub struct Cuda {
    dev: Arc<CudaDevice>,
    indices: Arc<Mutex<IndexCache>>,
    /// While profiling: every op's (name, start event, end event), read at `take_profile`.
    profile: Arc<Mutex<Option<Vec<OpEvents>>>>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({:?})", self.dev)
    }
}

impl Cuda {
    /// The backend on device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self::on(Arc::new(CudaDevice::new(ordinal)?)))
    }

    pub fn on(dev: Arc<CudaDevice>) -> Self {
        Cuda { dev, indices: Arc::new(Mutex::new(HashMap::new())), profile: Arc::new(Mutex::new(None)) }
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Runs one op inside an NVTX range named after it and, when profiling, between two timing
    /// events on the stream; under `STIC_CUDA_SYNC=1` waits for it (`CudaDevice::after_op`), so
    /// that an asynchronous fault names this op.
    fn op<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _range = nvtx::Range::new(name);
        let mut prof = self.profile.lock().unwrap_or_else(|p| p.into_inner());
        let Some(events) = prof.as_mut() else {
            drop(prof);
            let r = f()?;
            self.dev.after_op(name, "engine op")?;
            return Ok(r);
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ev = |e| super::cuda_err("profile", name, e);
        let start = self.dev.stream().record_event(timing).map_err(ev)?;
        let r = f();
        let end = self.dev.stream().record_event(timing).map_err(ev)?;
        events.push((name, start, end));
        let r = r?;
        self.dev.after_op(name, "engine op")?;
        Ok(r)
    }

    /// `host` on the device, reusing the buffer of the last call of the same `kind` when the
    /// contents are equal (the same positions serve every layer of a forward).
    /// (Shared, not copied: a `CudaSlice` clone would be a device copy.)
    fn index_buffer(&self, kind: &'static str, host: &[u32]) -> Result<Arc<DevBuf<u32>>> {
        let mut cache = self.indices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, d)) = cache.get(kind) {
            if h.as_slice() == host {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(self.dev.htod(host)?);
        cache.insert(kind, (host.to_vec(), d.clone()));
        Ok(d)
    }

    fn bf16_bits(x: &[f32]) -> Vec<u16> {
        x.par_iter().with_min_len(1 << 16).map(|&v| bf16::from_f32(v).to_bits()).collect()
    }

    fn upload_bits(&self, x: &[f32]) -> Result<DevBuf<u16>> {
        self.dev.htod(&Self::bf16_bits(x))
    }

    /// A new [rows, cols] tensor whose every element the caller's next kernel writes.
    fn output(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        // SAFETY: every caller launches a kernel that writes all rows*cols elements before any read.
        let data = unsafe { self.dev.alloc_uninit::<u16>(rows * cols)? };
        Ok(CudaTensor { data, rows, cols })
    }
}

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type RmsNorm = CudaRmsNorm;
    type LayerNorm = CudaLayerNorm;
    type Rope = CudaRope;
    type Logits = CudaLogits;

    fn describe(&self) -> String {
        let (ma, mi) = self.dev.compute_capability();
        format!("cuda:{} {} (sm_{ma}{mi}, {} SMs)", self.dev.context().ordinal(), self.dev.name(), self.dev.num_sms())
    }

    fn upload(&self, x: &Tensor) -> Result<CudaTensor> {
        let (rows, cols) = x.rows_cols();
        Ok(CudaTensor { data: self.upload_bits(x.data())?, rows, cols })
    }
    fn download(&self, x: &CudaTensor) -> Result<Tensor> {
        let bits = self.dev.dtoh(&x.data)?;
        Tensor::new(bits.into_par_iter().map(|b| bf16::from_bits(b).to_f32()).collect(), &[x.rows, x.cols])
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { data: self.dev.zeros(rows * cols)?, rows, cols })
    }
    fn linear_from(&self, weight: Tensor, bias: Option<Tensor>) -> Result<CudaLinear> {
        let (n, k) = weight.rows_cols();
        if let Some(b) = &bias {
            if b.len() != n {
                return Err(Error::shape("linear", format!("weight {:?} with bias {:?}", weight.shape(), b.shape())));
            }
        }
        Ok(CudaLinear {
            weight: self.upload_bits(weight.data())?,
            bias: bias.map(|b| self.upload_bits(b.data())).transpose()?,
            n,
            k,
        })
    }
    fn rmsnorm_from(&self, weight: Tensor, eps: f64) -> Result<CudaRmsNorm> {
        Ok(CudaRmsNorm { weight: self.upload_bits(weight.data())?, eps: eps as f32 })
    }
    fn layernorm_from(&self, weight: Tensor, bias: Tensor, eps: f64) -> Result<CudaLayerNorm> {
        Ok(CudaLayerNorm { weight: self.upload_bits(weight.data())?, bias: self.upload_bits(bias.data())?, eps: eps as f32 })
    }
    fn rope_table(&self, head_dim: usize, theta: f64) -> Result<CudaRope> {
        Ok(CudaRope { inv_freq: self.dev.rope_inv_freq(head_dim, theta)?, head_dim })
    }

    fn matmul(&self, x: &CudaTensor, l: &CudaLinear) -> Result<CudaTensor> {
        self.op("matmul", || {
            if x.cols != l.k {
                return Err(Error::shape("matmul", format!("x [{}, {}] with weight [{}, {}]", x.rows, x.cols, l.n, l.k)));
            }
            let mut y = self.output(x.rows, l.n)?;
            let bias = l.bias.as_ref().map(|b| b.as_view());
            self.dev.matmul::<u16>(&x.data.as_view(), &l.weight.as_view(), bias.as_ref(), &mut y.data.as_view_mut(), x.rows, l.n, l.k, false)?;
            Ok(y)
        })
    }
    fn matmul_add(&self, x: &CudaTensor, l: &CudaLinear, acc: &mut CudaTensor) -> Result<()> {
        self.op("matmul_add", || {
            if x.cols != l.k || acc.rows != x.rows || acc.cols != l.n {
                return Err(Error::shape(
                    "matmul_add",
                    format!("x [{}, {}] with weight [{}, {}] into [{}, {}]", x.rows, x.cols, l.n, l.k, acc.rows, acc.cols),
                ));
            }
            let bias = l.bias.as_ref().map(|b| b.as_view());
            self.dev.matmul::<u16>(&x.data.as_view(), &l.weight.as_view(), bias.as_ref(), &mut acc.data.as_view_mut(), x.rows, l.n, l.k, true)
        })
    }
    fn rmsnorm(&self, x: &CudaTensor, n: &CudaRmsNorm) -> Result<CudaTensor> {
        self.op("rmsnorm", || {
            let mut y = self.output(x.rows, x.cols)?;
            self.dev.rmsnorm(&x.data.as_view(), &n.weight.as_view(), n.eps, &mut y.data.as_view_mut())?;
            Ok(y)
        })
    }
    fn layernorm(&self, x: &CudaTensor, n: &CudaLayerNorm) -> Result<CudaTensor> {
        self.op("layernorm", || {
            let mut y = self.output(x.rows, x.cols)?;
            self.dev.layernorm(&x.data.as_view(), &n.weight.as_view(), &n.bias.as_view(), n.eps, &mut y.data.as_view_mut())?;
            Ok(y)
        })
    }
    fn rope(&self, q: &mut CudaTensor, k: &mut CudaTensor, n_heads: usize, n_kv_heads: usize, positions: &[u32], rope: &CudaRope) -> Result<()> {
        self.op("rope", || {
            shapes::rope(q, k, n_heads, n_kv_heads, rope.head_dim, positions.len())?;
            let pos = self.index_buffer("positions", positions)?;
            self.dev.rope_qk(&mut q.data.as_view_mut(), n_heads, &mut k.data.as_view_mut(), n_kv_heads, &pos.as_view(), &rope.inv_freq.as_view())
        })
    }
    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        rows: &[AttnRow],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        cap: usize,
    ) -> Result<CudaTensor> {
        self.op("attention", || {
            shapes::attention(q, k, v, rows, n_heads, n_kv_heads, head_dim, cap)?;
            let rows_dev = self.index_buffer("attention_rows", bytemuck::cast_slice(rows))?;
            let mut out = self.output(q.rows, n_heads * head_dim)?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            // The longest key range sets the split-KV count (decode over long caches).
            let max_len = rows.iter().map(|r| (r.kv_end - r.kv_start) as usize).max().unwrap_or(0);
            self.dev.attention_with_max_len(
                &q.data.as_view(),
                &k.data.as_view(),
                &v.data.as_view(),
                &rows_dev.as_view(),
                &mut out.data.as_view_mut(),
                n_heads,
                n_kv_heads,
                head_dim,
                cap,
                scale,
                max_len,
            )?;
            Ok(out)
        })
    }
    fn attention_packed(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        lens: &[usize],
        mask: PackedMask,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<CudaTensor> {
        self.op("attention_packed", || {
            shapes::attention_packed(q, k, v, lens, mask, n_heads, n_kv_heads, head_dim)?;
            let t = q.rows;
            let mut out = self.output(t, n_heads * head_dim)?;
            if t == 0 {
                return Ok(out);
            }
            let scale = 1.0 / (head_dim as f32).sqrt();
            if super::attention_train::attention_train_head_dim_supported(head_dim) {
                // Tensor-core FlashAttention-2 over the packed batch: cu_seqlens (shared by every
                // layer of the forward) and an lse scratch the inference path does not read.
                let cu = cpu::cu_seqlens(lens);
                let cu_dev = self.index_buffer("attention_packed_cu_seqlens", &cu)?;
                // SAFETY: attention_fwd writes lse for every (head, row) of the Ttot rows, all of
                // which the sequences cover (sum of lens == Ttot, checked above).
                let mut lse = unsafe { self.dev.scratch::<f32>("attention_packed.lse", t * n_heads)? };
                let cu_view = cu_dev.as_view();
                let batch = super::VarlenAttn {
                    cu_seqlens: &cu_view,
                    max_seqlen: lens.iter().copied().max().unwrap_or(1).max(1),
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale,
                    mask: match mask {
                        PackedMask::Bidirectional => super::AttnTrainMask::Bidirectional,
                        PackedMask::Causal { window } => super::AttnTrainMask::Causal { window },
                    },
                };
                self.dev.attention_fwd(&q.data.as_view(), &k.data.as_view(), &v.data.as_view(), &batch, &mut out.data.as_view_mut(), &mut lse.view_mut())?;
            } else {
                // Other head dims: the slotted-cache kernel with the packed k, v as one slot of
                // Ttot rows, each query row reading its own sequence's key range.
                let rows = cpu::packed_rows(lens, mask);
                let rows_dev = self.index_buffer("attention_packed_rows", bytemuck::cast_slice(&rows))?;
                self.dev.attention(
                    &q.data.as_view(),
                    &k.data.as_view(),
                    &v.data.as_view(),
                    &rows_dev.as_view(),
                    &mut out.data.as_view_mut(),
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    t,
                    scale,
                )?;
            }
            Ok(out)
        })
    }
    fn scatter_rows(&self, src: &CudaTensor, dst: &mut CudaTensor, idx: &[u32]) -> Result<()> {
        self.op("scatter_rows", || {
            shapes::scatter_rows(src, dst, idx)?;
            let idx = self.index_buffer("scatter_rows", idx)?;
            self.dev.scatter_rows(&src.data.as_view(), &mut dst.data.as_view_mut(), &idx.as_view(), src.cols)
        })
    }
    fn embedding(&self, table: &CudaTensor, features: Option<&CudaTensor>, sources: &[u32]) -> Result<CudaTensor> {
        self.op("embedding", || {
            shapes::embedding(table, features, sources)?;
            let c = table.cols;
            let src = self.index_buffer("embedding", sources)?;
            let mut out = self.output(sources.len(), c)?;
            let fv = features.map(|f| f.data.as_view());
            self.dev.embedding(&table.data.as_view(), c, fv.as_ref(), &src.as_view(), &mut out.data.as_view_mut(), None)?;
            Ok(out)
        })
    }
    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.op("swiglu", || {
            shapes::same("swiglu", gate, up)?;
            let mut out = self.output(gate.rows, gate.cols)?;
            self.dev.swiglu(&gate.data.as_view(), &up.data.as_view(), &mut out.data.as_view_mut())?;
            Ok(out)
        })
    }
    fn activation(&self, name: &str, x: &mut CudaTensor) -> Result<()> {
        self.op("activation", || {
            self.dev.activation(name, &mut x.data.as_view_mut())
        })
    }
    fn add(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        self.op("add", || {
            shapes::add(x, y)?;
            self.dev.add(&mut x.data.as_view_mut(), &y.data.as_view())
        })
    }
    fn concat_rows(&self, parts: &[&CudaTensor]) -> Result<CudaTensor> {
        self.op("concat_rows", || {
            let c = parts.first().map(|p| p.cols).unwrap_or(0);
            if let Some(p) = parts.iter().find(|p| p.cols != c) {
                return Err(Error::shape("concat_rows", format!("column counts differ: {} vs {c}", p.cols)));
            }
            let rows = parts.iter().map(|p| p.rows).sum();
            let mut out = self.output(rows, c)?;
            let mut at = 0;
            for p in parts {
                let n = p.rows * c;
                if n > 0 {
                    self.dev
                        .stream()
                        .memcpy_dtod(&p.data, &mut out.data.slice_mut(at..at + n))
                        .map_err(|e| super::cuda_err("concat_rows", format!("part [{}, {c}] at element {at}", p.rows), e))?;
                }
                at += n;
            }
            Ok(out)
        })
    }
    fn concat_cols(&self, parts: &[&CudaTensor]) -> Result<CudaTensor> {
        self.op("concat_cols", || {
            let r = parts.first().map(|p| p.rows).unwrap_or(0);
            if let Some(p) = parts.iter().find(|p| p.rows != r) {
                return Err(Error::shape("concat_cols", format!("row counts differ: {} vs {r}", p.rows)));
            }
            let c = parts.iter().map(|p| p.cols).sum();
            let mut out = self.output(r, c)?;
            let mut off = 0;
            for p in parts {
                self.dev.concat_cols(&p.data.as_view(), p.cols, &mut out.data.as_view_mut(), c, off)?;
                off += p.cols;
            }
            Ok(out)
        })
    }
    fn logits(&self, hidden: &CudaTensor, weight: &CudaTensor) -> Result<CudaLogits> {
        self.op("logits", || {
            if hidden.cols != weight.cols {
                return Err(Error::shape("logits", format!("hidden [{}, {}] with lm_head [{}, {}]", hidden.rows, hidden.cols, weight.rows, weight.cols)));
            }
            let (r, v) = (hidden.rows, weight.rows);
            // SAFETY: the product below writes all r*v elements.
            let mut data = unsafe { self.dev.alloc_uninit::<f32>(r * v)? };
            self.dev.matmul::<f32>(&hidden.data.as_view(), &weight.data.as_view(), None, &mut data.as_view_mut(), r, v, hidden.cols, false)?;
            Ok(CudaLogits { data, rows: r, cols: v })
        })
    }
    fn argmax(&self, logits: &CudaLogits) -> Result<Vec<u32>> {
        self.op("argmax", || {
            if logits.cols == 0 {
                return Err(Error::shape("argmax", format!("logits [{}, 0] have no columns", logits.rows)));
            }
            // SAFETY: the kernel writes one index per row.
            let mut out = unsafe { self.dev.scratch::<u32>("argmax.out", logits.rows)? };
            self.dev.argmax_f32(&logits.data.as_view(), logits.cols, &mut out.view_mut())?;
            self.dev.dtoh(&out.view())
        })
    }
    fn sample(&self, logits: &CudaLogits, temperature: f32, top_k: usize, top_p: f32, uniforms: &[f64]) -> Result<Vec<u32>> {
        self.op("sample", || {
            if uniforms.len() != logits.rows {
                return Err(Error::shape("sample", format!("logits [{}, {}] with {} uniforms", logits.rows, logits.cols, uniforms.len())));
            }
            if temperature <= 0.0 {
                return self.argmax(logits);
            }
            // SAFETY: written whole by the copy.
            let mut u = unsafe { self.dev.scratch::<f64>("sample.uniforms", uniforms.len())? };
            self.dev.htod_into(uniforms, &mut u.view_mut())?;
            // SAFETY: the kernel writes one token per row.
            let mut out = unsafe { self.dev.scratch::<u32>("sample.out", logits.rows)? };
            self.dev.sample(&logits.data.as_view(), logits.cols, temperature, top_k, top_p, &u.view(), &mut out.view_mut())?;
            self.dev.dtoh(&out.view())
        })
    }
    fn logits_host(&self, logits: &CudaLogits) -> Result<Tensor> {
        Tensor::new(self.dev.dtoh(&logits.data)?, &[logits.rows, logits.cols])
    }

    fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|p| p.into_inner()) = on.then(Vec::new);
    }
    fn take_profile(&self) -> Result<Vec<OpTime>> {
        let events = self.profile.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(std::mem::take).unwrap_or_default();
        self.dev.synchronize()?;
        let mut samples = Vec::with_capacity(events.len());
        for (name, start, end) in &events {
            let ms = start.elapsed_ms(end).map_err(|e| super::cuda_err("profile", *name, e))?;
            samples.push((*name, ms as f64));
        }
        Ok(summarize(samples))
    }
    fn range_push(&self, name: &str) {
        nvtx::push(name);
    }
    fn range_pop(&self) {
        nvtx::pop();
    }
}
