"""A PEFT LoRA adapter on the tiny LLaVA-NeXT fixture, and transformers+PEFT's outputs with it.

    python scripts/gen_adapter_fixture.py     # after gen_fixtures.py; deterministic

Writes tests/fixtures/adapter_next_tiny/ (adapter_config.json, adapter_model.safetensors, saved by
PEFT's save_pretrained) and tests/fixtures/expected/adapter_next_tiny.json: for each test image, the
response log-probs and 8 greedy ids of the adapted model (PeftModel on the float32 checkpoint,
eager attention). The LoRA B matrices are random (PEFT initialises them to zero), so the adapter
changes the outputs; r=4, alpha=8 on q,k,v,o,gate,up,down of the language model only.
"""
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODEL = FIX / "llava_next_tiny"
OUT = FIX / "adapter_next_tiny"
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def response_logprobs(model, enc, ids, resp):
    """float64 log-probs of the response ids `resp` after the prompt `ids` (processor output `enc`)."""
    full = torch.tensor([ids + resp])
    logits = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=enc["pixel_values"],
                   image_sizes=enc["image_sizes"]).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return [logp[len(ids) - 1 + i, t] for i, t in enumerate(resp)]


def sft_conversation(processor, turns, image_path):
    """A multi-turn conversation as stic's train::sft_ids builds it: each human turn wrapped as
    "[INST] {text} [/INST]" and tokenized on its own (BOS before the first), each answer tokenized
    without special tokens, then EOS; labels -100 outside the answers. Returns (ids with one <image>,
    model inputs with the image expanded, labels expanded alike, processor output)."""
    tok = processor.tokenizer
    ids, labels = [], []
    for k, (q, a) in enumerate(turns):
        pid = tok(f"[INST] {q} [/INST]", add_special_tokens=(k == 0))["input_ids"]
        aid = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids += pid + aid
        labels += [-100] * len(pid) + aid
    enc = processor(images=Image.open(image_path), text="<image>", return_tensors="pt")
    k_img = int((enc["input_ids"] == 32000).sum())
    pos = ids.index(32000)
    full_ids = ids[:pos] + [32000] * k_img + ids[pos + 1:]
    full_labels = labels[:pos] + [-100] * k_img + labels[pos + 1:]
    return ids, full_ids, full_labels, enc


def main():
    torch.manual_seed(7)
    base = LlavaNextForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(OUT)
    # Keep the fixture free of machine paths and of PEFT's generated model card.
    acfg = json.loads((OUT / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = "llava_next_tiny"
    (OUT / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    (OUT / "README.md").unlink(missing_ok=True)

    # Reload as a user would: base checkpoint + adapter directory.
    base = LlavaNextForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, OUT).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    tok = processor.tokenizer
    expected = json.loads((FIX / "expected" / "llava_next_tiny.json").read_text())
    cases = []
    for c in expected["cases"]:
        image = Image.open(FIX / c["image"])
        enc = processor(images=image, text=c["templated"], return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        resp = c["response_ids"]
        with torch.no_grad():
            logprobs = [v.item() for v in response_logprobs(model, enc, ids, resp)]
            before = c["logprobs"]
            assert max(abs(a - b) for a, b in zip(logprobs, before)) > 0.1, "adapter had no effect"
            gen = model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=32001)
        cases.append({"image": c["image"], "templated": c["templated"], "response": c["response"],
                      "logprobs": logprobs, "greedy_ids": gen[0, len(ids):].tolist()})
    out = {"source": f"scripts/gen_adapter_fixture.py, transformers {transformers.__version__}, peft {peft.__version__}, "
                     f"torch {torch.__version__}; PeftModel.from_pretrained(llava_next_tiny float32 eager, adapter_next_tiny)",
           "cases": cases}
    (FIX / "expected" / "adapter_next_tiny.json").write_text(json.dumps(out, indent=1) + "\n")

    # Gradients of L = sum of the response log-probs (case 0) w.r.t. every LoRA A and B, by
    # autograd through transformers + PEFT in float32 (log-softmax in float64, as above).
    base = LlavaNextForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, OUT, is_trainable=True)
    model.train()  # lora_dropout is 0, so train mode changes nothing but enables grads
    c = expected["cases"][0]
    enc = processor(images=Image.open(FIX / c["image"]), text=c["templated"], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    loss = sum(response_logprobs(model, enc, ids, c["response_ids"]))
    loss.backward()
    grads = {}
    for name, prm in model.named_parameters():
        if prm.requires_grad:
            assert prm.grad is not None, name
            # named_parameters() says ...lora_A.default.weight; the saved file says ...lora_A.weight
            grads[name.replace(".default.weight", ".weight")] = prm.grad.detach().float().contiguous()
    assert len(grads) == 28, len(grads)
    from safetensors.torch import save_file
    save_file(grads, FIX / "expected" / "adapter_next_tiny_grads.safetensors",
              metadata={"loss": repr(loss.item()), "case": "0", "what": "d sum(response logprobs) / d LoRA weights"})
    print("grad loss", loss.item())

    # SFT: a two-turn conversation, ids built segment by segment (the recipe of stic's
    # train::sft_ids: each human turn wrapped as "[INST] {text} [/INST]" and tokenized on its own,
    # BOS before the first; each answer tokenized without special tokens, then EOS). Loss = HF's
    # mean cross-entropy over the answer tokens (labels -100 elsewhere); gradients w.r.t. LoRA.
    turns = [("<image>\nWhat is shown in this image?", "A red square and a blue circle."),
             ("What colour is the circle?", "It is blue.")]
    ids, full_ids, full_labels, enc = sft_conversation(processor, turns, FIX / "images/wide.jpg")
    model.zero_grad()
    out_sft = model(input_ids=torch.tensor([full_ids]), attention_mask=torch.ones(1, len(full_ids), dtype=torch.long),
                    pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"], labels=torch.tensor([full_labels]))
    out_sft.loss.backward()
    sgrads = {}
    for name, prm in model.named_parameters():
        if prm.requires_grad:
            sgrads[name.replace(".default.weight", ".weight")] = prm.grad.detach().float().contiguous()
    save_file(sgrads, FIX / "expected" / "adapter_next_tiny_sft_grads.safetensors",
              metadata={"loss": repr(out_sft.loss.item()), "ids": json.dumps(ids), "turns": json.dumps(turns),
                        "what": "HF mean CE over answer tokens (labels -100 elsewhere) and its LoRA gradients"})
    print("sft loss", out_sft.loss.item())
    print(json.dumps(cases, indent=1)[:1500])


if __name__ == "__main__":
    main()
