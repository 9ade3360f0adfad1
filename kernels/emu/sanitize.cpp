// emu/sanitize.cpp: device memory (registry.h "Device memory"), the shared-memory arenas, the
// memcheck/initcheck/racecheck logic and the ThreadSanitizer entry points g++ -fsanitize=thread
// calls from the kernel TUs (semantics and limits in sanitize.h). Compile WITHOUT -fsanitize:
// g++ -std=c++17 -O2 -fPIC -c sanitize.cpp. The entry points are extern "C" with default
// visibility, so a kernel object linked with -Wl,-z,defs finds every one of them here.
//
// Layout:
//   - device memory: one reserved range (PROT_NONE, MAP_NORESERVE; 256 GiB, or less if the
//     address space is limited). Allocation bumps a page-granular cursor: [base, base + size)
//     rounded up to pages, then a 4 KiB guard page; starts are page (so 256-byte) aligned and no
//     address is ever handed out twice, so a use after free is caught. Freed pages go back to
//     PROT_NONE and are madvise'd away. A second range of the same size at a fixed offset holds
//     one init byte per data byte (0xFF written, 0 never written). A page table maps every page
//     (guard page included) to the allocation that owns it, so a hook's lookup is two loads;
//   - shared memory: each OS thread owns a 1 MiB reservation; a block's arena starts 64 KiB into
//     it, and any access in the reservation that misses the block's static variables or its
//     dynamic part is out of bounds. One 24-byte record per arena byte (`Sh`) holds the last
//     writer and up to two readers with their clocks; records carry the block's serial, so a new
//     block needs no clearing.
#include <sys/mman.h>

#include <cstdio>

#include "registry.h"
#include "runtime.h"

namespace emu {
namespace {

const bool g_on = [] {
    const char* e = std::getenv("STIC_CUDA_EMU_SANITIZE");
    return !(e && std::strcmp(e, "0") == 0);
}();

enum : unsigned { K_READ = 1, K_WRITE = 2, K_ALIGN = 4, K_ATOMIC = 8 };

std::string hexa(uintptr_t a) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%llx", (unsigned long long)a);
    return b;
}
std::string thread_name(const Thread& t) { return "thread " + dim_str(t.idx) + " (tid " + std::to_string(t.tid) + ")"; }
const char* rw(unsigned k) { return (k & K_ATOMIC) ? "atomic" : (k & K_WRITE) ? "write" : "read"; }

// ---------------------------------------------------------------------------------------------
// Device memory.

constexpr size_t kPage = 4096, kGuard = kPage;
constexpr size_t kMaxAllocs = size_t(1) << 22;

struct Alloc {
    uintptr_t base;
    size_t size;
    std::atomic<bool> live;
};

uintptr_t g_lo = 0;  // the hooks test a - g_lo < g_span: nothing matches before the reservation
size_t g_span = 0;
uint8_t* g_shadow = nullptr;
uint32_t* g_pages = nullptr;
Alloc* g_allocs = nullptr;
std::mutex g_mu;
size_t g_next = 0, g_nallocs = 0;
std::atomic<size_t> g_used{0}, g_peak{0};

void* reserve(size_t n, int prot) {
    void* p = mmap(nullptr, n, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}
bool reserve_device() {
    for (size_t gib : {256, 64, 16, 4}) {
        size_t span = gib << 30;
        void* d = reserve(span, PROT_NONE);
        void* s = d ? reserve(span, PROT_NONE) : nullptr;
        void* pt = s ? reserve(span / kPage * sizeof(uint32_t), PROT_READ | PROT_WRITE) : nullptr;
        void* al = pt ? reserve(kMaxAllocs * sizeof(Alloc), PROT_READ | PROT_WRITE) : nullptr;
        if (al) {
            g_shadow = static_cast<uint8_t*>(s);
            g_pages = static_cast<uint32_t*>(pt);
            g_allocs = static_cast<Alloc*>(al);
            g_lo = reinterpret_cast<uintptr_t>(d);
            g_span = span;
            return true;
        }
        for (auto [p, n] : {std::pair<void*, size_t>{d, span}, {s, span}, {pt, span / kPage * 4}})
            if (p) munmap(p, n);
    }
    return false;
}
bool ensure_device() {
    static const bool ok = reserve_device();
    return ok;
}
const bool g_reserved_at_load = ensure_device();

bool in_device(uintptr_t a) { return a - g_lo < g_span; }
const Alloc* owner(uintptr_t a) {
    uint32_t id = __atomic_load_n(&g_pages[(a - g_lo) / kPage], __ATOMIC_ACQUIRE);
    return id ? &g_allocs[id - 1] : nullptr;
}
bool all_init(const uint8_t* s, size_t n) {
    switch (n) {
        case 1: return s[0] == 0xFF;
        case 2: { uint16_t v; std::memcpy(&v, s, 2); return v == 0xFFFFu; }
        case 4: { uint32_t v; std::memcpy(&v, s, 4); return v == ~0u; }
        case 8: { uint64_t v; std::memcpy(&v, s, 8); return v == ~0ull; }
        default:
            for (size_t i = 0; i < n; i++)
                if (s[i] != 0xFF) return false;
            return true;
    }
}

// The full report of a failed global check (slow path).
std::string global_report(uintptr_t a, size_t n, unsigned k, const char* what) {
    std::string acc = std::string(what ? what : "global") + " " + rw(k) + " of " + std::to_string(n) + " bytes at " + hexa(a);
    const Alloc* A = owner(a);
    if (!A) return "memcheck: " + acc + ": no allocation there (device memory never allocated)";
    std::string in = "offset " + std::to_string(a - A->base) + " of the " + std::to_string(A->size) + "-byte allocation at " + hexa(A->base);
    if (!A->live.load(std::memory_order_relaxed)) return "memcheck: use after free: " + acc + " in " + in + " (freed)";
    if (a + n > A->base + A->size) return "memcheck: out-of-bounds " + acc + ": " + in + " (" + std::to_string(a + n - A->base - A->size) + " bytes past its end)";
    if ((k & K_ALIGN) && (a & (n - 1))) return "memcheck: misaligned " + acc + " (" + in + "): a " + std::to_string(n) + "-byte access needs " + std::to_string(n) + "-byte alignment";
    const uint8_t* s = g_shadow + (a - g_lo);
    size_t i = 0;
    while (i < n && s[i] == 0xFF) i++;
    return "initcheck: " + acc + " (" + in + "): byte " + hexa(a + i) + " was never written (uninitialized device memory)";
}
// Fast path: true when the access is fine (and a write marks its bytes initialised).
inline bool global_ok(uintptr_t a, size_t n, unsigned k) {
    const Alloc* A = owner(a);
    if (!A || !A->live.load(std::memory_order_relaxed) || a + n > A->base + A->size) return false;
    if ((k & K_ALIGN) && (a & (n - 1))) return false;
    uint8_t* s = g_shadow + (a - g_lo);
    if ((k & K_READ) && !all_init(s, n)) return false;
    if (k & K_WRITE) std::memset(s, 0xFF, n);
    return true;
}

// ---------------------------------------------------------------------------------------------
// Shared memory: arenas and per-byte records.

constexpr size_t kArenaRes = size_t(1) << 20, kArenaLead = 64 << 10, kArenaMax = kArenaRes - 2 * kArenaLead;
constexpr uint16_t kNone = 0xFFFF;
enum : uint16_t { F_INIT = 1, F_PENDING = 2, F_GENERIC = 4 };  // F_GENERIC: last written by an ordinary store

struct Sh {
    uint32_t serial;         // the block whose record this is; any other: never touched
    uint32_t ws, r1s, r2s;   // clocks of the last write and of the two reads
    uint16_t w, r1, r2;      // their threads (kNone: none); w is the issuer while F_PENDING
    uint16_t flags;
};

// This OS thread's arena: reservation start (the hooks' filter), records, bytes made writable.
thread_local uintptr_t tl_res = ~uintptr_t(0) - kArenaRes;  // matches nothing until allocated
thread_local Sh* tl_sh = nullptr;
thread_local size_t tl_rw = 0;
struct ArenaOwner {
    ~ArenaOwner() {
        if (tl_sh) munmap(reinterpret_cast<void*>(tl_res), kArenaRes), munmap(tl_sh, kArenaMax * sizeof(Sh));
    }
};
thread_local ArenaOwner tl_owner;
std::atomic<uint32_t> g_serial{1};

inline bool ordered(const Block& b, unsigned u, uint32_t s, const Thread& t) {
    if (u == t.tid) return true;
    const Thread& U = b.th[u];
    if (t.bar_stamp > s && U.bar_stamp > s) return true;
    return U.warp == t.warp && t.warp_stamp > s && U.warp_stamp > s;
}

std::string shared_where(const Block& b, uint32_t o) {
    if (o >= b.static_cap) return "shared " + hexa(o) + " (dynamic shared memory + " + hexa(o - b.static_cap) + ")";
    return "shared " + hexa(o) + " (static __shared__ variables)";
}
std::string shared_bounds(const Block& b, intptr_t o, size_t n, unsigned k, const char* what) {
    return std::string("memcheck: out-of-bounds ") + (what ? what : "shared") + " " + rw(k) + " of " + std::to_string(n) + " bytes at shared offset " + (o < 0 ? "-" + hexa((uintptr_t)-o) : hexa((uintptr_t)o)) + ": the block has " + std::to_string(b.static_used) + " bytes of static __shared__ variables at [0, " + hexa(b.static_used) + ") and " + std::to_string(b.opt.dyn_smem) + " bytes of dynamic shared memory at [" + hexa(b.static_cap) + ", " + hexa(b.static_cap + b.opt.dyn_smem) + ")";
}
inline bool shared_in_bounds(const Block& b, intptr_t o, size_t n) {
    return (o >= 0 && (size_t)o + n <= b.static_used) || ((size_t)o >= b.static_cap && (size_t)o + n <= b.static_cap + b.opt.dyn_smem);
}
std::string race(const Block& b, const char* kind, uint32_t o, size_t n, const Thread& t, unsigned u, const char* verb) {
    return std::string("racecheck: ") + kind + " hazard at " + shared_where(b, o) + ": " + thread_name(t) + " " + verb + " " + std::to_string(n) + " bytes there, " + thread_name(b.th[u]) + (std::strcmp(kind, "WAR") == 0 ? " read" : " wrote") + " it with no __syncthreads/bar.sync (nor, in one warp, __syncwarp or another warp collective) in between";
}

// The per-byte checks of an in-bounds shared access [o, o+n) by t; "" or the report. `stamp`
// is the clock recorded for reads (ldmatrix records its reads just before its own sync).
std::string shared_bytes(Block& b, Thread& t, uint32_t o, size_t n, unsigned k, const char* what, uint32_t stamp) {
    Sh* e = tl_sh + o;
    const uint32_t S = b.serial;
    const uint16_t me = (uint16_t)t.tid;
    auto acc = [&] { return std::string(what ? what : "shared") + " " + rw(k) + " of " + std::to_string(n) + " bytes at " + shared_where(b, o); };
    if (k & K_READ) {
        for (size_t i = 0; i < n; i++) {
            const Sh& x = e[i];
            if (x.serial != S || !(x.flags & (F_INIT | F_PENDING))) return "initcheck: " + acc() + ": byte " + hexa(o + i) + " was never written in this block (uninitialized shared memory)";
            if (x.flags & F_PENDING) return "initcheck: " + acc() + ": byte " + hexa(o + i) + " is the destination of a cp.async by " + thread_name(b.th[x.w]) + " not yet waited for (cp.async.wait_group)";
            if (!(k & K_ATOMIC) && x.w != kNone && !ordered(b, x.w, x.ws, t)) return race(b, "RAW", o, n, t, x.w, "reads");
        }
        if (!(k & (K_ATOMIC | K_WRITE)))
            for (size_t i = 0; i < n; i++) {
                Sh& x = e[i];
                if (x.r1 == kNone || x.r1 == me || ordered(b, x.r1, x.r1s, t)) {
                    x.r1 = me, x.r1s = stamp;
                    if (x.r2 == me) x.r2 = kNone;
                } else if (x.r2 == kNone || x.r2 == me || ordered(b, x.r2, x.r2s, t)) {
                    x.r2 = me, x.r2s = stamp;
                }  // else: two other unordered readers are kept; any writer differs from one of them
            }
    }
    if (!(k & K_WRITE)) return "";
    bool waw = false;
    unsigned other = 0;
    for (size_t i = 0; i < n; i++) {
        Sh& x = e[i];
        if (x.serial != S) x = Sh{S, 0, 0, 0, kNone, kNone, kNone, 0};
        if (x.flags & F_PENDING) return "racecheck: WAW hazard: " + acc() + ": byte " + hexa(o + i) + " is the destination of a cp.async by " + thread_name(b.th[x.w]) + " not yet waited for (cp.async.wait_group)";
        if (k & K_ATOMIC) continue;
        if (x.r1 != kNone && x.r1 != me && !ordered(b, x.r1, x.r1s, t)) return race(b, "WAR", o, n, t, x.r1, "writes");
        if (x.r2 != kNone && x.r2 != me && !ordered(b, x.r2, x.r2s, t)) return race(b, "WAR", o, n, t, x.r2, "writes");
        if (!waw && x.w != kNone && x.w != me && !ordered(b, x.w, x.ws, t)) waw = true, other = x.w;
    }
    if (waw) {  // a store of the same value is no error (racecheck INFO): compare after the store
        if (n > sizeof t.waw_old) return race(b, "WAW", o, n, t, other, "writes");
        t.waw_off = o, t.waw_n = (uint32_t)n, t.waw_other = other;
        std::memcpy(t.waw_old, b.smem.p + o, n);
    }
    for (size_t i = 0; i < n; i++) {
        Sh& x = e[i];
        x.flags = (uint16_t)((x.flags & ~F_PENDING) | F_INIT | F_GENERIC);
        if (!(k & K_ATOMIC)) x.w = me, x.ws = b.clock, x.r1 = x.r2 = kNone;
    }
    return "";
}

// ---------------------------------------------------------------------------------------------
// The hooks' common path.

[[gnu::noinline]] void shared_hook(Thread* t, uintptr_t a, size_t n, unsigned k) {
    Block& b = *tl_block;
    if (t->waw_n) {
        std::string r = san_flush(b, *t);
        if (!r.empty()) abandon(r);
    }
    intptr_t o = (intptr_t)(a - reinterpret_cast<uintptr_t>(b.smem.p));
    if (!shared_in_bounds(b, o, n)) abandon(shared_bounds(b, o, n, k, nullptr));
    if ((k & K_ALIGN) && (o & (intptr_t)(n - 1))) abandon(std::string("memcheck: misaligned shared ") + rw(k) + " of " + std::to_string(n) + " bytes at " + shared_where(b, (uint32_t)o) + ": a " + std::to_string(n) + "-byte access needs " + std::to_string(n) + "-byte alignment");
    std::string r = shared_bytes(b, *t, (uint32_t)o, n, k, nullptr, b.clock);
    if (!r.empty()) abandon(r);
}

inline void hook(const volatile void* p, size_t n, unsigned k) {
    if (!g_on) return;
    Thread* t = tl_thread;
    if (!t || tl_nosan) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - g_lo < g_span) {
        if (!global_ok(a, n, k)) abandon(global_report(a, n, k, nullptr));
    } else if (a - tl_res < kArenaRes) {
        shared_hook(t, a, n, k);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// sanitize.h

bool san_on() { return g_on; }

uint8_t* san_arena(size_t bytes) {
    if (bytes > kArenaMax) fail("the block needs " + std::to_string(bytes) + " bytes of shared memory; the emulator's arena holds " + std::to_string(kArenaMax));
    if (!tl_sh) {
        void* r = reserve(kArenaRes, PROT_NONE);
        void* s = r ? reserve(kArenaMax * sizeof(Sh), PROT_READ | PROT_WRITE) : nullptr;
        if (!s) {
            if (r) munmap(r, kArenaRes);
            throw std::bad_alloc();
        }
        (void)&tl_owner;  // registers the unmapping at thread exit
        tl_res = reinterpret_cast<uintptr_t>(r);
        tl_sh = static_cast<Sh*>(s);
    }
    uint8_t* arena = reinterpret_cast<uint8_t*>(tl_res) + kArenaLead;
    size_t need = (bytes + kPage - 1) & ~(kPage - 1);
    if (need > tl_rw) {
        if (mprotect(arena, need, PROT_READ | PROT_WRITE)) throw std::bad_alloc();
        tl_rw = need;
    }
    return arena;
}

void san_block_begin(Block& b) {
    uint32_t s = g_serial.fetch_add(1, std::memory_order_relaxed);
    if (s == 0) s = g_serial.fetch_add(1, std::memory_order_relaxed);  // 0 marks fresh records
    b.serial = s;
}

std::string san_shared_read(const Block& cb, const Thread& ct, uint32_t off, size_t n, const char* what) {
    if (!g_on) return "";
    Block& b = const_cast<Block&>(cb);
    Thread& t = const_cast<Thread&>(ct);
    if (!shared_in_bounds(b, off, n)) return shared_bounds(b, off, n, K_READ, what);
    // Recorded just before the instruction's own warp sync: its lanes' later accesses are ordered.
    return shared_bytes(b, t, off, n, K_READ, what, b.clock - 1);
}

std::string san_async_proxy_read(const Block& cb, const Thread& t, uint32_t off, size_t n, const char* what) {
    std::string e = san_shared_read(cb, t, off, n, what);
    if (!e.empty() || !g_on) return e;
    const Block& b = cb;
    const Sh* x = tl_sh + off;
    for (size_t i = 0; i < n; i++) {
        if (!(x[i].flags & F_GENERIC) || x[i].w == kNone) continue;
        const Thread& U = b.th[x[i].w];
        const uint32_t f = U.proxy_fence;
        if (f > x[i].ws && ordered(b, U.tid, f, t)) continue;
        const char* why = f <= x[i].ws ? "has issued no fence.proxy.async since that store" : "issued its fence.proxy.async after the store but with no barrier ordering the fence before this read";
        return std::string("proxy: ") + what + " (async proxy) reads " + std::to_string(n) + " bytes at " + shared_where(b, off + (uint32_t)i) + " last written by an ordinary store of " + thread_name(U) + ", which " + why + " (PTX memory consistency model: a generic-proxy write is visible to the async proxy only after fence.proxy.async)";
    }
    return "";
}

void san_proxy_fence(Block& b, Thread& t) { t.proxy_fence = ++b.clock; }

std::string san_async_issue(Block& b, Thread& t, uint32_t off, size_t n, const char* what) {
    if (!g_on) return "";
    if (!shared_in_bounds(b, off, n)) return shared_bounds(b, off, n, K_WRITE, what);
    auto acc = [&] { return std::string(what) + " to " + shared_where(b, off); };
    Sh* e = tl_sh + off;
    const uint16_t me = (uint16_t)t.tid;
    for (size_t i = 0; i < n; i++) {  // the copy may land at any time from now: a write by t
        Sh& x = e[i];
        if (x.serial != b.serial) x = Sh{b.serial, 0, 0, 0, kNone, kNone, kNone, 0};
        if (x.flags & F_PENDING) return "racecheck: WAW hazard: " + acc() + ": byte " + hexa(off + i) + " is already the destination of a cp.async by " + thread_name(b.th[x.w]) + " not yet waited for";
        if (x.r1 != kNone && x.r1 != me && !ordered(b, x.r1, x.r1s, t)) return race(b, "WAR", off, n, t, x.r1, "issues a cp.async to");
        if (x.r2 != kNone && x.r2 != me && !ordered(b, x.r2, x.r2s, t)) return race(b, "WAR", off, n, t, x.r2, "issues a cp.async to");
        if (x.w != kNone && x.w != me && !ordered(b, x.w, x.ws, t)) return race(b, "WAW", off, n, t, x.w, "issues a cp.async to");
    }
    for (size_t i = 0; i < n; i++) e[i].flags = F_PENDING, e[i].w = me, e[i].ws = b.clock, e[i].r1 = e[i].r2 = kNone;
    return "";
}

void san_async_done(Block& b, Thread& t, uint32_t off, size_t n) {
    if (!g_on) return;
    Sh* e = tl_sh + off;
    for (size_t i = 0; i < n; i++) e[i] = Sh{b.serial, b.clock, 0, 0, (uint16_t)t.tid, kNone, kNone, F_INIT};
}

std::string san_global_read(const void* p, size_t n, size_t align, const char* what) {
    if (!g_on || n == 0) return "";
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (!in_device(a)) return "";  // host memory (the unit tests' vectors)
    if (a % align) return "memcheck: misaligned " + std::string(what) + " read of " + std::to_string(n) + " bytes at " + hexa(a) + ": needs " + std::to_string(align) + "-byte alignment";
    return global_ok(a, n, K_READ) ? "" : global_report(a, n, K_READ, what);
}

std::string san_flush(Block& b, Thread& t) {
    uint32_t o = t.waw_off, n = t.waw_n;
    t.waw_n = 0;
    if (!n || std::memcmp(t.waw_old, b.smem.p + o, n) == 0) return "";  // same value: INFO only
    return race(b, "WAW", o, n, t, t.waw_other, "wrote a different value to");
}

Shadow san_shadow_of(const Block& b, uint32_t off) {
    if (!tl_sh || off >= kArenaMax) return SH_UNKNOWN;
    const Sh& x = tl_sh[off];
    if (x.serial != b.serial) return SH_UNKNOWN;
    return (x.flags & F_PENDING) ? SH_PENDING_ASYNC : (x.flags & F_INIT) ? SH_WRITTEN : SH_UNKNOWN;
}

// ---------------------------------------------------------------------------------------------
// registry.h: device memory.

void* dev_alloc(size_t bytes) {
    if (!ensure_device()) return nullptr;
    size_t data = (bytes + kPage - 1) & ~(kPage - 1);
    std::lock_guard<std::mutex> g(g_mu);
    if (data + kGuard > g_span - g_next || g_nallocs >= kMaxAllocs) return nullptr;
    uintptr_t base = g_lo + g_next;
    if (data && (mprotect(reinterpret_cast<void*>(base), data, PROT_READ | PROT_WRITE) || mprotect(g_shadow + g_next, data, PROT_READ | PROT_WRITE))) return nullptr;
    Alloc& A = g_allocs[g_nallocs];
    A.base = base;
    A.size = bytes;
    A.live.store(true, std::memory_order_relaxed);
    uint32_t id = (uint32_t)++g_nallocs;
    for (size_t p = g_next / kPage, e = (g_next + data + kGuard) / kPage; p < e; p++) __atomic_store_n(&g_pages[p], id, __ATOMIC_RELEASE);
    g_next += data + kGuard;
    size_t used = g_used.fetch_add(bytes) + bytes, peak = g_peak.load();
    while (used > peak && !g_peak.compare_exchange_weak(peak, used)) {
    }
    return reinterpret_cast<void*>(base);
}

bool dev_free(void* p) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (!ensure_device() || !in_device(a)) return false;
    std::lock_guard<std::mutex> g(g_mu);
    Alloc* A = const_cast<Alloc*>(owner(a));
    if (!A || A->base != a || !A->live.load()) return false;
    A->live.store(false);
    size_t data = (A->size + kPage - 1) & ~(kPage - 1);
    if (data) {
        for (void* q : {static_cast<void*>(p), static_cast<void*>(g_shadow + (a - g_lo))}) {
            mprotect(q, data, PROT_NONE);
            madvise(q, data, MADV_DONTNEED);
        }
    }
    g_used.fetch_sub(A->size);
    return true;
}

bool dev_is_device(const void* p) { return ensure_device() && in_device(reinterpret_cast<uintptr_t>(p)); }

bool dev_find(const void* p, size_t n, void** base, size_t* size) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (!dev_is_device(p)) return false;
    const Alloc* A = owner(a);
    if (!A || !A->live.load() || a + n > A->base + A->size) return false;
    if (base) *base = reinterpret_cast<void*>(A->base);
    if (size) *size = A->size;
    return true;
}

void dev_mark_uninit(const void* p, size_t n) {
    if (n && dev_find(p, n, nullptr, nullptr)) std::memset(g_shadow + (reinterpret_cast<uintptr_t>(p) - g_lo), 0, n);
}

void dev_mark_init(const void* p, size_t n) {
    if (n && dev_find(p, n, nullptr, nullptr)) std::memset(g_shadow + (reinterpret_cast<uintptr_t>(p) - g_lo), 0xFF, n);
}

void dev_copy_init(void* dst, const void* src, size_t n) {
    if (n && dev_find(dst, n, nullptr, nullptr) && dev_find(src, n, nullptr, nullptr))
        std::memmove(g_shadow + (reinterpret_cast<uintptr_t>(dst) - g_lo), g_shadow + (reinterpret_cast<uintptr_t>(src) - g_lo), n);
}

std::string dev_check(const void* p, size_t n, bool write, bool init, const char* what) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (!dev_is_device(p)) return "memcheck: " + std::string(what) + ": " + hexa(a) + " is not device memory";
    if (n == 0) return "";
    unsigned k = write ? (unsigned)K_WRITE : init ? (unsigned)K_READ : 0u;
    const Alloc* A = owner(a);
    bool ok = A && A->live.load() && a + n <= A->base + A->size && (!(k & K_READ) || all_init(g_shadow + (a - g_lo), n));
    return ok ? "" : global_report(a, n, k ? k : K_READ, what);
}

size_t dev_used_bytes() { return g_used.load(); }
size_t dev_peak_bytes() { return g_peak.load(); }

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// The ThreadSanitizer entry points of GCC 12 (gcc/sanitizer.def, gcc/tsan.cc): plain accesses
// (__tsan_{read,write}{1,2,4,8,16}; natural alignment checked), volatile ones (only with
// --param tsan-distinguish-volatile=1), unaligned and range ones (no alignment check), vptr
// stores, function entry/exit (off with --param tsan-instrument-func-entry-exit=0), and the
// atomics, which perform the operation (seq_cst, stronger than any order asked for).

using emu::K_ALIGN;
using emu::K_ATOMIC;
using emu::K_READ;
using emu::K_WRITE;
#define EMU_TSAN extern "C" __attribute__((visibility("default")))

EMU_TSAN void __tsan_init() {}
EMU_TSAN void __tsan_func_entry(void*) {}
EMU_TSAN void __tsan_func_exit() {}
EMU_TSAN void __tsan_vptr_update(void** p, void*) { emu::hook(p, sizeof(void*), K_WRITE | K_ALIGN); }
EMU_TSAN void __tsan_vptr_read(void** p) { emu::hook(p, sizeof(void*), K_READ | K_ALIGN); }
EMU_TSAN void __tsan_read_range(void* p, unsigned long n) { emu::hook(p, n, K_READ); }
EMU_TSAN void __tsan_write_range(void* p, unsigned long n) { emu::hook(p, n, K_WRITE); }

#define EMU_TSAN_RW(N)                                                                           \
    EMU_TSAN void __tsan_read##N(void* p) { emu::hook(p, N, K_READ | K_ALIGN); }                 \
    EMU_TSAN void __tsan_write##N(void* p) { emu::hook(p, N, K_WRITE | K_ALIGN); }               \
    EMU_TSAN void __tsan_volatile_read##N(void* p) { emu::hook(p, N, K_READ | K_ALIGN); }        \
    EMU_TSAN void __tsan_volatile_write##N(void* p) { emu::hook(p, N, K_WRITE | K_ALIGN); }      \
    EMU_TSAN void __tsan_unaligned_read##N(void* p) { emu::hook(p, N, K_READ); }                 \
    EMU_TSAN void __tsan_unaligned_write##N(void* p) { emu::hook(p, N, K_WRITE); }               \
    EMU_TSAN void __tsan_unaligned_volatile_read##N(void* p) { emu::hook(p, N, K_READ); }        \
    EMU_TSAN void __tsan_unaligned_volatile_write##N(void* p) { emu::hook(p, N, K_WRITE); }
EMU_TSAN_RW(1)
EMU_TSAN_RW(2)
EMU_TSAN_RW(4)
EMU_TSAN_RW(8)
EMU_TSAN_RW(16)

#define EMU_SC __ATOMIC_SEQ_CST
#define EMU_TSAN_RMW(B, T, op, builtin) \
    EMU_TSAN T __tsan_atomic##B##_##op(volatile T* a, T v, int) { emu::hook(a, sizeof(T), K_READ | K_WRITE | K_ALIGN | K_ATOMIC); return builtin(a, v, EMU_SC); }
#define EMU_TSAN_ATOMICS(B, T)                                                                                     \
    EMU_TSAN T __tsan_atomic##B##_load(const volatile T* a, int) {                                                \
        emu::hook(a, sizeof(T), K_READ | K_ALIGN | K_ATOMIC);                                                     \
        return __atomic_load_n(a, EMU_SC);                                                                        \
    }                                                                                                             \
    EMU_TSAN void __tsan_atomic##B##_store(volatile T* a, T v, int) {                                            \
        emu::hook(a, sizeof(T), K_WRITE | K_ALIGN | K_ATOMIC);                                                    \
        __atomic_store_n(a, v, EMU_SC);                                                                           \
    }                                                                                                             \
    EMU_TSAN_RMW(B, T, exchange, __atomic_exchange_n)                                                             \
    EMU_TSAN_RMW(B, T, fetch_add, __atomic_fetch_add)                                                             \
    EMU_TSAN_RMW(B, T, fetch_sub, __atomic_fetch_sub)                                                             \
    EMU_TSAN_RMW(B, T, fetch_and, __atomic_fetch_and)                                                             \
    EMU_TSAN_RMW(B, T, fetch_or, __atomic_fetch_or)                                                               \
    EMU_TSAN_RMW(B, T, fetch_xor, __atomic_fetch_xor)                                                             \
    EMU_TSAN_RMW(B, T, fetch_nand, __atomic_fetch_nand)                                                           \
    EMU_TSAN int __tsan_atomic##B##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                \
        emu::hook(a, sizeof(T), K_READ | K_WRITE | K_ALIGN | K_ATOMIC);                                           \
        return __atomic_compare_exchange_n(a, c, v, false, EMU_SC, EMU_SC);                                      \
    }                                                                                                             \
    EMU_TSAN int __tsan_atomic##B##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                  \
        emu::hook(a, sizeof(T), K_READ | K_WRITE | K_ALIGN | K_ATOMIC);                                           \
        return __atomic_compare_exchange_n(a, c, v, true, EMU_SC, EMU_SC);                                       \
    }                                                                                                             \
    EMU_TSAN T __tsan_atomic##B##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                      \
        emu::hook(a, sizeof(T), K_READ | K_WRITE | K_ALIGN | K_ATOMIC);                                           \
        __atomic_compare_exchange_n(a, &c, v, false, EMU_SC, EMU_SC);                                            \
        return c;                                                                                                 \
    }
EMU_TSAN_ATOMICS(8, unsigned char)
EMU_TSAN_ATOMICS(16, unsigned short)
EMU_TSAN_ATOMICS(32, unsigned int)
EMU_TSAN_ATOMICS(64, unsigned long long)

EMU_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(EMU_SC); }
EMU_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(EMU_SC); }
