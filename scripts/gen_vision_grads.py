"""Vision-tower gradients (`--train vision`) and one AdamW step on the tiny fixtures, by autograd.

    /root/fxenv/bin/python scripts/gen_vision_grads.py   # deterministic, CPU, a few seconds

For llava15_tiny and llava_next_tiny (float32, eager attention), every vision-tower parameter has
requires_grad; the SFT loss is scripts/gen_full_grads.py's (the two-turn conversation about
images/wide.jpg, ids built as stic's train::sft_ids). LLaVA reads hidden_states[-2], so the last
layer and post_layernorm are not in the graph: they get no gradient and are not stored. Writes
tests/fixtures/expected/vision_{model}.safetensors with:

- `sft.vision.{name}`: d loss / d parameter, `name` under the tower (`embeddings.class_embedding`,
  `encoder.layers.0.mlp.fc1.weight`, ...), for every parameter the loss reaches;
- `adamw.vision.{name}`: the parameter after one torch.optim.AdamW step (lr 1e-3, weight decay
  0.1) on those gradients, over HF's groups (Trainer.get_decay_parameter_names), metadata
  `no_decay` listing the undecayed ones.
"""
import json
from pathlib import Path

import torch
import transformers
from st_canonical import save_sorted
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, Trainer

from gen_full_grads import FIX, LR, TURNS, WD, expand, image_inputs, template

TOWER = "model.vision_tower."


def main():
    torch.manual_seed(0)
    for kind, cls, fixture in [("15", LlavaForConditionalGeneration, "llava15_tiny"), ("next", LlavaNextForConditionalGeneration, "llava_next_tiny")]:
        model = cls.from_pretrained(FIX / fixture, dtype=torch.float32, attn_implementation="eager")
        model.train()
        processor = AutoProcessor.from_pretrained(FIX / fixture)
        tok = processor.tokenizer
        tower = {}
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(TOWER))
            if n.startswith(TOWER):
                tower[n] = p
        ids, labels = [], []
        for k, (q, a) in enumerate(TURNS):
            pid = tok(template(kind, q), add_special_tokens=(k == 0))["input_ids"]
            aid = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids += pid + aid
            labels += [-100] * len(pid) + aid
        k_img, extra = image_inputs(processor, FIX / "images" / "wide.jpg")
        full_ids, full_labels = expand(ids, k_img, labels)
        res = model(input_ids=torch.tensor([full_ids]), attention_mask=torch.ones(1, len(full_ids), dtype=torch.long),
                    labels=torch.tensor([full_labels]), **extra)
        res.loss.backward()
        out = {}
        reached = {n: p for n, p in tower.items() if p.grad is not None}
        for n, p in reached.items():
            out["sft.vision." + n[len(TOWER):]] = p.grad.detach().float().contiguous().clone()
        decay = set(Trainer.get_decay_parameter_names(None, model))
        groups = [{"params": [p for n, p in reached.items() if n in decay], "weight_decay": WD},
                  {"params": [p for n, p in reached.items() if n not in decay], "weight_decay": 0.0}]
        torch.optim.AdamW(groups, lr=LR).step()
        for n, p in reached.items():
            out["adamw.vision." + n[len(TOWER):]] = p.detach().float().contiguous().clone()
        meta = {"sft_ids": json.dumps(ids), "sft_loss": repr(res.loss.item()), "lr": repr(LR), "weight_decay": repr(WD),
                "no_decay": json.dumps(sorted("vision." + n[len(TOWER):] for n in reached if n not in decay)),
                "unreached": json.dumps(sorted("vision." + n[len(TOWER):] for n in tower if n not in reached)),
                "source": f"scripts/gen_vision_grads.py; transformers {transformers.__version__}, torch {torch.__version__}"}
        path = FIX / "expected" / f"vision_{fixture}.safetensors"
        save_sorted(out, path, meta)
        print(fixture, "sft loss", meta["sft_loss"], len(reached), "parameters reached,", len(tower) - len(reached), "not;", path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
