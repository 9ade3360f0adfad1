//! LoRA (and full-parameter) DPO and SFT on one GPU (feature `cuda`): the step of [`crate::train::dpo_pair_grads_packed`] with every
//! op on the device, and the adapters' parameters, gradients and AdamW state kept there (f32).
//!
//! One pair, packed as [prefix | chosen | rejected] under the shared-prefix mask (the image and
//! prompt are encoded once), or as two causal sequences [prefix | chosen], [prefix | rejected]
//! when the model has a sliding window:
//!
//!   x [T, C]  = `Pipeline<Cuda>::embed` (frozen vision tower, projector and embedding, bf16)
//!   forward, per layer l (only its input x_l [T, C] bf16 is kept: per-layer recomputation, so
//!   the 7B model at T = 3,300 keeps 32 x 27 MB of activations):
//!       hn1 = rmsnorm(x); q, k, v = lora_fwd(hn1) (u = hn1 A^T kept for the backward);
//!       rope(q, k); a, lse = attention_fwd (FlashAttention-2, varlen, shared-prefix mask);
//!       x_mid = x + lora_fwd(a, o); hn2 = rmsnorm(x_mid); g, u = lora_fwd(hn2);
//!       x_out = x_mid + lora_fwd(swiglu(g, u), down)
//!   h = rmsnorm(x_L); the R = |chosen| + |rejected| response rows gathered -> `logprob` (lm_head
//!   fused with the log-softmax, chunked over V: never [T, V]) -> logp [R], lse [R]
//!   `dpo` kernel -> loss, rewards, dlogp [R] (f64 inside)
//!   `logprob_backward` -> dh [R, C] -> scattered back to the rows (the last prefix row predicts
//!   the first token of both responses: its two gradients add) -> rmsnorm backward
//!   backward, per layer from the last: recompute the layer from x_l, then down, swiglu, gate/up,
//!   post-norm, o, attention_bwd, rope backward, q/k/v, input norm (residual gradients added);
//!   every `lora_bwd` adds s dy^T u and s v^T x to the adapter's dB, dA (f32, accumulated over
//!   the pairs of a step).
//!
//! The step: the accumulated gradients are the raw sum over the step's pairs; the mean's 1/n and
//! clip_grad_norm_'s factor go into the fused AdamW as one gradient scale (`grad_sumsq` gives the
//! norm). The bf16 copy of the adapters that the kernels read is refreshed after each step.
//!
//! The projector (`--projector-lr`, STIC's `mm_projector_lr`) trains in full: its f32 master
//! weights, gradients and AdamW moments live on the device next to the adapters'; the image's
//! forward keeps the vision features v, linear_1's output h and the activation a; the decoder's
//! d(input embeddings) at the image rows is scattered back through the AnyRes row map to the
//! projector's rows, then dW2 += dy^T a, db2 += dy^T 1, da = dy W2, dh = da act'(h), dW1 += dh^T v,
//! db1 += dh^T 1 (`matmul_tn`, `matmul_nn`, `activation_backward`). After each step the bf16
//! weights the model runs with are refreshed from the f32 masters.
//!
//! LoRA dropout (PEFT's, on the adapter's input): the masks are the CPU's (`kernels/dropout.cu`
//! regenerates `Linear::dropout_mask` from the step's seed, the layer and the projection), the
//! LoRA path takes x * mask (`lora_fwd`'s x_drop), its dx is masked (`lora_bwd`'s dropout), and the
//! recomputed forward of the backward regenerates the same masks.
//!
//! SFT (`train_sft`, `stic train-sft --device cuda`): one conversation as a plain causal sequence,
//! the mean negative log-likelihood of its answer tokens (as [`crate::train::sft_grads`]), through the
//! same forward and backward (`CudaLearner::sft_example`).
//!
//! Projector-only runs (`--lora-r 0 --projector-lr LR`, LLaVA's alignment stage) train the
//! projector alone and save `multi_modal_projector.safetensors`, as on the CPU.
//!
//! Full-parameter training (`--train decoder,projector`, or either alone; LoRA off, as on the
//! CPU): every weight of the language model (embed_tokens, each layer's two norms and seven
//! projections, the final norm, lm_head, tied or not) has its f32 master, gradient and AdamW
//! moments on the device in one flat buffer set (`DeviceDecoder`, `Decoder::params_mut` order),
//! stepped by the same fused `adamw` with HF's decay grouping (`hf_decays`); after each step the
//! bf16 weights the model runs with are written from the masters. The masters start from the base
//! checkpoint's f32 values. The weight gradients come from what the recomputed layer already has:
//! each projection dW += dy^T x (`matmul_tn`, f32 accumulation), each norm's dw (`rmsnorm_backward`
//! with `rmsnorm_dw`), lm_head's dW from the log-prob backward's per-chunk hi / lo logit gradients
//! (`logprob_backward_dw`; into embed_tokens' when tied), and embed_tokens' by a scatter-add of
//! d(input embeddings) at the text rows (`embedding_backward`, rows grouped by id on the host: no
//! atomics in the new weight-gradient kernels; a resumed run is bit-identical on the emulated
//! device, while on hardware the attention backward's dq atomics, as under LoRA, are not ordered). Checkpoints and outputs are the CPU learner's HF
//! model directories (`train::full::save_tensors`), resumed as `load_trained` does; the AdamW
//! state keys are `decoder.{name}`, as `TrainAdamW::step_decoder`'s. The f32 state needs 16 bytes
//! per weight: a clear error when it does not fit the device's free memory.
//!
//! The vision tower (`--train vision`, alone or with the others): its weights up to the feature
//! layer train in full in a second flat buffer set of the same kind (`vision`: f32 masters,
//! gradients, AdamW moments; the CPU learner's names, decay grouping and state keys
//! `vision.vision_model.{name}`), the bf16 tower weights refreshed after each step. The image's
//! forward keeps the tower's tape (patch rows, the embeddings before pre_layrnorm, each layer's
//! input); the projector's backward goes on to d(features) (its weights' gradients only when it
//! trains), and the tower's backward recomputes each layer and runs `layernorm_backward`,
//! `attention_bwd` (bidirectional), `activation_backward` and the linears' dW, db, then the
//! embeddings' gradients. Its attention backward takes head dims 64 and 128 (a clear error
//! otherwise), and one feature layer.
//!
//! Not supported here (a clear error): biases on the decoder's projections (LLaMA, Vicuna and
//! Mistral have none).
//!
//! Files: `state` the learner's struct and device state (shared by the others); `full` the
//! decoder trained in full (state, step, model directories); `batch` a
//! step's attention description (cu_seqlens, positions, shared-prefix pairs); `projector` the
//! projector's training state, tapes and backward; `layer` one layer's forward and backward;
//! `objective` the DPO and SFT examples (forward, loss, backward); `vision` the vision tower's
//! training state, tape and backward; `learner` new, checkpoints,
//! the [`Learner`](crate::train::run_loop::Learner) impl and the `train_dpo` / `train_sft` runs.

mod batch;
mod full;
mod layer;
mod learner;
mod objective;
mod projector;
mod state;
mod vision;

pub use learner::{train_dpo, train_sft};
pub use state::CudaLearner;
