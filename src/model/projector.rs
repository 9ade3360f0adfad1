//! The multimodal projector: vision features [T, Cv*L] -> text embeddings [T, C].
//! - `mlp2x_gelu` (HF `LlavaMultiModalProjector`): linear_1 -> act -> linear_2.
//! - `linear` (LLaVA-1.0): one Linear, stored as `{prefix}.weight` / `{prefix}.bias`.
//!
//! The type is read off the checkpoint: `linear_1` present means the MLP.
//!
//! Training (projector trained in full: LLaVA's alignment stage, STIC's projector learning rate):
//! `forward_train` saves the input x [T, Cv*L] and linear_1's pre-activation h [T, C]; `backward`
//! takes dy [T, C] and returns the gradient of every parameter, named as in the checkpoint
//! (`linear_1.weight`, ...). The vision tower is frozen, so no dx is returned.

use crate::backend::{cpu, Backend, Cpu};
use crate::error::Result;
use crate::nn::Linear;
use crate::tensor::Tensor;
use crate::weights::WeightSource;

pub enum Projector<B: Backend = Cpu> {
    Mlp { linear_1: B::Linear, act: String, linear_2: B::Linear },
    Linear(B::Linear),
}

impl<B: Backend> Projector<B> {
    pub fn load(be: &B, ws: &dyn WeightSource, prefix: &str, vision_dim: usize, text_dim: usize, act: &str, bias: bool) -> Result<Self> {
        if !ws.contains(&format!("{prefix}.linear_1.weight")) && ws.contains(&format!("{prefix}.weight")) {
            return Ok(Projector::Linear(be.linear(ws, prefix, vision_dim, text_dim, bias)?));
        }
        Ok(Projector::Mlp {
            linear_1: be.linear(ws, &format!("{prefix}.linear_1"), vision_dim, text_dim, bias)?,
            act: act.to_string(),
            linear_2: be.linear(ws, &format!("{prefix}.linear_2"), text_dim, text_dim, bias)?,
        })
    }

    /// Every linear with its parameters' name prefix (`linear_1.`, `linear_2.`; empty for the
    /// single-linear projector), in `params_mut` order.
    pub fn linears(&self) -> Vec<(&'static str, &B::Linear)> {
        match self {
            Projector::Mlp { linear_1, linear_2, .. } => vec![("linear_1.", linear_1), ("linear_2.", linear_2)],
            Projector::Linear(l) => vec![("", l)],
        }
    }

    /// [`Self::linears`], mutable (a trainer refreshing the weights it runs with).
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut B::Linear)> {
        match self {
            Projector::Mlp { linear_1, linear_2, .. } => vec![("linear_1.", linear_1), ("linear_2.", linear_2)],
            Projector::Linear(l) => vec![("", l)],
        }
    }

    /// x[T, Cv*L] -> [T, C].
    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        match self {
            Projector::Mlp { linear_1, act, linear_2 } => {
                let mut h = be.matmul(x, linear_1)?;
                be.activation(act, &mut h)?;
                be.matmul(&h, linear_2)
            }
            Projector::Linear(l) => be.matmul(x, l),
        }
    }
}

impl Projector {
    /// Forward saving what `backward` needs.
    pub fn forward_train(&self, x: Tensor) -> Result<(Tensor, ProjectorTape)> {
        match self {
            Projector::Mlp { linear_1, act, linear_2 } => {
                let h = linear_1.forward(&x)?;
                let mut a = h.clone();
                cpu::activation::by_name(act, a.data_mut());
                Ok((linear_2.forward(&a)?, ProjectorTape { x, h: Some(h) }))
            }
            Projector::Linear(l) => Ok((l.forward(&x)?, ProjectorTape { x, h: None })),
        }
    }

    /// Parameter gradients for dy [T, C] (named as `params_mut` names them).
    pub fn backward(&self, tape: &ProjectorTape, dy: &[f32]) -> Vec<(String, Vec<f32>)> {
        self.backward_opts(tape, dy, true, false).0
    }

    /// The parameter gradients (when `params`; else none) and d(input) [T, Cv] (when `need_dx`:
    /// the vision tower trains).
    pub fn backward_opts(&self, tape: &ProjectorTape, dy: &[f32], params: bool, need_dx: bool) -> (ParamGrads, Option<Vec<f32>>) {
        let mut out = Vec::new();
        let mut push = |name: &str, l: &Linear, x: &[f32], dy: &[f32]| {
            if !params {
                return;
            }
            let (dw, db) = l.weight_grads(x, dy);
            out.push((format!("{name}weight"), dw));
            if let Some(db) = db {
                out.push((format!("{name}bias"), db));
            }
        };
        let dx = match self {
            Projector::Mlp { linear_1, act, linear_2 } => {
                let h = tape.h.as_ref().expect("the MLP's tape holds linear_1's output");
                let mut a = h.data().to_vec();
                cpu::activation::by_name(act, &mut a);
                let (mut da, _) = linear_2.backward(&a, dy, None);
                cpu::activation::backward_by_name(act, h.data(), &mut da);
                push("linear_1.", linear_1, tape.x.data(), &da);
                push("linear_2.", linear_2, &a, dy);
                need_dx.then(|| linear_1.backward(tape.x.data(), &da, None).0)
            }
            Projector::Linear(l) => {
                push("", l, tape.x.data(), dy);
                need_dx.then(|| l.backward(tape.x.data(), dy, None).0)
            }
        };
        (out, dx)
    }

    /// Every parameter with its checkpoint name relative to the projector's prefix.
    pub fn params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = Vec::new();
        for (name, l) in self.linears_mut() {
            out.push((format!("{name}weight"), &mut l.weight));
            if let Some(b) = l.bias.as_mut() {
                out.push((format!("{name}bias"), b));
            }
        }
        out
    }

}

/// Parameter gradients by name.
pub type ParamGrads = Vec<(String, Vec<f32>)>;

/// What the projector's backward needs: its input and linear_1's pre-activation (MLP only).
pub struct ProjectorTape {
    x: Tensor,
    h: Option<Tensor>,
}
