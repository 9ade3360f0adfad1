// emu/tests/sanitize_stub.cpp: stand-ins for kernels/emu/sanitize.cpp, so that the kernel objects
// (compiled with -fsanitize=thread instrumentation, no tsan runtime) link and run before the real
// sanitizer exists. NOT a sanitizer: every __tsan_* access hook does nothing, the __tsan_atomic*
// hooks perform the atomic operation (sequentially consistent, whatever order is asked), and
// device memory is plain aligned heap memory with a table of live allocations (no init shadow:
// dev_check reports only bounds and liveness). build.rs links it only while sanitize.cpp is
// missing (with a cargo warning); the smoke test kernels/emu/tests/kernels_smoke.cpp uses the
// same objects. Compile without instrumentation.
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <string>

#include "../registry.h"

extern "C" {
void __tsan_init() {}
#define EMU_ACCESS(n)                            \
    void __tsan_read##n(void*) {}                \
    void __tsan_write##n(void*) {}               \
    void __tsan_unaligned_read##n(void*) {}      \
    void __tsan_unaligned_write##n(void*) {}     \
    void __tsan_volatile_read##n(void*) {}       \
    void __tsan_volatile_write##n(void*) {}
EMU_ACCESS(1)
EMU_ACCESS(2)
EMU_ACCESS(4)
EMU_ACCESS(8)
EMU_ACCESS(16)
#undef EMU_ACCESS
void __tsan_read_range(void*, unsigned long) {}
void __tsan_write_range(void*, unsigned long) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define EMU_ATOMIC(n, T)                                                                                                \
    T __tsan_atomic##n##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }                 \
    void __tsan_atomic##n##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }                 \
    T __tsan_atomic##n##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }       \
    T __tsan_atomic##n##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }       \
    T __tsan_atomic##n##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }       \
    T __tsan_atomic##n##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }       \
    T __tsan_atomic##n##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }         \
    T __tsan_atomic##n##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }       \
    T __tsan_atomic##n##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST); }     \
    int __tsan_atomic##n##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                                 \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
    }                                                                                                                   \
    int __tsan_atomic##n##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                                   \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
    }                                                                                                                   \
    T __tsan_atomic##n##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                                       \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                                \
        return c;                                                                                                       \
    }
EMU_ATOMIC(8, char)
EMU_ATOMIC(16, short)
EMU_ATOMIC(32, int)
EMU_ATOMIC(64, long)
#undef EMU_ATOMIC
}

// ---------------------------------------------------------------------------------------------
// Device memory: heap blocks, 256-byte aligned, freed for real (no use-after-free detection).

namespace {
std::mutex mu;
std::map<uintptr_t, size_t> live;  // base -> size
size_t used = 0, peak = 0;
}  // namespace

namespace emu {
void* dev_alloc(size_t bytes) {
    void* p = std::aligned_alloc(256, ((bytes ? bytes : 1) + 255) & ~size_t(255));
    if (!p) return nullptr;
    std::lock_guard<std::mutex> g(mu);
    live[(uintptr_t)p] = bytes;
    used += bytes;
    if (used > peak) peak = used;
    return p;
}
bool dev_free(void* p) {
    std::lock_guard<std::mutex> g(mu);
    auto it = live.find((uintptr_t)p);
    if (it == live.end()) return false;
    used -= it->second;
    live.erase(it);
    std::free(p);
    return true;
}
bool dev_find(const void* p, size_t n, void** base, size_t* size) {
    std::lock_guard<std::mutex> g(mu);
    auto it = live.upper_bound((uintptr_t)p);
    if (it == live.begin()) return false;
    --it;
    uintptr_t a = (uintptr_t)p;
    if (a + n > it->first + it->second && !(n == 0 && a == it->first)) return false;
    if (base) *base = (void*)it->first;
    if (size) *size = it->second;
    return true;
}
bool dev_is_device(const void* p) { return dev_find(p, 0, nullptr, nullptr) || dev_find(p, 1, nullptr, nullptr); }
void dev_mark_init(const void*, size_t) {}
void dev_copy_init(void*, const void*, size_t) {}
std::string dev_check(const void* p, size_t n, bool write, bool, const char* what) {
    if (dev_find(p, n, nullptr, nullptr)) return {};
    return std::string(what) + ": " + (write ? "write" : "read") + " of " + std::to_string(n) + " bytes outside every live allocation";
}
size_t dev_used_bytes() {
    std::lock_guard<std::mutex> g(mu);
    return used;
}
size_t dev_peak_bytes() {
    std::lock_guard<std::mutex> g(mu);
    return peak;
}
}  // namespace emu
