#!/usr/bin/env bash
# STIC in the world over seeds (docs/WORLD.md "STIC in the world"): `stic run` from the bundled
# world model with STIC seeds 0..N-1, then each metric before and after STIC, mean and standard
# deviation over the seeds, and the companion hallucinations and "yes" rates behind them.
#   bash scripts/world-seeds.sh [N]     (default 3; about 1.5 minutes a seed on 2 cores)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-3}"
STIC="${STIC:-target/release/stic}"
for ((s = 0; s < N; s++)); do
  "$STIC" run --quiet --seed "$s" --out "target/world-run-s$s" > /dev/null
done
python3 - "$N" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
runs = [json.load(open(f"target/world-run-s{s}/summary.json"))["metrics"] for s in range(n)]
keys = ["chair_i", "chair_s", "recall", "pope_f1", "count_acc", "hallucinated_companions", "adversarial_yes_rate", "random_yes_rate"]
print(f"{'metric':<24}{'base':>10}{'after DPO':>22}{'after SFT':>22}   (mean ± sd over {n} STIC seeds)")
for k in keys:
    row = f"{k:<24}{runs[0]['base'][k]:>10.4f}"
    for m in ["stic_stage1", "stic_stage2"]:
        v = [r[m][k] for r in runs]
        sd = statistics.stdev(v) if n > 1 else 0.0
        row += f"{statistics.mean(v):>13.4f} ± {sd:<6.4f}"
    print(row)
PY
