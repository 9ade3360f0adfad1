"""TRL + PEFT LoRA DPO baseline for issue #6: one DPO pair per step on a LLaVA-NeXT-Mistral-7B-shaped
model with random weights, trained by TRL's own `DPOTrainer`, timed on the GPU.

    python3 scripts/baselines/trl_dpo.py --out OUT.json                   # 7B shape, on the GPU
    python3 scripts/baselines/trl_dpo.py --smoke --config tests/fixtures/llava_next_tiny --out /tmp/smoke.json

On the GPU machine, `.gpu-trl/run.sh` (written by scripts/gpu-baselines.sh) runs the first line with
the carried wheels of scripts/baselines/requirements-trl.txt on PYTHONPATH.

What is trained (STIC stage 1, docs/STIC.md; yihedeng9/STIC scripts/dpo_finetune.sh and
llava/train/train_dpo.py):
- LoRA r 128, alpha 256, dropout 0.05 (the script passes no --lora_dropout; train_dpo.py's default
  is 0.05) on every linear layer of the language model (q, k, v, o, gate, up, down; not lm_head),
  PEFT's default adapter dtype (fp32 weights, bf16 autocast). The vision tower and the projector are
  frozen (STIC also trains the projector at 2e-5; this baseline, like the brief of issue #6, trains
  the LoRA adapter only). TRL's `disable_dropout` is turned off so that the LoRA dropout is the one
  STIC trains with.
- Sigmoid DPO, beta 0.1, lr 1e-7, weight decay 0, AdamW (torch), bf16 autocast over bf16 weights,
  1 pair per step (`per_device_train_batch_size=1`), gradient checkpointing on (TRL's default).
  STIC's extra chosen-likelihood term (alpha = 1/1024) is not in TRL's loss; it costs nothing
  measurable (one scalar per pair from log-probs TRL already has).
- The reference is the policy with the adapter disabled (TRL with a `peft_config` and no
  `ref_model`: `use_adapter(model, None)`), run every step: `precompute_ref_log_probs` is OFF because
  TRL 1.16 refuses it for vision datasets ("not supported for vision datasets"), and it would hide
  the reference forward that a STIC step pays anyway.
- Data: synthetic pairs in TRL's vision format (`prompt`, `chosen`, `rejected`, `images`), collated
  by TRL's `DataCollatorForVisionPreference` through the LLaVA-NeXT processor: one image of the size
  of the largest AnyRes pinpoint (672 x 672 for the 7B config: 1 base tile + 2 x 2 tiles of 336 px,
  5 x 576 = 2,880 CLIP features, plus 48 image-newline tokens = 2,928 image tokens), the Mistral
  prompt "[INST] <image>\\nDescribe the image in detail. [/INST]", and chosen / rejected responses of
  exactly `--response-tokens` tokens (random whole-word tokens of the Mistral vocabulary, the last
  one `</s>`). The script measures every count from the collated batch and prints it.
- Model: `LlavaNextForConditionalGeneration(config)` built directly on the device in bf16 with
  random weights (no checkpoint is read). The 7B config is the hub's config.json
  (tests/fixtures/configs/llava-v1.6-mistral-7b-hf.json) with its preprocessor config beside it; the
  tokenizer is the real llava-v1.6-mistral one in tests/fixtures/llava_next_tiny (`<image>` = 32000,
  `<pad>` = 32001).

What is measured, after `--warmup` steps: pairs/s over the wall time between the end of the last
warm-up step and the end of the last timed one (so data loading, collation, the optimiser and TRL's
metrics are included), tokens/s with tokens counted as TRL processes them (both rows of the pair,
each the prompt with its image tokens plus one response: `attention_mask.sum()`, TRL's `num_tokens`),
peak memory (`torch.cuda.max_memory_allocated` over the whole run, weights included), and MFU over
`--peak-tflops` (989 dense bf16 by default, the H100/H200 SXM datasheet figure issue #6 names).

Model FLOPs per pair (`flop_model` below; the recomputation of gradient checkpointing is not model
work and is left out of MFU; it is in "HFU"). N = the decoder's linear weights (7 projections x 32
layers, 6.98e9 for 7B), N_lora = the adapter's weights (3.36e8 at r 128), V d = lm_head, S = one row's
tokens, R = one response, and Sum_k = the number of (query, key) pairs causal attention visits:
- policy forward, per row: 2 (N + N_lora) S + 4 H D L Sum_k + 2 V d R (lm_head only over the
  response positions: TRL's fused head scores only labelled positions; so does a hand-written one);
- policy backward, per row: 2 (N + N_lora) S (activation gradients, the base weights frozen)
  + 2 N_lora S (adapter weight gradients) + 8 H D L Sum_k + 2 V d R;
- reference forward, per row: 2 N S + 4 H D L Sum_k + 2 V d R (adapter disabled);
- vision: CLIP up to the feature layer (23 of 24 layers for vision_feature_layer -2) over every tile,
  2 (linear weights) T + 4 d_v T^2 per layer (bidirectional, T = 577), the patch embedding, and the
  projector over the 576 features of each tile; forward only (frozen; nothing trainable upstream).
Before training, `check_flop_model` counts one plain forward of a row with torch's FlopCounterMode
(eager attention) and requires the same formulas, written for that forward, to agree within 2%.
Two counts are reported:
- "as processed": TRL's layout: each pass runs both rows in full, so the shared prompt (image and
  text) goes through the decoder twice per pass, and the image through CLIP twice per pass (four times
  per pair);
- "shared prefix": the least work the same training step needs: the prompt once per pass (policy and
  reference; the responses attend to it), and the image once per pair (the vision tower and projector
  are frozen, so the policy's features serve the reference). This is the numerator to compare
  engines with: an engine that shares the prefix gets no credit for work it skips.
"""
import argparse
import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "tests" / "fixtures" / "configs" / "llava-v1.6-mistral-7b-hf.json"
DEFAULT_TOKENIZER = ROOT / "tests" / "fixtures" / "llava_next_tiny"
PROMPT = "[INST] <image>\nDescribe the image in detail. [/INST]"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="a LLaVA-NeXT config: a folder (config.json + processor files) or a config.json-style file "
                        "with NAME.preprocessor_config.json beside it")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER),
                   help="tokenizer folder, when --config is a file (default: the llava-v1.6-mistral tokenizer)")
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--smoke", action="store_true",
                   help="CPU run on tiny shapes: 1 warm-up + 1 timed step, 16-token responses, fp32")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda unless --smoke)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    p.add_argument("--batch-pairs", type=int, default=1, help="pairs per step (per_device_train_batch_size)")
    p.add_argument("--response-tokens", type=int, default=200, help="tokens in each response, </s> included")
    p.add_argument("--image-size", default=None,
                   help="HxW of the synthetic image (default: the largest AnyRes pinpoint of the config)")
    p.add_argument("--lora-r", type=int, default=128)
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-7)
    p.add_argument("--optim", default="adamw_torch", help="transformers optimiser name (STIC: adamw_torch)")
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--dataloader-workers", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (TFLOP/s)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.smoke:
        a.device = a.device or "cpu"
        a.warmup, a.steps = 1, 1
        a.response_tokens = min(a.response_tokens, 16)
    a.device = a.device or "cuda"
    if a.warmup < 1 or a.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the timing starts at the end of a warm-up step)")
    return a


def versions():
    import importlib
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "tokenizers",
                 "numpy", "PIL"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as e:  # report, do not fail: the version list is for the log
            out[name] = f"unavailable ({type(e).__name__})"
    import torch
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# ----------------------------------------------------------------------------------------------
# model, processor, data

def load_config_and_processor(args):
    from transformers import (AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaNextConfig,
                              LlavaNextProcessor)
    path = Path(args.config)
    if path.is_dir():
        config = AutoConfig.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
        return config, processor
    config = LlavaNextConfig.from_json_file(str(path))
    pre = path.with_name(path.name.removesuffix(".json") + ".preprocessor_config.json")
    if not pre.exists():
        raise SystemExit(f"{pre} not found: a config file needs its preprocessor config beside it")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "preprocessor_config.json").write_text(pre.read_text())
        image_processor = AutoImageProcessor.from_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
        image_token="<image>",
    )
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_index:
        raise SystemExit(f"the tokenizer's <image> id {tokenizer.convert_tokens_to_ids('<image>')} is not the "
                         f"config's image_token_index {config.image_token_index}")
    return config, processor


def build_model(config, args, dtype):
    import torch
    from transformers import LlavaNextForConditionalGeneration
    with torch.device(args.device):
        model = LlavaNextForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=args.attn_implementation)
    return model


def image_size(config, args):
    if args.image_size:
        h, w = (int(x) for x in args.image_size.lower().split("x"))
        return h, w
    h, w = max(config.image_grid_pinpoints, key=lambda hw: (hw[0] * hw[1], hw[0]))
    return int(h), int(w)


def response_text(tokenizer, n_tokens, rng, words):
    """A response of exactly n_tokens tokens once tokenized on its own without special tokens (as TRL's
    collator does): random whole-word pieces of the vocabulary, then </s>."""
    picked = []
    target = n_tokens - 1  # the last token is </s>
    for _ in range(20 * n_tokens):
        cur = len(tokenizer(" ".join(picked), add_special_tokens=False)["input_ids"]) if picked else 0
        if cur == target:
            break
        if cur > target:
            picked.pop()
            continue
        picked.append(rng.choice(words))
    else:
        raise SystemExit(f"could not build a response of {n_tokens} tokens")
    text = " ".join(picked) + tokenizer.eos_token
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n != n_tokens:
        # the token count used below is measured from the collated batch, never assumed
        print(f"note: response tokenizes to {n} tokens (asked {n_tokens})", file=sys.stderr)
    return text


def word_pieces(tokenizer):
    """Pieces that start a word and are plain lowercase letters (whole words that tokenize alone)."""
    vocab = tokenizer.get_vocab()
    words = []
    for piece, _ in vocab.items():
        w = piece[1:]
        if piece.startswith("\u2581") and w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8:
            # the normalizer prepends the word marker itself, so a word is tokenized without a leading space
            if tokenizer(w, add_special_tokens=False)["input_ids"] == [vocab[piece]]:
                words.append(w)
        if len(words) >= 2000:
            break
    if len(words) < 100:
        raise SystemExit("the tokenizer has too few whole-word pieces to build responses")
    return sorted(words)


def make_dataset(processor, n_pairs, args, hw):
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    # a smooth random image (cheap to encode and decode, unlike white noise); content does not change the cost
    small = nrng.integers(0, 256, size=(max(hw[0] // 32, 2), max(hw[1] // 32, 2), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((hw[1], hw[0]), Image.BILINEAR)
    words = word_pieces(processor.tokenizer)
    rows = {"prompt": [], "chosen": [], "rejected": [], "images": []}
    for _ in range(n_pairs):
        rows["prompt"].append(processor.tokenizer.bos_token + PROMPT)
        rows["chosen"].append(response_text(processor.tokenizer, args.response_tokens, rng, words))
        rows["rejected"].append(response_text(processor.tokenizer, args.response_tokens, rng, words))
        rows["images"].append([image])
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------------------------
# FLOPs

def flop_model(config, n_tiles, prompt_tokens, response_tokens, lora_r, lora_targets, all_vision_layers=False):
    """Model FLOPs of one DPO training step on one pair (see the module docstring).

    prompt_tokens: P, the prompt's tokens including the image tokens (the same for both rows);
    response_tokens: (R_chosen, R_rejected). Returns a dict of named parts and the two totals."""
    t = config.text_config
    d, L, V, I = t.hidden_size, t.num_hidden_layers, t.vocab_size, t.intermediate_size
    H, Hkv = t.num_attention_heads, t.num_key_value_heads
    D = getattr(t, "head_dim", None) or d // H
    shapes = {  # (in, out) of each projection
        "q_proj": (d, H * D), "k_proj": (d, Hkv * D), "v_proj": (d, Hkv * D), "o_proj": (H * D, d),
        "gate_proj": (d, I), "up_proj": (d, I), "down_proj": (I, d),
    }
    n_lin = L * sum(i * o for i, o in shapes.values())
    n_lora = L * sum(lora_r * (i + o) for k, (i, o) in shapes.items() if k in lora_targets)
    head = V * d

    def causal_pairs(q0, n):  # (query, key) pairs of n queries at positions q0+1 .. q0+n, causal
        return n * q0 + n * (n + 1) // 2

    def attn(pairs):  # QK^T and PV: 2 matmuls x 2 FLOPs x D, per head and layer
        return 4 * H * D * L * pairs

    # vision tower up to the feature layer, per tile, forward only
    v = config.vision_config
    dv, Iv, p = v.hidden_size, v.intermediate_size, v.patch_size
    Tv = (v.image_size // p) ** 2 + 1
    fl = config.vision_feature_layer
    fl = fl[-1] if isinstance(fl, (list, tuple)) else fl
    Lv = v.num_hidden_layers + 1 + fl if fl < 0 else fl  # hidden_states[0] is the embedding output
    if all_vision_layers:  # transformers runs the whole tower and keeps hidden_states[fl]
        Lv = v.num_hidden_layers
    vis_layer = 2 * (4 * dv * dv + 2 * dv * Iv) * Tv + 4 * dv * Tv * Tv
    vis_tile = Lv * vis_layer + 2 * (3 * p * p * dv) * (Tv - 1)
    proj_tile = 2 * (dv * d + d * d) * (Tv - 1)
    vision_image = n_tiles * (vis_tile + proj_tile)

    P = prompt_tokens
    parts = {}
    # as processed (TRL): each row in full, in each of the three passes
    pol_f = pol_b = ref_f = 0
    for R in response_tokens:
        S = P + R
        k = causal_pairs(0, S)
        pol_f += 2 * (n_lin + n_lora) * S + attn(k) + 2 * head * R
        pol_b += 2 * (n_lin + n_lora) * S + 2 * n_lora * S + 2 * attn(k) + 2 * head * R
        ref_f += 2 * n_lin * S + attn(k) + 2 * head * R
    parts["as_processed"] = {
        "policy_forward": pol_f, "policy_backward": pol_b, "reference_forward": ref_f,
        "vision": 4 * vision_image,  # the image once per row, in the policy and in the reference pass
        "recompute_forward": pol_f,  # gradient checkpointing: hardware work, not model work
    }
    # shared prefix: the prompt once per pass, the image once per pair
    kP = causal_pairs(0, P)
    pol_f = 2 * (n_lin + n_lora) * P + attn(kP)
    pol_b = 2 * (n_lin + n_lora) * P + 2 * n_lora * P + 2 * attn(kP)
    ref_f = 2 * n_lin * P + attn(kP)
    for R in response_tokens:
        kR = causal_pairs(P, R)
        pol_f += 2 * (n_lin + n_lora) * R + attn(kR) + 2 * head * R
        pol_b += 2 * (n_lin + n_lora) * R + 2 * n_lora * R + 2 * attn(kR) + 2 * head * R
        ref_f += 2 * n_lin * R + attn(kR) + 2 * head * R
    parts["shared_prefix"] = {
        "policy_forward": pol_f, "policy_backward": pol_b, "reference_forward": ref_f, "vision": vision_image,
    }
    model_keys = ("policy_forward", "policy_backward", "reference_forward", "vision")
    return {
        "params": {"decoder_linear": n_lin, "lora": n_lora, "lm_head": head, "vision_layers_used": Lv,
                   "vision_tokens_per_tile": Tv, "tiles": n_tiles},
        "plain_forward_dense": lambda S: 2 * n_lin * S + 4 * H * D * L * S * S + 2 * head * S + vision_image,
        "parts": parts,
        "as_processed": sum(parts["as_processed"][k] for k in model_keys),
        "as_processed_hw": sum(parts["as_processed"].values()),
        "shared_prefix": sum(parts["shared_prefix"][k] for k in model_keys),
    }


def check_flop_model(model, batch, config, prompt_tokens, response_tokens, n_tiles, tol=0.02):
    """Count one plain forward of the chosen row (no LoRA yet, no grad) with torch's FlopCounterMode,
    which counts matmuls and convolutions, and compare it with the same formulas as flop_model,
    written for what that forward does: every position through lm_head, attention dense (eager
    attention multiplies the whole score matrix, then masks it), and every CLIP layer (transformers
    runs the whole tower). A wrong parameter count, token count or formula shows up here; on the tiny
    fixture the two agree exactly."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    row = {k: v[:1] for k, v in batch.items() if k != "completion_mask"}
    S = int(row["input_ids"].shape[1])
    f = flop_model(config, n_tiles, prompt_tokens, response_tokens, 1, [], all_vision_layers=True)
    expected = f["plain_forward_dense"](S)
    # eager attention for the count: the counter does not know every fused attention kernel (the CPU
    # sdpa kernel goes uncounted), while eager's two matmuls it counts exactly
    impl = model.config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(**{k: v.to(model.device) for k, v in row.items()}, use_cache=False)
    finally:
        model.set_attn_implementation(impl)
        model.train(was_training)
    if model.config._attn_implementation != impl:
        raise SystemExit(f"could not restore attn_implementation {impl}")
    measured = counter.get_total_flops()
    ratio = measured / expected
    print(f"FLOP model check (one plain forward of a {S}-token row): torch counts {measured / 1e12:.4f} TFLOP, "
          f"the formulas give {expected / 1e12:.4f} (ratio {ratio:.5f})", flush=True)
    if abs(ratio - 1) > tol:
        raise SystemExit(f"the FLOP model is off by {abs(ratio - 1) * 100:.1f}% (more than {tol * 100:.0f}%)")
    return {"measured": measured, "expected": expected, "ratio": ratio, "tokens": S}


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    import torch
    from transformers import TrainerCallback
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    vers = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU (use --smoke or --device cpu)")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if cuda else torch.float32

    config, processor = load_config_and_processor(args)
    hw = image_size(config, args)
    n_pairs = (args.warmup + args.steps) * args.batch_pairs
    t0 = time.perf_counter()
    dataset = make_dataset(processor, n_pairs, args, hw)
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = build_model(config, args, dtype)
    if cuda:
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters ({dtype}, "
          f"{weights_bytes / 2**30:.2f} GiB) built on {args.device} in {t_build:.1f} s", flush=True)

    # LoRA on the language model's linear layers only (STIC's find_all_linear_names skips the vision
    # tower and the projector, and drops lm_head): a regex, since CLIP has q/k/v_proj too.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, bias="none",
        target_modules=r".*language_model.*\.(" + "|".join(targets) + r")$", task_type="CAUSAL_LM",
    )
    out_dir = tempfile.mkdtemp(prefix="trl-dpo-")
    dpo_args = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_pairs,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        optim=args.optim,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=None,  # never truncate: the image tokens must stay
        precompute_ref_log_probs=False,  # TRL 1.16 refuses True for vision datasets (see the docstring)
        disable_dropout=False,  # keep STIC's LoRA dropout
        gradient_checkpointing=not args.no_gradient_checkpointing,
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=1,
        disable_tqdm=True,  # the per-step logs still print (PrinterCallback); no progress bars in the log
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=args.dataloader_workers,
        seed=args.seed,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.step_s = None, [], []

        def _sync(self):
            if cuda:
                torch.cuda.synchronize()

        def on_step_begin(self, a, state, control, **kw):
            self._sync()
            self.begin = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self._sync()
            now = time.perf_counter()
            self.end.append(now)
            self.step_s.append(now - self.begin)

    # one batch collated by the collator TRL picks for vision data (checked below): the counts the FLOP
    # model needs, the collation time on its own, and the FLOP model's check
    t0 = time.perf_counter()
    batch = DataCollatorForVisionPreference(processor=processor)([dict(dataset[i]) for i in range(args.batch_pairs)])
    t_collate = time.perf_counter() - t0
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    B = args.batch_pairs
    image_tokens = int((ids[0] == config.image_token_index).sum())
    prompt_tokens = int((att[0] * (1 - comp[0])).sum())
    resp = [int(comp[i].sum()) for i in range(2 * B)]
    tokens_per_pair = int(att.sum()) / B
    n_tiles = int(batch["pixel_values"].shape[1]) if batch["pixel_values"].dim() == 5 else 1
    print(f"batch: input_ids {tuple(ids.shape)}, pixel_values {tuple(batch['pixel_values'].shape)}, "
          f"image tokens {image_tokens} (image {hw[0]}x{hw[1]}, {n_tiles} tiles), prompt tokens {prompt_tokens} "
          f"(image included), response tokens {resp}, tokens per pair as processed {tokens_per_pair:.0f}, "
          f"collation {t_collate * 1e3:.0f} ms", flush=True)
    flop_check = check_flop_model(model, batch, config, prompt_tokens, (resp[0], resp[B]), n_tiles)

    timer = Timer()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = DPOTrainer(model=model, args=dpo_args, train_dataset=dataset, processing_class=processor,
                         peft_config=lora, callbacks=[timer])
    if type(trainer.data_collator) is not DataCollatorForVisionPreference:
        raise SystemExit(f"TRL picked {type(trainer.data_collator).__name__}, not DataCollatorForVisionPreference")
    peft_model = trainer.model
    n_lora_params = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
    bad = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    if bad:
        raise SystemExit(f"parameters other than LoRA are trainable: {bad[:5]}")
    if any("vision_tower" in n or "multi_modal_projector" in n for n, p in peft_model.named_parameters()
           if "lora_" in n):
        raise SystemExit("the LoRA target regex hit the vision tower or the projector")

    flops = flop_model(config, n_tiles, prompt_tokens, (resp[0], resp[B]), args.lora_r, targets)
    if flops["params"]["lora"] != n_lora_params:
        raise SystemExit(f"FLOP model's LoRA count {flops['params']['lora']} != the trainable {n_lora_params}")
    static_bytes = torch.cuda.memory_allocated() if cuda else None

    t0 = time.perf_counter()
    result = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t0

    w = args.warmup
    if len(timer.end) != args.warmup + args.steps:
        raise SystemExit(f"expected {args.warmup + args.steps} steps, the timer saw {len(timer.end)}")
    wall = timer.end[-1] - timer.end[w - 1]
    pairs = args.steps * B
    pairs_s = pairs / wall
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise SystemExit(f"non-finite or missing losses: {losses}")
    peak = torch.cuda.max_memory_allocated() if cuda else None
    peak_reserved = torch.cuda.max_memory_reserved() if cuda else None
    peak_tf = args.peak_tflops * 1e12
    res = {
        "what": "TRL DPOTrainer + PEFT LoRA, one DPO step per pair batch, LLaVA-NeXT random weights",
        "config": str(args.config), "device": args.device, "versions": vers,
        "settings": {
            "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
            "lora_targets": targets, "beta": args.beta, "lr": args.lr, "optim": args.optim,
            "batch_pairs": B, "gradient_checkpointing": not args.no_gradient_checkpointing,
            "precompute_ref_log_probs": False, "attn_implementation": args.attn_implementation,
            "dtype": str(dtype), "warmup_steps": args.warmup, "timed_steps": args.steps,
            "dataloader_workers": args.dataloader_workers, "peak_tflops": args.peak_tflops,
        },
        "shape": {
            "image_hw": list(hw), "tiles": n_tiles, "image_tokens": image_tokens,
            "prompt_tokens_incl_image": prompt_tokens, "response_tokens": resp,
            "tokens_per_pair_as_processed": tokens_per_pair, "seq_len": int(ids.shape[1]),
        },
        "params": flops["params"] | {"total": sum(p.numel() for p in model.parameters()) - n_lora_params,
                                     "trainable": n_lora_params},
        "flops_per_pair": {
            "as_processed": flops["as_processed"],
            "shared_prefix": flops["shared_prefix"],
            "as_processed_with_recompute": flops["as_processed_hw"],
            "parts": flops["parts"],
            "check_against_torch_flop_counter": flop_check,
        },
        "timing": {
            "pairs_per_s": pairs_s,
            "tokens_per_s": pairs_s * tokens_per_pair,
            "s_per_pair": 1 / pairs_s,
            "timed_wall_s": wall,
            "step_s": timer.step_s,
            "collate_s": t_collate, "model_build_s": t_build, "dataset_build_s": t_data, "train_s": t_train,
            "train_runtime_s_reported_by_trainer": result.metrics.get("train_runtime"),
        },
        "mfu": {
            "as_processed": flops["as_processed"] * pairs_s / peak_tf,
            "shared_prefix": flops["shared_prefix"] * pairs_s / peak_tf,
            "hfu_as_processed_with_recompute": flops["as_processed_hw"] * pairs_s / peak_tf,
        },
        "memory": {
            "peak_allocated_bytes": peak, "peak_reserved_bytes": peak_reserved,
            "allocated_before_training_bytes": static_bytes, "model_weights_bytes": weights_bytes,
        },
        "losses": losses,
    }
    if args.smoke:
        res["note"] = "smoke run on the CPU with tiny shapes: checks the script end to end; the numbers mean nothing"

    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
    rows = [
        ("device", vers.get("gpu", args.device)),
        ("versions", f"torch {vers['torch']}, transformers {vers['transformers']}, peft {vers['peft']}, "
                     f"trl {vers['trl']}, accelerate {vers['accelerate']}, datasets {vers['datasets']}"),
        ("shape", f"image {hw[0]}x{hw[1]} ({n_tiles} tiles, {image_tokens} image tokens), prompt {prompt_tokens} "
                  f"tokens with the image, responses {resp[0]} / {resp[B]}, {B} pair(s) per step"),
        ("pairs/s", f"{pairs_s:.3f} ({1 / pairs_s:.3f} s per pair; {args.steps} timed steps after {w} warm-up)"),
        ("tokens/s (as TRL processes them)", f"{pairs_s * tokens_per_pair:.0f} ({tokens_per_pair:.0f} per pair)"),
        ("model TFLOP per pair, as processed", f"{flops['as_processed'] / 1e12:.4g}"),
        ("model TFLOP per pair, shared prefix", f"{flops['shared_prefix'] / 1e12:.4g}"),
        ("FLOP model vs torch's FlopCounterMode (one plain forward)", f"ratio {flop_check['ratio']:.5f}"),
        (f"MFU over {args.peak_tflops:.0f} TFLOP/s, as processed", f"{res['mfu']['as_processed'] * 100:.1f}%"),
        (f"MFU over {args.peak_tflops:.0f} TFLOP/s, shared prefix", f"{res['mfu']['shared_prefix'] * 100:.1f}%"),
        ("HFU (as processed + checkpoint recompute)", f"{res['mfu']['hfu_as_processed_with_recompute'] * 100:.1f}%"),
        ("peak memory (max_memory_allocated)", gib(peak)),
        ("peak reserved", gib(peak_reserved)),
        ("allocated before training", gib(static_bytes)),
        ("losses", ", ".join(f"{x:.4f}" for x in losses)),
    ]
    print()
    print("| TRL DPO baseline | value |")
    print("|---|---|")
    for k, val in rows:
        print(f"| {k} | {val} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
