// emu/driver/launch.cpp: modules, functions and launches of the emulated libcuda, and the error
// strings.
//   - cuModuleLoadData gets an image without a length: a fatbin is recognised by its header and
//     matched to a module of the registry by length and FNV-1a-64 hash (registry.h). Any other
//     image is CUDA_ERROR_INVALID_IMAGE.
//   - cuLaunchKernel checks the launch as the hardware would before running it: grid and block
//     dimensions against the device limits and the kernel's __launch_bounds__, registers x threads
//     against the register file, static + dynamic shared memory against the kernel's
//     MAX_DYNAMIC_SHARED_SIZE_BYTES attribute (48 KiB - static unless raised by cuFuncSetAttribute)
//     and the device's opt-in maximum. Then it runs the grid to completion (the device is
//     synchronous). A failed launch (sanitizer report, deadlock, __trap, an exception) returns
//     CUDA_ERROR_LAUNCH_FAILED; its report is printed to stderr and is what cuGetErrorString then
//     returns for that code, so the Rust error carries it.
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "../registry.h"
#include "driver.h"

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace emu::drv;

struct EmuFunction {
    const emu::KernelInfo* k;
    const emu::ModuleInfo* m;
    int max_dyn_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};
struct EmuModule {
    const emu::ModuleInfo* info;
    std::map<std::string, std::unique_ptr<EmuFunction>> funcs;
};

namespace {

std::mutex g_mu;            // the module table and the last reports
std::mutex g_launch_mu;     // one grid at a time: the device is synchronous
std::set<EmuModule*> g_modules;
std::map<CUresult, std::string> g_last_report;  // per error code: the latest report
std::deque<std::string> g_kept;                 // strings handed out by cuGetErrorString stay valid
std::map<std::string, uint64_t> g_launches;     // completed launches per kernel name

CUresult report(CUresult code, const std::string& msg) {
    std::fprintf(stderr, "emu: %s\n", msg.c_str());
    std::lock_guard<std::mutex> g(g_mu);
    g_last_report[code] = msg;
    return code;
}

std::string dims(const unsigned d[3]) { return "(" + std::to_string(d[0]) + ", " + std::to_string(d[1]) + ", " + std::to_string(d[2]) + ")"; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Modules and functions.

EMU_API CUresult cuModuleLoadData(CUmodule* mod, const void* image) {
    if (!mod || !image) return INVALID_VALUE;
    size_t len = fatbin_len(image);
    if (len == 0) return report(INVALID_IMAGE, "cuModuleLoadData: the image is not a fatbin (the emulator loads only the fatbins this build embedded)");
    uint64_t h = emu::fnv1a64(image, len);
    size_t n = 0;
    const emu::ModuleInfo* mods = emu::registry(&n);
    for (size_t i = 0; i < n; i++)
        if (mods[i].image_len == len && mods[i].image_hash == h) {
            auto* m = new EmuModule{&mods[i], {}};
            std::lock_guard<std::mutex> g(g_mu);
            g_modules.insert(m);
            *mod = m;
            return SUCCESS;
        }
    return report(INVALID_IMAGE, "cuModuleLoadData: a fatbin of " + std::to_string(len) + " bytes that matches no kernels/*.cu of this build (the emulated kernels and the fatbins must come from the same build)");
}
EMU_API CUresult cuModuleUnload(CUmodule mod) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_modules.erase(mod)) return INVALID_HANDLE;
    delete mod;
    return SUCCESS;
}
EMU_API CUresult cuModuleGetFunction(CUfunction* f, CUmodule mod, const char* name) {
    if (!f || !name) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_modules.count(mod)) return INVALID_HANDLE;
    auto it = mod->funcs.find(name);
    if (it == mod->funcs.end()) {
        const emu::ModuleInfo& m = *mod->info;
        const emu::KernelInfo* k = nullptr;
        for (size_t i = 0; i < m.n_kernels; i++)
            if (std::strcmp(m.kernels[i].name, name) == 0) k = &m.kernels[i];
        if (!k) return NOT_FOUND;
        int dyn = 49152 - (int)k->static_smem;
        it = mod->funcs.emplace(name, std::unique_ptr<EmuFunction>(new EmuFunction{k, &m, dyn < 0 ? 0 : dyn})).first;
    }
    *f = it->second.get();
    return SUCCESS;
}
EMU_API CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
    if (!v || !f) return INVALID_VALUE;
    const emu::KernelInfo& k = *f->k;
    switch (a) {
        case 0: *v = (int)k.max_threads; break;   // MAX_THREADS_PER_BLOCK
        case 1: *v = (int)k.static_smem; break;   // SHARED_SIZE_BYTES
        case 2: case 3: *v = 0; break;            // CONST / LOCAL_SIZE_BYTES
        case 4: *v = (int)k.regs; break;          // NUM_REGS
        case 5: case 6: *v = device().major * 10 + device().minor; break;  // PTX / BINARY_VERSION
        case 7: *v = 0; break;                    // CACHE_MODE_CA
        case 8: *v = f->max_dyn_smem; break;      // MAX_DYNAMIC_SHARED_SIZE_BYTES
        case 9: *v = -1; break;                   // PREFERRED_SHARED_MEMORY_CARVEOUT
        default: return INVALID_VALUE;
    }
    return SUCCESS;
}
EMU_API CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    if (!f) return INVALID_HANDLE;
    if (a == 8) {  // MAX_DYNAMIC_SHARED_SIZE_BYTES: static + dynamic within the opt-in maximum
        if (v < 0 || (long)v + f->k->static_smem > device().smem_per_block_optin)
            return report(INVALID_VALUE, std::string("cuFuncSetAttribute(") + f->k->name + ", MAX_DYNAMIC_SHARED_SIZE_BYTES, " + std::to_string(v) + "): with " +
                                             std::to_string(f->k->static_smem) + " bytes of static shared memory it exceeds the device's " + std::to_string(device().smem_per_block_optin) + "-byte opt-in maximum");
        f->max_dyn_smem = v;
        return SUCCESS;
    }
    if (a == 9) return SUCCESS;  // PREFERRED_SHARED_MEMORY_CARVEOUT: a hint
    return INVALID_VALUE;
}
EMU_API CUresult cuFuncSetCacheConfig(CUfunction f, int) { return f ? SUCCESS : INVALID_HANDLE; }

// ---------------------------------------------------------------------------------------------
// Launch.

EMU_API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, CUstream stream, void** params, void** extra) {
    if (!f) return INVALID_HANDLE;
    const emu::KernelInfo& k = *f->k;
    emu::LaunchCfg cfg{{gx, gy, gz}, {bx, by, bz}, smem, k.regs};
    std::string what = std::string("cuLaunchKernel(") + k.name + " in kernels/" + f->m->name + ".cu, grid " + dims(cfg.grid) + ", block " + dims(cfg.block) + ", " + std::to_string(smem) + " bytes of dynamic shared memory)";
    if (extra) return report(INVALID_VALUE, what + ": `extra` is not supported by the emulator");
    if (!k.run) return report(NOT_SUPPORTED, what + ": the emulator cannot run this kernel: " + (k.why_not ? k.why_not : "no host build"));
    // An sm_90a-only kernel on an sm_80 part runs its sm_80 code, a __trap() stub.
    if ((unsigned)(device().major * 10 + device().minor) < k.min_arch)
        return report(LAUNCH_FAILED, what + ": the kernel runs only on sm_" + std::to_string(k.min_arch) + "a and the emulated device is sm_" + std::to_string(device().major) + std::to_string(device().minor) +
                                         " (its code there is __trap(); STIC_CUDA_EMU_ARCH=90 emulates an H100)");
    unsigned long threads = (unsigned long)bx * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz || gy > 65535 || gz > 65535 || gx > 2147483647u || bx > 1024 || by > 1024 || bz > 64 || threads > 1024)
        return report(INVALID_VALUE, what + ": the grid or block exceeds the device limits (block <= (1024, 1024, 64) and 1024 threads; grid <= (2^31-1, 65535, 65535); no zero dimension)");
    if (threads > k.max_threads) return report(LAUNCH_OUT_OF_RESOURCES, what + ": " + std::to_string(threads) + " threads per block exceed the kernel's __launch_bounds__ of " + std::to_string(k.max_threads));
    if (k.regs && threads * ((k.regs + 7) / 8 * 8) > 65536)
        return report(LAUNCH_OUT_OF_RESOURCES, what + ": " + std::to_string(threads) + " threads x " + std::to_string(k.regs) + " registers exceed the 65536-register file");
    if ((long)smem > f->max_dyn_smem)
        return report(INVALID_VALUE, what + ": the dynamic shared memory exceeds the kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute (" + std::to_string(f->max_dyn_smem) + "; raise it with cuFuncSetAttribute)");
    std::lock_guard<std::mutex> g(g_launch_mu);
    // A fault while the kernel runs: returned now, or in the asynchronous mode (driver.h) by the
    // next synchronising call on the stream.
    auto fault = [&](const std::string& msg) -> CUresult {
        CUresult r = report(LAUNCH_FAILED, msg);
        if (!async_faults()) return r;
        set_stream_fault(stream, r);
        return SUCCESS;
    };
    try {
        k.run(k.name, params, cfg, k.static_smem);
    } catch (const std::exception& e) {
        return fault(what + " failed:\n" + e.what());
    } catch (...) {
        return fault(what + " failed with an unknown exception");
    }
    std::lock_guard<std::mutex> g2(g_mu);
    g_launches[k.name]++;
    return SUCCESS;
}

// Not a driver entry point: how many launches of `name` have completed in this process, so that
// tests can tell which kernel a path took (backend::cuda::emulated_launch_count).
EMU_API uint64_t stic_emu_launch_count(const char* name) {
    std::lock_guard<std::mutex> g(g_mu);
    auto it = g_launches.find(name ? name : "");
    return it == g_launches.end() ? 0 : it->second;
}

// ---------------------------------------------------------------------------------------------
// Error strings: the driver's text, or for a code a launch or load returned, that call's report.

EMU_API CUresult cuGetErrorName(CUresult code, const char** s) {
    if (!s) return INVALID_VALUE;
    switch (code) {
        case SUCCESS: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case NO_DEVICE: *s = "CUDA_ERROR_NO_DEVICE"; break;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case NOT_READY: *s = "CUDA_ERROR_NOT_READY"; break;
        case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = nullptr; return INVALID_VALUE;
    }
    return SUCCESS;
}
EMU_API CUresult cuGetErrorString(CUresult code, const char** s) {
    if (!s) return INVALID_VALUE;
    {
        std::lock_guard<std::mutex> g(g_mu);
        auto it = g_last_report.find(code);
        if (it != g_last_report.end()) {
            g_kept.push_back("emulated device: " + it->second);
            if (g_kept.size() > 64) g_kept.pop_front();  // a caller copies the text at once
            *s = g_kept.back().c_str();
            return SUCCESS;
        }
    }
    switch (code) {
        case SUCCESS: *s = "no error"; break;
        case INVALID_VALUE: *s = "invalid argument"; break;
        case OUT_OF_MEMORY: *s = "out of memory"; break;
        case NOT_INITIALIZED: *s = "initialization error"; break;
        case NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
        case INVALID_DEVICE: *s = "invalid device ordinal"; break;
        case INVALID_IMAGE: *s = "device kernel image is invalid"; break;
        case INVALID_CONTEXT: *s = "invalid device context"; break;
        case INVALID_HANDLE: *s = "invalid resource handle"; break;
        case NOT_FOUND: *s = "named symbol not found"; break;
        case NOT_READY: *s = "device not ready"; break;
        case ILLEGAL_ADDRESS: *s = "an illegal memory access was encountered"; break;
        case LAUNCH_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
        case LAUNCH_FAILED: *s = "unspecified launch failure"; break;
        case NOT_SUPPORTED: *s = "operation not supported"; break;
        default: *s = nullptr; return INVALID_VALUE;
    }
    return SUCCESS;
}
