"""Round trip of an adapter trained by stic through PEFT (issue #5).

tests/fixtures/stic_dpo_adapter/ was written by
    stic train-dpo --model tests/fixtures/llava_next_tiny --data tests/fixtures/prefs/prefs.jsonl \
        --out OUT --lora-r 4 --lora-alpha 8 --lr 1e-2 --epochs 4 --warmup-ratio 0.1 --seed 1 \
        --sft-weight 0.0009765625
(adapter_config.json and adapter_model.safetensors copied from OUT). This script loads it with
PEFT onto the transformers model and records the response log-probs of every chosen and rejected
response of the preference file, which tests/llava_parity.rs compares with `stic score --adapter`.

    python scripts/check_stic_adapter_with_peft.py   # writes tests/fixtures/expected/stic_dpo_adapter.json
"""
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main():
    base = LlavaNextForConditionalGeneration.from_pretrained(FIX / "llava_next_tiny", dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, FIX / "stic_dpo_adapter").eval()
    processor = AutoProcessor.from_pretrained(FIX / "llava_next_tiny")
    tok = processor.tokenizer
    cases = []
    for line in (FIX / "prefs" / "prefs.jsonl").read_text().splitlines():
        p = json.loads(line)
        image = Image.open((FIX / "prefs" / p["image"]).resolve())
        templated = f"[INST] <image>\n{p['prompt']} [/INST]"
        enc = processor(images=image, text=templated, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        for which in ("chosen", "rejected"):
            resp = tok(p[which], add_special_tokens=False)["input_ids"]
            full = torch.tensor([ids + resp])
            with torch.no_grad():
                logits = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=enc["pixel_values"],
                               image_sizes=enc["image_sizes"]).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            n = len(ids)
            cases.append({"image": "prefs/" + p["image"], "prompt": p["prompt"], "response": p[which],
                          "logprobs": [logp[n - 1 + i, t].item() for i, t in enumerate(resp)]})
    (FIX / "expected" / "stic_dpo_adapter.json").write_text(json.dumps({
        "source": f"scripts/check_stic_adapter_with_peft.py: PeftModel.from_pretrained(llava_next_tiny float32 eager, "
                  f"stic_dpo_adapter); transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}",
        "cases": cases}, indent=1) + "\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
