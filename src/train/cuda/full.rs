//! Full-parameter training on the device (`--train decoder,projector`): the language model's f32
//! masters, gradients and AdamW moments ([`DeviceDecoder`]), the bf16 weights the model runs with
//! written from the masters after each step, and the model directories of `train::full`
//! (`save_tensors`, resume from them as `load_trained` does). The gradients themselves are added
//! by the backward (`layer`: each projection's dW += dy^T x, the norms' dw; `objective`: lm_head's
//! dW from the log-prob backward, the final norm, the embedding's scatter-add at the text rows).

use std::collections::HashMap;
use std::path::Path;

use crate::backend::cuda::{AdamWTensor, DevBuf};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::model::grads::PROJ_PATHS;
use crate::model::llava::locate_vision;
use crate::train::full::{hf_decays, save_tensors, CheckpointNames};
use crate::weights::WeightStore;

use super::state::{CudaLearner, DeviceDecoder};

/// Every weight of the language model as (name, elements), in `Decoder::params_mut` order
/// (bias-free projections: the GPU learner refuses biases).
fn decoder_params(cfg: &TextConfig, n_layers: usize) -> Vec<(String, usize)> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let shapes = crate::model::decoder::Decoder::<crate::backend::cuda::Cuda>::projection_shapes(cfg);
    let mut out = vec![("embed_tokens.weight".to_string(), v * c)];
    for i in 0..n_layers {
        out.push((format!("layers.{i}.input_layernorm.weight"), c));
        for (p, (k, n)) in PROJ_PATHS.iter().zip(shapes) {
            out.push((format!("layers.{i}.{p}.weight"), k * n));
        }
        out.push((format!("layers.{i}.post_attention_layernorm.weight"), c));
    }
    out.push(("norm.weight".to_string(), c));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), v * c));
    }
    out
}

/// Refuses `--train part` when the f32 masters, gradients and AdamW moments of `len` weights (16
/// bytes each) do not fit the device's free memory.
pub(super) fn check_fits(part: &str, len: usize) -> Result<()> {
    let need = 16 * len as u64;
    if let Ok((free, _)) = cudarc::driver::result::mem_get_info() {
        if need > free as u64 {
            return Err(Error::Input(format!(
                "--train {part} on --device cuda: the f32 masters, gradients and AdamW moments of {len} weights need {:.2} GiB, but the device has {:.2} GiB free",
                need as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64
            )));
        }
    }
    Ok(())
}

/// One fused AdamW step over the flat buffers `f` (HF's decay grouping on `{prefix}.{name}`), the
/// gradients zeroed.
fn adamw_step(dev: &crate::backend::cuda::CudaDevice, f: &mut DeviceDecoder, cfg: &crate::optim::AdamWConfig, lr: f32, gscale: f32, prefix: &str) -> Result<()> {
    let tensors: Vec<AdamWTensor> =
        f.params.iter().map(|(name, len, _)| AdamWTensor { len: *len, lr, weight_decay: if hf_decays(&format!("{prefix}.{name}")) { cfg.weight_decay } else { 0.0 } }).collect();
    f.step += 1;
    dev.adamw(&mut f.p.as_view_mut(), &f.g.as_view(), &mut f.m.as_view_mut(), &mut f.v.as_view_mut(), &tensors, cfg, f.step, gscale)?;
    dev.stream().memset_zeros(&mut f.g).map_err(|e| crate::backend::cuda::cuda_err("memset_zeros", "full-parameter gradients", e))
}

impl CudaLearner {
    /// The bf16 weights the model runs with, in [`DeviceDecoder::params`] order.
    fn decoder_weights_mut(&mut self) -> Vec<&mut DevBuf<u16>> {
        let (embed, layers, norm, head) = self.pipe.model.decoder.weights_mut();
        let mut out = vec![&mut embed.data];
        for (n1, w, n2) in layers {
            out.push(&mut n1.weight);
            out.extend(w.into_iter().map(|l| &mut l.weight));
            out.push(&mut n2.weight);
        }
        out.push(&mut norm.weight);
        out.extend(head.map(|h| &mut h.data));
        out
    }

    /// A fresh training state of the decoder: masters from the current bf16 weights (the runs
    /// then load the base checkpoint's f32 values: `load_model`), zero gradients and moments.
    /// Refuses when the f32 state (16 bytes per weight) does not fit the device's free memory.
    pub(super) fn decoder_state(&mut self) -> Result<DeviceDecoder> {
        let list = decoder_params(&self.pipe.model.cfg.text, self.decoder().n_layers());
        let mut params = Vec::with_capacity(list.len());
        let mut len = 0;
        for (name, n) in list {
            params.push((name, n, len));
            len += n;
        }
        check_fits("decoder", len)?;
        let dev = self.dev.clone();
        let mut p = dev.zeros::<f32>(len)?;
        let offs: Vec<(usize, usize)> = params.iter().map(|(_, n, o)| (*o, *n)).collect();
        for (w, (off, n)) in self.decoder_weights_mut().into_iter().zip(offs) {
            dev.cast_bf16_to_f32_into(&w.slice(0..n), &mut p.slice_mut(off..off + n))?;
        }
        let z = || dev.zeros::<f32>(len);
        Ok(DeviceDecoder { params, g: z()?, m: z()?, v: z()?, p, step: 0 })
    }

    /// Write the f32 masters into the bf16 weights the model runs with (a tied lm_head is the
    /// embedding itself).
    pub(super) fn refresh_decoder(&mut self) -> Result<()> {
        let Some(full) = self.full.take() else { return Ok(()) };
        let dev = self.dev.clone();
        let result = (|| {
            for (w, (_, n, off)) in self.decoder_weights_mut().into_iter().zip(&full.params) {
                dev.cast_f32_to_bf16_into(&full.p.slice(*off..off + n), &mut w.slice_mut(0..*n))?;
            }
            Ok(())
        })();
        self.full = Some(full);
        result
    }

    /// One AdamW step of the decoder at `lr` with HF's decay grouping (`hf_decays`), then the bf16
    /// weights refreshed and the gradients zeroed.
    pub(super) fn step_decoder(&mut self, lr: f32, gscale: f32) -> Result<()> {
        if let Some(f) = self.full.as_mut() {
            adamw_step(&self.dev, f, &self.cfg, lr, gscale, "model.language_model")?;
        }
        self.refresh_decoder()
    }

    /// One AdamW step of the vision tower (`--train vision`) at `lr`, as the CPU learner's (HF's
    /// decay grouping on the LLaVA names), then its bf16 weights refreshed.
    pub(super) fn step_tower(&mut self, lr: f32, gscale: f32) -> Result<()> {
        if let Some(t) = self.tower.as_mut() {
            adamw_step(&self.dev, t, &self.cfg, lr, gscale, "model.vision_tower.vision_model")?;
        }
        self.refresh_tower()
    }

    /// The accumulated decoder gradients by weight name (`DecoderGrads::named`'s names; raw sums;
    /// empty when the decoder does not train).
    pub fn decoder_grads(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let Some(f) = &self.full else { return Ok(Vec::new()) };
        let g = self.dev.dtoh(&f.g)?;
        Ok(f.params.iter().map(|(n, len, off)| (n.clone(), g[*off..off + len].to_vec())).collect())
    }

    /// `--train`: the trained tensors (decoder, projector and vision tower masters) by checkpoint
    /// name (`tower`: the checkpoint's vision tower prefix).
    fn trained_host(&self, names: &CheckpointNames, tower: &str) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::new();
        if let Some(f) = &self.full {
            let p = self.dev.dtoh(&f.p)?;
            out.extend(f.params.iter().map(|(n, len, off)| (names.decoder(n), p[*off..off + len].to_vec())));
        }
        if let (Some(pr), true) = (&self.projector, self.parts.is_some_and(|p| p.projector)) {
            let p = self.dev.dtoh(&pr.p)?;
            out.extend(pr.params.iter().map(|(n, shape, off)| (names.projector(n), p[*off..off + shape.iter().product::<usize>()].to_vec())));
        }
        if let Some(t) = &self.tower {
            let p = self.dev.dtoh(&t.p)?;
            out.extend(t.params.iter().map(|(n, len, off)| (format!("{tower}.{n}"), p[*off..off + len].to_vec())));
        }
        Ok(out)
    }

    /// `--train`: the model as an HF model directory in `dir` (`train::full::save_tensors`, as the
    /// CPU learner's `save_model`).
    pub(super) fn save_full(&mut self, dir: &Path) -> Result<()> {
        let base = self.base.clone().ok_or_else(|| Error::Input("--train on --device cuda: no base checkpoint to write the model from".into()))?;
        let ws = WeightStore::open(&base)?;
        let tower = if self.tower.is_some() { locate_vision(&ws)? } else { "" };
        let host = self.trained_host(&CheckpointNames::of(&ws)?, tower)?;
        let trained: HashMap<String, &[f32]> = host.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect();
        save_tensors(&ws, &base, dir, trained, self.pipe.model.cfg.text.tie_word_embeddings, self.shard_bytes)
    }

    /// `--train`: the trained tensors read from the model directory `dir` (the base checkpoint at
    /// the start of a run, a checkpoint when resuming: f32, bit for bit) into the masters, and the
    /// bf16 weights refreshed.
    pub(super) fn load_full(&mut self, dir: &Path) -> Result<()> {
        let ws = WeightStore::open(dir)?;
        let names = CheckpointNames::of(&ws)?;
        let read = |name: String, len: usize, host: &mut [f32]| -> Result<()> {
            let shape = ws.shape_of(&name).ok_or_else(|| Error::weights(dir, format!("no tensor `{name}`")))?;
            let t = ws.get(&name, &shape)?;
            if t.data().len() != len {
                return Err(Error::weights(dir, format!("`{name}` has {} elements, not {len}", t.data().len())));
            }
            host.copy_from_slice(t.data());
            Ok(())
        };
        if let Some(f) = self.full.as_mut() {
            let mut host = vec![0f32; f.p.len()];
            for (n, len, off) in &f.params {
                read(names.decoder(n), *len, &mut host[*off..off + len])?;
            }
            self.dev.htod_into(&host, &mut f.p.as_view_mut())?;
        }
        if let (Some(pr), true) = (self.projector.as_mut(), self.parts.is_some_and(|p| p.projector)) {
            let mut host = vec![0f32; pr.p.len()];
            for (n, shape, off) in &pr.params {
                let len = shape.iter().product::<usize>();
                read(names.projector(n), len, &mut host[*off..off + len])?;
            }
            self.dev.htod_into(&host, &mut pr.p.as_view_mut())?;
        }
        if let Some(t) = self.tower.as_mut() {
            let tower = locate_vision(&ws)?;
            let mut host = vec![0f32; t.p.len()];
            for (n, len, off) in &t.params {
                read(format!("{tower}.{n}"), *len, &mut host[*off..off + len])?;
            }
            self.dev.htod_into(&host, &mut t.p.as_view_mut())?;
        }
        self.refresh_decoder()?;
        self.refresh_tower()?;
        self.refresh_projector()
    }
}
