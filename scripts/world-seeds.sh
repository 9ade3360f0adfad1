#!/usr/bin/env bash
# Self-training in the world over seeds (docs/WORLD.md): `stic run` from the bundled world model
# with seeds 0..N-1, then each metric before and after each stage, mean and standard deviation over
# the seeds, and the companion hallucinations and "yes" rates behind them.
#   bash scripts/world-seeds.sh [N] [CONFIG]
# N: default 3. CONFIG: default the embedded STIC run (examples/world.toml; about 1.5 minutes a seed
# on 2 cores); examples/world-csr.toml runs CSR (its world CLIP is trained once, by seed 0's run, and
# reused by the others: the CLIP's seed is not the run's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-3}"
CONFIG="${2:-}"
STIC="${STIC:-target/release/stic}"
tag="$(basename "${CONFIG:-world}" .toml)"
for ((s = 0; s < N; s++)); do
  out="target/$tag-s$s"
  if [[ -n "$CONFIG" && $s -gt 0 && -f "target/$tag-s0/0-clip/stage.json" && ! -e "$out/0-clip" ]]; then
    mkdir -p "$out" && cp -r "target/$tag-s0/0-clip" "$out/0-clip"
  fi
  mkdir -p "$out"
  "$STIC" run ${CONFIG:+--config "$CONFIG"} --quiet --seed "$s" --out "$out" > /dev/null 2> "$out/run.log"
done
python3 - "$N" "$tag" <<'PY'
import json, statistics, sys
n, tag = int(sys.argv[1]), sys.argv[2]
runs = [json.load(open(f"target/{tag}-s{s}/summary.json"))["metrics"] for s in range(n)]
stages = [k for k in runs[0] if k != "base"]
keys = ["chair_i", "chair_s", "recall", "pope_f1", "count_acc", "mentions", "hallucinated_companions", "pope_precision", "adversarial_yes_rate", "random_yes_rate"]
print(f"{'metric':<24}{'base':>10}" + "".join(f"{m:>22}" for m in stages) + f"   (mean ± sd over {n} seeds)")
for k in keys:
    row = f"{k:<24}{runs[0]['base'][k]:>10.4f}"
    for m in stages:
        v = [r[m][k] for r in runs]
        sd = statistics.stdev(v) if n > 1 else 0.0
        row += f"{statistics.mean(v):>13.4f} ± {sd:<6.4f}"
    print(row)
PY
