"""Projector gradients of the SFT loss on the tiny LLaVA-NeXT fixture, by transformers + PEFT.

    python scripts/gen_projector_grads.py   # after gen_adapter_fixture.py; deterministic

The model is llava_next_tiny (float32, eager) with adapter_next_tiny loaded trainable, and the
projector (multi_modal_projector: linear_1, GELU, linear_2) trainable in full, as stic trains it
with --projector-lr. The conversation, its ids and the loss are those of
expected/adapter_next_tiny_sft_grads.safetensors (HF mean cross-entropy over the answer tokens,
labels -100 elsewhere). The image, images/wide.jpg, is an AnyRes grid whose feature map is unpadded,
so the gradient flows back through the unpad, the grid layout and the base tile. Writes
tests/fixtures/expected/projector_sft_grads.safetensors with keys linear_1.weight, linear_1.bias,
linear_2.weight, linear_2.bias (the checkpoint's names under the projector).
"""
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from gen_adapter_fixture import sft_conversation

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main():
    base = LlavaNextForConditionalGeneration.from_pretrained(FIX / "llava_next_tiny", dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, FIX / "adapter_next_tiny", is_trainable=True)
    model.train()  # lora_dropout is 0: train mode only enables gradients
    proj = model.base_model.model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    processor = AutoProcessor.from_pretrained(FIX / "llava_next_tiny")
    sft = FIX / "expected" / "adapter_next_tiny_sft_grads.safetensors"
    from safetensors import safe_open
    with safe_open(sft, "pt") as f:
        meta = f.metadata()
    turns = json.loads(meta["turns"])
    ids, full_ids, full_labels, enc = sft_conversation(processor, turns, FIX / "images/wide.jpg")
    assert ids == json.loads(meta["ids"]), "the conversation's ids changed"
    k_img = len(full_ids) - len(ids) + 1
    out = model(input_ids=torch.tensor([full_ids]), attention_mask=torch.ones(1, len(full_ids), dtype=torch.long),
                pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"], labels=torch.tensor([full_labels]))
    out.loss.backward()
    assert abs(out.loss.item() - float(meta["loss"])) < 1e-6, (out.loss.item(), meta["loss"])
    grads = {n: p.grad.detach().float().contiguous() for n, p in proj.named_parameters()}
    assert sorted(grads) == ["linear_1.bias", "linear_1.weight", "linear_2.bias", "linear_2.weight"], sorted(grads)
    save_file(grads, FIX / "expected" / "projector_sft_grads.safetensors",
              metadata={"loss": repr(out.loss.item()), "k_image_rows": str(k_img),
                        "source": f"scripts/gen_projector_grads.py; transformers {transformers.__version__}, "
                                  f"peft {peft.__version__}, torch {torch.__version__}",
                        "what": "d (HF mean CE over answer tokens) / d projector parameters"})
    print("loss", out.loss.item(), "image rows", k_img, {n: float(g.abs().max()) for n, g in grads.items()})


if __name__ == "__main__":
    main()
