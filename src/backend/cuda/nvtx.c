/* nvtx.c: the NVTX v3 calls stic uses, as plain C symbols for Rust (src/backend/cuda/nvtx.rs).
 * NVTX v3 is header-only: the first call looks for the tool in NVTX_INJECTION64_PATH (set by
 * Nsight Systems) and is a no-op without one. */
#include <nvtx3/nvToolsExt.h>

void stic_nvtx_push(const char* name) { nvtxRangePushA(name); }
void stic_nvtx_pop(void) { nvtxRangePop(); }
