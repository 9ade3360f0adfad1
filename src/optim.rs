//! AdamW with decoupled weight decay, as torch.optim.AdamW computes it (float32 state):
//!   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//!   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! The optimiser state is plain vectors, so it can be checkpointed and restored exactly.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// torch's defaults.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// The state of one parameter tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamWState {
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl AdamWState {
    pub fn new(n: usize) -> Self {
        AdamWState { step: 0, m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// One update of `p` with gradient `g`; `lr` is the scheduled learning rate of this step.
    pub fn step(&mut self, cfg: &AdamWConfig, lr: f32, p: &mut [f32], g: &[f32]) {
        assert!(p.len() == g.len() && p.len() == self.m.len(), "adamw: parameter, gradient and state sizes differ");
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for i in 0..p.len() {
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = m[i] * cfg.beta1 + g[i] * (1.0 - cfg.beta1);
                v[i] = v[i] * cfg.beta2 + g[i] * g[i] * (1.0 - cfg.beta2);
                let denom = v[i].sqrt() / bc2_sqrt + cfg.eps;
                p[i] -= step_size * m[i] / denom;
            }
        };
        // Elementwise, so splitting a large tensor across threads changes no bit.
        const CHUNK: usize = 1 << 15;
        if p.len() <= 2 * CHUNK {
            update(p, &mut self.m, &mut self.v, g);
        } else {
            use rayon::prelude::*;
            p.par_chunks_mut(CHUNK)
                .zip(self.m.par_chunks_mut(CHUNK))
                .zip(self.v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        }
    }
}
