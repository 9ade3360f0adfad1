//! Layers shared by every model. One `Linear` type serves every projection of every model;
//! LoRA adapters attach here (a later issue), so no model file knows about them.

use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// A low-rank adapter (PEFT's LoRA): y += scale * (x A^T) B^T, A [r, in], B [out, r],
/// scale = alpha / r (alpha / sqrt(r) with rsLoRA).
/// n LoRA-dropout factors drawn from `seed`: 0 with probability p, else 1 / (1 - p) (f32),
/// element i from the (i + 1)-th SplitMix64 draw (what `kernels/dropout.cu` regenerates).
pub fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut rng = crate::rng::Rng::new(seed);
    (0..n).map(|_| if rng.uniform() < p as f64 { 0.0 } else { keep }).collect()
}

/// An adapter's (dA [r, in], dB [out, r]).
pub type AdapterGrads = (Vec<f32>, Vec<f32>);

#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f32,
    /// LoRA dropout probability on the adapter's input (training only).
    pub dropout: f32,
}

/// y = x W^T + b (+ the LoRA path when an adapter is attached), with W stored [out, in] as in HF
/// checkpoints. The base weight stays frozen; training touches only `lora`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// Load `{prefix}.weight` [out, in] and, if `bias`, `{prefix}.bias` [out].
    pub fn load(ws: &dyn WeightSource, prefix: &str, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = ws.get(&format!("{prefix}.weight"), &[out_features, in_features])?;
        let bias = if bias { Some(ws.get(&format!("{prefix}.bias"), &[out_features])?) } else { None };
        Ok(Linear { weight, bias, lora: None })
    }

    pub fn in_features(&self) -> usize {
        self.weight.dim(1)
    }
    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }

    fn lora_ref(&self) -> Option<cpu::lora::LoraRef<'_, f32>> {
        self.lora.as_ref().map(|l| (l.a.data(), l.b.data(), l.scale))
    }

    /// Backward through the layer for input rows x[M, K] and dy[M, N]: dx, and the LoRA
    /// gradients (dA, dB) when an adapter is attached. The base weight and bias are frozen.
    /// `mask`: the LoRA dropout mask of the forward (see `forward_masked`).
    pub fn backward(&self, x: &[f32], dy: &[f32], mask: Option<&[f32]>) -> (Vec<f32>, Option<AdapterGrads>) {
        let (k, n) = (self.in_features(), self.out_features());
        cpu::lora::lora_bwd_masked(x, self.weight.data(), self.lora_ref(), mask, dy, x.len() / k, k, n)
    }

    /// Gradients of the base weight and bias, for layers trained in full (the projector):
    /// dW[N, K] = dy[M, N]^T x[M, K], db[N] = sum over rows of dy.
    pub fn weight_grads(&self, x: &[f32], dy: &[f32]) -> (Vec<f32>, Option<Vec<f32>>) {
        let (k, n) = (self.in_features(), self.out_features());
        let m = x.len() / k;
        assert_eq!(dy.len(), m * n, "Linear::weight_grads: dy is not [{m}, {n}]");
        let dw = cpu::matmul::matmul_tn(dy, x, m, n, k);
        let db = self.bias.as_ref().map(|_| {
            let mut db = vec![0f64; n];
            for row in dy.chunks_exact(n) {
                db.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
            }
            db.into_iter().map(|v| v as f32).collect()
        });
        (dw, db)
    }

    /// `weight_grads` accumulated in place: dw += s dy^T x, db += s sum over rows of dy (a layer
    /// trained in full; `g` shaped as the weight and bias).
    pub fn weight_grads_into(&self, x: &[f32], dy: &[f32], g: &mut crate::model::grads::LinearGrad, s: f32) {
        let (k, n) = (self.in_features(), self.out_features());
        let m = x.len() / k;
        assert_eq!(dy.len(), m * n, "Linear::weight_grads_into: dy is not [{m}, {n}]");
        cpu::matmul::matmul_tn_acc(dy, x, m, n, k, &mut g.w, s);
        if let Some(db) = g.b.as_mut() {
            let mut sum = vec![0f64; n];
            for row in dy.chunks_exact(n) {
                sum.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
            }
            db.iter_mut().zip(sum).for_each(|(a, b)| *a += s * b as f32);
        }
    }

    /// Training forward with LoRA dropout: the adapter path sees x * mask (mask: 0 or 1/(1-p)).
    pub fn forward_masked(&self, x: &Tensor, mask: Option<&[f32]>) -> Result<Tensor> {
        if mask.is_none() {
            return self.forward(x);
        }
        let (m, k) = x.rows_cols();
        if k != self.in_features() {
            return Err(Error::shape("linear", format!("input {:?} does not match weight {:?}", x.shape(), self.weight.shape())));
        }
        let n = self.out_features();
        let mut y = cpu::lora::lora_fwd_masked(x.data(), self.weight.data(), self.lora_ref(), mask, m, k, n);
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(n) {
                row.iter_mut().zip(b.data()).for_each(|(o, &bb)| *o += bb);
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = n;
        Tensor::new(y, &shape)
    }

    /// The LoRA dropout mask for `rows` input rows drawn from `seed`, or None when the layer has
    /// no adapter or no dropout.
    pub fn dropout_mask(&self, rows: usize, seed: u64) -> Option<Vec<f32>> {
        let p = self.lora.as_ref()?.dropout;
        if p <= 0.0 {
            return None;
        }
        Some(dropout_mask(rows * self.in_features(), p, seed))
    }

    /// x[.., K] -> y[.., N].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.rows_cols();
        if k != self.in_features() {
            return Err(Error::shape(
                "linear",
                format!("input {:?} does not match weight {:?}", x.shape(), self.weight.shape()),
            ));
        }
        let n = self.out_features();
        let mut y = cpu::lora_fwd(x.data(), self.weight.data(), self.lora_ref(), m, k, n);
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(n) {
                row.iter_mut().zip(b.data()).for_each(|(o, &bb)| *o += bb);
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = n;
        Tensor::new(y, &shape)
    }
}

/// RMSNorm with a learned scale [C].
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(ws: &dyn WeightSource, name: &str, c: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: ws.get(&format!("{name}.weight"), &[c])?, eps })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::new(cpu::rmsnorm(x.data(), self.weight.data(), self.eps), x.shape())
    }
}

/// LayerNorm with scale and bias [C].
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(ws: &dyn WeightSource, name: &str, c: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm { weight: ws.get(&format!("{name}.weight"), &[c])?, bias: ws.get(&format!("{name}.bias"), &[c])?, eps })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::new(cpu::layernorm(x.data(), self.weight.data(), self.bias.data(), self.eps), x.shape())
    }
}
