"""Reference outputs of transformers' diverse (group) beam search on the tiny LLaVA-1.5 fixture.

transformers 5 dropped group beam search from the library, so this script runs in its own venv
with the last 4.x that CSR's era used (pins in scripts/requirements-group-beam.txt):

    python3.11 -m venv /work/gbenv
    /work/gbenv/bin/pip install -r scripts/requirements-group-beam.txt
    # torch: reuse the fixture venv's torch 2.9.1 instead of downloading it again
    echo /root/fxenv/lib/python3.11/site-packages > /work/gbenv/lib/python3.11/site-packages/fxenv-torch.pth
    /work/gbenv/bin/python scripts/gen_group_beam_fixtures.py      # from the repo root

Versions these fixtures were made with: transformers 4.46.3, tokenizers 0.20.3,
huggingface-hub 0.36.2, torch 2.9.1 (+cu128 wheel, run on the CPU), Python 3.11.7.

Inputs: tests/fixtures/llava15_tiny reloaded in float32 with eager attention; the three images'
pixel values and prompt ids of tests/fixtures/expected/llava15_tiny.{json,safetensors} (made by
scripts/gen_fixtures.py), the `<image>` token expanded to the 36 feature rows as the processor
does. `generate(input_ids, pixel_values, num_beams, num_beam_groups, diversity_penalty,
num_return_sequences, eos_token_id, pad_token_id, length_penalty, max_new_tokens,
early_stopping=False, do_sample=False, output_scores=True, return_dict_in_generate=True)`.

The weights are random, so the real "." never comes up; each case's `eos` is a token the search
really generates: the token of a mid-sequence step of an exploratory run without it, so that
hypotheses close while the beams go on. Writes tests/fixtures/expected/group_beam.json: per case
the settings, the prompt ids (unexpanded), the image, the returned sequences (new tokens only, cut
after the first EOS; an open beam has exactly max_new_tokens tokens) and `sequences_scores`.
"""
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

assert transformers.__version__ == "4.46.3", transformers.__version__

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
IMAGE_TOKEN_ID = 32000
PAD_TOKEN_ID = 32001

SETTINGS = [
    # CSR's sample.py settings, fewer new tokens
    dict(name="csr", num_beams=5, num_beam_groups=5, diversity_penalty=3.0, num_return_sequences=5,
         length_penalty=1.0, max_new_tokens=14, eos_step=4),
    # several beams per group, a length penalty, fewer returned than beams
    dict(name="groups_of_2", num_beams=6, num_beam_groups=3, diversity_penalty=1.5, num_return_sequences=4,
         length_penalty=0.8, max_new_tokens=10, eos_step=3),
    # a frequent EOS: groups finish early and the search can stop before max_new_tokens
    dict(name="early", num_beams=4, num_beam_groups=4, diversity_penalty=0.5, num_return_sequences=3,
         length_penalty=1.0, max_new_tokens=24, eos_step=0),
]


def run(model, ids, pixels, s, eos):
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
        do_sample=False, num_beams=s["num_beams"], num_beam_groups=s["num_beam_groups"],
        diversity_penalty=s["diversity_penalty"], num_return_sequences=s["num_return_sequences"],
        length_penalty=s["length_penalty"], early_stopping=False, max_new_tokens=s["max_new_tokens"],
        eos_token_id=eos, pad_token_id=PAD_TOKEN_ID, output_scores=True, return_dict_in_generate=True,
    )
    seqs = []
    for row in out.sequences[:, ids.shape[1]:].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        else:
            assert len(row) == s["max_new_tokens"], row
        seqs.append(row)
    return seqs, out.sequences_scores.tolist(), len(out.scores)


@torch.no_grad()
def main():
    model = LlavaForConditionalGeneration.from_pretrained(FIX / "llava15_tiny", torch_dtype=torch.float32, attn_implementation="eager")
    # The fixture was saved by transformers 5 (vision tower keys without `vision_model.`): load the
    # weights by hand, every key accounted for.
    state = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v.float()
             for k, v in load_file(FIX / "llava15_tiny" / "model.safetensors").items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    ref = json.loads((FIX / "expected" / "llava15_tiny.json").read_text())
    tensors = load_file(FIX / "expected" / "llava15_tiny.safetensors")
    cases = []
    for ci, c in enumerate(ref["cases"]):
        k = c["n_image_tokens"]
        pos = c["prompt_ids"].index(IMAGE_TOKEN_ID)
        expanded = c["prompt_ids"][:pos] + [IMAGE_TOKEN_ID] * k + c["prompt_ids"][pos + 1:]
        ids = torch.tensor([expanded])
        pixels = tensors[f"case{ci}.pixel_values"]
        # the same image features as transformers 5 computed for the fixture
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = model.multi_modal_projector(hidden).reshape(-1, hidden.shape[-1])
        assert torch.allclose(feats, tensors[f"case{ci}.image_features"], atol=1e-5), "image features differ"
        for s in SETTINGS:
            # exploratory run with an EOS that is never generated (the BOS id)
            probe, _, _ = run(model, ids, pixels, s, 1)
            step = s["eos_step"]
            counts = {}
            for row in probe:
                counts[row[step]] = counts.get(row[step], 0) + 1
            eos = max(counts, key=lambda t: (counts[t], -t))
            seqs, scores, steps = run(model, ids, pixels, s, eos)
            n_closed = sum(1 for r in seqs if r[-1] == eos)
            cases.append({
                **{key: s[key] for key in s if key != "eos_step"},
                "image": c["image"], "prompt_ids": c["prompt_ids"], "eos": eos, "pad": PAD_TOKEN_ID,
                "sequences": seqs, "sequences_scores": scores, "steps_run": steps, "closed_by_eos": n_closed,
            })
            print(s["name"], c["image"], "eos", eos, "steps", steps, "closed", n_closed, [len(r) for r in seqs])
    for s in SETTINGS:
        assert any(c["closed_by_eos"] for c in cases if c["name"] == s["name"]), s["name"]
    assert any(c["steps_run"] < c["max_new_tokens"] for c in cases), "no search stopped early"
    out = {
        "source": "scripts/gen_group_beam_fixtures.py; transformers " + transformers.__version__ + ", torch " + torch.__version__,
        "model_dir": "llava15_tiny",
        "cases": cases,
    }
    (FIX / "expected" / "group_beam.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
