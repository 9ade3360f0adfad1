#!/usr/bin/env bash
# Install the pinned CUDA compiler (nvcc 13.0) from PyPI wheels into a local folder.
#
#   scripts/install-cuda-toolkit.sh [DIR]      (default: <repo>/.tools/cuda, gitignored)
#
# Afterwards DIR/nvidia/cu13/bin/nvcc compiles kernels for sm_80 and sm_90a with no extra
# environment: the wheels lay out a normal toolkit tree (bin/, include/, lib/, nvvm/) and
# nvcc's own bin/nvcc.profile finds cicc, libdevice and the headers relative to itself.
#
# The wheels, all from the CUDA 13.0 update 2 release:
#   nvidia-cuda-nvcc     nvcc, ptxas, fatbinary, nvlink, cudafe++
#   nvidia-nvvm          cicc (the front end nvcc drives) and libdevice
#   nvidia-cuda-crt      include/crt/* (host/device runtime headers nvcc force-includes)
#   nvidia-cuda-runtime  cuda_runtime.h, cuda_bf16.h, cuda_fp16.h, ...
#   nvidia-cuda-cccl     include/nv/target and include/cccl/* (libcu++, CUB): cuda_fp16.h and
#                        cuda_bf16.h `#include <nv/target>`, so without it they do not compile
#   nvidia-nvtx          include/nvtx3 (header-only NVTX v3: build.rs compiles the range shim)
# No driver, GPU or network access is needed to compile; only the host gcc (nvcc's host compiler).
#
# Idempotent: DIR/.installed holds the pins; when it matches and nvcc runs, this is a no-op.
# A changed pin list reinstalls from scratch. The install goes to a temporary folder that is moved
# into place only after a test compile succeeded, so an interrupted run leaves no half toolkit.
# Prints the nvcc path as its last line of stdout; every failure exits non-zero with a message.
set -euo pipefail

PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-nvtx==13.0.85
)

die() { echo "install-cuda-toolkit: error: $*" >&2; exit 1; }
log() { echo "install-cuda-toolkit: $*" >&2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.tools/cuda}"
mkdir -p "$(dirname "$dir")" || die "cannot create the parent of $dir"
dir="$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")"
nvcc="$dir/nvidia/cu13/bin/nvcc"
stamp="$dir/.installed"
want="$(printf '%s\n' "${PINS[@]}")"

# Compile a small kernel (it includes cuda_bf16.h, so every header wheel is exercised) for each
# architecture the crate builds. $1: the nvcc to test.
smoke_test() {
  local nv="$1" tmp
  tmp="$(mktemp -d)"
  cat >"$tmp/smoke.cu" <<'EOF'
#include <cuda_bf16.h>
extern "C" __global__ void smoke(const __nv_bfloat16* x, float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}
EOF
  if ! "$nv" -fatbin -o "$tmp/smoke.fatbin" "$tmp/smoke.cu" \
      -gencode=arch=compute_80,code=sm_80 \
      -gencode=arch=compute_90a,code=sm_90a \
      -gencode=arch=compute_90,code=compute_90 >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp"
}

# Serialise concurrent runs (two cargo builds may both call this from build.rs).
lockfile="$dir.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lockfile"
  flock 9
  rm -rf "$dir".tmp.*  # left behind by a run that was killed (we hold the lock: none is live)
fi

if [[ -f "$stamp" && -x "$nvcc" && "$(cat "$stamp")" == "$want" ]] && "$nvcc" --version >/dev/null 2>&1; then
  log "already installed in $dir"
  echo "$nvcc"
  exit 0
fi

# Never wipe a folder this script did not make.
if [[ -d "$dir" && -n "$(ls -A "$dir")" && ! -e "$stamp" && ! -d "$dir/nvidia/cu13" ]]; then
  die "$dir exists and is not a toolkit installed by this script; pass another DIR"
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for pip)"
python3 -m pip --version >/dev/null 2>&1 \
  || die "python3 has no pip (Debian: apt-get install python3-pip)"
command -v g++ >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
  || die "no host C++ compiler (gcc/g++) found; nvcc needs one"

tmpdir="$dir.tmp.$$"
rm -rf "$tmpdir"
trap 'rm -rf "$tmpdir"' EXIT
log "installing ${PINS[*]} into $dir"
# --no-deps: every wheel is pinned above, so pip resolves nothing on its own.
# PIP_BREAK_SYSTEM_PACKAGES: --target installs outside any Python environment, but some
# distributions' pips refuse any install without it (PEP 668); older pips ignore it.
PIP_BREAK_SYSTEM_PACKAGES=1 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore python3 -m pip install \
    --disable-pip-version-check --no-input --quiet --no-deps --only-binary=:all: \
    --target "$tmpdir" "${PINS[@]}" >&2 \
  || die "pip install failed (is PyPI reachable?)"

tnvcc="$tmpdir/nvidia/cu13/bin/nvcc"
[[ -x "$tnvcc" ]] || die "the wheels did not provide $tnvcc"
for f in nvvm/bin/cicc include/cuda_runtime.h include/crt/host_config.h include/nv/target include/cuda_bf16.h; do
  [[ -e "$tmpdir/nvidia/cu13/$f" ]] || die "the wheels did not provide nvidia/cu13/$f"
done
smoke_test "$tnvcc" || die "the freshly installed nvcc failed to compile a test kernel for sm_80/sm_90a (output above)"

rm -rf "$dir"
mv "$tmpdir" "$dir"
trap - EXIT
printf '%s\n' "$want" >"$stamp"
log "$("$nvcc" --version | tail -n 2 | head -n 1)"
echo "$nvcc"
