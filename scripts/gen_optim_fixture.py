"""torch.optim.AdamW golden values: 3 steps on fixed parameters and gradients, float32.

    python scripts/gen_optim_fixture.py   # writes tests/fixtures/expected/adamw.json
"""
import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "expected" / "adamw.json"


def main():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(37, generator=g, dtype=torch.float32)
    grads = [torch.randn(37, generator=g, dtype=torch.float32) * s for s in (1.0, 0.1, 3.0)]
    cfg = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], foreach=False, **cfg)
    steps = []
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
        steps.append(p.detach().tolist())
    OUT.write_text(json.dumps({
        "source": f"torch {torch.__version__} torch.optim.AdamW(foreach=False), float32",
        "config": {"lr": cfg["lr"], "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.05},
        "params": p0.tolist(), "grads": [x.tolist() for x in grads], "after_step": steps,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
