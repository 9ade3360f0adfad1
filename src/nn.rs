//! Layers shared by every model. One `Linear` type serves every projection of every model;
//! LoRA adapters attach here (a later issue), so no model file knows about them.

use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// A low-rank adapter (PEFT's LoRA): y += scale * (x A^T) B^T, A [r, in], B [out, r],
/// scale = alpha / r (alpha / sqrt(r) with rsLoRA).
#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f32,
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
    pub fn backward(&self, x: &[f32], dy: &[f32]) -> (Vec<f32>, Option<(Vec<f32>, Vec<f32>)>) {
        let (k, n) = (self.in_features(), self.out_features());
        cpu::lora_bwd(x, self.weight.data(), self.lora_ref(), dy, x.len() / k, k, n)
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
