// emu/sm90_tma.h: the sm_90 mbarrier and the TMA tensor copy (cp.async.bulk.tensor.2d) on the
// emulated device (issue #15). Facts and sources: ../shared/reference/ptx-emulation.md 5.2, 5.3, 6.
//
// mbarrier (PTX §9.7.13.15 "mbarrier"): an 8-byte object in shared memory. Its state lives in a
// side table (per OS thread, for the block it runs, keyed by the shared address), not in the 8
// bytes: init(count) gives phase 0, pending = expected = count (1..2^20-1), tx = 0. arrive:
// pending -= 1; expect_tx(n): tx += n; arrive.expect_tx(n): expect_tx(n) then arrive; a TMA copy's
// complete_tx(n): tx -= n (tx may be negative for a while). When pending == 0 and tx == 0 the phase
// completes: phase += 1, pending = expected. try_wait.parity(P) is true iff the phase of parity P
// has completed, i.e. (phase & 1) != P (fresh barrier: parity 1 true, parity 0 waits).
//   - try_wait blocks the fiber (runtime.h park()) until the phase completes; the ISA lets it
//     suspend the thread until then ("potentially blocking"), so the callers' loop sees true at
//     once. A wait that can never complete is the runtime's deadlock report (no thread can run),
//     whose line for the waiting threads names the barrier's shared address, the parity, the
//     phase and what it still waits for (arrivals, transaction bytes).
//   - the 8 bytes: init is a write by the initialising thread; every other operation is a read
//     by the calling thread (memcheck, and racecheck: another thread needs a barrier after init,
//     the ISA's fence.mbarrier_init + bar.sync). An operation on a barrier never initialised, an
//     arrive that would make pending negative, or a re-init while threads wait on it is reported.
//   - race checker (sanitize.h stamps): an arrive (release) takes a new block clock stamp as the
//     thread's bar_stamp, a successful try_wait (acquire) another: an access before the arrive is
//     then ordered before the waiter's later accesses. Like sanitize.h's partial barriers this
//     can hide a race, never invent one.
// TMA (PTX "cp.async.bulk.tensor", §5.5.3 "Tensor"; CUDA Driver API cuTensorMapEncodeTiled): the
// map is encoded by the emulated driver (driver/tensormap.cpp) into the 128 opaque bytes as a
// TmaMap below. tma_load_2d(dst, map, c0, c1, bar) copies the box [c0, c0+box0) x [c1, c1+box1)
// (c0 the innermost element index, c1 the row; signed) row after row into shared memory: linear
// byte L = (r * box0 + e) * elem at dst + L, then swizzled: the 16-byte chunk bits [4, 4+B) of the
// shared address XOR its bits [7, 7+B), B = 1/2/3 for SWIZZLE_32B/64B/128B (CUTLASS
// Swizzle<B,4,3>, copy_traits_sm90_tma_swizzle.hpp; the pattern is a function of the address,
// so a destination not aligned to the pattern's span (256/512/1024 B) gets the address's pattern
// [U], reference section 9). Elements outside [0, globalDim) are zero. dst must be 128-byte
// aligned (PTX). The data is copied into shared memory at issue; the copy's complete_tx of the
// full box (box0 * box1 * elem bytes, out-of-bounds ones included [P], reference section 9) is
// deferred as late as possible: to the first test_wait/try_wait on the barrier that would
// otherwise return false, or at once when threads already wait on the barrier. Any time between
// issue and then is a legal completion time, and the latest one lets a wait with the wrong
// parity pass before the bytes have landed. A parked waiter thus never has a copy in flight on
// its barrier: "no thread can run" is a hang. The destination bytes are "pending" (sanitize.h's
// cp.async state, a write by the issuing thread) from issue until a thread's successful wait
// observes the phase the copy completed in: from then on they are a write by that first
// observing thread (so its later reads, and those of every thread that observes the phase or
// syncs with it afterwards, are ordered). A read of the bytes before any observation is an
// initcheck report ("destination of a cp.async ... not yet waited for").
//
// What ptx.cuh's sm_90a wrappers (STIC_EMULATOR) call, `bar` being smem_addr() of the barrier:
//   mbar_init(bar, count)            -> ::emu::mbar_init(bar, count)
//   fence_mbarrier_init()            -> ::emu::fence_mbarrier_init()
//   mbar_arrive(bar)                 -> (void)::emu::mbar_arrive(bar)
//   mbar_arrive_expect_tx(bar, n)    -> (void)::emu::mbar_arrive_expect_tx(bar, n)
//   mbar_try_wait(bar, parity)       -> return ::emu::mbar_try_wait(bar, parity[, site]);
//   (mbarrier.test_wait.parity, non-blocking: ::emu::mbar_test_wait(bar, parity); not used by ptx.cuh)
//   tma_load_2d(dst, tm, c0, c1, bar)-> ::emu::tma_load_2d(dst, tm, c0, c1, bar)
#pragma once
#include <cstdio>
#include <map>

#include "runtime.h"

namespace emu {

// ---------------------------------------------------------------------------------------------
// The tensor map as the emulated cuTensorMapEncodeTiled stores it in the 128 opaque bytes.

constexpr uint64_t kTmaMagic = 0x31414d5443495453ull;  // "STICTMA1"
struct TmaMap {
    uint64_t magic;
    uint64_t gaddr;      // global address (16-byte aligned)
    uint64_t dim[2];     // elements, dim[0] innermost
    uint64_t stride1;    // bytes between rows (dim 1)
    uint32_t box[2];     // elements
    uint32_t elem;       // bytes per element
    uint32_t swizzle;    // CU_TENSOR_MAP_SWIZZLE_*: 0 none, 1 32B, 2 64B, 3 128B
    uint32_t dtype;      // CU_TENSOR_MAP_DATA_TYPE_*
    uint32_t pad;
};
static_assert(sizeof(TmaMap) <= 128, "the encoding must fit the 128-byte CUtensorMap");

// The swizzled shared address of linear shared address `a` (see the header).
inline uint32_t tma_swizzle(uint32_t a, uint32_t swizzle) {
    if (!swizzle) return a;
    uint32_t mask = (1u << swizzle) - 1u;
    return a ^ (((a >> 7) & mask) << 4);
}

// ---------------------------------------------------------------------------------------------
// mbarrier state.

struct MbarCopy {
    uint32_t dst;  // one 16-byte destination chunk
    unsigned issuer;
};
struct MBar {
    uint32_t addr = 0, expected = 0, pending = 0, phase = 0;
    int64_t tx = 0;
    unsigned init_tid = 0;
    std::vector<unsigned> waiters;
    std::vector<MbarCopy> inflight;    // chunks of copies issued, their bytes not yet completed
    int64_t inflight_bytes = 0;
    std::vector<MbarCopy> current;     // copies completed in the phase in progress
    std::vector<MbarCopy> unobserved;  // copies of completed phases no waiter has observed yet
    char what[256] = {};               // the waiters' wait_what (deadlock report)
};
struct MbarTable {
    uint32_t serial = 0;  // the block whose barriers these are
    std::map<uint32_t, MBar> bars;
};
inline MbarTable& mbar_table() {
    thread_local MbarTable t;
    Block& b = blk();
    if (t.serial != b.serial) t.bars.clear(), t.serial = b.serial;
    return t;
}

// The 8 bytes at `bar`: in the arena and 8-byte aligned; `op`'s read of them (checks below).
inline void mbar_check_addr(uint32_t bar, const char* op) {
    smem_at(bar, 8, op);
    if (bar % 8) fail(std::string(op) + ": mbarrier at shared " + hex(bar) + " is not 8-byte aligned");
}
inline MBar& mbar_get(uint32_t bar, const char* op) {
    mbar_check_addr(bar, op);
    auto& bars = mbar_table().bars;
    auto it = bars.find(bar);
    if (it == bars.end()) fail(std::string(op) + " on the mbarrier at shared " + hex(bar) + ", which was never initialised (mbarrier.init)");
    shadow_check_read(bar, 8, op);  // racecheck: ordered after the init (fence.mbarrier_init + bar.sync)
    return it->second;
}
inline void mbar_describe(MBar& m) {
    std::snprintf(m.what, sizeof m.what, "mbarrier.try_wait.parity %u on the mbarrier at shared 0x%x (phase %u in progress: %u of %u arrivals and %lld transaction bytes pending)", m.phase & 1u, m.addr, m.phase, m.pending, m.expected, (long long)m.tx);
}

// Completes the phase if nothing is pending; wakes its waiters.
inline void mbar_maybe_complete(MBar& m) {
    if (m.pending == 0 && m.tx == 0) {
        m.phase++;
        m.pending = m.expected;
        m.unobserved.insert(m.unobserved.end(), m.current.begin(), m.current.end());
        m.current.clear();
        Block& b = blk();
        for (unsigned w : m.waiters) b.th[w].st = St::Ready;
        m.waiters.clear();
    }
    mbar_describe(m);
}

// mbarrier.init.shared::cta.b64 [bar], count.
inline void mbar_init(uint32_t bar, uint32_t count) {
    const char* op = "mbarrier.init";
    mbar_check_addr(bar, op);
    if (count < 1 || count > (1u << 20) - 1) fail(std::string(op) + ": count " + std::to_string(count) + " outside 1..2^20-1 (mbarrier at shared " + hex(bar) + ")");
    auto& bars = mbar_table().bars;
    auto it = bars.find(bar);
    if (it != bars.end() && !it->second.waiters.empty()) fail(std::string(op) + ": re-initialising the mbarrier at shared " + hex(bar) + " while threads " + ranges(it->second.waiters) + " wait on it");
    Block& b = blk();
    std::string e = san_async_issue(b, cur(), bar, 8, op);  // the 8 bytes: a write by this thread
    if (!e.empty()) fail(e);
    san_async_done(b, cur(), bar, 8);
    MBar& m = bars[bar];
    m = MBar{};
    m.addr = bar;
    m.expected = m.pending = count;
    m.init_tid = cur().tid;
    mbar_describe(m);
}

// fence.mbarrier_init.release.cluster: orders the init for the async proxy; a no-op here (the
// other threads still need a bar.sync, which the race check of every later operation verifies).
inline void fence_mbarrier_init() {}

// fence.proxy.async.shared::cta: this thread's earlier ordinary (generic-proxy) writes to shared
// memory become visible to later async-proxy reads (wgmma operands) that a barrier orders after
// it (sanitize.h "proxy check").
inline void fence_proxy_async_shared() { san_proxy_fence(blk(), cur()); }

// Release: the caller's earlier accesses are ordered before whoever observes the phase.
inline void mbar_release(Block& b, Thread& t) { t.bar_stamp = ++b.clock; }

// mbarrier.expect_tx.shared::cta.b64 [bar], n.
inline void mbar_expect_tx(uint32_t bar, uint32_t n) {
    MBar& m = mbar_get(bar, "mbarrier.expect_tx");
    m.tx += n;
    mbar_describe(m);
}
// mbarrier.arrive{.expect_tx}.shared::cta.b64 state, [bar]{, n}: returns the state token (the
// phase the arrival counted in).
inline uint64_t mbar_arrive_impl(uint32_t bar, uint32_t n, const char* op) {
    MBar& m = mbar_get(bar, op);
    if (m.pending == 0) fail(std::string(op) + " on the mbarrier at shared " + hex(bar) + ": no arrival pending in phase " + std::to_string(m.phase) + " (more arrivals than its count " + std::to_string(m.expected) + ")");
    mbar_release(blk(), cur());
    uint64_t token = m.phase;
    m.tx += n;
    m.pending--;
    mbar_maybe_complete(m);
    return token;
}
inline uint64_t mbar_arrive(uint32_t bar) { return mbar_arrive_impl(bar, 0, "mbarrier.arrive"); }
inline uint64_t mbar_arrive_expect_tx(uint32_t bar, uint32_t n) { return mbar_arrive_impl(bar, n, "mbarrier.arrive.expect_tx"); }

// complete_tx by an async copy (no thread's operation).
inline void mbar_complete_tx(MBar& m, uint32_t n) {
    m.tx -= n;
    mbar_maybe_complete(m);
}
// The in-flight copies land: their chunks join the phase in progress, their bytes complete.
inline void mbar_land(MBar& m) {
    if (m.inflight.empty()) return;
    m.current.insert(m.current.end(), m.inflight.begin(), m.inflight.end());
    m.inflight.clear();
    int64_t n = m.inflight_bytes;
    m.inflight_bytes = 0;
    m.tx -= n;
    mbar_maybe_complete(m);
}

// mbarrier.test_wait.parity.shared::cta.b64 p, [bar], parity: whether the phase of parity
// `parity` has completed, without blocking; true acquires (see mbar_try_wait).
inline bool mbar_test_wait(uint32_t bar, uint32_t parity, const char* op = "mbarrier.test_wait.parity") {
    if (parity > 1) fail(std::string(op) + ": parity " + std::to_string(parity) + " is not 0 or 1 (mbarrier at shared " + hex(bar) + ")");
    MBar& m = mbar_get(bar, op);
    if ((m.phase & 1u) == parity) mbar_land(m);  // as late as possible: only a waiter needs them
    if ((m.phase & 1u) == parity) return false;
    Block& b = blk();
    Thread& t = cur();
    {
        NoSan quiet;
        for (auto& c : m.unobserved) san_async_done(b, t, c.dst, 16);
    }
    m.unobserved.clear();
    t.bar_stamp = ++b.clock;  // acquire
    return true;
}

// mbarrier.try_wait.parity.shared::cta.b64 p, [bar], parity: blocks until the phase of parity
// `parity` has completed, then true (acquire). The first observer of a completed phase turns its
// copies' destination bytes into its own writes (see the header).
inline bool mbar_try_wait(uint32_t bar, uint32_t parity, Site site = Site{"mbarrier.try_wait", 0}) {
    const char* op = "mbarrier.try_wait.parity";
    Thread& t = cur();
    while (!mbar_test_wait(bar, parity, op)) {
        MBar& m = mbar_table().bars.at(bar);
        m.waiters.push_back(t.tid);
        t.wait_what = m.what;
        t.wait_site = site;
        park();
        t.wait_what = nullptr;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [map, {c0, c1}], [bar]

inline const TmaMap& tma_map(const void* tm, const char* op) {
    const TmaMap* m = static_cast<const TmaMap*>(tm);
    uint64_t magic;
    {
        NoSan quiet;
        std::memcpy(&magic, &m->magic, 8);
    }
    if (magic != kTmaMagic) fail(std::string(op) + ": the tensor map operand was not encoded by cuTensorMapEncodeTiled");
    return *m;
}

inline void tma_load_2d(uint32_t dst, const void* tm, int c0, int c1, uint32_t bar) {
    const char* op = "cp.async.bulk.tensor.2d";
    const TmaMap& M = tma_map(tm, op);
    MBar& m = mbar_get(bar, op);
    Block& b = blk();
    Thread& t = cur();
    if (dst % 128) fail(std::string(op) + ": destination shared " + hex(dst) + " is not 128-byte aligned");
    const uint32_t row_bytes = M.box[0] * M.elem, bytes = row_bytes * M.box[1];
    smem_at(dst, bytes, op);
    NoSan quiet;
    for (uint32_t L = 0; L < bytes; L += 16) {
        uint32_t r = L / row_bytes, e0 = (L % row_bytes) / M.elem;
        uint32_t a = tma_swizzle(dst + L, M.swizzle);
        std::string err = san_async_issue(b, t, a, 16, op);
        if (!err.empty()) fail(err);
        uint8_t* d = b.smem.data() + a;
        int64_t y = (int64_t)c1 + r, x0 = (int64_t)c0 + e0;
        const int64_t n = 16 / M.elem;  // elements in the chunk; [lo, hi) of them in bounds
        int64_t lo = 0, hi = 0;
        if (y >= 0 && (uint64_t)y < M.dim[1]) {
            lo = std::min<int64_t>(n, std::max<int64_t>(0, -x0));
            hi = std::max<int64_t>(lo, std::min<int64_t>(n, (int64_t)M.dim[0] - x0));
        }
        std::memset(d, 0, 16);
        if (hi > lo) {
            const void* src = reinterpret_cast<const void*>(M.gaddr + (uint64_t)y * M.stride1 + (uint64_t)(x0 + lo) * M.elem);
            err = san_global_read(src, (size_t)(hi - lo) * M.elem, M.elem, op);
            if (!err.empty()) fail(err);
            std::memcpy(d + lo * M.elem, src, (size_t)(hi - lo) * M.elem);
        }
        m.inflight.push_back(MbarCopy{a, t.tid});
    }
    m.inflight_bytes += bytes;
    if (!m.waiters.empty()) mbar_land(m);
}

}  // namespace emu
