//! Training on the CPU reference backend (issue #5, in progress): gradients of response
//! log-probabilities with respect to the LoRA adapters, the DPO step built on them, and the AdamW
//! update of the adapters.
//!
//! Data flow: prompt + response ids, images -> embeddings (frozen vision tower and projector) ->
//! `Decoder::forward_train` over all sequences at once (saves activations) -> each sequence's
//! response rows -> `cpu::logprob` (lm_head + log-softmax + gather, chunked over V) -> the loss's
//! d loss / d logp -> `cpu::logprob_backward` -> `Decoder::backward` -> dA, dB of every adapter.
//! The reference policy of DPO is the same model with its adapters taken off for one pass.
//! With `StepOpts::projector` the projector trains too: the decoder's dx at the image rows flows
//! back through the AnyRes row map into the projector (`Llava::image_features_backward`).
//!
//! The training loop and what it drives live in the child modules: `run_loop` (the loop, the
//! `Learner` trait, checkpoints), `data` (prefs.jsonl, LLaVA's SFT JSON), `cpu` (the learner on
//! these gradients), `cuda` (the GPU learner, feature `cuda`) and `device` (picks one).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod device;
pub mod full;
pub mod run_loop;

use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::image::RgbImage;
use crate::loss::{dpo, DpoOut};
use crate::model::decoder::{LoraGrad, SeqLayout, StepOpts};
use crate::model::grads::DecoderGrads;
use crate::model::clip_grad::Grads as ClipGrads;
use crate::model::llava::ImageTape;
use crate::optim::{AdamWConfig, AdamWState};
use crate::tensor::Tensor;
use std::path::Path;

/// The gradients of an example or a step: every adapter's (dA, dB), when the projector trains
/// each projector parameter's gradient named as in the checkpoint (`linear_1.weight`, ...), and
/// when the vision tower trains its parameters' gradients by `vision_model.*` name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grads {
    pub lora: Vec<LoraGrad>,
    pub projector: Vec<(String, Vec<f32>)>,
    pub vision: ClipGrads,
}

impl Grads {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.lora.iter_mut().flat_map(|g| [&mut g.2, &mut g.3]).chain(self.projector.iter_mut().map(|g| &mut g.1)).chain(self.vision.values_mut())
    }

    /// self += w * g (same adapters and parameters in the same order; vision gradients by name).
    pub fn add_scaled(&mut self, g: &Grads, w: f32) {
        let others = g.lora.iter().flat_map(|g| [&g.2, &g.3]).chain(g.projector.iter().map(|g| &g.1));
        let mine = self.lora.iter_mut().flat_map(|g| [&mut g.2, &mut g.3]).chain(self.projector.iter_mut().map(|g| &mut g.1));
        for (a, b) in mine.zip(others) {
            a.iter_mut().zip(b).for_each(|(p, q)| *p += q * w);
        }
        for (name, v) in &g.vision {
            match self.vision.get_mut(name) {
                Some(a) => a.iter_mut().zip(v).for_each(|(p, q)| *p += q * w),
                None => {
                    self.vision.insert(name.clone(), v.iter().map(|q| q * w).collect());
                }
            }
        }
    }

    pub fn scale(&mut self, f: f32) {
        self.all_mut().for_each(|v| v.iter_mut().for_each(|x| *x *= f));
    }

    /// Global L2 norm over every gradient.
    pub fn norm(&self) -> f64 {
        let all = self.lora.iter().flat_map(|g| g.2.iter().chain(&g.3)).chain(self.projector.iter().flat_map(|g| &g.1)).chain(self.vision.values().flatten());
        all.map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
    }
}

/// Input embeddings [T, C] and, when the projector or the vision tower trains, where each
/// image's rows start and the tape to back-propagate into them (`projector`: its gradients are
/// wanted); `ids`: the token id of every row (`IMAGE_ROW` for an image feature row), where a
/// decoder trained in full adds the rows' gradients into embed_tokens.
pub struct Embedded {
    pub x: Tensor,
    tapes: Vec<(usize, ImageTape)>,
    ids: Vec<u32>,
    projector: bool,
}

/// The row id of an image feature row in [`Embedded`].
const IMAGE_ROW: u32 = u32::MAX;

/// Where a decoder trained in full accumulates an example's gradients: the buffers and the
/// example's weight in the step.
pub type FullAcc<'a> = Option<(&'a mut DecoderGrads, f32)>;

/// One sequence to score: input embeddings (prompt with images, then the response) and the
/// response ids (the last R positions' targets).
pub struct Scored {
    pub x: Embedded,
    pub response_ids: Vec<u32>,
}

impl Pipeline {
    /// `embed`, keeping the tape when `projector` is set or the vision tower trains
    /// (`Llava::train_vision`); also the number of image feature rows.
    pub fn embed_train(&self, ids: &[u32], images: &[RgbImage], projector: bool) -> Result<(Embedded, usize)> {
        let mut feats = Vec::new();
        let mut tapes = Vec::new();
        let taped = projector || self.model.vision_trains();
        for img in images {
            let image = crate::image::preprocess(img, &self.processor)?;
            if taped {
                let (f, t) = self.model.image_features_train(&image)?;
                feats.push(f);
                tapes.push(t);
            } else {
                feats.push(self.model.image_features(&image)?);
            }
        }
        let x = self.model.embed_with_images(ids, &feats)?;
        // Image j's rows start after the tokens before its <image> and the earlier images' rows.
        let mut starts = Vec::new();
        let mut rows = Vec::with_capacity(x.dim(0));
        for &t in ids {
            if t == self.model.cfg.image_token_index && starts.len() < feats.len() {
                starts.push(rows.len());
                rows.extend(std::iter::repeat_n(IMAGE_ROW, feats[starts.len() - 1].dim(0)));
            } else {
                rows.push(t);
            }
        }
        let k = feats.iter().map(|f| f.dim(0)).sum();
        let tapes = if taped { starts.into_iter().zip(tapes).collect() } else { Vec::new() };
        Ok((Embedded { x, tapes, ids: rows, projector }, k))
    }

    /// Projector gradients from d loss / d embeddings [T, C] (empty when it does not train) and
    /// the vision tower's (empty when it does not train).
    fn embed_backward(&self, e: &Embedded, dx: &[f32]) -> (Vec<(String, Vec<f32>)>, ClipGrads) {
        let c = self.model.decoder.hidden_size();
        let mut out: Vec<(String, Vec<f32>)> = Vec::new();
        let mut vision = ClipGrads::new();
        for (start, tape) in &e.tapes {
            let k = tape.rows();
            let g = self.model.image_features_backward(tape, &dx[start * c..(start + k) * c], e.projector, &mut vision);
            if out.is_empty() {
                out = g;
            } else {
                for (a, b) in out.iter_mut().zip(g) {
                    a.1.iter_mut().zip(&b.1).for_each(|(p, q)| *p += q);
                }
            }
        }
        (out, vision)
    }

    /// Embeddings of a formatted prompt with its images followed by `response` (tokenized without
    /// BOS), and the response ids.
    pub fn scored(&self, prompt: &str, images: &[RgbImage], response: &str, projector: bool) -> Result<Scored> {
        let ids = self.prompt_ids(prompt, images.len())?;
        let response_ids = self.tokenizer.encode(response, false)?;
        if response_ids.is_empty() {
            return Err(Error::Input(format!("the response {response:?} is empty after tokenization")));
        }
        let all: Vec<u32> = ids.iter().chain(&response_ids).copied().collect();
        Ok(Scored { x: self.embed_train(&all, images, projector)?.0, response_ids })
    }
}

/// Per-token response log-probs of every sequence, and the LoRA gradients of
/// sum_s sum_i w[s][i] logp[s][i], where `weights` maps the log-probs to w (d loss / d logp).
pub fn logprob_grads(
    pipe: &Pipeline,
    seqs: Vec<Scored>,
    opts: StepOpts,
    weights: impl FnOnce(&[Vec<f64>]) -> Vec<Vec<f64>>,
) -> Result<(Vec<Vec<f64>>, Grads)> {
    logprob_grads_full(pipe, seqs, opts, None, weights)
}

/// `logprob_grads`, accumulating a decoder trained in full into `full`.
pub fn logprob_grads_full(
    pipe: &Pipeline,
    seqs: Vec<Scored>,
    opts: StepOpts,
    full: FullAcc,
    weights: impl FnOnce(&[Vec<f64>]) -> Vec<Vec<f64>>,
) -> Result<(Vec<Vec<f64>>, Grads)> {
    let layouts: Vec<SeqLayout> = seqs.iter().map(|s| SeqLayout::plain(s.x.x.dim(0))).collect();
    // Rows end - r - 1 .. end - 2 of each sequence predict its r response tokens.
    let mut responses = Vec::new();
    let mut tapes = Vec::new();
    let mut ids = Vec::new();
    let mut end = 0;
    let projector = seqs.iter().any(|s| s.x.projector);
    let xs: Vec<&Tensor> = seqs.iter().map(|s| &s.x.x).collect();
    let x = Tensor::cat_rows(&xs)?;
    for s in seqs {
        tapes.extend(s.x.tapes.into_iter().map(|(start, t)| (start + end, t)));
        ids.extend(s.x.ids);
        end += s.x.x.dim(0);
        let r = s.response_ids.len();
        responses.push(((end - r - 1..end - 1).collect(), s.response_ids));
    }
    grads_core(pipe, Embedded { x, tapes, ids, projector }, &layouts, &responses, opts, full, weights)
}

/// The common core: forward over `layouts`, log-probs of each response (its target rows and
/// ids), the loss weights, and the backward (rows shared by two responses add their gradients).
/// With `full`, every decoder weight's gradient (lm_head's from the chunked log-prob backward,
/// embed_tokens' from d(embeddings) at the text rows) is added, times the weight, into the buffers.
#[allow(clippy::too_many_arguments)]
fn grads_core(
    pipe: &Pipeline,
    input: Embedded,
    layouts: &[SeqLayout],
    responses: &[(Vec<usize>, Vec<u32>)],
    opts: StepOpts,
    mut full: FullAcc,
    weights: impl FnOnce(&[Vec<f64>]) -> Vec<Vec<f64>>,
) -> Result<(Vec<Vec<f64>>, Grads)> {
    let dec = &pipe.model.decoder;
    let c = dec.hidden_size();
    let (h, tape) = dec.forward_train_opts(input.x.clone(), layouts, opts)?;
    let w = dec.lm_head_weight().data();
    let gather = |rows: &[usize]| -> Vec<f32> { rows.iter().flat_map(|&r| h.data()[r * c..(r + 1) * c].iter().copied()).collect() };
    let mut logps = Vec::new();
    let mut saved = Vec::new();
    for (rows, tg) in responses {
        let hr = gather(rows);
        // Training in full: the GEMM forward (the LoRA path keeps its reference `logprob`).
        let (lp, lse) = if full.is_some() { crate::backend::cpu::logprob::logprob_gemm(&hr, w, tg, c) } else { crate::backend::cpu::logprob(&hr, w, tg, c) };
        logps.push(lp.iter().map(|&v| v as f64).collect::<Vec<f64>>());
        saved.push((hr, lse));
    }
    let ws = weights(&logps);
    let mut dh = vec![0f32; h.len()];
    for (s, ((rows, tg), (hr, lse))) in responses.iter().zip(&saved).enumerate() {
        if ws[s].len() != tg.len() {
            return Err(Error::shape("logprob_grads", format!("{} loss weights for {} response tokens", ws[s].len(), tg.len())));
        }
        let dl: Vec<f32> = ws[s].iter().map(|&v| v as f32).collect();
        let dhr = match full.as_mut() {
            // lm_head's own buffer, or the embedding's when tied.
            Some((acc, sc)) => {
                let dw = match acc.lm_head.as_mut() {
                    Some(b) => b,
                    None => &mut acc.embed_tokens,
                };
                crate::backend::cpu::logprob::logprob_backward_full(hr, w, tg, lse, &dl, c, dw, *sc)
            }
            None => crate::backend::cpu::logprob_backward(hr, w, tg, lse, &dl, c),
        };
        for (i, &r) in rows.iter().enumerate() {
            dh[r * c..(r + 1) * c].iter_mut().zip(&dhr[i * c..(i + 1) * c]).for_each(|(a, b)| *a += b);
        }
    }
    let (lora, dx) = dec.backward_into(&tape, &dh, full.as_mut().map(|(a, s)| (&mut **a, *s)))?;
    if let Some((acc, s)) = full {
        // Image rows carry IMAGE_ROW (>= V): skipped.
        crate::backend::cpu::embedding_backward(&dx, &input.ids, c, &mut acc.embed_tokens, s);
    }
    let (projector, vision) = pipe.embed_backward(&input, &dx);
    Ok((logps, Grads { lora, projector, vision }))
}

/// Per-token log-probs of `response` and the LoRA gradients of sum_i w_i logp_i.
pub fn response_logprob_grads(
    pipe: &Pipeline,
    prompt: &str,
    images: &[RgbImage],
    response: &str,
    opts: StepOpts,
    weights: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<(Vec<f64>, Grads)> {
    let seq = pipe.scored(prompt, images, response, opts.projector)?;
    let (mut lps, grads) = logprob_grads(pipe, vec![seq], opts, |l| vec![weights(&l[0])])?;
    Ok((lps.remove(0), grads))
}

/// One preference pair (prompt formatted with the chat template).
#[derive(Clone, Debug)]
pub struct Pair {
    pub prompt: String,
    pub images: Vec<RgbImage>,
    pub chosen: String,
    pub rejected: String,
}

/// Summed response log-probs (chosen, rejected) of the reference policy: the model with its
/// adapters taken off. Cache them per pair: they never change during training.
pub fn reference_logps(pipe: &mut Pipeline, pair: &Pair) -> Result<(f64, f64)> {
    let saved: Vec<_> = pipe.model.decoder.projections_mut().map(|(_, _, l)| l.lora.take()).collect();
    let result = (|| {
        let c = pipe.score(&pair.prompt, &pair.images, &pair.chosen)?.sum;
        let r = pipe.score(&pair.prompt, &pair.images, &pair.rejected)?.sum;
        Ok((c, r))
    })();
    for ((_, _, l), s) in pipe.model.decoder.projections_mut().zip(saved) {
        l.lora = s;
    }
    result
}

/// The DPO loss of one pair (chosen and rejected run together in one forward/backward) and its
/// gradients, and the tokens run. `alpha` = 0 is plain DPO, 1/1024 STIC's.
pub fn dpo_pair_grads(pipe: &Pipeline, pair: &Pair, reference: (f64, f64), beta: f64, alpha: f64, opts: StepOpts) -> Result<(DpoOut, Grads, usize)> {
    dpo_pair_grads_full(pipe, pair, reference, beta, alpha, opts, None)
}

/// `dpo_pair_grads`, accumulating a decoder trained in full into `full`.
pub fn dpo_pair_grads_full(pipe: &Pipeline, pair: &Pair, reference: (f64, f64), beta: f64, alpha: f64, opts: StepOpts, full: FullAcc) -> Result<(DpoOut, Grads, usize)> {
    let seqs = vec![
        pipe.scored(&pair.prompt, &pair.images, &pair.chosen, opts.projector)?,
        pipe.scored(&pair.prompt, &pair.images, &pair.rejected, opts.projector)?,
    ];
    let tokens = seqs.iter().map(|s| s.x.x.dim(0)).sum();
    let mut out = None;
    let (_, grads) = logprob_grads_full(pipe, seqs, opts, full, |l| {
        let (pc, pr) = (l[0].iter().sum(), l[1].iter().sum());
        let o = dpo(pc, pr, reference.0, reference.1, beta, alpha);
        let w = vec![vec![o.d_chosen; l[0].len()], vec![o.d_rejected; l[1].len()]];
        out = Some(o);
        w
    })?;
    Ok((out.expect("weights were computed"), grads, tokens))
}

/// `dpo_pair_grads` with the pair packed as one sequence [prompt | chosen | rejected] under the
/// shared-prefix mask: the image and prompt are encoded once instead of twice. Same loss and
/// gradients (tests/train.rs). `opts`: activation recomputation and the LoRA dropout seed.
pub fn dpo_pair_grads_packed(
    pipe: &Pipeline,
    pair: &Pair,
    reference: (f64, f64),
    beta: f64,
    alpha: f64,
    opts: StepOpts,
) -> Result<(DpoOut, Grads, usize)> {
    dpo_pair_grads_packed_full(pipe, pair, reference, beta, alpha, opts, None)
}

/// `dpo_pair_grads_packed`, accumulating a decoder trained in full into `full`.
pub fn dpo_pair_grads_packed_full(
    pipe: &Pipeline,
    pair: &Pair,
    reference: (f64, f64),
    beta: f64,
    alpha: f64,
    opts: StepOpts,
    full: FullAcc,
) -> Result<(DpoOut, Grads, usize)> {
    let prompt_ids = pipe.prompt_ids(&pair.prompt, pair.images.len())?;
    let chosen = pipe.tokenizer.encode(&pair.chosen, false)?;
    let rejected = pipe.tokenizer.encode(&pair.rejected, false)?;
    if chosen.is_empty() || rejected.is_empty() {
        return Err(Error::Input("a response is empty after tokenization".into()));
    }
    let all: Vec<u32> = prompt_ids.iter().chain(&chosen).chain(&rejected).copied().collect();
    let (x, _) = pipe.embed_train(&all, &pair.images, opts.projector)?;
    let t = x.x.dim(0);
    let (c, r) = (chosen.len(), rejected.len());
    let p = t - c - r; // the prefix after <image> expansion
    let layout = SeqLayout { len: t, shared_prefix: Some((p, c)) };
    // The last prefix row predicts the first token of both responses.
    let chosen_rows: Vec<usize> = (p - 1..p + c - 1).collect();
    let rejected_rows: Vec<usize> = std::iter::once(p - 1).chain(p + c..p + c + r - 1).collect();
    let mut out = None;
    let (_, grads) = grads_core(pipe, x, &[layout], &[(chosen_rows, chosen), (rejected_rows, rejected)], opts, full, |l| {
        let o = dpo(l[0].iter().sum(), l[1].iter().sum(), reference.0, reference.1, beta, alpha);
        let w = vec![vec![o.d_chosen; l[0].len()], vec![o.d_rejected; l[1].len()]];
        out = Some(o);
        w
    })?;
    Ok((out.expect("weights were computed"), grads, t))
}

/// AdamW over everything that trains: every adapter's A and B and, when it trains, every
/// projector parameter (its own learning rate, as STIC's `mm_projector_lr`). As HF's Trainer,
/// biases get no weight decay. State per parameter, created on first use, keyed by name:
/// `{layer}.{proj}.A`, `{layer}.{proj}.B`, `projector.{name}`.
#[derive(Default)]
pub struct TrainAdamW {
    pub cfg: AdamWConfig,
    states: std::collections::BTreeMap<String, AdamWState>,
}

impl TrainAdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        TrainAdamW { cfg, states: Default::default() }
    }

    /// Apply one update from `grads` (as the `*_grads` functions return them): adapters at `lr`,
    /// the projector at `projector_lr`.
    pub fn step(&mut self, pipe: &mut Pipeline, grads: &Grads, lr: f32, projector_lr: f32) -> Result<()> {
        type Key<'a> = (usize, &'a str);
        let mut by_key: std::collections::HashMap<Key, (&Vec<f32>, &Vec<f32>)> = Default::default();
        for (l, n, da, db) in &grads.lora {
            by_key.insert((*l, *n), (da, db));
        }
        let cfg = self.cfg;
        let mut update = |key: String, p: &mut [f32], g: &[f32], lr: f32, decay: bool| {
            let st = self.states.entry(key).or_insert_with(|| AdamWState::new(p.len()));
            let cfg = AdamWConfig { weight_decay: if decay { cfg.weight_decay } else { 0.0 }, ..cfg };
            st.step(&cfg, lr, p, g);
        };
        for (layer, name, lin) in pipe.model.decoder.projections_mut() {
            let (Some(lora), Some((da, db))) = (lin.lora.as_mut(), by_key.get(&(layer, name))) else { continue };
            update(format!("{layer}.{name}.A"), lora.a.data_mut(), da, lr, true);
            update(format!("{layer}.{name}.B"), lora.b.data_mut(), db, lr, true);
        }
        if !grads.projector.is_empty() {
            let mut params = pipe.model.projector.params_mut();
            for (name, g) in &grads.projector {
                let (_, p) = params
                    .iter_mut()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| Error::Input(format!("no projector parameter `{name}`")))?;
                update(format!("projector.{name}"), p.data_mut(), g, projector_lr, !name.ends_with("bias"));
            }
        }
        if !grads.vision.is_empty() {
            // The vision tower at `lr`, HF's decay grouping on its LLaVA names; state keys
            // `vision.{name}` (`vision.vision_model.embeddings.class_embedding`, ...).
            let params = pipe.model.vision_params_mut()?;
            let mut by_name: std::collections::HashMap<String, &mut Tensor> = params.into_iter().map(|(n, t)| (format!("vision_model.{n}"), t)).collect();
            for (name, g) in &grads.vision {
                let p = by_name.get_mut(name).ok_or_else(|| Error::Input(format!("no vision parameter `{name}`")))?;
                update(format!("vision.{name}"), p.data_mut(), g, lr, full::hf_decays(&format!("model.vision_tower.{name}")));
            }
            pipe.model.sync_vision()?;
        }
        Ok(())
    }

    /// One update of a decoder trained in full from its gradients `g` at `lr`, with HF's decay
    /// grouping ([`full::hf_decays`]); state keys `decoder.{name}` (`decoder.embed_tokens.weight`,
    /// ...). Updates the weights in place.
    pub fn step_decoder(&mut self, pipe: &mut Pipeline, g: &DecoderGrads, lr: f32) -> Result<()> {
        let cfg = self.cfg;
        let params = pipe.model.decoder.params_mut();
        let grads = g.named();
        if params.len() != grads.len() {
            return Err(Error::shape("step_decoder", format!("{} gradients for {} weights", grads.len(), params.len())));
        }
        for ((name, p), (gname, gv)) in params.into_iter().zip(grads) {
            debug_assert_eq!(name, gname);
            let decay = full::hf_decays(&format!("model.language_model.{name}"));
            let st = self.states.entry(format!("decoder.{name}")).or_insert_with(|| AdamWState::new(gv.len()));
            let c = AdamWConfig { weight_decay: if decay { cfg.weight_decay } else { 0.0 }, ..cfg };
            st.step(&c, lr, p.data_mut(), gv);
        }
        Ok(())
    }

    /// The state of parameter `key` (`{layer}.{proj}.A`, `projector.{name}`, ...).
    pub fn state(&self, key: &str) -> Option<&AdamWState> {
        self.states.get(key)
    }

    /// Set the state of parameter `key` (a device learner's moments, to save them in this
    /// format).
    pub fn set_state(&mut self, key: String, st: AdamWState) {
        self.states.insert(key, st);
    }

    /// Save the optimiser state (m, v, step of every parameter) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, s) in &self.states {
            bufs.push((format!("{key}.m"), vec![s.m.len()], s.m.iter().flat_map(|v| v.to_le_bytes()).collect()));
            bufs.push((format!("{key}.v"), vec![s.v.len()], s.v.iter().flat_map(|v| v.to_le_bytes()).collect()));
            bufs.push((format!("{key}.step"), vec![1], (s.step as f64).to_le_bytes().to_vec()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(k, s, b)| {
                let dt = if k.ends_with(".step") { safetensors::Dtype::F64 } else { safetensors::Dtype::F32 };
                (k.clone(), safetensors::tensor::TensorView::new(dt, s.clone(), b).expect("consistent"))
            })
            .collect();
        let bytes = safetensors::serialize(views, None::<std::collections::HashMap<String, String>>).map_err(|e| Error::weights(path, e.to_string()))?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }

    /// Restore what `save` wrote.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::weights(path, e.to_string()))?;
        let f32s = |k: &str| -> Result<Vec<f32>> {
            let t = st.tensor(k).map_err(|e| Error::weights(path, format!("{k}: {e}")))?;
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        self.states.clear();
        for name in st.names() {
            let Some(key) = name.strip_suffix(".step") else { continue };
            let t = st.tensor(name).map_err(|e| Error::weights(path, format!("{name}: {e}")))?;
            let step = f64::from_le_bytes(t.data()[..8].try_into().map_err(|_| Error::weights(path, format!("{name}: not one f64")))?) as u64;
            self.states.insert(key.to_string(), AdamWState { step, m: f32s(&format!("{key}.m"))?, v: f32s(&format!("{key}.v"))? });
        }
        Ok(())
    }
}

/// Token ids of a multi-turn conversation for SFT and, for every id, whether it is an answer token
/// (the loss covers those only). Each human turn is wrapped in the chat template and tokenized on
/// its own (BOS before the first); each answer is tokenized without special tokens and closed with
/// EOS. The first human turn carries the `<image>` (put first when missing).
pub fn sft_ids<B: crate::backend::Backend>(pipe: &Pipeline<B>, turns: &[(String, String)], n_images: usize) -> Result<(Vec<u32>, Vec<bool>)> {
    let eos = *pipe.eos.first().ok_or_else(|| Error::Input("the model has no EOS token".into()))?;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (k, (q, a)) in turns.iter().enumerate() {
        let p = pipe.tokenizer.encode(&pipe.template.apply(q, k == 0 && n_images > 0), k == 0)?;
        let mut ans = pipe.tokenizer.encode(a, false)?;
        ans.push(eos);
        mask.extend(std::iter::repeat_n(false, p.len()).chain(std::iter::repeat_n(true, ans.len())));
        ids.extend(p);
        ids.extend(ans);
    }
    Ok((ids, mask))
}

/// SFT loss (mean cross-entropy over the answer tokens, as HF's loss with labels -100 elsewhere)
/// of a conversation about `images`, its gradients, and the sequence length after image expansion.
pub fn sft_grads(pipe: &Pipeline, turns: &[(String, String)], images: &[RgbImage], opts: StepOpts) -> Result<(f64, Grads, usize)> {
    sft_grads_full(pipe, turns, images, opts, None)
}

/// `sft_grads`, accumulating a decoder trained in full into `full`.
pub fn sft_grads_full(pipe: &Pipeline, turns: &[(String, String)], images: &[RgbImage], opts: StepOpts, full: FullAcc) -> Result<(f64, Grads, usize)> {
    let (ids, mask) = sft_ids(pipe, turns, images.len())?;
    let n_img = ids.iter().filter(|&&t| t == pipe.model.cfg.image_token_index).count();
    if n_img != images.len() {
        return Err(Error::Input(format!("the conversation has {n_img} <image> token(s) for {} image(s)", images.len())));
    }
    let (x, k) = pipe.embed_train(&ids, images, opts.projector)?;
    // Positions after <image> expansion: each image token became its K feature rows.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut pos = 0usize;
    let per_image = if images.is_empty() { 0 } else { k / images.len() };
    for (&t, &is_answer) in ids.iter().zip(&mask) {
        let width = if t == pipe.model.cfg.image_token_index { per_image } else { 1 };
        if is_answer {
            rows.push(pos - 1); // the row before a token predicts it
            targets.push(t);
        }
        pos += width;
    }
    let n = targets.len() as f64;
    let t = x.x.dim(0);
    let mut loss = 0.0;
    let (_, grads) = grads_core(pipe, x, &[SeqLayout::plain(t)], &[(rows, targets)], opts, full, |l| {
        loss = -l[0].iter().sum::<f64>() / n;
        vec![vec![-1.0 / n; l[0].len()]]
    })?;
    Ok((loss, grads, t))
}
