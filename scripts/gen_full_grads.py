"""Full-parameter gradients and one AdamW step on the tiny fixtures, by transformers autograd.

    /root/fxenv/bin/python scripts/gen_full_grads.py   # deterministic, CPU, a few seconds

For llava15_tiny and llava_next_tiny (float32, eager attention), every weight of the language
model (embed_tokens, every layer's projections and norms, the final norm, lm_head) and the
projector (multi_modal_projector, in full) trains; the vision tower and image_newline are frozen
(stic's `--train decoder,projector`). Writes tests/fixtures/expected/full_{model}.safetensors with:

- `sft.{name}`: d loss / d parameter of the SFT loss (HF's mean cross-entropy over the answer
  tokens, labels -100 elsewhere) of the two-turn conversation about images/wide.jpg, its ids built
  as stic's train::sft_ids builds them (each human turn in the chat template, tokenized on its own
  with BOS before the first; answers without special tokens, then EOS);
- `dpo.{name}`: the gradient of plain DPO (beta 0.1) on the first pair of prefs/prefs.jsonl, the
  reference log-probs being the model's own (detached), response log-probs summed in float64;
- `adamw.{name}`: the parameters after one torch.optim.AdamW step (lr 1e-3, weight decay 0.1,
  default betas and eps) on the SFT gradients, over HF's two groups
  (Trainer.get_decay_parameter_names: no decay for biases and norms).

Names are stic's (`decoder.` + the name under the language model, `lm_head.weight` for the head;
`projector.` + the name under the projector). embed_tokens and lm_head ([32064, 32]) are stored in
part to keep the file small: `{name}@index` (row ids, as f32) and `{name}@rows` (those rows):
every row the gradient touches for embed_tokens (all other rows are exactly zero), and the
targets' rows plus every 127th row for lm_head, with `{name}@colsq`, the sum of squares over all V rows (per column).
"""
import json
from pathlib import Path

import torch
import transformers
from PIL import Image
from st_canonical import save_sorted
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, Trainer

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
LR, WD, BETA = 1e-3, 0.1, 0.1
TURNS = [("<image>\nWhat is shown in this image?", "A red square and a blue circle."),
         ("What colour is the circle?", "It is blue.")]


def template(kind, q):
    return f"[INST] {q} [/INST]" if kind == "next" else f"USER: {q} ASSISTANT:"


def expand(ids, k_img, labels=None):
    pos = ids.index(32000)
    out = ids[:pos] + [32000] * k_img + ids[pos + 1:]
    if labels is None:
        return out
    return out, labels[:pos] + [-100] * k_img + labels[pos + 1:]


def image_inputs(processor, path):
    enc = processor(images=Image.open(path), text="<image>", return_tensors="pt")
    k_img = int((enc["input_ids"] == 32000).sum())
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return k_img, extra


def stic_name(n):
    if n == "lm_head.weight":
        return "decoder.lm_head.weight"
    if n.startswith("model.language_model."):
        return "decoder." + n[len("model.language_model."):]
    if n.startswith("model.multi_modal_projector."):
        return "projector." + n[len("model.multi_modal_projector."):]
    raise ValueError(n)


def store(out, prefix, name, t, targets):
    """t (a gradient or a parameter) under prefix + name; the two [V, C] tensors in part."""
    t = t.detach().float().contiguous()
    if name == "decoder.embed_tokens.weight" and prefix != "adamw.":
        rows = torch.nonzero(t.abs().sum(1) > 0).flatten()
    elif name in ("decoder.embed_tokens.weight", "decoder.lm_head.weight"):
        rows = torch.tensor(sorted(set(targets) | set(range(0, t.shape[0], 127))))
    else:
        out[prefix + name] = t
        return
    out[f"{prefix}{name}@index"] = rows.float()
    out[f"{prefix}{name}@rows"] = t[rows].contiguous()
    out[f"{prefix}{name}@colsq"] = (t.double() ** 2).sum(0).float()


def main():
    torch.manual_seed(0)
    prefs = [json.loads(l) for l in (FIX / "prefs" / "prefs.jsonl").read_text().splitlines() if l.strip()]
    for kind, cls, fixture in [("15", LlavaForConditionalGeneration, "llava15_tiny"), ("next", LlavaNextForConditionalGeneration, "llava_next_tiny")]:
        model = cls.from_pretrained(FIX / fixture, dtype=torch.float32, attn_implementation="eager")
        model.train()  # no dropout in these configs; enables gradients
        processor = AutoProcessor.from_pretrained(FIX / fixture)
        tok = processor.tokenizer
        trained = {}
        for n, p in model.named_parameters():
            train = n.startswith("model.language_model.") or n.startswith("model.multi_modal_projector.") or n == "lm_head.weight"
            p.requires_grad_(train)
            if train:
                trained[n] = p
        out, meta = {}, {}

        # SFT
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
        sft_targets = [t for t in labels if t != -100]
        sft_grads = {n: p.grad.detach().clone() for n, p in trained.items()}
        for n, g in sft_grads.items():
            store(out, "sft.", stic_name(n), g, sft_targets)
        meta["sft_ids"] = json.dumps(ids)
        meta["sft_loss"] = repr(res.loss.item())

        # AdamW step on the SFT gradients, HF's decay grouping
        decay = set(Trainer.get_decay_parameter_names(None, model))
        groups = [{"params": [p for n, p in trained.items() if n in decay], "weight_decay": WD},
                  {"params": [p for n, p in trained.items() if n not in decay], "weight_decay": 0.0}]
        meta["no_decay"] = json.dumps(sorted(stic_name(n) for n in trained if n not in decay))
        model.zero_grad()

        # DPO on the first pair (policy = reference, so the rewards are 0 and the loss ln 2)
        pair = prefs[0]
        pk, pextra = image_inputs(processor, (FIX / "prefs" / pair["image"]).resolve())
        prompt = tok(template(kind, "<image>\n" + pair["prompt"]), add_special_tokens=True)["input_ids"]

        def logp(resp):
            r = tok(resp, add_special_tokens=False)["input_ids"]
            full = torch.tensor([expand(prompt + r, pk)])
            logits = model(input_ids=full, attention_mask=torch.ones_like(full), **pextra).logits[0]
            lp = torch.log_softmax(logits.double(), dim=-1)
            n = full.shape[1]
            return sum(lp[n - len(r) - 1 + i, t] for i, t in enumerate(r)), r

        pc, rc = logp(pair["chosen"])
        pr, rr = logp(pair["rejected"])
        margin = (pc - pc.detach()) - (pr - pr.detach())
        loss = -torch.nn.functional.logsigmoid(BETA * margin)
        loss.backward()
        for n, p in trained.items():
            store(out, "dpo.", stic_name(n), p.grad, rc + rr)
        meta["dpo_prompt_ids"] = json.dumps(prompt)
        meta["dpo_loss"] = repr(loss.item())
        meta["dpo_logps"] = json.dumps([pc.item(), pr.item()])

        for n, p in trained.items():
            p.grad = sft_grads[n]
        opt = torch.optim.AdamW(groups, lr=LR)
        opt.step()
        for n, p in trained.items():
            store(out, "adamw.", stic_name(n), p, sft_targets)
        meta.update({"lr": repr(LR), "weight_decay": repr(WD), "beta": repr(BETA),
                     "source": f"scripts/gen_full_grads.py; transformers {transformers.__version__}, torch {torch.__version__}"})
        path = FIX / "expected" / f"full_{fixture}.safetensors"
        save_sorted(out, path, meta)
        print(fixture, "sft loss", meta["sft_loss"], "dpo loss", meta["dpo_loss"], len(out), "tensors,", path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
