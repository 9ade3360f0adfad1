// emu/driver/driver.cpp: the emulated libcuda (SONAME libcuda.so): initialisation, the device
// and its attributes, the primary context, device and pinned host memory, copies and memsets,
// streams, events and the default memory pool. Modules, functions and launches: launch.cpp.
//
// The device is synchronous: every "async" call has finished when it returns, which satisfies
// the driver's ordering rules on any stream (CUDA Driver API "API synchronization behavior").
// Device memory is the sanitizer's (registry.h "device memory"): every copy and memset is
// bounds-checked like a kernel access and moves the initialisation shadow along.
// Only the entry points cudarc 0.19.10 calls for this project exist (reference section 7); cudarc
// resolves symbols lazily, so an unused one is never looked up.
#include "driver.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "../registry.h"

#define EMU_API extern "C" __attribute__((visibility("default")))

namespace emu::drv {

const DeviceDesc& device() {
    static const DeviceDesc d = [] {
        const char* a = std::getenv("STIC_CUDA_EMU_ARCH");
        if (a && std::strcmp(a, "90") == 0)
            return DeviceDesc{9, 0, "stic emulated CUDA device (sm_90, H100 SXM limits)", 132, 232448, 233472, 50331648, 1980000, 2619000, 5120, size_t(80) << 30};
        if (a && *a && std::strcmp(a, "80") != 0) {
            std::fprintf(stderr, "emu: STIC_CUDA_EMU_ARCH=%s is not 80 or 90; emulating sm_80\n", a);
        }
        return DeviceDesc{8, 0, "stic emulated CUDA device (sm_80, A100 limits)", 108, 166912, 167936, 41943040, 1410000, 1215000, 5120, size_t(40) << 30};
    }();
    return d;
}

size_t fatbin_len(const void* image) {
    const unsigned char* p = static_cast<const unsigned char*>(image);
    uint32_t magic;
    uint16_t header;
    uint64_t size;
    std::memcpy(&magic, p, 4);
    if (magic != 0xBA55ED50u) return 0;
    std::memcpy(&header, p + 6, 2);
    std::memcpy(&size, p + 8, 8);
    return header + size;
}

}  // namespace emu::drv

using namespace emu::drv;

struct EmuCtx {
    int device = 0;
};
struct EmuStream {
    unsigned flags;
};
struct EmuEvent {
    unsigned flags;
    bool recorded = false;
    std::chrono::steady_clock::time_point t;
};
struct EmuPool {
    uint64_t release_threshold = 0;
};

namespace {

std::mutex g_mu;
bool g_init = false;
EmuCtx g_primary;
EmuPool g_pool;
std::set<EmuStream*> g_streams;
std::set<EmuEvent*> g_events;
std::map<CUdeviceptr, size_t> g_allocs;  // live device allocations (pool accounting)
size_t g_used = 0, g_high = 0;
std::set<void*> g_host;                   // pinned host allocations
thread_local CUcontext tl_ctx = nullptr;

bool stream_ok(CUstream s) { return s == nullptr || g_streams.count(s) != 0; }

std::atomic<bool> g_async_faults{[] {
    const char* e = std::getenv("STIC_CUDA_EMU_ASYNC_FAULTS");
    return e && std::strcmp(e, "1") == 0;
}()};
std::map<CUstream, CUresult> g_faults;  // pending asynchronous faults by stream (driver.h)

CUresult check_dev(CUdeviceptr p, size_t n, bool write, const char* what) {
    if (n == 0) return SUCCESS;
    std::string r = emu::dev_check(reinterpret_cast<const void*>(p), n, write, false, what);
    if (r.empty()) return SUCCESS;
    std::fprintf(stderr, "emu: %s\n", r.c_str());
    return INVALID_VALUE;
}

CUresult alloc(CUdeviceptr* p, size_t n) {
    if (!p) return INVALID_VALUE;
    void* a = emu::dev_alloc(n);
    if (!a) return OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(g_mu);
    *p = reinterpret_cast<CUdeviceptr>(a);
    g_allocs[*p] = n;
    g_used += n;
    if (g_used > g_high) g_high = g_used;
    return SUCCESS;
}

CUresult free_(CUdeviceptr p) {
    {
        std::lock_guard<std::mutex> g(g_mu);
        auto it = g_allocs.find(p);
        if (it == g_allocs.end()) return INVALID_VALUE;
        g_used -= it->second;
        g_allocs.erase(it);
    }
    return emu::dev_free(reinterpret_cast<void*>(p)) ? SUCCESS : INVALID_VALUE;
}

CUresult memset_(CUdeviceptr p, const void* pattern, size_t elem, size_t count) {
    if (CUresult r = check_dev(p, elem * count, true, "cuMemset")) return r;
    unsigned char* d = reinterpret_cast<unsigned char*>(p);
    for (size_t i = 0; i < count; i++) std::memcpy(d + i * elem, pattern, elem);
    emu::dev_mark_init(d, elem * count);
    return SUCCESS;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Initialisation, errors, the device.

EMU_API CUresult cuInit(unsigned flags) {
    if (flags != 0) return INVALID_VALUE;
    g_init = true;
    return SUCCESS;
}
EMU_API CUresult cuDriverGetVersion(int* v) {
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return SUCCESS;
}
EMU_API CUresult cuDeviceGetCount(int* n) {
    if (!n) return INVALID_VALUE;
    if (!g_init) return NOT_INITIALIZED;
    *n = 1;
    return SUCCESS;
}
EMU_API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!d) return INVALID_VALUE;
    if (!g_init) return NOT_INITIALIZED;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}
EMU_API CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!name || len <= 0) return INVALID_VALUE;
    if (d != 0) return INVALID_DEVICE;
    std::snprintf(name, (size_t)len, "%s", device().name);
    return SUCCESS;
}
EMU_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (!bytes) return INVALID_VALUE;
    if (d != 0) return INVALID_DEVICE;
    *bytes = device().total_mem;
    return SUCCESS;
}
EMU_API CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    if (!v) return INVALID_VALUE;
    if (d != 0) return INVALID_DEVICE;
    const DeviceDesc& D = device();
    switch (a) {
        case 1: *v = 1024; break;                   // MAX_THREADS_PER_BLOCK
        case 2: case 3: *v = 1024; break;           // MAX_BLOCK_DIM_X/Y
        case 4: *v = 64; break;                     // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;             // MAX_GRID_DIM_X
        case 6: case 7: *v = 65535; break;          // MAX_GRID_DIM_Y/Z
        case 8: *v = 49152; break;                  // MAX_SHARED_MEMORY_PER_BLOCK (without opt-in)
        case 9: *v = 65536; break;                  // TOTAL_CONSTANT_MEMORY
        case 10: *v = 32; break;                    // WARP_SIZE
        case 12: case 82: *v = 65536; break;        // MAX_REGISTERS_PER_BLOCK / _PER_MULTIPROCESSOR
        case 13: *v = D.clock_khz; break;           // CLOCK_RATE
        case 16: *v = D.sms; break;                 // MULTIPROCESSOR_COUNT
        case 18: *v = 0; break;                     // INTEGRATED
        case 31: *v = 1; break;                     // CONCURRENT_KERNELS
        case 32: *v = 1; break;                     // ECC_ENABLED
        case 33: case 34: case 50: *v = 0; break;   // PCI bus / device / domain
        case 35: *v = 0; break;                     // TCC_DRIVER
        case 36: *v = D.mem_clock_khz; break;       // MEMORY_CLOCK_RATE
        case 37: *v = D.bus_width; break;           // GLOBAL_MEMORY_BUS_WIDTH
        case 38: *v = D.l2_bytes; break;            // L2_CACHE_SIZE
        case 39: *v = 2048; break;                  // MAX_THREADS_PER_MULTIPROCESSOR
        case 40: *v = 2; break;                     // ASYNC_ENGINE_COUNT
        case 41: *v = 1; break;                     // UNIFIED_ADDRESSING
        case 75: *v = D.major; break;               // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = D.minor; break;               // COMPUTE_CAPABILITY_MINOR
        case 81: *v = D.smem_per_sm; break;         // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 89: *v = 0; break;                     // CONCURRENT_MANAGED_ACCESS
        case 97: *v = D.smem_per_block_optin; break;// MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: *v = 32; break;                   // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 111: *v = 1024; break;                 // RESERVED_SHARED_MEMORY_PER_BLOCK
        case 115: *v = 1; break;                    // MEMORY_POOLS_SUPPORTED
        default:
            std::fprintf(stderr, "emu: cuDeviceGetAttribute(%d) is not emulated\n", a);
            return INVALID_VALUE;
    }
    return SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// The primary context (the only one).

EMU_API CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    if (!c) return INVALID_VALUE;
    if (!g_init) return NOT_INITIALIZED;
    if (d != 0) return INVALID_DEVICE;
    *c = &g_primary;
    return SUCCESS;
}
EMU_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return d == 0 ? SUCCESS : INVALID_DEVICE; }
EMU_API CUresult cuCtxGetCurrent(CUcontext* c) {
    if (!c) return INVALID_VALUE;
    *c = tl_ctx;
    return SUCCESS;
}
EMU_API CUresult cuCtxSetCurrent(CUcontext c) {
    if (c && c != &g_primary) return INVALID_CONTEXT;
    tl_ctx = c;
    return SUCCESS;
}
EMU_API CUresult cuCtxGetDevice(CUdevice* d) {
    if (!d) return INVALID_VALUE;
    if (!tl_ctx) return INVALID_CONTEXT;
    *d = 0;
    return SUCCESS;
}
EMU_API CUresult cuCtxSynchronize() { return tl_ctx ? take_any_fault() : INVALID_CONTEXT; }

// ---------------------------------------------------------------------------------------------
// Memory.

EMU_API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
EMU_API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream s) { return stream_ok(s) ? alloc(p, n) : INVALID_HANDLE; }
EMU_API CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t n, CUmemoryPool pool, CUstream s) {
    if (pool != &g_pool) return INVALID_VALUE;
    return cuMemAllocAsync(p, n, s);
}
EMU_API CUresult cuMemFree_v2(CUdeviceptr p) { return free_(p); }
EMU_API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { return stream_ok(s) ? free_(p) : INVALID_HANDLE; }
// Not a driver entry point: the host's buffer cache (src/backend/cuda/pool.rs) hands a buffer to
// a new owner; its bytes become "never written" again, so that initcheck still catches a kernel
// reading what its new owner never wrote (as it would for a fresh allocation).
EMU_API void stic_emu_mark_uninit(CUdeviceptr p, size_t n) { emu::dev_mark_uninit(reinterpret_cast<const void*>(p), n); }
EMU_API CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    if (!free_b || !total) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    *total = device().total_mem;
    *free_b = *total > g_used ? *total - g_used : 0;
    return SUCCESS;
}
EMU_API CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    if (!p) return INVALID_VALUE;
    *p = std::aligned_alloc(4096, (n + 4095) & ~size_t(4095));
    if (!*p) return OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(g_mu);
    g_host.insert(*p);
    return SUCCESS;
}
EMU_API CUresult cuMemAllocHost_v2(void** p, size_t n) { return cuMemHostAlloc(p, n, 0); }
EMU_API CUresult cuMemFreeHost(void* p) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_host.erase(p)) return INVALID_VALUE;
    std::free(p);
    return SUCCESS;
}

EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (CUresult r = check_dev(dst, n, true, "cuMemcpyHtoD")) return r;
    if (n) std::memcpy(reinterpret_cast<void*>(dst), src, n);
    emu::dev_mark_init(reinterpret_cast<void*>(dst), n);
    return SUCCESS;
}
EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return stream_ok(s) ? cuMemcpyHtoD_v2(dst, src, n) : INVALID_HANDLE; }
EMU_API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = check_dev(src, n, false, "cuMemcpyDtoH")) return r;
    if (n) std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return SUCCESS;
}
EMU_API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    if (!stream_ok(s)) return INVALID_HANDLE;
    if (CUresult r = take_stream_fault(s)) return r;
    return cuMemcpyDtoH_v2(dst, src, n);
}
EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = check_dev(src, n, false, "cuMemcpyDtoD (source)")) return r;
    if (CUresult r = check_dev(dst, n, true, "cuMemcpyDtoD (destination)")) return r;
    if (n) std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    emu::dev_copy_init(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return SUCCESS;
}
EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return stream_ok(s) ? cuMemcpyDtoD_v2(dst, src, n) : INVALID_HANDLE; }
EMU_API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return memset_(p, &v, 1, n); }
EMU_API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) { return stream_ok(s) ? memset_(p, &v, 1, n) : INVALID_HANDLE; }
EMU_API CUresult cuMemsetD16Async(CUdeviceptr p, unsigned short v, size_t n, CUstream s) { return stream_ok(s) ? memset_(p, &v, 2, n) : INVALID_HANDLE; }
EMU_API CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, CUstream s) { return stream_ok(s) ? memset_(p, &v, 4, n) : INVALID_HANDLE; }

// ---------------------------------------------------------------------------------------------
// The default memory pool: a release threshold to honour and the used-memory counters.

EMU_API CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* p, CUdevice d) {
    if (!p) return INVALID_VALUE;
    if (d != 0) return INVALID_DEVICE;
    *p = &g_pool;
    return SUCCESS;
}
EMU_API CUresult cuMemPoolGetAttribute(CUmemoryPool p, CUmemPool_attribute a, void* v) {
    if (p != &g_pool || !v) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    uint64_t x;
    switch (a) {
        case 1: case 2: case 3: *static_cast<int*>(v) = 1; return SUCCESS;  // REUSE_* flags
        case 4: x = g_pool.release_threshold; break;                         // RELEASE_THRESHOLD
        case 5: case 7: x = g_used; break;                                   // RESERVED/USED_MEM_CURRENT
        case 6: case 8: x = g_high; break;                                   // RESERVED/USED_MEM_HIGH
        default: return INVALID_VALUE;
    }
    std::memcpy(v, &x, 8);
    return SUCCESS;
}
EMU_API CUresult cuMemPoolSetAttribute(CUmemoryPool p, CUmemPool_attribute a, void* v) {
    if (p != &g_pool || !v) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    uint64_t x;
    std::memcpy(&x, v, 8);
    switch (a) {
        case 1: case 2: case 3: return SUCCESS;
        case 4: g_pool.release_threshold = x; return SUCCESS;
        case 6: case 8:  // the high-water marks may only be reset to 0 (= the current value)
            if (x != 0) return INVALID_VALUE;
            g_high = g_used;
            return SUCCESS;
        default: return INVALID_VALUE;
    }
}
EMU_API CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t) { return p == &g_pool ? SUCCESS : INVALID_VALUE; }

// ---------------------------------------------------------------------------------------------
// Streams and events.

EMU_API CUresult cuStreamCreate(CUstream* s, unsigned flags) {
    if (!s) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    *s = new EmuStream{flags};
    g_streams.insert(*s);
    return SUCCESS;
}
EMU_API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
EMU_API CUresult cuStreamDestroy_v2(CUstream s) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_streams.erase(s)) return INVALID_HANDLE;
    g_faults.erase(s);
    delete s;
    return SUCCESS;
}
EMU_API CUresult cuStreamSynchronize(CUstream s) { return stream_ok(s) ? take_stream_fault(s) : INVALID_HANDLE; }
EMU_API CUresult cuStreamQuery(CUstream s) { return stream_ok(s) ? SUCCESS : INVALID_HANDLE; }
EMU_API CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned) {
    std::lock_guard<std::mutex> g(g_mu);
    return (s == nullptr || g_streams.count(s)) && g_events.count(e) ? SUCCESS : INVALID_HANDLE;
}
EMU_API CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return SUCCESS;
}

EMU_API CUresult cuEventCreate(CUevent* e, unsigned flags) {
    if (!e) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    *e = new EmuEvent{flags, false, {}};
    g_events.insert(*e);
    return SUCCESS;
}
EMU_API CUresult cuEventDestroy_v2(CUevent e) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_events.erase(e)) return INVALID_HANDLE;
    delete e;
    return SUCCESS;
}
EMU_API CUresult cuEventRecord(CUevent e, CUstream s) {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_events.count(e) || !(s == nullptr || g_streams.count(s))) return INVALID_HANDLE;
    e->recorded = true;
    e->t = std::chrono::steady_clock::now();
    return SUCCESS;
}
EMU_API CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
EMU_API CUresult cuEventSynchronize(CUevent e) {
    std::lock_guard<std::mutex> g(g_mu);
    return g_events.count(e) ? SUCCESS : INVALID_HANDLE;
}
EMU_API CUresult cuEventQuery(CUevent e) { return cuEventSynchronize(e); }
// Milliseconds between two recorded events, as the host clock saw the emulated work.
EMU_API CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    if (!ms) return INVALID_VALUE;
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_events.count(start) || !g_events.count(end)) return INVALID_HANDLE;
    if ((start->flags | end->flags) & 2u) return INVALID_HANDLE;  // CU_EVENT_DISABLE_TIMING
    if (!start->recorded || !end->recorded) return INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
    return SUCCESS;
}
EMU_API CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) { return cuEventElapsedTime_v2(ms, start, end); }

// ---------------------------------------------------------------------------------------------
// Asynchronous faults (driver.h).

namespace emu::drv {
bool async_faults() { return g_async_faults.load(); }
void set_stream_fault(CUstream s, CUresult code) {
    std::lock_guard<std::mutex> g(g_mu);
    g_faults.emplace(s, code);  // the first fault of the stream is the one reported
}
CUresult take_stream_fault(CUstream s) {
    std::lock_guard<std::mutex> g(g_mu);
    auto it = g_faults.find(s);
    if (it == g_faults.end()) return SUCCESS;
    CUresult r = it->second;
    g_faults.erase(it);
    return r;
}
CUresult take_any_fault() {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_faults.empty()) return SUCCESS;
    CUresult r = g_faults.begin()->second;
    g_faults.erase(g_faults.begin());
    return r;
}
}  // namespace emu::drv

// Not a driver entry point: turns the asynchronous-fault mode (driver.h) on or off at run time.
EMU_API void stic_emu_set_async_faults(int on) { g_async_faults.store(on != 0); }
