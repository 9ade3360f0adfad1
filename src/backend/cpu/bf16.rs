//! [`Bf16Cpu`]: the CPU backend with bf16 storage, the "plain same-precision implementation" of
//! flash-attention's tolerance rule for the whole model on CUDA.
//!
//! The CUDA engine keeps weights and activations in bf16 and computes each op in f32 from them,
//! rounding the op's output to bf16 (round to nearest even); logits are f32. `Bf16Cpu` does the
//! same with the CPU ops: it rounds every weight as it is loaded and every op's output as it is
//! produced, and nothing else, so its distance from the f32 [`Cpu`] backend is the error that
//! bf16 storage alone causes. `tests/cuda_model.rs` allows the CUDA engine a small multiple of it
//! (docs/TOLERANCES.md).

use half::bf16;

use super::engine::Cpu;
use super::{AttnRow, PackedMask, RopeTable};
use crate::backend::profile::OpTime;
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{LayerNorm, Linear, RmsNorm};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// The CPU backend with every stored tensor rounded to bf16 (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bf16Cpu;

fn round(mut x: Tensor) -> Tensor {
    round_in_place(&mut x);
    x
}

fn round_in_place(x: &mut Tensor) {
    for v in x.data_mut() {
        *v = bf16::from_f32(*v).to_f32();
    }
}

impl Backend for Bf16Cpu {
    type Tensor = Tensor;
    type Linear = Linear;
    type RmsNorm = RmsNorm;
    type LayerNorm = LayerNorm;
    type Rope = RopeTable;
    type Logits = Tensor;

    fn describe(&self) -> String {
        format!("{} with bf16 storage", Cpu.describe())
    }
    fn upload(&self, x: &Tensor) -> Result<Tensor> {
        Ok(round(Cpu.upload(x)?))
    }
    fn download(&self, x: &Tensor) -> Result<Tensor> {
        Cpu.download(x)
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<Tensor> {
        Cpu.zeros(rows, cols)
    }
    fn linear_from(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Cpu.linear_from(round(weight), bias.map(round))
    }
    fn rmsnorm_from(&self, weight: Tensor, eps: f64) -> Result<RmsNorm> {
        Cpu.rmsnorm_from(round(weight), eps)
    }
    fn layernorm_from(&self, weight: Tensor, bias: Tensor, eps: f64) -> Result<LayerNorm> {
        Cpu.layernorm_from(round(weight), round(bias), eps)
    }
    fn rope_table(&self, head_dim: usize, theta: f64) -> Result<RopeTable> {
        Cpu.rope_table(head_dim, theta)
    }
    fn tensor(&self, ws: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.upload(&ws.get(name, shape)?)
    }

    fn matmul(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        Ok(round(Cpu.matmul(x, l)?))
    }
    fn matmul_add(&self, x: &Tensor, l: &Linear, acc: &mut Tensor) -> Result<()> {
        Cpu.matmul_add(x, l, acc)?;
        round_in_place(acc);
        Ok(())
    }
    fn rmsnorm(&self, x: &Tensor, n: &RmsNorm) -> Result<Tensor> {
        Ok(round(Cpu.rmsnorm(x, n)?))
    }
    fn layernorm(&self, x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
        Ok(round(Cpu.layernorm(x, n)?))
    }
    fn rope(&self, q: &mut Tensor, k: &mut Tensor, n_heads: usize, n_kv_heads: usize, positions: &[u32], rope: &RopeTable) -> Result<()> {
        Cpu.rope(q, k, n_heads, n_kv_heads, positions, rope)?;
        round_in_place(q);
        round_in_place(k);
        Ok(())
    }
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, rows: &[AttnRow], n_heads: usize, n_kv_heads: usize, head_dim: usize, cap: usize) -> Result<Tensor> {
        Ok(round(Cpu.attention(q, k, v, rows, n_heads, n_kv_heads, head_dim, cap)?))
    }
    fn attention_packed(&self, q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], mask: PackedMask, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<Tensor> {
        Ok(round(Cpu.attention_packed(q, k, v, lens, mask, n_heads, n_kv_heads, head_dim)?))
    }
    fn scatter_rows(&self, src: &Tensor, dst: &mut Tensor, idx: &[u32]) -> Result<()> {
        Cpu.scatter_rows(src, dst, idx)
    }
    fn embedding(&self, table: &Tensor, features: Option<&Tensor>, sources: &[u32]) -> Result<Tensor> {
        Ok(round(Cpu.embedding(table, features, sources)?))
    }
    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok(round(Cpu.swiglu(gate, up)?))
    }
    fn activation(&self, name: &str, x: &mut Tensor) -> Result<()> {
        Cpu.activation(name, x)?;
        round_in_place(x);
        Ok(())
    }
    fn add(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        Cpu.add(x, y)?;
        round_in_place(x);
        Ok(())
    }
    fn concat_rows(&self, parts: &[&Tensor]) -> Result<Tensor> {
        Cpu.concat_rows(parts)
    }
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor> {
        Cpu.concat_cols(parts)
    }
    /// f32, as the CUDA engine's logits.
    fn logits(&self, hidden: &Tensor, weight: &Tensor) -> Result<Tensor> {
        Cpu.logits(hidden, weight)
    }
    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        Cpu.argmax(logits)
    }
    fn sample(&self, logits: &Tensor, temperature: f32, top_k: usize, top_p: f32, uniforms: &[f64]) -> Result<Vec<u32>> {
        Cpu.sample(logits, temperature, top_k, top_p, uniforms)
    }
    fn logits_host(&self, logits: &Tensor) -> Result<Tensor> {
        Cpu.logits_host(logits)
    }
    fn set_profiling(&self, on: bool) {
        Cpu.set_profiling(on)
    }
    fn take_profile(&self) -> Result<Vec<OpTime>> {
        Cpu.take_profile()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_their_outputs_to_bf16_and_logits_stay_f32() {
        let x = Tensor::new(vec![1.0 + 1.0 / 512.0, -3.0, 0.3, 7.1], &[2, 2]).unwrap();
        let up = Bf16Cpu.upload(&x).unwrap();
        assert!(up.data().iter().all(|v| bf16::from_f32(*v).to_f32() == *v), "{:?}", up.data());
        assert_eq!(up.data()[0], 1.0, "1 + 2^-9 rounds to even (1.0)");
        let l = Bf16Cpu.linear_from(Tensor::new(vec![0.1, 0.2, 0.3, 0.4], &[2, 2]).unwrap(), None).unwrap();
        let y = Bf16Cpu.matmul(&up, &l).unwrap();
        assert!(y.data().iter().all(|v| bf16::from_f32(*v).to_f32() == *v));
        let w = Tensor::new(vec![0.1f32, 0.7, -0.3, 0.013], &[2, 2]).unwrap();
        let z = Bf16Cpu.logits(&up, &w).unwrap();
        assert_eq!(z.data(), Cpu.logits(&up, &w).unwrap().data(), "logits are the CPU's f32 logits");
    }
}
