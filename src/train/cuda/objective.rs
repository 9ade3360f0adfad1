//! The objectives on the device: a DPO pair (and its reference log-probs) and an SFT
//! conversation, each as embed -> forward -> scored rows' log-probs -> loss -> backward.

use crate::backend::cuda::DevBuf;

use crate::backend::cuda::CudaTensor;
use crate::backend::{Backend, Rows};
use crate::error::{Error, Result};
use crate::loss::DpoOut;
use crate::model::decoder::SeqLayout;
use crate::train::{sft_ids, Pair};

use super::batch::Batch;
use super::projector::ImageTape;
use super::state::{grad_of, layer_param, CudaLearner};

/// One pair, ready for the decoder.
struct Prepared {
    x: CudaTensor,
    layouts: Vec<SeqLayout>,
    /// The rows whose next-token log-probs are scored, chosen's then rejected's, and their targets.
    rows: Vec<u32>,
    targets: Vec<u32>,
    /// |chosen|.
    chosen: usize,
    tapes: Vec<ImageTape>,
    /// The token id of every row (`u32::MAX` at image feature rows): the embedding's gradient.
    ids: Vec<u32>,
}

/// The scored rows of a forward: their hidden states [R, C], log-sum-exps and targets, the rows
/// themselves, and the batch's T.
struct Scored {
    hs: CudaTensor,
    lse: DevBuf<f32>,
    targets: DevBuf<u32>,
    rows: Vec<u32>,
    t: usize,
}

impl CudaLearner {
    /// The attention batch of `layouts` for this model (see [`Batch::new`]).
    fn batch(&self, layouts: &[SeqLayout]) -> Result<Batch> {
        Batch::new(&self.dev, layouts, self.pipe.model.cfg.text.sliding_window)
    }

    /// The pair's embeddings, layouts, response rows and targets (as `dpo_pair_grads_packed`,
    /// or two sequences under a sliding window), and the projector's tapes.
    fn prepare(&self, pair: &Pair) -> Result<Prepared> {
        let pipe = &self.pipe;
        let prompt_ids = pipe.prompt_ids(&pair.prompt, pair.images.len())?;
        let chosen = pipe.tokenizer.encode(&pair.chosen, false)?;
        let rejected = pipe.tokenizer.encode(&pair.rejected, false)?;
        if chosen.is_empty() || rejected.is_empty() {
            return Err(Error::Input("a response is empty after tokenization".into()));
        }
        let (c, r) = (chosen.len(), rejected.len());
        let targets: Vec<u32> = chosen.iter().chain(&rejected).copied().collect();
        if pipe.model.cfg.text.sliding_window.is_none() {
            let all: Vec<u32> = prompt_ids.iter().chain(&chosen).chain(&rejected).copied().collect();
            let (x, tapes) = self.embed(&all, &pair.images, 0)?;
            let t = x.n_rows();
            let p = t - c - r;
            // The last prefix row predicts the first token of both responses.
            let rows: Vec<u32> = (p - 1..p + c - 1).chain(std::iter::once(p - 1)).chain(p + c..p + c + r - 1).map(|i| i as u32).collect();
            let ids = self.row_ids(&all, t);
            Ok(Prepared { x, layouts: vec![SeqLayout { len: t, shared_prefix: Some((p, c)) }], rows, targets, chosen: c, tapes, ids })
        } else {
            let a: Vec<u32> = prompt_ids.iter().chain(&chosen).copied().collect();
            let bq: Vec<u32> = prompt_ids.iter().chain(&rejected).copied().collect();
            let (xa, mut tapes) = self.embed(&a, &pair.images, 0)?;
            let (xb, tb_tapes) = self.embed(&bq, &pair.images, xa.n_rows())?;
            tapes.extend(tb_tapes);
            let (ta, tb) = (xa.n_rows(), xb.n_rows());
            let x = self.decoder().backend().concat_rows(&[&xa, &xb])?;
            let rows: Vec<u32> = (ta - c - 1..ta - 1).chain(ta + tb - r - 1..ta + tb - 1).map(|i| i as u32).collect();
            let ids = [self.row_ids(&a, ta), self.row_ids(&bq, tb)].concat();
            Ok(Prepared { x, layouts: vec![SeqLayout::plain(ta), SeqLayout::plain(tb)], rows, targets, chosen: c, tapes, ids })
        }
    }

    /// The rows each image token of `ids` became in a sequence of `t` rows (all images alike).
    fn rows_per_image(&self, ids: &[u32], t: usize) -> usize {
        let n_img = ids.iter().filter(|&&i| i == self.pipe.model.cfg.image_token_index).count();
        (t - (ids.len() - n_img)).checked_div(n_img).unwrap_or(0)
    }

    /// The token id of every row of a sequence of `t` rows embedded from `ids` (`u32::MAX` at the
    /// image rows).
    fn row_ids(&self, ids: &[u32], t: usize) -> Vec<u32> {
        let (image_token, per_image) = (self.pipe.model.cfg.image_token_index, self.rows_per_image(ids, t));
        ids.iter().flat_map(|&i| if i == image_token { vec![u32::MAX; per_image] } else { vec![i] }).collect()
    }

    /// Per-token log-probs of the response rows of h, and what their backward needs.
    fn response_logprobs(&self, h: &CudaTensor, rows: &[u32], targets: &DevBuf<u32>) -> Result<(CudaTensor, DevBuf<f32>, DevBuf<f32>)> {
        let be = self.decoder().backend();
        let hs = be.embedding(h, None, rows)?;
        let (rn, c) = (hs.rows, hs.cols);
        let w = self.decoder().lm_head_weight();
        let v = w.rows;
        // SAFETY: logprob writes all R elements of logp and lse.
        let mut logp = unsafe { self.dev.alloc_uninit::<f32>(rn) }?;
        let mut lse = unsafe { self.dev.alloc_uninit::<f32>(rn) }?;
        self.dev.logprob(&hs.data.as_view(), &w.data.as_view(), &targets.as_view(), &mut logp.as_view_mut(), &mut lse.as_view_mut(), rn, c, v)?;
        Ok((hs, logp, lse))
    }

    /// Start an example of the current step: its gradients will be added with `weight` (the same
    /// for every example of a step) and its LoRA dropout masks drawn from `dropout_seed`.
    fn begin_example(&mut self, weight: f32, dropout_seed: Option<u64>) -> Result<()> {
        self.check_trainable()?;
        if self.pending_w.is_some_and(|w| w != weight) {
            return Err(Error::Input(format!("examples of one step must share a weight ({:?} then {weight})", self.pending_w)));
        }
        self.pending_w = Some(weight);
        self.dropout_seed = dropout_seed;
        Ok(())
    }

    /// Summed response log-probs (chosen, rejected) of the reference policy: the model with its
    /// adapters off (the same kernels, so an untrained adapter's B = 0 gives the same values).
    pub fn reference_logps(&mut self, pair: &Pair) -> Result<(f64, f64)> {
        // The reference embeds images without tapes (nothing flows back) and has no adapters
        // (so no dropout).
        self.dropout_seed = None;
        let (saved, tower) = (self.projector.take(), self.tower.take());
        let prepared = self.prepare(pair);
        (self.projector, self.tower) = (saved, tower);
        let Prepared { x, layouts, rows, targets, chosen: c, .. } = prepared?;
        let b = self.batch(&layouts)?;
        let (h, _, _) = self.forward(x, &b, false, false)?;
        let td = self.dev.htod(&targets)?;
        let (_, logp, _) = self.response_logprobs(&h, &rows, &td)?;
        let lp = self.dev.dtoh(&logp)?;
        Ok((lp[..c].iter().map(|&v| v as f64).sum(), lp[c..].iter().map(|&v| v as f64).sum()))
    }

    /// One pair's DPO loss, with its gradients added to the step's (raw; `weight` is applied at
    /// the step). `alpha` = 0 is plain DPO, 1/1024 STIC's. Returns the loss and the tokens run.
    /// `dropout_seed`: the step's LoRA dropout seed (the loop's `StepOpts::dropout_seed`; the
    /// masks are the CPU's).
    pub fn dpo_pair(&mut self, pair: &Pair, reference: (f64, f64), beta: f64, alpha: f64, weight: f32, dropout_seed: Option<u64>) -> Result<(DpoOut, usize)> {
        self.begin_example(weight, dropout_seed)?;
        let be = self.decoder().backend().clone();
        be.range_push("dpo pair");
        let Prepared { x, layouts, rows, targets, chosen: c, tapes, ids } = self.prepare(pair)?;
        let t = x.rows;
        let b = self.batch(&layouts)?;
        let (h, x_last, inputs) = self.forward(x, &b, true, true)?;
        let td = self.dev.htod(&targets)?;
        let (hs, logp, lse) = self.response_logprobs(&h, &rows, &td)?;
        drop(h);
        let rn = rows.len();
        // One pair's DpoSpans (chosen_start, chosen_len, rejected_start, rejected_len).
        let spans = self.dev.htod(&[0, c as u32, c as u32, (rn - c) as u32])?;
        let refs = self.dev.htod(&[reference.0, reference.1])?;
        let mut out = self.dev.zeros::<f64>(7)?;
        let mut dlogp = self.dev.zeros::<f32>(rn)?;
        self.dev.dpo(&logp.as_view(), &spans.as_view(), &refs.as_view(), beta, alpha, &mut out.as_view_mut(), &mut dlogp.as_view_mut())?;
        self.backprop(Scored { hs, lse, targets: td, rows, t }, &dlogp, x_last, &inputs, &b, &tapes, &ids)?;
        let o = self.dev.dtoh(&out)?;
        be.range_pop();
        Ok((DpoOut { loss: o[0], d_chosen: o[1], d_rejected: o[2], chosen_reward: o[3], rejected_reward: o[4] }, t))
    }

    /// The backward from d loss / d logp of the scored rows: logprob backward, the rows' gradients
    /// back to their rows (a row scored twice, the packed pair's last prefix row, adds both),
    /// the final norm, every layer from the last (recomputed from its kept input), and the
    /// projector when it trains. Gradients are added to the step's.
    /// When the decoder trains in full, its weights' gradients are added too: lm_head's (the
    /// embedding's when tied) by the log-prob backward, the final norm's, every layer's, and the
    /// embedding's at the text rows (`ids`, one per row).
    #[allow(clippy::too_many_arguments)]
    fn backprop(&mut self, sc: Scored, dlogp: &DevBuf<f32>, x_last: CudaTensor, inputs: &[CudaTensor], b: &Batch, tapes: &[ImageTape], ids: &[u32]) -> Result<()> {
        let be = self.decoder().backend().clone();
        let dev = self.dev.clone();
        let Scored { hs, lse, targets, rows, t } = sc;
        let (rn, cdim) = (hs.rows, hs.cols);
        let n_layers = inputs.len();
        let tied = self.pipe.model.cfg.text.tie_word_embeddings;
        let w = self.pipe.model.decoder.lm_head_weight();
        let mut dhs = dev.zeros::<f32>(rn * cdim)?;
        {
            let (hv, wv, tv, lv, gv) = (hs.data.as_view(), w.data.as_view(), targets.as_view(), lse.as_view(), dlogp.as_view());
            // lm_head is the last weight when untied, else the embedding (weight 0).
            let head = if tied { 0 } else { layer_param(n_layers) + 1 };
            match grad_of(&mut self.full, head) {
                Some(mut dw) => dev.logprob_backward_dw(&hv, &wv, &tv, &lv, &gv, &mut dhs.as_view_mut(), &mut dw, rn, cdim, w.rows)?,
                None => dev.logprob_backward(&hv, &wv, &tv, &lv, &gv, &mut dhs.as_view_mut(), rn, cdim, w.rows, false)?,
            }
        }
        let dhs16 = CudaTensor { data: self.dev.cast_f32_to_bf16(&dhs)?, rows: rn, cols: cdim };
        drop((hs, dhs));
        let mut dh = be.zeros(t, cdim)?;
        let mut seen = std::collections::HashSet::new();
        let (mut first, mut dup) = (Vec::new(), Vec::new());
        for (i, &r) in rows.iter().enumerate() {
            if seen.insert(r) { first.push((i, r)) } else { dup.push((i, r)) }
        }
        let src = be.embedding(&dhs16, None, &first.iter().map(|&(i, _)| i as u32).collect::<Vec<_>>())?;
        be.scatter_rows(&src, &mut dh, &first.iter().map(|&(_, r)| r).collect::<Vec<_>>())?;
        for (i, r) in dup {
            let r = r as usize;
            self.dev.add(&mut dh.data.slice_mut(r * cdim..(r + 1) * cdim), &dhs16.data.slice(i * cdim..(i + 1) * cdim))?;
        }
        // SAFETY: rmsnorm_backward writes every element of dx.
        let mut dx = CudaTensor { data: unsafe { self.dev.alloc_uninit::<u16>(t * cdim) }?, rows: t, cols: cdim };
        let fnorm = self.pipe.model.decoder.final_norm();
        dev.rmsnorm_backward(&x_last.data.as_view(), &fnorm.weight.as_view(), &dh.data.as_view(), fnorm.eps, &mut dx.data.as_view_mut(), grad_of(&mut self.full, layer_param(n_layers)).as_mut())?;
        drop((x_last, dh));
        for li in (0..inputs.len()).rev() {
            be.range_push(&format!("train layer {li} backward"));
            self.layer_bwd(li, &inputs[li], b, &mut dx)?;
            be.range_pop();
        }
        // dx is now d(input embeddings): into the embedding at the text rows and the projector,
        // when they train.
        if let Some(mut dw) = grad_of(&mut self.full, 0) {
            dev.embedding_backward(&dx.data.as_view(), ids, &mut dw, cdim)?;
        }
        for tape in tapes {
            self.projector_bwd(tape, &dx)?;
        }
        Ok(())
    }

    /// One conversation's SFT loss (mean negative log-likelihood of the answer tokens, as
    /// [`crate::train::sft_grads`]), with its gradients added to the step's (raw; `weight` is applied at
    /// the step). Returns the loss and the tokens run.
    pub fn sft_example(&mut self, turns: &[(String, String)], images: &[crate::image::RgbImage], weight: f32, dropout_seed: Option<u64>) -> Result<(f64, usize)> {
        self.begin_example(weight, dropout_seed)?;
        let (ids, mask) = sft_ids(&self.pipe, turns, images.len())?;
        let image_token = self.pipe.model.cfg.image_token_index;
        let n_img = ids.iter().filter(|&&t| t == image_token).count();
        if n_img != images.len() {
            return Err(Error::Input(format!("the conversation has {n_img} <image> token(s) for {} image(s)", images.len())));
        }
        let (x, tapes) = self.embed(&ids, images, 0)?;
        let t = x.rows;
        // Rows after <image> expansion (each image token became its feature rows).
        let per_image = self.rows_per_image(&ids, t);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        let mut pos = 0usize;
        for (&tok, &is_answer) in ids.iter().zip(&mask) {
            if is_answer {
                rows.push((pos - 1) as u32); // the row before a token predicts it
                targets.push(tok);
            }
            pos += if tok == image_token { per_image } else { 1 };
        }
        if rows.is_empty() {
            return Err(Error::Input("the conversation has no answer tokens".into()));
        }
        let b = self.batch(&[SeqLayout::plain(t)])?;
        let (h, x_last, inputs) = self.forward(x, &b, true, true)?;
        let td = self.dev.htod(&targets)?;
        let (hs, logp, lse) = self.response_logprobs(&h, &rows, &td)?;
        drop(h);
        let n = rows.len() as f64;
        let loss = -self.dev.dtoh(&logp)?.iter().map(|&v| v as f64).sum::<f64>() / n;
        let dlogp = self.dev.htod(&vec![(-1.0 / n) as f32; rows.len()])?;
        let row_ids = self.row_ids(&ids, t);
        self.backprop(Scored { hs, lse, targets: td, rows, t }, &dlogp, x_last, &inputs, &b, &tapes, &row_ids)?;
        Ok((loss, t))
    }
}
