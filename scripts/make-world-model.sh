#!/usr/bin/env bash
# Rebuild the bundled world model (examples/world-model) from its seed:
#   bash scripts/make-world-model.sh [OUT]      (default OUT: examples/world-model)
# 1. the world it is trained on (the same seed writes the same bytes), 2. `stic world train`
# (the world CLIP, then LLaVA's two stages, all on the CPU), 3. the model's metrics on 100 held-out
# images (heldout_metrics.json, what tests/world_slow.rs compares a rebuild with). Only the
# checkpoint's files are kept in OUT; the stages stay in target/world-model-build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-examples/world-model}"
STIC="${STIC:-target/release/stic}"
BUILD="${BUILD:-target/world-model-build}"
# The settings of the bundled model (also in its world_train.json).
WORLD=(--n 2000 --seed 0)
TRAIN=(--seed 0 --hidden 96 --layers 3 --heads 4 --intermediate 256 --vision-hidden 64 --vision-layers 3
       --clip-epochs 10 --align-epochs 1 --instruct-epochs 3 --batch-size 8
       --align-train decoder,projector,vision --instruct-train decoder,projector,vision)
rm -rf "$BUILD"
"$STIC" world make --out "$BUILD/world" "${WORLD[@]}"
"$STIC" world train --data "$BUILD/world" --out "$BUILD/model" "${TRAIN[@]}" --quiet
"$STIC" world eval --model "$BUILD/model" --data "$BUILD/world" --limit 100 --out "$BUILD/eval" --quiet > "$BUILD/heldout_metrics.json"
mkdir -p "$OUT"
for f in config.json generation_config.json preprocessor_config.json special_tokens_map.json tokenizer.json \
         tokenizer_config.json model.safetensors world_train.json; do
  cp "$BUILD/model/$f" "$OUT/$f"
done
cp "$BUILD/heldout_metrics.json" "$OUT/heldout_metrics.json"
echo "world model in $OUT"
