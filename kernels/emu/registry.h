// emu/registry.h: the seams between the parts of the emulated CUDA device (issue #14).
//   - the kernel registry: build.rs generates one C++ file defining emu_registry() from
//     kernels/*.cu (module = kernel file, matched to the fatbin image cuModuleLoadData gets by an
//     FNV-1a-64 hash of the image);
//   - device memory: the allocations the driver makes and the sanitizer checks every access
//     against (sanitize.cpp defines them);
//   - the report hook: how a launch's failure reaches the driver.
// The driver (emu/driver/*.cpp) and the cuBLASLt subset (emu/cublaslt/*.cpp) use only this header
// (plus runtime.h's launch). Plain C++17; no CUDA dialect here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace emu {

struct dim3;

// ---------------------------------------------------------------------------------------------
// Kernel registry.

// One launch as cuLaunchKernel describes it.
struct LaunchCfg {
    unsigned grid[3];
    unsigned block[3];
    size_t dyn_smem;
    unsigned regs;  // registers per thread at entry (the kernel's KernelInfo::regs; 0 if unknown)
};

// Runs one kernel: copies the argument values `params[i]` (each points at argument i, as
// cuLaunchKernel's kernelParams) into the C++ parameter types, then runs the grid to completion.
// Throws emu::Error (runtime.h) with the report when the launch fails.
using Trampoline = void (*)(const char* name, void** params, const LaunchCfg& cfg, size_t static_smem);

struct KernelInfo {
    const char* name;        // the extern "C" name, as cuModuleGetFunction looks it up
    Trampoline run;          // null when the emulator cannot run it (see `why_not`)
    unsigned static_smem;    // bytes of static __shared__ ptxas reports for sm_<min_arch>
    unsigned regs;           // registers per thread ptxas reports for sm_<min_arch> (0 if unknown)
    unsigned max_threads;    // __launch_bounds__ maxThreadsPerBlock, else 1024
    const char* why_not;     // null, or why the emulator cannot run it
    unsigned min_arch;       // 80, or 90 for the sm_90a-only kernels (their sm_80 code traps)
};

struct ModuleInfo {
    const char* name;        // kernel file stem: kernels/<name>.cu
    uint64_t image_hash;     // fnv1a64 of the fatbin image build.rs embedded for this file
    uint64_t image_len;      // its length in bytes
    const KernelInfo* kernels;
    size_t n_kernels;
};

// The generated table (build.rs): every kernels/*.cu file in file-name order.
const ModuleInfo* registry(size_t* n);

inline uint64_t fnv1a64(const void* p, size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

// ---------------------------------------------------------------------------------------------
// Device memory (defined in sanitize.cpp). Device pointers are host addresses inside one reserved
// range; allocations are 256-byte aligned, never reused, and start uninitialized (initcheck).
// All functions are thread-safe.

void* dev_alloc(size_t bytes);            // nullptr when out of memory; 0 bytes gives a unique pointer
bool dev_free(void* p);                   // false when p is not the start of a live allocation
bool dev_is_device(const void* p);        // inside the reserved range (live or not)
// The live allocation holding [p, p+n): its base and size; false if none holds all of it.
bool dev_find(const void* p, size_t n, void** base, size_t* size);
void dev_mark_uninit(const void* p, size_t n);               // a buffer reused by the host's cache (stic_emu_mark_uninit)
void dev_mark_init(const void* p, size_t n);                 // HtoD copies, memsets, cuBLASLt's D
void dev_copy_init(void* dst, const void* src, size_t n);    // DtoD copies carry the shadow over
// Checks a host-side (driver, cuBLASLt) access of device memory like a kernel access: bounds,
// liveness and, for reads with `init`, initialisation. Returns an empty string or the report.
std::string dev_check(const void* p, size_t n, bool write, bool init, const char* what);
size_t dev_used_bytes();                  // live bytes (cuMemGetInfo, pool attributes)
size_t dev_peak_bytes();

}  // namespace emu
