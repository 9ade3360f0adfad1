"""Record transformers' CLIP training gradients for tests/clip_train.rs (issue #17, item 6).

    /root/fxenv/bin/python scripts/gen_clip_grads.py        # from the repo root

Pins: scripts/requirements-fixtures.txt. Deterministic: CPU, float32, eager attention, no dropout.

Loads tests/fixtures/clip_tiny (scripts/gen_clip_fixtures.py) and runs two backward passes:
1. `CLIPModel(input_ids, attention_mask, pixel_values, return_loss=True)` on the 3 images of
   IMAGES and the 3 texts of TEXTS (padded with EOS, as the tokenizer pads): the symmetric
   contrastive loss over exp(logit_scale) * cos, and the gradient of every parameter;
2. the vision tower alone: sum of squares of `hidden_states[-2]` (the output of the next-to-last
   layer, what LLaVA reads), and the gradient of every vision parameter it reaches.

Writes tests/fixtures/expected/clip_tiny_grads.safetensors (float32):
- `loss` [], `input_ids` [3, T] (as float, unpadded length in `lengths` [3]),
- `grad.<name>` for every parameter (HF names) of pass 1,
- `vision_sumsq` [], `vgrad.<name>` for every parameter with a gradient in pass 2.
The pixels are not stored: the test makes them from the same files with `image::preprocess_clip`
(equal to CLIPImageProcessor's, tests/image_preprocess.rs).
"""
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODEL = FIX / "clip_tiny"
OUT = FIX / "expected" / "clip_tiny_grads.safetensors"
IMAGES = ["images/wide.jpg", "images/tall.png", "images/gray.png"]
TEXTS = [
    "A large red circle and a small blue star on a grey background.",
    "two squares",
    "A small white ring, a large green triangle and a small black cross on a beige background.",
]


def main():
    torch.manual_seed(0)
    model = CLIPModel.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").train()
    ip = CLIPImageProcessorPil.from_pretrained(MODEL)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(MODEL / "tokenizer.json"))
    eos = model.config.text_config.eos_token_id
    ids = [tok(t)["input_ids"] for t in TEXTS]
    assert all(i[-1] == eos for i in ids), ids
    t = max(len(i) for i in ids)
    input_ids = torch.tensor([i + [eos] * (t - len(i)) for i in ids])
    attention_mask = torch.tensor([[1] * len(i) + [0] * (t - len(i)) for i in ids])
    pixels = torch.cat([ip(Image.open(FIX / f), return_tensors="pt")["pixel_values"] for f in IMAGES])

    out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, return_loss=True)
    out.loss.backward()
    tensors = {"loss": out.loss.detach().clone(), "input_ids": input_ids.float(),
               "lengths": torch.tensor([float(len(i)) for i in ids])}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        tensors[f"grad.{name}"] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)

    hs = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    sumsq = (hs ** 2).sum()
    sumsq.backward()
    tensors["vision_sumsq"] = sumsq.detach().clone()
    n = 0
    for name, p in model.vision_model.named_parameters():
        if p.grad is not None:
            tensors[f"vgrad.vision_model.{name}"] = p.grad.detach().clone()
            n += 1
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT))
    print(f"wrote {OUT}: loss {out.loss.item():.6f}, sumsq {sumsq.item():.4f}, {n} vision grads, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
