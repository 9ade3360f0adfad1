//! Training on the CPU reference backend (issue #5, in progress): gradients of response
//! log-probabilities with respect to the LoRA adapters, which every loss (DPO, STIC's DPO, SFT) is
//! built from.
//!
//! Data flow: prompt + response ids, images -> embeddings (frozen vision tower and projector) ->
//! `Decoder::forward_train` (saves activations) -> response rows -> `cpu::logprob` (lm_head +
//! log-softmax + gather, chunked over V) -> d loss / d logp -> `cpu::logprob_backward` ->
//! `Decoder::backward` -> dA, dB of every adapted projection.

use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::image::RgbImage;
use crate::model::decoder::LoraGrad;

/// Per-token log-probs of `response` after `prompt` (formatted) and `images`, and the LoRA
/// gradients of `sum_i weights[i] * logp[i]` (weights: d loss / d logp, one per response token).
pub fn response_logprob_grads(
    pipe: &Pipeline,
    prompt: &str,
    images: &[RgbImage],
    response: &str,
    weights: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<(Vec<f64>, Vec<LoraGrad>)> {
    let ids = pipe.prompt_ids(prompt, images.len())?;
    let response_ids = pipe.tokenizer.encode(response, false)?;
    if response_ids.is_empty() {
        return Err(Error::Input("the response is empty after tokenization".into()));
    }
    let all: Vec<u32> = ids.iter().chain(&response_ids).copied().collect();
    let (x, _) = pipe.embed(&all, images)?;
    let dec = &pipe.model.decoder;
    let (t, c) = x.rows_cols();
    let r = response_ids.len();
    let (h, tape) = dec.forward_train(x, &[t])?;
    // Rows t-r-1 .. t-2 predict the response tokens.
    let rows = &h.data()[(t - r - 1) * c..(t - 1) * c];
    let w = dec.lm_head_weight().data();
    let (lp, lse) = cpu::logprob(rows, w, &response_ids, c);
    let logprobs: Vec<f64> = lp.iter().map(|&v| v as f64).collect();
    let dl: Vec<f32> = weights(&logprobs).into_iter().map(|v| v as f32).collect();
    if dl.len() != r {
        return Err(Error::shape("response_logprob_grads", format!("{} loss weights for {r} response tokens", dl.len())));
    }
    let drows = cpu::logprob_backward(rows, w, &response_ids, &lse, &dl, c);
    let mut dh = vec![0f32; t * c];
    dh[(t - r - 1) * c..(t - 1) * c].copy_from_slice(&drows);
    let (grads, _) = dec.backward(&tape, &dh)?;
    Ok((logprobs, grads))
}
