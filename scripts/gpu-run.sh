#!/usr/bin/env bash
# Build, on this GPU-less machine, everything a GPU session runs, into .gpu/ (git-ignored), so that
# one `device run` call validates it all. The GPU machines have no Rust; they are x86-64 like
# this one, so the binaries travel as they are (stripped, to stay under the 64 MiB carry limit).
#
#   bash scripts/gpu-run.sh            # builds .gpu/ and prints the device call
#
# Only what needs a GPU travels (the CPU tests run in CI): the CLI, the CUDA test binaries
# (cuda_parity, cuda_model, cuda_train, and cli for `stic check`'s exit status) and the CUDA benches, packed
# into .gpu/bin.tar.xz and unpacked to a temporary folder there.
#
# Then, with the device tool:  run(carry=[".gpu"], command="bash .gpu/run.sh")
# .gpu/run.sh runs `stic check`, `stic generate --device cuda` (tiny fixture, random 7B),
# `stic profile` on a random 7B at batch 1, 8, 64, every test binary (CPU, CUDA parity, the
# model on CUDA vs the CPU; fixtures come with the working tree) and the criterion benches
# (cpu_ops; cuda_ops: every CUDA op at 7B / CLIP-L shapes against the measured HBM bandwidth and
# the bf16 peak; cuda_model: AnyRes prefill and decode at batch 1, 8, 64 against the roofline),
# then PyTorch's scaled_dot_product_attention (flash backend) at the attention benches' shapes
# (scripts/baselines/attention_sdpa.py, the GPU machine's python3 + torch), and leaves the full
# log in $OUT/gpu-run.log, the bench summaries in $OUT/cuda-*bench.md and the SDPA baseline in
# $OUT/attention-sdpa.md and .json.
# `matmul` needs cuBLASLt (libcublasLt.so.13 or .12, loaded at run time; far too large to carry):
# run.sh looks for it on the GPU machine and puts its folder on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export NVCC="${NVCC:-$(bash scripts/install-cuda-toolkit.sh | tail -n 1)}"

# The binaries that need the GPU: the CLI, the CUDA test binaries (`cli` runs `stic check` through
# STIC_BIN) and the CUDA benches. The CPU-only tests run in CI. They are packed into one xz
# archive (each binary links the whole crate; packed they fit the 64 MiB carry limit).
GPU_TESTS=" cuda_parity cuda_model cuda_train cli "
GPU_BENCHES=" cuda_ops cuda_model cuda_train "
rm -rf .gpu && mkdir -p .gpu/stage/tests .gpu/stage/benches
list_executables() {  # cargo --message-format=json on stdin -> "name path" per built executable
  python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] is not None:
        print(m["target"]["name"], m["executable"], ",".join(m["target"]["kind"]))
'
}
cargo build --release --features cuda --bin stic
cp target/release/stic .gpu/stage/stic
cargo test --release --features cuda --no-run --message-format=json 2>/dev/null | list_executables |
  while read -r name exe kind; do
    if [[ "$kind" != bin && "$GPU_TESTS" == *" $name "* ]]; then cp "$exe" ".gpu/stage/tests/$name"; fi
  done
cargo bench --features cuda --no-run --message-format=json 2>/dev/null | list_executables |
  while read -r name exe kind; do
    if [[ "$kind" == bench && "$GPU_BENCHES" == *" $name "* ]]; then cp "$exe" ".gpu/stage/benches/$name"; fi
  done
strip .gpu/stage/stic .gpu/stage/tests/* .gpu/stage/benches/* 2>/dev/null || true
for n in $GPU_TESTS; do [[ -x .gpu/stage/tests/$n ]] || { echo "test binary $n was not built" >&2; exit 1; }; done
for n in $GPU_BENCHES; do [[ -x .gpu/stage/benches/$n ]] || { echo "bench binary $n was not built" >&2; exit 1; }; done
ls -la .gpu/stage .gpu/stage/tests .gpu/stage/benches
tar -C .gpu/stage -cJf .gpu/bin.tar.xz .
rm -rf .gpu/stage

cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see scripts/gpu-run.sh).
set -uo pipefail
bin="$(mktemp -d)"
tar -C "$bin" -xJf .gpu/bin.tar.xz || { echo "cannot unpack .gpu/bin.tar.xz" >&2; exit 1; }
# STIC_REQUIRE_CUDA: a test that finds no device fails instead of printing its skip line.
export STIC_FIXTURES="$PWD/tests/fixtures" STIC_BIN="$bin/stic" STIC_REQUIRE_CUDA=1
log="${OUT:-.}/gpu-run.log"
fail=0
# cuBLASLt for `matmul`: the loader's cache first, then the usual toolkit and wheel folders.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
           /usr/lib/x86_64-linux-gnu /opt/conda/lib /usr/local/lib/python3*/dist-packages/nvidia/cu*/lib \
           /usr/local/lib/python3*/{dist,site}-packages/nvidia/cublas/lib; do
    if compgen -G "$d/libcublasLt.so*" >/dev/null; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      break
    fi
  done
fi
{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  echo "== libcublasLt: $(ldconfig -p 2>/dev/null | grep -m1 -o 'libcublasLt\.so[.0-9]*' || echo 'not in the loader cache') LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "== stic check"; "$bin/stic" check || fail=1
  # A random-weights llava-v1.6-mistral-7b (the hub's configs, the fixture tokenizer).
  m7b="$(mktemp -d)"
  cp tests/fixtures/configs/llava-v1.6-mistral-7b-hf.json "$m7b/config.json"
  cp tests/fixtures/configs/llava-v1.6-mistral-7b-hf.preprocessor_config.json "$m7b/preprocessor_config.json"
  cp tests/fixtures/tokenizer/tokenizer.json tests/fixtures/tokenizer/tokenizer_config.json "$m7b/"
  echo "== stic generate --device cuda (tiny fixture; then random 7B)"
  "$bin/stic" generate --device cuda --model tests/fixtures/llava_next_tiny --image tests/fixtures/images/wide.jpg \
    --prompt "What is shown in this image?" --max-new-tokens 16 --json || fail=1
  "$bin/stic" generate --device cuda --model "$m7b" --random-weights --image tests/fixtures/images/wide.jpg \
    --prompt "Describe the image." --max-new-tokens 16 --json || fail=1
  echo "== stic profile --device cuda, random 7B, one AnyRes image + 64 tokens"
  "$bin/stic" profile --device cuda --model "$m7b" --random-weights --image tests/fixtures/images/wide.jpg \
    --batch 1 --prompt-len 64 --decode-steps 32 || fail=1
  for b in 8 64; do
    echo "== stic profile --device cuda, random 7B, batch $b of 128-token prompts"
    "$bin/stic" profile --device cuda --model "$m7b" --random-weights --batch "$b" --prompt-len 128 --decode-steps 32 || fail=1
  done
  for t in "$bin"/tests/*; do echo "== tests/$(basename "$t")"; "$t" --test-threads=1 || fail=1; done
  for b in "$bin"/benches/*; do echo "== benches/$(basename "$b")"; "$b" --bench || fail=1; done
  # The side-by-side baseline: PyTorch SDPA (flash backend) at the attention benches' shapes.
  echo "== scripts/baselines/attention_sdpa.py"
  sdpa_out="${OUT:-target}"
  mkdir -p "$sdpa_out"
  python3 scripts/baselines/attention_sdpa.py "$sdpa_out/attention-sdpa.json" > "$sdpa_out/attention-sdpa.md" || fail=1
  cat "$sdpa_out/attention-sdpa.md"
  # cuda_ops writes its summary table (markdown) to target/cuda-bench.md.
  [[ -f target/cuda-bench.md && -n "${OUT:-}" ]] && cp target/cuda-bench.md "$OUT/cuda-bench.md"
  [[ -f target/cuda-model-bench.md && -n "${OUT:-}" ]] && cp target/cuda-model-bench.md "$OUT/cuda-model-bench.md"
  [[ -f target/cuda-train-bench.md && -n "${OUT:-}" ]] && cp target/cuda-train-bench.md "$OUT/cuda-train-bench.md"
  echo "== exit $fail"
  exit $fail  # the group runs in a subshell (it feeds tee): its status carries $fail out
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
RUN
chmod +x .gpu/run.sh
du -sh .gpu
# The device tool carries the tracked tree plus .gpu, 64 MiB in all.
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
gpu_bytes=$(du -sb .gpu | cut -f1)
total=$((tree_bytes + gpu_bytes))
echo "carried: $((total / 1048576)) MiB (tree $((tree_bytes / 1048576)) MiB + .gpu $((gpu_bytes / 1048576)) MiB) of 64 MiB"
if (( total > 64 * 1048576 )); then
  echo "too large to carry: trim the test binaries or the fixtures" >&2
  exit 1
fi
echo
echo 'device run: carry [".gpu"], command "bash .gpu/run.sh"'
