#!/usr/bin/env bash
# The TRL + PEFT DPO baseline of issue #6 (scripts/baselines/trl_dpo.py), made ready for one device
# call of its own, separate from our engine's `.gpu/` run (scripts/gpu-run.sh):
#
#   bash scripts/gpu-baselines.sh           # downloads the "carried" wheels of
#                                           # scripts/baselines/requirements-trl.txt for the GPU
#                                           # machine's Python (3.12, x86-64) into .gpu-trl/wheels/
#                                           # and writes .gpu-trl/run.sh
#   then, with the device tool:  run(carry=[".gpu-trl"], command="bash .gpu-trl/run.sh")
#
# .gpu-trl/run.sh installs the wheels there (pip --no-index --no-deps into a temporary
# .../site-packages), puts them on PYTHONPATH, prints the version of every package the baseline
# uses, and runs trl_dpo.py twice on the random-weight LLaVA-NeXT-Mistral-7B: with gradient
# checkpointing (TRL's default; the baseline, $OUT/trl-dpo.json) and without (faster where it fits
# in memory; $OUT/trl-dpo-no-ckpt.json). The log is $OUT/trl-dpo.log. Both take a few minutes.
#
#   bash scripts/gpu-baselines.sh --smoke   # here, on the CPU: every pinned wheel for $PYTHON
#                                           # (default /root/fxenv/bin/python) into
#                                           # .gpu-trl-smoke/wheels/ (not under .gpu-trl/: its
#                                           # pyarrow alone is 55 MB), installed into a temporary
#                                           # site-packages, then trl_dpo.py --smoke on the tiny
#                                           # fixture (2 steps); result in .gpu-trl-smoke/smoke.json
#
# Only the package index is reached (pip download); nothing is installed into any environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQ=scripts/baselines/requirements-trl.txt
GPU_PYTHON_VERSION="${GPU_PYTHON_VERSION:-3.12}"  # python3 on the GPU image (.library/device/KINDS.md)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

pins() {  # pins marked with one of the given tags, as NAME==VERSION
  python3 - "$REQ" "$@" <<'PY'
import re, sys
path, tags = sys.argv[1], set(sys.argv[2:])
for line in open(path):
    m = re.match(r"\s*([A-Za-z0-9_.\-]+==[A-Za-z0-9_.\-]+)\s*#\s*(\w+)", line)
    if m and m.group(2) in tags:
        print(m.group(1))
PY
}

download() {  # python-version dir pins...
  local pyver="$1" dir="$2"; shift 2
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${PLATFORMS[@]}" -d "$dir" "$@"
  for p in "$@"; do  # one wheel per pin, no strays
    n="${p%%==*}"; n="${n//-/_}"
    compgen -G "$dir/${n}-*.whl" >/dev/null || compgen -G "$dir/${n,,}-*.whl" >/dev/null ||
      { echo "no wheel for $p in $dir" >&2; exit 1; }
  done
  ls -la "$dir"
  echo "wheels: $(du -sh "$dir" | cut -f1)"
}

if [[ "${1:-}" == --smoke ]]; then
  PYTHON="${PYTHON:-/root/fxenv/bin/python}"
  pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  mapfile -t all < <(pins carried smoke)
  download "$pyver" .gpu-trl-smoke/wheels "${all[@]}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # The folder's path must contain "site-packages": see run.sh below.
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$tmp/site-packages" \
    .gpu-trl-smoke/wheels/*.whl
  PYTHONPATH="$tmp/site-packages" PYTHONUNBUFFERED=1 "$PYTHON" scripts/baselines/trl_dpo.py --smoke \
    --config tests/fixtures/llava_next_tiny --out .gpu-trl-smoke/smoke.json
  exit 0
fi

mapfile -t carried < <(pins carried)
[[ ${#carried[@]} -gt 0 ]] || { echo "no carried pins in $REQ" >&2; exit 1; }
rm -rf .gpu-trl
download "$GPU_PYTHON_VERSION" .gpu-trl/wheels "${carried[@]}"

cat > .gpu-trl/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (written by scripts/gpu-baselines.sh):
#   run(carry=[".gpu-trl"], command="bash .gpu-trl/run.sh")
set -uo pipefail
out="${OUT:-.gpu-trl/out}"
mkdir -p "$out"
log="$out/trl-dpo.log"
# The target's path must contain "site-packages": dill, which datasets hashes with, pickles by value
# every module whose file lies elsewhere, and then the fingerprint of any Dataset fails
# ("Can't pickle <class 'MonthDayNano'>"; dill's _is_builtin_module).
site="$(mktemp -d)/site-packages"
export PYTHONUNBUFFERED=1
main() {
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu-trl/wheels/*.whl ||
    { echo "== cannot install the carried wheels"; return 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  python3 - <<'PY'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for n in ["torch", "torchvision", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "pandas",
          "xxhash", "dill", "multiprocess", "fsspec", "huggingface_hub", "yaml", "psutil", "jinja2", "PIL"]:
    try:
        m = importlib.import_module(n)
        print(f"  {n} {getattr(m, '__version__', '?')} {getattr(m, '__file__', '')}")
    except Exception as e:
        print(f"  {n} MISSING ({type(e).__name__}: {e})")
try:
    import pyarrow
    if int(pyarrow.__version__.split(".")[0]) < 24:
        print(f"  note: datasets 5.2.0 asks for pyarrow >= 24; this machine has {pyarrow.__version__}")
except Exception:
    pass
PY
  echo "== TRL DPOTrainer + PEFT LoRA, LLaVA-NeXT-Mistral-7B random weights, gradient checkpointing on (the baseline)"
  python3 scripts/baselines/trl_dpo.py --out "$out/trl-dpo.json"
  local rc=$?
  echo "== exit $rc"
  echo "== the same without gradient checkpointing (faster where it fits; an out-of-memory exit is a result too)"
  python3 scripts/baselines/trl_dpo.py --no-gradient-checkpointing --out "$out/trl-dpo-no-ckpt.json"
  echo "== exit $?"
  return $rc
}
main 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
RUN
chmod +x .gpu-trl/run.sh
echo
echo "ready: run(carry=[\".gpu-trl\"], command=\"bash .gpu-trl/run.sh\")"
echo "carried: $(du -sh .gpu-trl | cut -f1) (.gpu-trl), working tree: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1)"
