"""Build a tiny random HF `CLIPModel` checkpoint with transformers and record transformers' outputs.

    /root/fxenv/bin/python scripts/gen_clip_fixtures.py        # from the repo root

Pins: scripts/requirements-fixtures.txt (+ open_clip_torch, installed --no-deps, for the merges; see
scripts/make_clip_tokenizer.py). Deterministic: fixed seed, CPU, float32, eager attention.

Writes tests/fixtures/clip_tiny/:
- config.json, model.safetensors (float32): CLIPModel, text 32 wide x 2 layers x 2 heads, vocabulary
  768 (a CLIP BPE tokenizer cut to its first 254 merges: 512 byte symbols + 254 merges + BOS + EOS,
  built by make_clip_tokenizer.build), 77 positions, eos_token_id 767 (the non-legacy pooling: first
  EOS); vision 32 wide x 2 layers at the real 336 px / patch 14 geometry (577 positions);
  projection_dim 24; logit_scale = 2.6592 (transformers' init value: exp = 14.28, so a scorer that
  assumed 100 would fail).
- tokenizer.json (the cut tokenizer), preprocessor_config.json (`CLIPImageProcessorPil`: shortest
  edge 336, bicubic, center crop 336, CLIP mean/std, as openai/clip-vit-large-patch14-336).
- expected.json: {"texts", "input_ids" (truncation=True, max_length=77, unpadded),
  "images": [{"file", "image_embeds" [P], "scores" [len(texts)]}], "text_embeds" [[P]...],
  "logit_scale"}: `get_image_features` / `get_text_features` (projected, not normalised) and
  `logits_per_image` of one forward over the padded batch of all texts.
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_clip_tokenizer import BOS, EOS, MAX_LENGTH, build, transformers_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "clip_tiny"
N_MERGES = 254
IMAGES = ["images/wide.jpg", "images/tall.png", "images/gray.png"]
TEXTS = [
    "a photo of a cat",
    "A red square and a blue circle on a striped background.",
    "",
    "it's 3 o'clock, naïve café!",
    "a cat <|endoftext|> and a dog",
    " ".join(["there is a red square and a blue circle on the striped background"] * 4),
]
SEED = 0
W_STD, B_STD, NORM_STD = 0.2, 0.1, 0.1


def randomize(model, seed):
    """Wide random values for every parameter (deterministic in module order), logit_scale kept."""
    g = torch.Generator().manual_seed(seed)

    def normal(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean)

    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Embedding)):
                normal(p, W_STD if pname == "weight" else B_STD)
            elif isinstance(mod, nn.LayerNorm):
                normal(p, NORM_STD, 1.0) if pname == "weight" else normal(p, B_STD)
            elif pname == "class_embedding":
                normal(p, W_STD)
            elif pname != "logit_scale":
                raise RuntimeError(f"no init rule for {mname}.{pname}")


def main():
    torch.manual_seed(SEED)
    tok, vocab, merges = build(N_MERGES)
    hf_tok = transformers_tokenizer(vocab, merges)
    v = len(vocab)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
                         bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=336, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=24,
        logit_scale_init_value=2.6592,
    )
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        randomize(model, SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    tok.save(str(OUT / "tokenizer.json"), pretty=False)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
                               image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    ip.save_pretrained(OUT)

    model = CLIPModel.from_pretrained(OUT, dtype=torch.float32, attn_implementation="eager").eval()
    ids_unpadded = [hf_tok(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in TEXTS]
    for t, ids in zip(TEXTS, ids_unpadded):
        assert tok.encode(t).ids[: len(ids) - 1] == ids[:-1], t
    assert max(len(i) for i in ids_unpadded) == MAX_LENGTH, "one text must be truncated"
    batch = hf_tok(TEXTS, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    images = []
    with torch.no_grad():
        text_embeds = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        for f in IMAGES:
            img = Image.open(FIX / f)
            px = ip(img, return_tensors="pt")["pixel_values"]
            image_embeds = model.get_image_features(pixel_values=px).pooler_output
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=px)
            images.append({"file": f, "image_embeds": image_embeds[0].tolist(), "scores": out.logits_per_image[0].tolist()})
    doc = {
        "source": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager attention",
        "texts": TEXTS,
        "input_ids": ids_unpadded,
        "text_embeds": text_embeds.tolist(),
        "logit_scale": model.logit_scale.item(),
        "images": images,
    }
    (OUT / "expected.json").write_text(json.dumps(doc, indent=1) + "\n")
    spread = [max(i["scores"]) - min(i["scores"]) for i in images]
    print(f"wrote {OUT}; score spread per image {spread}")


if __name__ == "__main__":
    main()
