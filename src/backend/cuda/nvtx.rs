//! NVTX ranges, so that Nsight Systems shows the model's structure (layers, ops, prefill and
//! decode steps) over the kernels. `build.rs` compiles `src/backend/cuda/nvtx.c`, a two-function
//! shim over NVIDIA's header-only NVTX v3 (`nvidia-nvtx` from PyPI, installed with nvcc by
//! scripts/install-cuda-toolkit.sh). Without a profiler attached the calls return at once: NVTX
//! only loads the tool named by `NVTX_INJECTION64_PATH`, which Nsight sets.

use std::ffi::{c_char, CString};

extern "C" {
    fn stic_nvtx_push(name: *const c_char);
    fn stic_nvtx_pop();
}

/// Open a range (ranges nest per thread).
pub fn push(name: &str) {
    let c = CString::new(name.replace('\0', " ")).expect("no interior NUL after the replace");
    // SAFETY: the shim reads the NUL-terminated string during the call only.
    unsafe { stic_nvtx_push(c.as_ptr()) }
}

/// Close the innermost open range.
pub fn pop() {
    // SAFETY: no arguments; NVTX ignores a pop without a push.
    unsafe { stic_nvtx_pop() }
}

/// A range open for the guard's lifetime.
pub struct Range(());

impl Range {
    pub fn new(name: &str) -> Self {
        push(name);
        Range(())
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        pop();
    }
}
