// emu/runtime.h: the core of the emulated CUDA device (issue #14): blocks of fibers, block
// barriers, warp rendezvous, the block's shared-memory arena with its shadow state, launch and
// the failure/deadlock reports. Host C++17 + Boost.Context (fiber, Boost >= 1.74).
//
// Execution model (PTX ISA "Execution model"; docs in ../shared/reference/ptx-emulation.md):
//   - a grid's blocks run on a pool of OS threads (STIC_CUDA_EMU_THREADS, default: the host's
//     hardware threads), one block per OS thread at a time, in increasing linear block index;
//     each Block object is self-contained (no globals other than the thread_local "current block
//     / current thread" pointers); the first failing block (lowest index) stops the launch;
//   - each CUDA thread is a stackful fiber; a block runs its fibers round-robin on one OS thread;
//     a thread runs until it blocks (barrier, warp collective) or exits;
//   - bar.sync / __syncthreads: PTX "barrier{.cta}". Strict (aligned) by default: every arrival
//     must come from the same call site, and a thread that exits while others wait, or before
//     others reach a block-wide barrier, is a reported divergent barrier (the hardware counts only
//     non-exited threads, but the Programming Guide makes divergent __syncthreads undefined);
//   - warp collectives are rendezvous of the lanes named in the mask (PTX "shfl.sync", "vote.sync",
//     "redux.sync", "mma", "ldmatrix"): one warp's lanes only, never a block barrier. Each lane
//     deposits pointers to its inputs/outputs (alive on its parked fiber's stack); the last lane to
//     arrive computes every lane's result;
//   - when no thread can run and some have not exited, the block has deadlocked: the report names
//     the kernel, the block, and each group of threads with what they wait at (site, barrier or
//     collective, mask, arrived lanes) and which threads have exited.
//   - every failure throws emu::Error out of launch() with the kernel, block and thread;
//   - the sanitizers (sanitize.h) see every instrumented access of the kernel code; the runtime's
//     own accesses to shared memory (ldmatrix, cp.async) run with `tl_nosan` set and are checked
//     explicitly, attributed to the lane/thread the PTX ISA names.
#pragma once
#include <boost/context/fiber.hpp>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "sanitize.h"

namespace emu {

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Site {
    const char* file;
    int line;
};
#define EMU_HERE (::emu::Site{__FILE__, __LINE__})
inline bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }
inline std::string site_str(Site s) {
    const char* f = std::strrchr(s.file, '/');
    return std::string(f ? f + 1 : s.file) + ":" + std::to_string(s.line);
}

struct Block;
struct Rdv;

// One queued cp.async: performed at the covering wait_group (or at thread exit).
struct AsyncCopy {
    uint32_t dst;  // shared-window address
    const void* src;
    uint32_t size, src_size;
};

enum class St : uint8_t { Ready, Blocked, Done };

struct Thread {
    unsigned tid = 0, lane = 0, warp = 0;
    dim3 idx;
    St st = St::Ready;
    bool started = false;
    boost::context::fiber fib, sink;
    // What a blocked thread waits at (for reports).
    const char* wait_what = nullptr;
    Site wait_site{"", 0};
    int wait_bar = -1;
    Rdv* rdv = nullptr;
    // cp.async groups (PTX "cp.async.commit_group": groups are per thread).
    std::vector<AsyncCopy> uncommitted;
    std::deque<std::vector<AsyncCopy>> groups;
    // Sanitizer state (sanitize.h): the block clock at the last barrier / warp collective this
    // thread took part in; a WAW whose same-value check waits for the store (san_flush).
    uint32_t bar_stamp = 0, warp_stamp = 0;
    // The block clock just after this thread's last fence.proxy.async (0: none yet): its generic
    // shared-memory writes at an earlier clock are visible to the async proxy (san_proxy_fence).
    uint32_t proxy_fence = 0;
    uint32_t waw_off = 0, waw_n = 0;
    unsigned waw_other = 0;
    uint8_t waw_old[32];
    bool abandoned = false;  // parked for good by a hook's report (its fiber is never unwound)
};

struct Barrier {
    unsigned arrived = 0, expected = 0;
    bool all = false;  // block-wide (no thread count)
    Site site{"", 0};
    const char* name = nullptr;
    std::vector<unsigned> waiters;
};

// A warp rendezvous in progress.
struct Rdv {
    const char* name;
    Site site;
    bool aligned;  // .aligned: every lane must be at the same instruction (same site)
    unsigned mask, arrived = 0;
    void (*compute)(Block&, Rdv&);
    unsigned warp;
    const void* in[32] = {};
    void* out[32] = {};
};

// Stacks: mmap'd with a guard page, recycled per OS thread (allocation per block is the costly
// part of a fiber; the pool keeps it off the launch path).
struct StackPool {
    size_t size;
    std::vector<void*> free_;
    explicit StackPool(size_t s) : size(s) {}
    ~StackPool() {
        for (void* p : free_) munmap(p, size);
    }
    boost::context::stack_context allocate() {
        void* p;
        if (!free_.empty()) {
            p = free_.back();
            free_.pop_back();
        } else {
            p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) throw std::bad_alloc();
            mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
        }
        boost::context::stack_context sc;
        sc.size = size;
        sc.sp = static_cast<char*>(p) + size;
        return sc;
    }
    void deallocate(boost::context::stack_context& sc) { free_.push_back(static_cast<char*>(sc.sp) - sc.size); }
};
// The allocator handed to each fiber (boost's StackAllocator concept).
struct PoolAlloc {
    StackPool* pool;
    boost::context::stack_context allocate() { return pool->allocate(); }
    void deallocate(boost::context::stack_context& sc) { pool->deallocate(sc); }
};

struct LaunchOptions {
    size_t static_smem = 48 * 1024;  // the arena reserved for static __shared__ variables
    size_t dyn_smem = 0;             // the launch's dynamic shared memory (extern __shared__)
    size_t stack_bytes = 256 * 1024; // per CUDA thread (virtual; committed lazily)
    bool strict_barriers = true;     // report exited threads at block barriers (see file header)
    // issue #15 (sm90_wgmma.h, setmaxnreg): registers per thread at entry (ptxas); 0 = unknown
    unsigned regs = 0;
};

struct Block {
    const char* kernel;
    dim3 grid, bdim, bidx;
    LaunchOptions opt;
    std::vector<Thread> th;
    unsigned live = 0, exited = 0;
    Barrier bar[16];
    std::vector<std::vector<std::unique_ptr<Rdv>>> open;  // per warp
    struct {
        uint8_t* p = nullptr;
        size_t n = 0;
        uint8_t* data() const { return p; }
        size_t size() const { return n; }
    } smem;                 // [static arena (static_cap) | dynamic], this OS thread's san_arena
    size_t static_cap = 0;  // the static arena's capacity = the dynamic part's offset
    size_t static_used = 0;
    uint32_t clock = 0;     // bumped at every completed barrier or warp collective (sanitize.h)
    uint32_t serial = 0;    // this block's shadow serial (san_block_begin)
    std::map<const void*, size_t> shared_vars;
    std::string error;
};

inline thread_local Block* tl_block = nullptr;
inline thread_local Thread* tl_thread = nullptr;
inline thread_local int tl_nosan = 0;  // > 0: the hooks ignore this OS thread's accesses (runtime code)
struct NoSan {
    NoSan() { tl_nosan++; }
    ~NoSan() { tl_nosan--; }
    NoSan(const NoSan&) = delete;
};

inline Block& blk() { return *tl_block; }
inline Thread& cur() { return *tl_thread; }

inline std::string dim_str(dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
inline std::string where(const Block& b) {
    return std::string("kernel `") + b.kernel + "`, block " + dim_str(b.bidx);
}

// A report naming the kernel, block and current thread.
inline std::string report_text(const std::string& msg) {
    std::string s = "emu: " + msg;
    if (tl_block) {
        s += " [" + where(*tl_block);
        if (tl_thread) s += ", thread " + dim_str(tl_thread->idx) + " (tid " + std::to_string(tl_thread->tid) + ")";
        s += "]";
    }
    return s;
}
[[noreturn]] inline void fail(const std::string& msg) { throw Error(report_text(msg)); }
// The report of a sanitizer hook: nothing may throw through a hook's caller (g++ declares the
// __tsan_* entry points nothrow), so the thread records the report and parks for good; the
// scheduler then fails the launch and leaks this fiber instead of unwinding it.
[[noreturn]] inline void abandon(const std::string& msg) {
    Thread* t = tl_thread;
    if (tl_block->error.empty()) tl_block->error = report_text(msg);
    t->abandoned = true;
    t->sink = std::move(t->sink).resume();
    std::abort();  // never resumed
}

// "0-15,17,20-31"
inline std::string ranges(const std::vector<unsigned>& v) {
    std::string s;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) j++;
        if (!s.empty()) s += ",";
        s += std::to_string(v[i]);
        if (j > i) s += "-" + std::to_string(v[j]);
        i = j + 1;
    }
    return s;
}
inline std::string hex(unsigned m) {
    std::ostringstream o;
    o << "0x" << std::hex << m;
    return o.str();
}

// Parks the current fiber until something marks it Ready again.
inline void park() {
    Thread* t = tl_thread;
    if (t->waw_n) {
        std::string r = san_flush(*tl_block, *t);
        if (!r.empty()) fail(r);
    }
    t->st = St::Blocked;
    t->sink = std::move(t->sink).resume();
    tl_thread = t;
    tl_block = tl_block;  // unchanged: a block never migrates between OS threads
}

// ---------------------------------------------------------------------------------------------
// Block barriers (PTX "barrier{.cta}", "bar"; __syncthreads = barrier 0 with every thread).

inline void bar_sync(unsigned id, unsigned count, Site site, const char* name = "__syncthreads") {
    Block& b = blk();
    Thread& t = cur();
    if (id >= 16) fail("bar.sync barrier id " + std::to_string(id) + " out of range 0..15");
    unsigned n = (unsigned)b.th.size();
    unsigned expected = count ? count : b.opt.strict_barriers ? n : b.live;  // relaxed: live threads only
    if (count && (count % 32 || count > n)) fail("bar.sync thread count " + std::to_string(count) + " not a multiple of 32 or above the block size");
    if (!count && b.exited && b.opt.strict_barriers) {
        std::vector<unsigned> ex;
        for (auto& o : b.th)
            if (o.st == St::Done) ex.push_back(o.tid);
        fail(std::string("divergent barrier: ") + name + " at " + site_str(site) + " reached after threads " + ranges(ex) + " exited");
    }
    Barrier& B = b.bar[id];
    if (B.arrived == 0) {
        B.site = site;
        B.expected = expected;
        B.all = count == 0;
        B.name = name;
    } else if (!same_site(B.site, site) || B.expected != expected) {
        fail(std::string("divergent barrier: ") + name + " at " + site_str(site) + " while threads " + ranges(B.waiters) + " wait at " + B.name + " " + site_str(B.site) + " (barrier " + std::to_string(id) + ")");
    }
    B.arrived++;
    if (B.arrived == B.expected) {
        uint32_t stamp = ++b.clock;
        for (unsigned w : B.waiters) b.th[w].st = St::Ready, b.th[w].bar_stamp = stamp;
        t.bar_stamp = stamp;
        B.waiters.clear();
        B.arrived = 0;
        return;
    }
    B.waiters.push_back(t.tid);
    t.wait_what = name;
    t.wait_site = site;
    t.wait_bar = (int)id;
    park();
    t.wait_what = nullptr;
    t.wait_bar = -1;
}

// ---------------------------------------------------------------------------------------------
// Warp rendezvous. `in`/`out` point at the calling lane's own data (kept alive while it is parked).

inline void collective(const char* name, unsigned mask, Site site, bool aligned, void (*compute)(Block&, Rdv&), const void* in, void* out) {
    Block& b = blk();
    Thread& t = cur();
    unsigned lane = t.lane, warp = t.warp;
    if (!((mask >> lane) & 1u)) fail(std::string(name) + " at " + site_str(site) + ": mask " + hex(mask) + " does not name the calling lane " + std::to_string(lane));
    if (aligned && mask != 0xFFFFFFFFu) fail(std::string(name) + " at " + site_str(site) + " is .sync.aligned: every lane of the warp must execute it");
    for (unsigned l = 0; l < 32; l++) {
        if (!((mask >> l) & 1u)) continue;
        unsigned tid = warp * 32 + l;
        if (tid >= b.th.size()) fail(std::string(name) + " at " + site_str(site) + ": mask " + hex(mask) + " names lane " + std::to_string(l) + ", which does not exist (partial warp)");
        if (b.th[tid].st == St::Done) fail(std::string(name) + " at " + site_str(site) + ": mask " + hex(mask) + " names lane " + std::to_string(l) + ", which has exited");
    }
    // Join the open rendezvous of the same kind and mask that this lane has not joined yet. Lanes
    // of one warp may wait in several collectives with overlapping masks (a lane outside a
    // ballot's mask may run ahead to the next collective); it is an error only when two of them
    // wait for each other: an open one names this lane and holds a lane this call names.
    auto& open = b.open[warp];
    Rdv* r = nullptr;
    size_t at = 0;
    for (size_t i = 0; i < open.size() && !r; i++) {
        Rdv* o = open[i].get();
        if (o->mask == mask && o->compute == compute && !((o->arrived >> lane) & 1u) && (!aligned || same_site(o->site, site))) r = o, at = i;
    }
    for (auto& o : open) {
        if (o.get() == r || !((o->mask >> lane) & 1u) || !(o->arrived & mask)) continue;
        std::vector<unsigned> in_o;
        for (unsigned l = 0; l < 32; l++)
            if ((o->arrived >> l) & 1u) in_o.push_back(l);
        fail("divergent warp collective: lane " + std::to_string(lane) + " calls " + name + " (mask " + hex(mask) + ") at " + site_str(site) + " while lanes " + ranges(in_o) + " of warp " + std::to_string(warp) + " wait for it in " + o->name + " (mask " + hex(o->mask) + ") at " + site_str(o->site));
    }
    if (!r) {
        open.push_back(std::make_unique<Rdv>());
        at = open.size() - 1;
        r = open.back().get();
        r->name = name;
        r->site = site;
        r->aligned = aligned;
        r->mask = mask;
        r->compute = compute;
        r->warp = warp;
    }
    r->in[lane] = in;
    r->out[lane] = out;
    r->arrived |= 1u << lane;
    if (r->arrived == r->mask) {
        std::unique_ptr<Rdv> done = std::move(open[at]);
        open.erase(open.begin() + (long)at);
        uint32_t stamp = ++b.clock;  // the lanes' earlier accesses are now ordered (sanitize.h)
        for (unsigned l = 0; l < 32; l++)
            if ((done->mask >> l) & 1u) b.th[warp * 32 + l].warp_stamp = stamp;
        {
            NoSan quiet;              // compute checks its own accesses (ldmatrix)
            done->compute(b, *done);  // may fail(): reported from the completing lane
        }
        for (unsigned l = 0; l < 32; l++)
            if (((done->mask >> l) & 1u) && l != lane) b.th[warp * 32 + l].st = St::Ready, b.th[warp * 32 + l].rdv = nullptr;
        return;
    }
    t.wait_what = name;
    t.wait_site = site;
    t.rdv = r;
    park();
    t.wait_what = nullptr;
    t.rdv = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Shared memory: one arena per block, [static | dynamic]; the "shared window" address of a byte
// is its offset in the arena (what __cvta_generic_to_shared returns and ldmatrix/cp.async take).

inline uint32_t cvta_shared(const void* p) {
    Block& b = blk();
    auto a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(b.smem.data());
    if (a < base || a >= base + b.smem.size()) fail("__cvta_generic_to_shared of a pointer outside the block's shared memory");
    return (uint32_t)(a - base);
}
// The byte at shared-window address `a`, checking that [a, a+n) lies in the arena.
inline uint8_t* smem_at(uint32_t a, size_t n, const char* what) {
    Block& b = blk();
    if ((size_t)a + n > b.smem.size()) fail(std::string(what) + ": shared address " + hex(a) + " + " + std::to_string(n) + " beyond the block's " + std::to_string(b.smem.size()) + " bytes of shared memory");
    return b.smem.data() + a;
}
inline Shadow shadow_of(const void* p) { return san_shadow_of(blk(), cvta_shared(p)); }
// An emulated instruction's read of [a, a+n) by the current thread (sanitize.h checks).
inline void shadow_check_read(uint32_t a, size_t n, const char* what) {
    std::string r = san_shared_read(blk(), cur(), a, n, what);
    if (!r.empty()) fail(r);
}
// Dynamic shared memory (extern __shared__): 256-byte aligned, after the static arena.
inline void* dyn_smem() { return blk().smem.data() + blk().static_cap; }
// A static __shared__ variable: one instance per block, keyed by a per-declaration tag.
template <class T>
T& shared_var(const void* key) {
    Block& b = blk();
    auto it = b.shared_vars.find(key);
    if (it == b.shared_vars.end()) {
        size_t al = alignof(T) > 16 ? alignof(T) : 16;  // 16: vector accesses of any array
        size_t off = (b.static_used + al - 1) & ~(al - 1);
        if (off + sizeof(T) > b.static_cap) fail("static __shared__ variables exceed the " + std::to_string(b.static_cap) + "-byte arena (" + std::to_string(b.opt.static_smem) + " bytes + 1 KiB for our 16-byte alignment)");
        b.static_used = off + sizeof(T);
        it = b.shared_vars.emplace(key, off).first;
    }
    return *reinterpret_cast<T*>(b.smem.data() + it->second);
}

// Performs this thread's queued cp.async copies of one group (sm80.h issues them): a write by
// the issuing thread now, at its covering wait (sanitize.h).
inline void perform_copies(std::vector<AsyncCopy>& g) {
    Block& b = blk();
    NoSan quiet;
    for (auto& c : g) {
        uint8_t* d = b.smem.data() + c.dst;
        if (c.src_size) std::memcpy(d, c.src, c.src_size);
        std::memset(d + c.src_size, 0, c.size - c.src_size);
        san_async_done(b, cur(), c.dst, c.size);
    }
    g.clear();
}

// ---------------------------------------------------------------------------------------------
// Thread exit and the deadlock report.

inline void on_exit(Block& b, Thread& t) {
    if (t.waw_n) {
        std::string r = san_flush(b, t);
        if (!r.empty()) fail(r);
    }
    perform_copies(t.uncommitted);
    for (auto& g : t.groups) perform_copies(g);
    t.groups.clear();
    t.st = St::Done;
    b.live--;
    b.exited++;
    for (auto& r : b.open[t.warp])
        if ((r->mask >> t.lane) & 1u) {
            std::vector<unsigned> w;
            for (unsigned l = 0; l < 32; l++)
                if ((r->arrived >> l) & 1u) w.push_back(l);
            fail("divergent warp collective: lane " + std::to_string(t.lane) + " exits while lanes " + ranges(w) + " of warp " + std::to_string(t.warp) + " wait for it in " + r->name + " (mask " + hex(r->mask) + ") at " + site_str(r->site));
        }
    for (unsigned i = 0; i < 16; i++) {
        Barrier& B = b.bar[i];
        if (!B.arrived || !B.all) continue;  // a block-wide barrier in progress
        if (!b.opt.strict_barriers) {  // the hardware's rule: exited threads no longer count
            B.expected = b.live;
            if (B.arrived == B.expected) {
                uint32_t stamp = ++b.clock;
                for (unsigned w : B.waiters) b.th[w].st = St::Ready, b.th[w].bar_stamp = stamp;
                B.waiters.clear();
                B.arrived = 0;
            }
            continue;
        }
        fail(std::string("divergent barrier: thread exits while threads ") + ranges(b.bar[i].waiters) + " wait at " + b.bar[i].name + " " + site_str(b.bar[i].site));
    }
}

inline std::string deadlock_report(const Block& b) {
    std::ostringstream o;
    o << "emu: deadlock in " << where(b) << ": no thread can run";
    std::map<std::string, std::vector<unsigned>> groups;
    std::vector<unsigned> ex;
    for (auto& t : b.th) {
        if (t.st == St::Done) {
            ex.push_back(t.tid);
            continue;
        }
        std::string k = std::string(t.wait_what ? t.wait_what : "?") + " at " + site_str(t.wait_site);
        if (t.wait_bar >= 0) k += " (barrier " + std::to_string(t.wait_bar) + ", " + std::to_string(b.bar[t.wait_bar].arrived) + "/" + std::to_string(b.bar[t.wait_bar].expected) + " arrived)";
        if (t.rdv) k += " (warp " + std::to_string(t.warp) + ", mask " + hex(t.rdv->mask) + ", arrived " + hex(t.rdv->arrived) + ")";
        groups[k].push_back(t.tid);
    }
    for (auto& [k, v] : groups) o << "\n  threads " << ranges(v) << " wait in " << k;
    if (!ex.empty()) o << "\n  threads " << ranges(ex) << " exited";
    return o.str();
}

// ---------------------------------------------------------------------------------------------
// Launch: runs `body` (the kernel call) as every thread of every block, block by block.

inline StackPool& stack_pool(size_t bytes) {
    thread_local std::map<size_t, std::unique_ptr<StackPool>> pools;
    auto& p = pools[bytes];
    if (!p) p = std::make_unique<StackPool>(bytes);
    return *p;
}

inline void run_block(Block& b, const std::function<void()>& body) {
    unsigned n = b.bdim.x * b.bdim.y * b.bdim.z;
    b.th.resize(n);
    b.open.resize((n + 31) / 32);
    b.static_cap = (b.opt.static_smem + 1024 + 255) & ~size_t(255);
    b.smem.n = b.static_cap + b.opt.dyn_smem;
    b.smem.p = san_arena(b.smem.n);  // not cleared: initcheck reports reads of unwritten bytes
    san_block_begin(b);
    b.live = n;
    StackPool& pool = stack_pool(b.opt.stack_bytes);
    for (unsigned i = 0; i < n; i++) {
        Thread& t = b.th[i];
        t.tid = i;
        t.lane = i % 32;
        t.warp = i / 32;
        t.idx = dim3(i % b.bdim.x, (i / b.bdim.x) % b.bdim.y, i / (b.bdim.x * b.bdim.y));
        t.fib = boost::context::fiber(std::allocator_arg, PoolAlloc{&pool}, [&b, &t, &body](boost::context::fiber&& sink) {
            t.sink = std::move(sink);
            try {
                body();
                on_exit(b, t);
            } catch (const Error& e) {
                b.error = e.what();
            } catch (const std::exception& e) {
                b.error = std::string("emu: ") + e.what() + " [" + where(b) + ", tid " + std::to_string(t.tid) + "]";
            }
            return std::move(t.sink);
        });
    }
    Block* saved_b = tl_block;
    Thread* saved_t = tl_thread;
    tl_block = &b;
    struct Restore {
        Block* b;
        Thread* t;
        ~Restore() { tl_block = b, tl_thread = t; }
    } restore{saved_b, saved_t};
    while (b.live) {
        bool ran = false;
        for (auto& t : b.th) {
            if (t.st != St::Ready) continue;
            ran = true;
            tl_thread = &t;
            t.fib = std::move(t.fib).resume();
            tl_thread = nullptr;
            if (t.abandoned) (void)new boost::context::fiber(std::move(t.fib));  // leaked: unwinding it would cross a hook
            if (!b.error.empty()) throw Error(b.error);  // the other fibers unwind when b is destroyed
        }
        if (!ran) throw Error(deadlock_report(b));
    }
}

// The OS threads blocks run on: the caller plus up to STIC_CUDA_EMU_THREADS - 1 workers, kept
// for the process's life (never destroyed: joining at exit is not needed). One launch at a time
// uses them; a launch that finds them busy (another host thread launching) runs on its caller.
inline unsigned emu_threads() {
    static const unsigned n = [] {
        const char* e = std::getenv("STIC_CUDA_EMU_THREADS");
        long v = e ? std::strtol(e, nullptr, 10) : 0;
        if (v <= 0) v = (long)std::thread::hardware_concurrency();
        return (unsigned)(v > 0 ? v : 1);
    }();
    return n;
}
struct BlockPool {
    std::mutex busy, m;
    std::condition_variable wake, idle;
    std::vector<std::thread> workers;
    const std::function<void()>* job = nullptr;
    unsigned slots = 0, running = 0;
    uint64_t gen = 0;
    static BlockPool& get() {
        static BlockPool* p = new BlockPool;  // leaked on purpose (detached workers)
        return *p;
    }
    // Runs f on the caller and k - 1 workers; returns when every copy returned (f must not throw).
    void run(unsigned k, const std::function<void()>& f) {
        {
            std::lock_guard<std::mutex> g(m);
            while (workers.size() < k - 1) {
                workers.emplace_back([this] { loop(); });
                workers.back().detach();
            }
            job = &f;
            slots = k - 1;
            running = k - 1;
            gen++;
        }
        wake.notify_all();
        f();
        std::unique_lock<std::mutex> g(m);
        idle.wait(g, [this] { return running == 0; });
        job = nullptr;
    }
    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> g(m);
        for (;;) {
            wake.wait(g, [&] { return gen != seen && slots > 0; });
            seen = gen;
            slots--;
            const std::function<void()>* f = job;
            g.unlock();
            (*f)();
            g.lock();
            if (--running == 0) idle.notify_all();
        }
    }
};

inline void launch(const char* kernel, dim3 grid, dim3 block, const LaunchOptions& opt, const std::function<void()>& body) {
    if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024) throw Error(std::string("emu: kernel `") + kernel + "`: block " + dim_str(block) + " has 0 or more than 1024 threads");
    size_t nblocks = (size_t)grid.x * grid.y * grid.z;
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex em;
    size_t err_at = SIZE_MAX;
    std::string err;
    std::function<void()> work = [&] {
        while (!stop.load(std::memory_order_relaxed)) {
            size_t i = next.fetch_add(1);
            if (i >= nblocks) break;
            std::string e;
            try {
                Block b;
                b.kernel = kernel;
                b.grid = grid;
                b.bdim = block;
                b.bidx = dim3((unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y), (unsigned)(i / ((size_t)grid.x * grid.y)));
                b.opt = opt;
                run_block(b, body);
            } catch (const std::exception& x) {
                e = x.what();
            }
            if (!e.empty()) {  // the lowest failing block wins: every lower block was started
                std::lock_guard<std::mutex> g(em);
                if (i < err_at) err_at = i, err = e;
                stop = true;
            }
        }
    };
    unsigned k = (unsigned)std::min<size_t>(emu_threads(), nblocks);
    BlockPool& pool = BlockPool::get();
    std::unique_lock<std::mutex> busy(pool.busy, std::defer_lock);
    if (k > 1 && busy.try_lock()) pool.run(k, work);
    else work();
    if (!err.empty()) throw Error(err);
}
inline void launch(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body) { launch(kernel, grid, block, LaunchOptions{}, body); }

}  // namespace emu
