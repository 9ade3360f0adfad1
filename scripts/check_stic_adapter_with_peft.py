"""Round trip of an adapter trained by stic through PEFT (issue #5).

tests/fixtures/stic_dpo_adapter/ was written by
    stic train-dpo --model tests/fixtures/llava_next_tiny --data tests/fixtures/prefs/prefs.jsonl \
        --out OUT --lora-r 4 --lora-alpha 8 --lr 1e-2 --epochs 4 --warmup-ratio 0.1 --seed 1 \
        --sft-weight 0.0009765625
(adapter_config.json and adapter_model.safetensors copied from OUT), and
tests/fixtures/stic_dpo_projector_adapter/ by the same command with `--projector-lr 1e-2` added (the
projector trains too and is saved as PEFT's modules_to_save). This script loads an adapter with
PEFT onto the transformers model and records the response log-probs of every chosen and rejected
response of the preference file, which tests/llava_parity.rs compares with `stic score --adapter`.

    python scripts/check_stic_adapter_with_peft.py [NAME]   # NAME: stic_dpo_adapter (default) or
                                                            # stic_dpo_projector_adapter; writes
                                                            # tests/fixtures/expected/NAME.json
"""
import sys
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from gen_adapter_fixture import response_logprobs

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "stic_dpo_adapter"
    base = LlavaNextForConditionalGeneration.from_pretrained(FIX / "llava_next_tiny", dtype=torch.float32, attn_implementation="eager")
    proj_before = base.model.multi_modal_projector.linear_1.weight.detach().clone()
    model = PeftModel.from_pretrained(base, FIX / name).eval()
    cfg = json.loads((FIX / name / "adapter_config.json").read_text())
    if cfg.get("modules_to_save"):
        # PEFT swaps in the saved projector: the active one must differ from the base one.
        active = model.base_model.model.model.multi_modal_projector.modules_to_save["default"].linear_1.weight
        assert (active - proj_before).abs().max() > 1e-3, "the saved projector was not loaded"
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
            with torch.no_grad():
                logprobs = [v.item() for v in response_logprobs(model, enc, ids, resp)]
            cases.append({"image": "prefs/" + p["image"], "prompt": p["prompt"], "response": p[which], "logprobs": logprobs})
    (FIX / "expected" / f"{name}.json").write_text(json.dumps({
        "source": f"scripts/check_stic_adapter_with_peft.py: PeftModel.from_pretrained(llava_next_tiny float32 eager, "
                  f"{name}); transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}",
        "cases": cases}, indent=1) + "\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
