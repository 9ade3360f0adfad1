"""Build two tiny random LLaVA checkpoints with transformers and record transformers' outputs.

    /root/fxenv/bin/python scripts/gen_fixtures.py           # from the repo root

Needs tests/fixtures/tokenizer/ (scripts/convert_tokenizer.py) and tests/fixtures/images/
(scripts/make_test_images.py). Pins: scripts/requirements-fixtures.txt. Deterministic: fixed seeds,
CPU, float32, eager attention. Writes (all under tests/fixtures/):

- llava_next_tiny/   LlavaNextForConditionalGeneration (mistral text, CLIP vision), sharded
                     safetensors, vision tower + projector + image_newline float32, language model
                     (embed_tokens, layers, norm, lm_head) bfloat16; processor with the PIL
                     ("slow") LlavaNextImageProcessor.
- llava15_tiny/      LlavaForConditionalGeneration (llama text, CLIP vision), float16, one
                     model.safetensors; processor with the PIL ("slow") CLIPImageProcessor.
- expected/<model>.json / .safetensors   reference outputs of each checkpoint reloaded with
                     from_pretrained(dtype=float32, attn_implementation="eager").
- pixels/<stem>.safetensors, pixels/index.json   uint8 pixel references at the real 336 geometry.

transformers 5.x note: the "slow" image processors are the *Pil classes (LlavaNextImageProcessorPil,
CLIPImageProcessorPil); the un-suffixed names are the torchvision backends. The Pil classes save
themselves under the un-suffixed image_processor_type.
"""
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TOK_DIR = FIX / "tokenizer"
IMAGES = ["images/wide.jpg", "images/tall.png", "images/gray.png"]
PROMPT = "What is shown in this image?"
RESPONSE = "A red square and a blue circle on a striped background."
MAX_NEW_TOKENS = 8
IMAGE_TOKEN_ID = 32000
PAD_TOKEN_ID = 32001
VOCAB = 32064
TINY_PINPOINTS = [[84, 168], [168, 84], [168, 168], [252, 84], [84, 252]]
REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
BICUBIC = 3

# weight init (much wider than transformers' 0.02 so that logits are spread out)
W_STD = 0.2      # Linear / Embedding / Conv weights, CLIP class embedding
B_STD = 0.1      # Linear biases, LayerNorm biases
NORM_STD = 0.1   # LayerNorm / RMSNorm weights = 1 + NORM_STD * N(0, 1)
NEWLINE_STD = 0.5
LM_HEAD_STD = 1.0  # logits ~ N(0, 5.7^2): clear top-1/top-2 gaps for greedy decoding
# the greedy decode must have a clear winner at every step, otherwise try the next seed
MIN_MARGIN = 0.05
MAX_SEED_TRIES = 30

MODELS = {
    "llava_next_tiny": dict(base_seed=1000, template="[INST] <image>\n{prompt} [/INST]"),
    "llava15_tiny": dict(base_seed=2000, template="USER: <image>\n{prompt} ASSISTANT:"),
}


WINDOW = 16  # sliding window for the extra llava_next log-probs


def vision_config():
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=84,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
    )


def next_config():
    text = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        sliding_window=None,
        tie_word_embeddings=False,
        pad_token_id=PAD_TOKEN_ID,
    )
    return LlavaNextConfig(
        vision_config=vision_config(),
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=TINY_PINPOINTS,
        tie_word_embeddings=False,
        image_seq_length=36,
    )


def v15_config():
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        pad_token_id=PAD_TOKEN_ID,
    )
    return LlavaConfig(
        vision_config=vision_config(),
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
        image_seq_length=36,
    )


@torch.no_grad()
def randomize(model, seed):
    """Overwrite every parameter with wide random values (deterministic in module order)."""
    g = torch.Generator().manual_seed(seed)

    def normal(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean)

    done = set()
    for mname, mod in model.named_modules():
        own = {n: p for n, p in mod.named_parameters(recurse=False)}
        if not own:
            continue
        cls = type(mod).__name__
        for pname, p in own.items():
            full = f"{mname}.{pname}" if mname else pname
            if full == "lm_head.weight":
                normal(p, LM_HEAD_STD)
            elif isinstance(mod, (nn.Linear, nn.Conv2d, nn.Embedding)):
                normal(p, W_STD if pname == "weight" else B_STD)
            elif isinstance(mod, nn.LayerNorm):
                normal(p, NORM_STD, 1.0) if pname == "weight" else normal(p, B_STD)
            elif cls.endswith("RMSNorm"):
                normal(p, NORM_STD, 1.0)
            elif pname == "class_embedding":
                normal(p, W_STD)
            elif pname == "image_newline":
                normal(p, NEWLINE_STD)
            else:
                raise RuntimeError(f"no init rule for {full} ({cls})")
            done.add(full)
    missing = {n for n, _ in model.named_parameters()} - done
    assert not missing, missing


def make_processor(kind, tokenizer):
    if kind == "llava_next_tiny":
        ip = LlavaNextImageProcessorPil(
            size={"shortest_edge": 84},
            crop_size={"height": 84, "width": 84},
            image_grid_pinpoints=TINY_PINPOINTS,
            resample=BICUBIC,
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
            do_convert_rgb=True,
        )
        # num_additional_image_tokens=1 (the CLS token) as in the llava-hf processor configs:
        # with the 5.x default 0 and strategy "default" the processor would emit one image token
        # too few.
        return LlavaNextProcessor(
            image_processor=ip,
            tokenizer=tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": 84},
        crop_size={"height": 84, "width": 84},
        resample=BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_and_save(kind, seed, out_dir, tokenizer):
    torch.manual_seed(seed)
    if kind == "llava_next_tiny":
        model = LlavaNextForConditionalGeneration(next_config())
    else:
        model = LlavaForConditionalGeneration(v15_config())
    randomize(model, seed)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.eval()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if kind == "llava_next_tiny":
        # mixed dtypes: the language model half (embeddings, decoder layers, final norm, lm_head)
        # in bfloat16; vision tower, projector and image_newline stay float32
        model.model.language_model.to(torch.bfloat16)
        model.lm_head.to(torch.bfloat16)
        # the embedding + lm_head are 2 MB each in bf16: 3MB shards give >= 2 shards
        model.save_pretrained(out_dir, max_shard_size="3MB")
    else:
        model.to(torch.float16)
        model.save_pretrained(out_dir, max_shard_size="1GB")
    processor = make_processor(kind, tokenizer)
    # transformers 5.x writes processor_config.json with the image processor nested inside it;
    # also write the flat preprocessor_config.json that the llava-hf hub repos have.
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    return model


def load_image(rel):
    im = Image.open(FIX / rel)
    im.load()
    return im


def topk2_margin(logits):
    top = torch.topk(logits.float(), 2)
    return (top.values[0] - top.values[1]).item(), top.indices[0].item()


@torch.no_grad()
def evaluate(kind, model_dir, tokenizer, template):
    """Reload the saved checkpoint in float32 and compute the references for the three images."""
    cls = LlavaNextForConditionalGeneration if kind == "llava_next_tiny" else LlavaForConditionalGeneration
    model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, (n, p.dtype)
    processor = make_processor(kind, tokenizer)
    reloaded = AutoProcessor.from_pretrained(model_dir)
    assert type(reloaded.image_processor) is type(processor.image_processor), type(reloaded.image_processor)
    cfg = model.config
    templated = template.format(prompt=PROMPT)
    prompt_ids = tokenizer(templated, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]

    # capture inputs_embeds that reach the language model (to check the image features placement)
    captured = {}

    def hook(mod, args, kwargs):
        captured["inputs_embeds"] = kwargs.get("inputs_embeds")

    h = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)

    cases, tensors = [], {}
    for ci, rel in enumerate(IMAGES):
        image = load_image(rel)
        enc = processor(images=image, text=templated, return_tensors="pt")
        # the processor saved next to the checkpoint reproduces the in-memory one
        enc2 = reloaded(images=image, text=templated, return_tensors="pt")
        assert set(enc.keys()) == set(enc2.keys()) and all(torch.equal(enc[k], enc2[k]) for k in enc)
        input_ids = enc["input_ids"]
        pixel_values = enc["pixel_values"]
        assert pixel_values.dtype == torch.float32
        extra = {}
        if kind == "llava_next_tiny":
            image_sizes = enc["image_sizes"]
            extra["image_sizes"] = image_sizes
            h_, w_ = image_sizes[0].tolist()
        else:
            h_, w_ = image.height, image.width
        assert [h_, w_] == [image.height, image.width]
        k = int((input_ids == IMAGE_TOKEN_ID).sum())
        ids = input_ids[0].tolist()
        # the expansion is in place: prompt_ids with the single <image> replaced by K copies
        pos = prompt_ids.index(IMAGE_TOKEN_ID)
        assert ids == prompt_ids[:pos] + [IMAGE_TOKEN_ID] * k + prompt_ids[pos + 1:], "unexpected expansion"

        # image features exactly as the model computes them
        img_out = model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            output_hidden_states=True,
            **extra,
        )
        feats = img_out.pooler_output
        feats = torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        assert feats.shape == (k, cfg.text_config.hidden_size), (feats.shape, k)
        vision_hidden = img_out.hidden_states[cfg.vision_feature_layer][:, 1:]
        assert len(img_out.hidden_states) == cfg.vision_config.num_hidden_layers + 1
        tiles = pixel_values.reshape(-1, 3, 84, 84).shape[0]
        assert vision_hidden.shape == (tiles, 36, cfg.vision_config.hidden_size), vision_hidden.shape

        # teacher-forced response log-probabilities
        full = torch.tensor([ids + response_ids])
        captured.clear()
        out = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values, **extra)
        emb = captured["inputs_embeds"][0]
        assert torch.equal(emb[torch.tensor(ids + response_ids) == IMAGE_TOKEN_ID], feats), "feature placement"
        logits = out.logits[0].float()
        p = len(ids)
        logp = torch.log_softmax(logits.double(), dim=-1)
        logprobs = [logp[p - 1 + i, t].item() for i, t in enumerate(response_ids)]
        last_logits = logits[p - 1].clone()

        # Mistral's sliding window: the same teacher-forced pass with a window of 16 keys, which
        # is far shorter than the sequence (so the window really cuts attention).
        window_logprobs = None
        if kind == "llava_next_tiny":
            lm_cfg = model.model.language_model.config
            assert lm_cfg.sliding_window is None
            lm_cfg.sliding_window = WINDOW
            out_w = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values, **extra)
            lm_cfg.sliding_window = None
            logp_w = torch.log_softmax(out_w.logits[0].double(), dim=-1)
            window_logprobs = [logp_w[p - 1 + i, t].item() for i, t in enumerate(response_ids)]
            assert max(abs(a - b) for a, b in zip(window_logprobs, logprobs)) > 1e-2, "window had no effect"

        # greedy generation
        attn = torch.ones_like(input_ids)
        gen = model.generate(
            input_ids=input_ids, attention_mask=attn, pixel_values=pixel_values, do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS, pad_token_id=PAD_TOKEN_ID, **extra,
        )
        greedy = gen[0, input_ids.shape[1]:].tolist()
        # manual (no cache) forward at each step: margin, and the cached decode must agree
        margins = []
        seq = list(ids)
        for t in greedy:
            x = torch.tensor([seq])
            lo = model(input_ids=x, attention_mask=torch.ones_like(x), pixel_values=pixel_values, **extra).logits[0, -1]
            m, arg = topk2_margin(lo)
            assert arg == t, f"cached generate picked {t}, full forward picks {arg}"
            margins.append(m)
            seq.append(t)
        if len(seq) == p:
            raise RuntimeError("empty generation")
        # also the logits at the last prompt position agree between the two forward passes
        assert torch.allclose(last_logits, model(input_ids=torch.tensor([ids]), pixel_values=pixel_values, **extra).logits[0, -1], atol=1e-4)

        case = {
            "image": rel,
            "prompt": PROMPT,
            "templated": templated,
            "prompt_ids": prompt_ids,
            "image_size": [h_, w_],
            "n_image_tokens": k,
            "n_tiles": tiles,
            "expanded_len": p,
            "response": RESPONSE,
            "response_ids": response_ids,
            "logprobs": logprobs,
            "greedy_ids": greedy,
            "greedy_text": tokenizer.decode(greedy, skip_special_tokens=True),
            "greedy_min_margin": min(margins),
            "greedy_margins": margins,
        }
        if window_logprobs is not None:
            case["sliding_window"] = WINDOW
            case["logprobs_sliding_window"] = window_logprobs
        if kind == "llava_next_tiny":
            bh, bw = select_best_resolution((h_, w_), cfg.image_grid_pinpoints)
            case["best_resolution"] = [bh, bw]
        cases.append(case)
        tensors[f"case{ci}.pixel_values"] = pixel_values.reshape(-1, 3, 84, 84).contiguous()
        tensors[f"case{ci}.image_features"] = feats.float().contiguous()
        tensors[f"case{ci}.vision_hidden"] = vision_hidden.float().contiguous()
        tensors[f"case{ci}.last_logits"] = last_logits.contiguous()
    h.remove()
    return cases, tensors


def acceptable(cases):
    for c in cases:
        if c["greedy_min_margin"] < MIN_MARGIN:
            return f"margin {c['greedy_min_margin']:.4g} < {MIN_MARGIN} ({c['image']})"
        if any(t >= IMAGE_TOKEN_ID for t in c["greedy_ids"]):
            return f"greedy ids include an added/unused id ({c['image']}: {c['greedy_ids']})"
        if len(c["greedy_ids"]) < MAX_NEW_TOKENS:
            return f"generation stopped early at EOS ({c['image']}: {c['greedy_ids']})"
    return None


def gen_model(kind, tokenizer):
    spec = MODELS[kind]
    out_dir = FIX / kind
    for attempt in range(MAX_SEED_TRIES):
        seed = spec["base_seed"] + attempt
        build_and_save(kind, seed, out_dir, tokenizer)
        cases, tensors = evaluate(kind, out_dir, tokenizer, spec["template"])
        why = acceptable(cases)
        if why is None:
            break
        print(f"{kind}: seed {seed} rejected: {why}")
    else:
        raise RuntimeError(f"{kind}: no acceptable seed in {MAX_SEED_TRIES} tries")
    print(f"{kind}: seed {seed}")
    exp = FIX / "expected"
    exp.mkdir(parents=True, exist_ok=True)
    doc = {
        "source": (
            f"scripts/gen_fixtures.py, transformers {transformers.__version__}, torch {torch.__version__}, "
            f"tokenizers {__import__('tokenizers').__version__}, pillow {PIL.__version__}, numpy {np.__version__}; "
            f"init seed {seed}; checkpoint reloaded with from_pretrained(dtype=torch.float32, "
            f"attn_implementation='eager'), CPU float32. logprobs = float64 log_softmax of the float32 logits. "
            f"greedy: generate(do_sample=False, max_new_tokens={MAX_NEW_TOKENS}); greedy_margins = top1-top2 "
            f"logit of a full (no-cache) forward pass at each step."
        ),
        "model_dir": kind,
        "seed": seed,
        "cases": cases,
    }
    (exp / f"{kind}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, str(exp / f"{kind}.safetensors"), metadata={"source": doc["source"]})
    for c in cases:
        print(f"  {c['image']}: K={c['n_image_tokens']} tiles={c['n_tiles']} greedy={c['greedy_ids']} "
              f"{c['greedy_text']!r} min_margin={c['greedy_min_margin']:.4f}")


def gen_pixels():
    out = FIX / "pixels"
    out.mkdir(parents=True, exist_ok=True)
    nxt = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=REAL_PINPOINTS, resample=BICUBIC,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
        do_rescale=False, do_normalize=False, do_convert_rgb=True,
    )
    clip = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=BICUBIC,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
        do_rescale=False, do_normalize=False, do_convert_rgb=True,
    )
    index = {
        "source": (
            f"scripts/gen_fixtures.py, transformers {transformers.__version__}, pillow {PIL.__version__}: "
            "LlavaNextImageProcessorPil (shortest_edge 336, crop 336, llava-v1.6-mistral-7b-hf pinpoints, "
            "bicubic) and CLIPImageProcessorPil (shortest_edge 336, crop 336, bicubic), both with "
            "do_rescale=False, do_normalize=False: the uint8 results of convert-to-RGB (alpha composited on "
            "white), resize, pad and crop. next336 = [1 + tiles, 3, 336, 336] (base image first), "
            "clip336 = [1, 3, 336, 336]."
        ),
        "pinpoints": REAL_PINPOINTS,
        "images": {},
    }
    for rel in IMAGES:
        im = load_image(rel)
        a = nxt(images=im, return_tensors="np")
        b = clip(images=im, return_tensors="np")
        res = {}
        for key, arr in (("next336", a["pixel_values"][0]), ("clip336", b["pixel_values"])):
            arr = np.asarray(arr)
            assert np.all(arr == np.round(arr)) and arr.min() >= 0 and arr.max() <= 255, key
            res[key] = torch.from_numpy(arr.astype(np.uint8)).contiguous()
        assert res["clip336"].shape == (1, 3, 336, 336)
        stem = Path(rel).stem
        save_file(res, str(out / f"{stem}.safetensors"))
        h, w = [int(v) for v in a["image_sizes"][0]]
        assert (h, w) == (im.height, im.width)
        bh, bw = select_best_resolution((h, w), REAL_PINPOINTS)
        tiles = res["next336"].shape[0]
        assert tiles == 1 + (bh // 336) * (bw // 336)
        index["images"][rel] = {
            "file": f"pixels/{stem}.safetensors",
            "mode": im.mode,
            "image_size": [h, w],
            "best_resolution": [bh, bw],
            "next336_shape": list(res["next336"].shape),
            "next336_dtype_before_cast": str(np.asarray(a["pixel_values"]).dtype),
            "clip336_shape": list(res["clip336"].shape),
        }
        print(f"pixels {rel}: {im.mode} {h}x{w} best {bh}x{bw} next336 {tuple(res['next336'].shape)}")
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def main():
    # one thread: tiny matrices, and multi-threaded BLAS is much slower on a busy 2-core machine
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tokenizer = AutoTokenizer.from_pretrained(str(TOK_DIR))
    assert tokenizer("[INST] <image>\n", add_special_tokens=True)["input_ids"][:8] == [1, 733, 16289, 28793, 28705, 32000, 28705, 13]
    gen_pixels()
    for kind in MODELS:
        gen_model(kind, tokenizer)


if __name__ == "__main__":
    main()
