#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention as the side-by-side baseline of our attention kernels
(issue #4): the same shapes and the same FLOP / byte conventions as `benches/cuda_ops.rs`
(`attention_train` and `attention`), measured on the same GPU in the same device run.

    python3 scripts/baselines/attention_sdpa.py OUT.json            # on a GPU machine
    python3 scripts/baselines/attention_sdpa.py --smoke OUT.json    # tiny shapes, any device (CPU ok)

Needs only torch. Writes a markdown table to stdout and every measurement (with the device, torch
and CUDA versions) as JSON to OUT.json.

Prefill / training, bf16, (B, H, T, D) = (1, 32, 4096, 128), (4, 32, 2048, 128), (1, 16, 577, 64),
causal and not, with the flash backend forced (`sdpa_kernel(SDPBackend.FLASH_ATTENTION)`: an error,
never a silent fallback, if it cannot run):
  forward FLOPs  = 4 B T^2 H D, halved when causal (flash-attention's convention, as ours);
  backward FLOPs = 2.5 x forward; the backward is `torch.autograd.grad` of the forward's output
  (dq, dk, dv; the forward is not in the timed region).

Decode, bf16: one query row per sequence over a context of 4096 or 32768 keys, GQA H=32 Hkv=8
D=128, B = 1 and 8. GB/s counts each sequence's K and V once plus q and out (as our decode bench):
  bytes = 2 B ctx Hkv D (K, V) x 2 bytes + 2 B H D (q, out) x 2 bytes.
SDPA has no decode kernel, so several ways of asking for it are measured and the closest one
(fastest) is marked; each row says which backend and layout ran:
  flash+gqa       flash backend, k/v with Hkv heads, `enable_gqa=True`;
  flash+fold      flash backend, the H/Hkv query heads of a group folded into query rows
                  (q [B, Hkv, H/Hkv, D] over k/v [B, Hkv, ctx, D], no mask): exactly the same
                  result for one unmasked query row, each K/V head read once;
  flash+expand    flash backend, k/v repeated to H heads (done outside the timed region; the
                  kernel reads H/Hkv times the bytes counted);
  efficient+gqa, math+gqa   the other backends, when flash cannot run at all.
Timing: CUDA events around `iters` back-to-back calls after `warmup` calls, repeated `reps` times,
the median per-call time reported (on the CPU, for --smoke only, perf_counter).
"""
import argparse
import datetime
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

PREFILL_SHAPES = [(1, 32, 4096, 128), (4, 32, 2048, 128), (1, 16, 577, 64)]
DECODE_SHAPES = [(b, 32, 8, 128, ctx) for ctx in (4096, 32768) for b in (1, 8)]
SMOKE_PREFILL = [(1, 2, 16, 64), (2, 2, 9, 64)]
SMOKE_DECODE = [(b, 4, 2, 64, 32) for b in (1, 2)]


def timer(device, warmup, iters, reps):
    """Returns time_call(fn) -> median seconds per call of fn()."""

    def on_cuda(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        per_call = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            per_call.append(start.elapsed_time(end) / 1e3 / iters)
        return statistics.median(per_call)

    def on_cpu(fn):
        for _ in range(warmup):
            fn()
        per_call = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            per_call.append((time.perf_counter() - t0) / iters)
        return statistics.median(per_call)

    return on_cuda if device.type == "cuda" else on_cpu


def randn(shape, device, seed, requires_grad=False):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=torch.bfloat16)
    return x.requires_grad_(requires_grad)


def prefill(device, shapes, time_call):
    rows = []
    for b, h, t, d in shapes:
        for causal in (True, False):
            q, k, v = (randn((b, h, t, d), device, s, requires_grad=True) for s in (1, 2, 3))
            dout = randn((b, h, t, d), device, 4)
            fwd_flops = 4 * b * t * t * h * d / (2 if causal else 1)
            name = f"B={b},H={h},T={t},D={d}" + (",causal" if causal else "")
            for direction in ("fwd", "bwd"):
                row = {"kind": "prefill", "direction": direction, "shape": name, "B": b, "H": h, "T": t, "D": d, "causal": causal,
                       "backend": "flash", "flops": fwd_flops * (2.5 if direction == "bwd" else 1.0)}
                try:
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        if direction == "fwd":
                            with torch.no_grad():
                                s = time_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                        else:
                            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                            s = time_call(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
                            del out
                    row["seconds"] = s
                    row["tflops"] = row["flops"] / s / 1e12
                except RuntimeError as e:  # the flash backend refused this shape / device
                    row["error"] = str(e).splitlines()[0][:200]
                rows.append(row)
            del q, k, v, dout
    return rows


def decode(device, shapes, time_call):
    rows = []
    for b, h, hkv, d, ctx in shapes:
        g = h // hkv
        q = randn((b, h, 1, d), device, 5)
        k = randn((b, hkv, ctx, d), device, 6)
        v = randn((b, hkv, ctx, d), device, 7)
        nbytes = 2 * 2 * b * ctx * hkv * d + 2 * 2 * b * h * d
        variants = [
            ("flash+gqa", SDPBackend.FLASH_ATTENTION, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
            ("flash+fold", SDPBackend.FLASH_ATTENTION, lambda qf=q.reshape(b, hkv, g, d): F.scaled_dot_product_attention(qf, k, v)),
            ("flash+expand", SDPBackend.FLASH_ATTENTION, None),
            ("efficient+gqa", SDPBackend.EFFICIENT_ATTENTION, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
            ("math+gqa", SDPBackend.MATH, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
        ]
        name = f"B={b},ctx={ctx},H={h},Hkv={hkv},D={d}"
        got = []
        for variant, backend, fn in variants:
            if variant.startswith(("efficient", "math")) and any("seconds" in r for r in got):
                continue  # only when no flash variant ran
            row = {"kind": "decode", "shape": name, "B": b, "H": h, "Hkv": hkv, "D": d, "ctx": ctx, "variant": variant, "backend": variant.split("+")[0], "bytes": nbytes}
            try:
                with torch.no_grad(), sdpa_kernel(backend):
                    if variant == "flash+expand":
                        ke, ve = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
                        s = time_call(lambda: F.scaled_dot_product_attention(q, ke, ve))
                        del ke, ve
                    else:
                        s = time_call(fn)
                row["seconds"] = s
                row["gbps"] = nbytes / s / 1e9
            except RuntimeError as e:
                row["error"] = str(e).splitlines()[0][:200]
            got.append(row)
        ran = [r for r in got if "seconds" in r]
        if ran:
            min(ran, key=lambda r: r["seconds"])["best"] = True
        rows.extend(got)
        del q, k, v
    return rows


def check_fold(device):
    """The folded decode layout computes the same attention as enable_gqa (f32, default backend)."""
    b, h, hkv, d, ctx = 2, 8, 2, 16, 37
    q = torch.randn(b, h, 1, d, device=device)
    k, v = torch.randn(b, hkv, ctx, d, device=device), torch.randn(b, hkv, ctx, d, device=device)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1))
    got = F.scaled_dot_product_attention(q.reshape(b, hkv, h // hkv, d), k, v).reshape(b, h, 1, d)
    err = (got - want).abs().max().item()
    if err > 1e-5:
        raise SystemExit(f"the folded GQA decode layout differs from the expanded one by {err}")


def table(rows, env):
    out = [f"SDPA baseline: {env['device']}, torch {env['torch']} (CUDA {env['cuda']}), {env['date']}", ""]
    out += ["| op | shape | backend | time | achieved |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "prefill":
            op = f"sdpa {r['direction']}"
            achieved = f"{r['tflops']:.3g} TFLOP/s" if "tflops" in r else "did not run"
        else:
            op = "sdpa decode" + (" (best)" if r.get("best") else "")
            achieved = f"{r['gbps']:.3g} GB/s" if "gbps" in r else "did not run"
        backend = r.get("variant", r["backend"])
        t = f"{r['seconds'] * 1e6:.1f} us" if "seconds" in r else r.get("error", "")
        out.append(f"| {op} | {r['shape']} | {backend} | {t} | {achieved} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_json", help="where to write the measurements as JSON")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and few iterations (runs on the CPU too)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: the baseline needs a GPU (use --smoke to test the script on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 10)
    iters = args.iters if args.iters is not None else (2 if args.smoke else 20)
    reps = args.reps if args.reps is not None else (2 if args.smoke else 5)
    env = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "smoke": args.smoke,
        "timing": f"{'CUDA events' if cuda else 'perf_counter'}, {warmup} warmup, median of {reps} x {iters} calls",
    }
    torch.manual_seed(0)
    check_fold(device)
    time_call = timer(device, warmup, iters, reps)
    rows = prefill(device, SMOKE_PREFILL if args.smoke else PREFILL_SHAPES, time_call)
    rows += decode(device, SMOKE_DECODE if args.smoke else DECODE_SHAPES, time_call)
    print(table(rows, env))
    with open(args.out_json, "w") as f:
        json.dump({"env": env, "conventions": {
            "prefill_fwd_flops": "4 B T^2 H D, halved when causal",
            "prefill_bwd_flops": "2.5 x forward",
            "decode_bytes": "2 B ctx Hkv D x 2 (K, V once per sequence) + 2 B H D x 2 (q, out)",
        }, "rows": rows}, f, indent=1)
    # Not every variant of a decode shape can run; every prefill row must, and each decode shape
    # needs at least one variant that ran.
    missing = [r["shape"] + " " + r["direction"] for r in rows if r["kind"] == "prefill" and "seconds" not in r]
    missing += sorted({r["shape"] for r in rows if r["kind"] == "decode"} - {r["shape"] for r in rows if r["kind"] == "decode" and "seconds" in r})
    if missing:
        print(f"\nfailed: {', '.join(missing)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
