"""Golden values from PyTorch for the small training pieces.

    python scripts/gen_torch_goldens.py
writes tests/fixtures/expected/adamw.json (torch.optim.AdamW, 3 steps, float32) and
tests/fixtures/expected/dpo_loss.json (sigmoid DPO and STIC's DPO, values and autograd gradients
with respect to the four sequence log-probs, float64).
"""
import json
from pathlib import Path

import torch

EXP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "expected"
OUT = EXP / "adamw.json"


def dpo_goldens():
    """-logsigmoid(beta * ((pc - pr) - (rc - rr))) - alpha * pc, as in TRL's sigmoid DPO and, with
    alpha = 1/1024, STIC's stic/dpo_trainer.py (yihedeng9/STIC@9511f1e)."""
    import torch.nn.functional as F
    cases = []
    for (pc, pr, rc, rr), beta, alpha in [
        ((-12.0, -15.0, -13.0, -14.0), 0.1, 0.0),
        ((-40.5, -22.25, -41.0, -20.0), 0.1, 1.0 / 1024),
        ((-3.0, -90.0, -5.0, -60.0), 0.5, 1.0 / 1024),
        ((-200.0, -1.0, -150.0, -2.0), 1.0, 0.0),
    ]:
        x = torch.tensor([pc, pr, rc, rr], dtype=torch.float64, requires_grad=True)
        z = (x[0] - x[1]) - (x[2] - x[3])
        loss = -F.logsigmoid(beta * z) - alpha * x[0]
        loss.backward()
        cases.append({"logps": [pc, pr, rc, rr], "beta": beta, "alpha": alpha, "loss": loss.item(),
                      "grad": x.grad.tolist(), "chosen_reward": beta * (pc - rc), "rejected_reward": beta * (pr - rr)})
    (EXP / "dpo_loss.json").write_text(json.dumps({
        "source": f"torch {torch.__version__}: -F.logsigmoid(beta * z) - alpha * policy_chosen_logps, autograd in float64",
        "cases": cases}, indent=1) + "\n")


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


def schedule_goldens():
    """Learning rates of transformers' cosine and linear schedules with warmup, per optimiser step."""
    import math
    import transformers
    out = []
    for kind, total, ratio in [("cosine", 3, 0.34), ("cosine", 20, 0.03), ("linear", 10, 0.25), ("cosine", 7, 0.0)]:
        warmup = math.ceil(ratio * total)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=0.01)
        make = transformers.get_cosine_schedule_with_warmup if kind == "cosine" else transformers.get_linear_schedule_with_warmup
        sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out.append({"schedule": kind, "total": total, "warmup_ratio": ratio, "lr": 0.01, "lrs": lrs})
    (EXP / "schedules.json").write_text(json.dumps({
        "source": f"transformers {transformers.__version__} get_{{cosine,linear}}_schedule_with_warmup, "
                  "num_warmup_steps = ceil(warmup_ratio * total) as TRL/HF Trainer compute it",
        "cases": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
    dpo_goldens()
    schedule_goldens()
