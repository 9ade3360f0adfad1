// emu/sm90_wgmma.h: the sm_90a warpgroup instructions of attention_hopper.cu on the emulated
// device (issue #15): wgmma.mma_async m64nNk16 .f32.bf16.bf16 (SS and RS forms), the shared-memory
// matrix descriptors (no swizzle, 32B, 64B, 128B; K-major and MN-major), wgmma.fence /
// commit_group / wait_group, setmaxnreg.{inc,dec} with a per-CTA register pool, and
// prefetch.tensormap (a no-op). Facts and sources: ../shared/reference/ptx-emulation.md 5.1, 5.4
// (PTX §9.7.15.5.1 fragments and descriptors, §9.7.15.7 fence/commit/wait, "setmaxnreg"; CuTe
// mma_sm90_desc.hpp canonical layouts).
//
// What kernels/ptx.cuh's emulated (stic_emu) bodies should call, one for one:
//   wgmma_fence()            -> ::emu::wgmma_fence();
//   wgmma_commit()           -> ::emu::wgmma_commit_group();
//   wgmma_wait0()            -> ::emu::wgmma_wait_group(0);
//   wgmma_ss_n128(d,da,db,p) -> ::emu::wgmma_ss_at<128>(site, d, da, db, p, 1, 1, 0, 0);
//   wgmma_rs_n128(d,a,db)    -> ::emu::wgmma_rs_at<128>(site, d, a, db, 1, 1, 1, 1);
//   wgmma_rs_n64(d,a,db)     -> ::emu::wgmma_rs_at<64>(site, d, a, db, 1, 1, 1, 1);
//   setmaxnreg_dec<N>()      -> ::emu::setmaxnreg_at(site, false, N);
//   setmaxnreg_inc<N>()      -> ::emu::setmaxnreg_at(site, true, N);
//   prefetch_tensormap(tm)   -> ::emu::prefetch_tensormap(tm);
// (`site`: give the wrappers STIC_PTX_SITE like ldsm_x4, or pass EMU_HERE.) The trampoline should
// set LaunchOptions::regs from KernelInfo::regs (the registers per thread at entry; 0 = unknown).
//
// Execution:
//   - wgmma.mma_async and setmaxnreg are warpgroup rendezvous: the 128 threads of warps 4w..4w+3
//     (tid / 128 = w) each deposit their operands and park; the last to arrive computes for all.
//     Every thread must arrive at the same site (.sync.aligned); a thread of the warpgroup that
//     has exited or does not exist is reported. The rendezvous state lives in a per-OS-thread
//     object keyed by the block's serial (san_block_begin, unique per block run).
//   - Numerics as sm80.h's mma: D[m][n] = (scale-d ? C : 0) + sum over k = 0..15 in k order of
//     A[m][k] B[k][n], every product exact in double, summed in double, rounded once to f32.
//     imm-scale-a/b = -1 negate A/B.
//   - Shared operands are read at issue (legal: PTX 5.1 "Async rules"), 16 bytes (8 elements,
//     one core-matrix row) at a time, each read checked by the sanitizer (san_shared_read:
//     bounds, initcheck incl. cp.async/TMA-pending bytes, racecheck) as a read by the first thread
//     of the warpgroup.
//   - Async results: at issue each thread's result goes to a side buffer and its accumulator
//     registers are filled with the signalling NaN kPoison; the covering wgmma.wait_group copies
//     the results in. So a read before the wait sees NaN (which propagates to any output). At the
//     wait the emulator checks that every pending accumulator register still holds kPoison: a
//     write (e.g. `d[i] *= s`, a read-modify-write) between issue and wait is reported. A pure
//     read that does not reach an output cannot be seen (the registers are ordinary stack memory
//     of the fiber, outside the sanitizer's view).
//   - A chained mma_async whose d is the same array as a pending one (same-shape accumulator
//     chaining, PTX: needs no fence) takes the pending result as C. An overlapping, different
//     array is reported.
//   - wgmma.fence: an mma_async is reported unless the thread executed wgmma.fence since its last
//     wgmma.wait_group (or since it started). PTX requires the fence only when registers were
//     accessed in between; the emulator cannot see register accesses, so it asks for it always
//     (stricter than PTX; the project fences every batch).
//   - Descriptors: a non-zero base offset (bits 49-51) is reported as not emulated ([U]).
//   - setmaxnreg: the CTA pool = regs at launch x threads (LaunchOptions::regs; 0 = unknown: the
//     most the launch could have, floor(65536 / threads) rounded down to a multiple of 8, at most
//     255). Each warpgroup starts with regs per thread. .dec N (N <= current) returns
//     128 (current - N) registers to the pool; .inc N (N >= current) takes 128 (N - current) and
//     blocks (parks) until the pool has them (PTX "setmaxnreg": "blocks the execution until enough
//     registers are available in the CTA's register pool"). An .inc that cannot be granted even
//     if every other warpgroup went down to 24 is reported at once; one that waits for a .dec
//     that never comes ends in the runtime's deadlock report, whose wait line names the
//     warpgroup, the request and the pool. N must be a multiple of 8 in [24, 256].
#pragma once
#include <cmath>
#include <deque>

#include "bf16.h"
#include "runtime.h"

namespace emu {

constexpr uint32_t kPoison = 0x7FA0DEADu;  // a signalling NaN: pending accumulator register

// ---------------------------------------------------------------------------------------------
// Shared-memory matrix descriptor (PTX §9.7.15.5.1.2.2; reference 5.1 table).
struct WgDesc {
    uint32_t start, lbo, sbo, base, swz;  // bytes; swz: 0 none, 1 = 128B, 2 = 64B, 3 = 32B
};
inline WgDesc wg_desc_decode(uint64_t d) {
    return {(uint32_t)(d & 0x3FFF) << 4, (uint32_t)((d >> 16) & 0x3FFF) << 4, (uint32_t)((d >> 32) & 0x3FFF) << 4, (uint32_t)((d >> 49) & 7), (uint32_t)(d >> 62)};
}
// The swizzle atom width S in bytes (16 for no swizzle: one core-matrix row).
inline uint32_t wg_swizzle_bytes(uint32_t swz) { return swz == 1 ? 128 : swz == 2 ? 64 : swz == 3 ? 32 : 16; }
// The swizzle on an absolute shared-window byte address: bits 4-6 ^= bits 7-9 (128B: 3 bits,
// 64B: 2, 32B: 1) = CuTe Swizzle<3|2|1,4,3>.
inline uint32_t wg_swizzle(uint32_t a, uint32_t swz) {
    uint32_t mask = swz == 1 ? 7 : swz == 2 ? 3 : swz == 3 ? 1 : 0;
    return a ^ (((a >> 7) & mask) << 4);
}
// The shared address (after swizzling) of element (r, c) of a bf16 operand: r = M or N index,
// c = K index (0..15); mn_major = imm-trans 1. From the canonical layouts (reference 5.1; CuTe
// mma_sm90_desc.hpp, in bytes, T = 16 bytes = 8 elements):
//   K-major,  none:     start + 16 (r%8) + SBO (r/8) + 2 (c%8) + LBO (c/8)
//   K-major,  S-swizzle: start + S (r%8) + SBO (r/8) + 2c            (LBO unused)
//   MN-major, none:     start + 2 (r%8) + SBO (r/8) + 16 (c%8) + LBO (c/8)
//   MN-major, S-swizzle: start + 2 (r%W) + LBO (r/W) + S (c%8) + SBO (c/8), W = S/2
// ([U] MN-major no-swizzle: from CuTe's comment ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), not
// re-read in the PTX text.)
inline uint32_t wg_elem_addr(const WgDesc& d, bool mn_major, uint32_t r, uint32_t c) {
    uint32_t S = wg_swizzle_bytes(d.swz), a;
    if (!mn_major) a = d.swz ? d.start + S * (r % 8) + d.sbo * (r / 8) + 2 * c : d.start + 16 * (r % 8) + d.sbo * (r / 8) + 2 * (c % 8) + d.lbo * (c / 8);
    else if (d.swz) a = d.start + 2 * (r % (S / 2)) + d.lbo * (r / (S / 2)) + S * (c % 8) + d.sbo * (c / 8);
    else a = d.start + 2 * (r % 8) + d.sbo * (r / 8) + 16 * (c % 8) + d.lbo * (c / 8);
    return wg_swizzle(a, d.swz);
}

// Reads a rows x 16 (K) bf16 operand through descriptor `desc` into M[r][c] (as double): 8
// consecutive elements at a time (a 16-byte core-matrix row: along c when K-major, along r when
// MN-major), each checked by the sanitizer as a read by thread `reader`.
inline void wg_read_operand(Block& b, const Thread& reader, uint64_t desc, bool mn_major, uint32_t rows, double (*M)[16], double scale, const char* what, Site site) {
    WgDesc d = wg_desc_decode(desc);
    if (d.base) fail(std::string(what) + " at " + site_str(site) + ": descriptor " + hex((unsigned)(desc >> 32)) + ":" + hex((unsigned)desc) + " has base offset " + std::to_string(d.base) + " (not emulated: [U])");
    for (uint32_t r0 = 0; r0 < rows; r0 += mn_major ? 8 : 1)
        for (uint32_t c0 = 0; c0 < 16; c0 += mn_major ? 1 : 8) {
            uint32_t a = wg_elem_addr(d, mn_major, r0, c0);
            smem_at(a, 16, what);
            std::string e = san_async_proxy_read(b, reader, a, 16, what);
            if (!e.empty()) fail(std::string(what) + " at " + site_str(site) + " (descriptor start " + hex(d.start) + ", LBO " + std::to_string(d.lbo) + ", SBO " + std::to_string(d.sbo) + ", swizzle mode " + std::to_string(d.swz) + ", element (" + std::to_string(r0) + "," + std::to_string(c0) + ")): " + e);
            uint16_t v[8];
            std::memcpy(v, b.smem.data() + a, 16);
            for (uint32_t j = 0; j < 8; j++) (mn_major ? M[r0 + j][c0] : M[r0][c0 + j]) = scale * (double)bf16_to_f32(v[j]);
        }
}

// ---------------------------------------------------------------------------------------------
// Per-block state: warpgroup rendezvous, per-thread pending wgmma groups, register budgets.

struct WgPending {
    float* d;
    unsigned n;
    std::vector<float> val;
    Site site;
};
struct WgThread {
    bool fenced = false;
    std::vector<WgPending> uncommitted;
    std::deque<std::vector<WgPending>> groups;
};
struct WgRdv {
    const char* name = nullptr;
    Site site{"", 0};
    unsigned arrived = 0;
    void (*compute)(Block&, WgRdv&, unsigned wg) = nullptr;
    const void* in[128] = {};
    void* out[128] = {};
};
struct Sm90State {
    const Block* b = nullptr;
    uint32_t serial = 0;
    std::vector<WgRdv> rdv;          // per warpgroup
    std::vector<WgThread> th;        // per thread
    std::vector<unsigned> regs;      // per warpgroup: registers per thread now
    std::vector<int> inc_wait;       // per warpgroup: pending .inc target (0 = none)
    std::vector<std::string> waits;  // per warpgroup: the wait line of a blocked .inc
    long pool = 0, free_ = 0;        // the CTA's registers; those not held by any warpgroup
    unsigned regs0 = 0;
};
inline unsigned launch_regs(const Block& b) {
    unsigned n = (unsigned)b.th.size();
    if (b.opt.regs) return b.opt.regs;
    unsigned r = (65536 / n) & ~7u;
    return r > 255 ? 255 : r;
}
inline Sm90State& sm90() {
    thread_local Sm90State s;
    Block& b = blk();
    if (s.b != &b || s.serial != b.serial) {
        s = Sm90State{};
        s.b = &b;
        s.serial = b.serial;
        unsigned nwg = ((unsigned)b.th.size() + 127) / 128;
        s.rdv.assign(nwg, WgRdv{});
        s.th.assign(b.th.size(), WgThread{});
        s.regs0 = launch_regs(b);
        s.regs.assign(nwg, s.regs0);
        s.inc_wait.assign(nwg, 0);
        s.waits.assign(nwg, std::string());
        s.pool = (long)s.regs0 * (long)b.th.size();
        s.free_ = s.pool - (long)s.regs0 * (long)b.th.size();  // 0: every thread holds its registers
    }
    return s;
}

// The warpgroup rendezvous: returns after the last of the 128 threads arrived and `compute` ran
// (or, for a compute that leaves the rendezvous blocked, after something wakes the threads).
inline void wg_collective(const char* name, Site site, void (*compute)(Block&, WgRdv&, unsigned), const void* in, void* out) {
    Block& b = blk();
    Thread& t = cur();
    Sm90State& s = sm90();
    unsigned wg = t.tid / 128;
    if ((wg + 1) * 128 > b.th.size()) fail(std::string(name) + " at " + site_str(site) + ": warpgroup " + std::to_string(wg) + " has only " + std::to_string(b.th.size() - wg * 128) + " threads (a warpgroup is 4 whole warps)");
    for (unsigned i = wg * 128; i < wg * 128 + 128; i++)
        if (b.th[i].st == St::Done) fail(std::string(name) + " at " + site_str(site) + " (.sync.aligned, warpgroup " + std::to_string(wg) + "): thread " + std::to_string(i) + " of the warpgroup has exited");
    WgRdv& r = s.rdv[wg];
    if (r.arrived == 0) {
        r.name = name;
        r.site = site;
        r.compute = compute;
    } else if (!same_site(r.site, site) || r.compute != compute) {
        fail("divergent warpgroup collective: thread " + std::to_string(t.tid) + " calls " + name + " at " + site_str(site) + " while threads of warpgroup " + std::to_string(wg) + " wait in " + r.name + " at " + site_str(r.site));
    }
    r.in[t.tid % 128] = in;
    r.out[t.tid % 128] = out;
    r.arrived++;
    if (r.arrived == 128) {
        uint32_t stamp = ++b.clock;  // each warp's lanes took part in a sync (sanitize.h)
        for (unsigned i = wg * 128; i < wg * 128 + 128; i++) b.th[i].warp_stamp = stamp;
        WgRdv done = r;
        r.arrived = 0;
        {
            NoSan quiet;
            done.compute(b, done, wg);  // may fail(): reported from the completing thread
        }
        if (s.inc_wait[wg]) {  // a blocked setmaxnreg.inc: the completing thread waits too
            t.wait_what = s.waits[wg].c_str();
            t.wait_site = site;
            park();
            t.wait_what = nullptr;
            return;
        }
        for (unsigned i = wg * 128; i < wg * 128 + 128; i++)
            if (i != t.tid) b.th[i].st = St::Ready;
        return;
    }
    t.wait_what = name;
    t.wait_site = site;
    park();
    t.wait_what = nullptr;
}

// ---------------------------------------------------------------------------------------------
// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 (reference 5.1). Fragments, w = warp in
// the warpgroup, g = lane >> 2, t = lane & 3:
//   D (N/2 f32, i < N/2): row 16w + g + 8((i>>1)&1), col 8(i>>2) + 2t + (i&1);
//   A registers (RS: 4 .b32, element i in reg i/2, even i low half): row 16w + g + 8((i>>1)&1),
//     col 2t + (i&1) + 8(i>>2).
inline unsigned wg_d_row(unsigned tid, unsigned i) { return 16 * ((tid % 128) / 32) + (tid % 32) / 4 + 8 * ((i >> 1) & 1); }
inline unsigned wg_d_col(unsigned tid, unsigned i) { return 8 * (i >> 2) + 2 * (tid % 4) + (i & 1); }
inline unsigned wg_a_row(unsigned tid, unsigned i) { return wg_d_row(tid, i); }
inline unsigned wg_a_col(unsigned tid, unsigned i) { return 2 * (tid % 4) + (i & 1) + 8 * (i >> 2); }

struct WgIn {
    float* d;
    const uint32_t* a;  // RS form; null for SS
    uint64_t da, db;
    uint32_t scale_d;
    int scale_a, scale_b, trans_a, trans_b;
    unsigned n;
    const char* name;
    Site site;
};

// The C operand of thread `tid` for accumulator array d[n]: its pending result if d was issued
// and not yet waited for (chaining), else the registers.
inline const float* wg_c_of(Sm90State& s, unsigned tid, float* d, unsigned n, const WgIn& w) {
    const float* c = d;
    WgThread& T = s.th[tid];
    auto look = [&](std::vector<WgPending>& g) {
        for (auto& p : g) {
            if (p.d == d && p.n == n) c = p.val.data();
            else if (p.d < d + n && d < p.d + p.n) fail(std::string(w.name) + " at " + site_str(w.site) + ": accumulator array of thread " + std::to_string(tid) + " overlaps a different pending wgmma's accumulators (issued at " + site_str(p.site) + ")");
        }
    };
    for (auto& g : T.groups) look(g);
    look(T.uncommitted);  // the newest pending result wins
    return c;
}

inline void wgmma_compute(Block& b, WgRdv& r, unsigned wg) {
    Sm90State& s = sm90();
    const WgIn& w0 = *static_cast<const WgIn*>(r.in[0]);
    const unsigned N = w0.n;
    for (unsigned l = 1; l < 128; l++) {  // .aligned: the same operands in every thread
        const WgIn& w = *static_cast<const WgIn*>(r.in[l]);
        if (w.da != w0.da || w.db != w0.db || w.scale_d != w0.scale_d || (w.a == nullptr) != (w0.a == nullptr))
            fail(std::string(w0.name) + " at " + site_str(w0.site) + ": thread " + std::to_string(wg * 128 + l) + " gives descriptors / scale-d different from thread " + std::to_string(wg * 128) + " (every thread of the warpgroup must give the same)");
    }
    const Thread& reader = b.th[wg * 128];
    double A[64][16], B[256][16];  // B stored [n][k]
    if (w0.a) {
        for (unsigned l = 0; l < 128; l++) {
            const uint32_t* a = static_cast<const WgIn*>(r.in[l])->a;
            for (unsigned i = 0; i < 8; i++) {
                uint32_t reg = a[i / 2];
                A[wg_a_row(l, i)][wg_a_col(l, i)] = w0.scale_a * (double)bf16_to_f32((uint16_t)(i & 1 ? reg >> 16 : reg));
            }
        }
    } else {
        wg_read_operand(b, reader, w0.da, w0.trans_a != 0, 64, A, w0.scale_a, w0.name, w0.site);
    }
    wg_read_operand(b, reader, w0.db, w0.trans_b != 0, N, B, w0.scale_b, w0.name, w0.site);
    // Every thread's C before any result (d may be chained).
    std::vector<float> Dv(64 * N);
    for (unsigned l = 0; l < 128; l++) {
        const WgIn& w = *static_cast<const WgIn*>(r.in[l]);
        const float* c = wg_c_of(s, wg * 128 + l, w.d, N / 2, w);
        for (unsigned i = 0; i < N / 2; i++) Dv[wg_d_row(l, i) * N + wg_d_col(l, i)] = w0.scale_d ? c[i] : 0.0f;
    }
    for (unsigned m = 0; m < 64; m++)
        for (unsigned n = 0; n < N; n++) {
            double acc = Dv[m * N + n];
            for (unsigned k = 0; k < 16; k++) acc += A[m][k] * B[n][k];
            Dv[m * N + n] = (float)acc;
        }
    for (unsigned l = 0; l < 128; l++) {
        const WgIn& w = *static_cast<const WgIn*>(r.in[l]);
        WgPending p{w.d, N / 2, std::vector<float>(N / 2), w.site};
        for (unsigned i = 0; i < N / 2; i++) p.val[i] = Dv[wg_d_row(l, i) * N + wg_d_col(l, i)];
        for (unsigned i = 0; i < N / 2; i++) std::memcpy(&w.d[i], &kPoison, 4);
        s.th[wg * 128 + l].uncommitted.push_back(std::move(p));
    }
}

inline const char* wgmma_name(unsigned N, bool rs) {
    static std::map<unsigned, std::string> names[2];
    auto& m = names[rs];
    auto it = m.find(N);
    if (it == m.end()) it = m.emplace(N, "wgmma.mma_async.sync.aligned.m64n" + std::to_string(N) + "k16.f32.bf16.bf16 (" + (rs ? "RS" : "SS") + ")").first;
    return it->second.c_str();
}
inline void wgmma_issue(WgIn& w) {
    Sm90State& s = sm90();
    Thread& t = cur();
    if (!s.th[t.tid].fenced) fail(std::string(w.name) + " at " + site_str(w.site) + ": no wgmma.fence since the thread's last wgmma.wait_group (or its start): the accumulator / A registers may have been accessed (PTX: wgmma.fence is required before the first wgmma.mma_async and between register accesses and wgmma.mma_async)");
    if (w.scale_a != 1 && w.scale_a != -1) fail(std::string(w.name) + ": imm-scale-a must be 1 or -1");
    if (w.scale_b != 1 && w.scale_b != -1) fail(std::string(w.name) + ": imm-scale-b must be 1 or -1");
    wg_collective(w.name, w.site, &wgmma_compute, &w, nullptr);
}

// SS: A and B from shared memory through descriptors da, db. N: a multiple of 8 in [8, 256].
template <unsigned N>
void wgmma_ss_at(Site site, float* d, uint64_t da, uint64_t db, uint32_t scale_d, int scale_a = 1, int scale_b = 1, int trans_a = 0, int trans_b = 0) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "m64nNk16: N a multiple of 8 in [8, 256]");
    WgIn w{d, nullptr, da, db, scale_d, scale_a, scale_b, trans_a, trans_b, N, wgmma_name(N, false), site};
    wgmma_issue(w);
}
// RS: A from registers a[4] (the fragment above), B from shared memory through db.
template <unsigned N>
void wgmma_rs_at(Site site, float* d, const uint32_t a[4], uint64_t db, uint32_t scale_d, int scale_a = 1, int scale_b = 1, int trans_b = 0) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "m64nNk16: N a multiple of 8 in [8, 256]");
    WgIn w{d, a, 0, db, scale_d, scale_a, scale_b, 0, trans_b, N, wgmma_name(N, true), site};
    wgmma_issue(w);
}

// wgmma.fence.sync.aligned (per thread here: it only arms the next mma_async).
inline void wgmma_fence() { sm90().th[cur().tid].fenced = true; }
// wgmma.commit_group.sync.aligned: the uncommitted mma_async of this thread become one group
// (possibly empty).
inline void wgmma_commit_group() {
    WgThread& T = sm90().th[cur().tid];
    T.groups.push_back(std::move(T.uncommitted));
    T.uncommitted.clear();
}
// wgmma.wait_group.sync.aligned n: completes the oldest groups until at most n are pending:
// checks each pending accumulator register still holds kPoison, then writes the result.
inline void wgmma_wait_group(unsigned n) {
    WgThread& T = sm90().th[cur().tid];
    while (T.groups.size() > n) {
        for (auto& p : T.groups.front())
            for (unsigned i = 0; i < p.n; i++) {
                uint32_t v;
                std::memcpy(&v, &p.d[i], 4);
                if (v != kPoison) fail("accumulator register d[" + std::to_string(i) + "] of the wgmma.mma_async issued at " + site_str(p.site) + " was written (now " + hex(v) + ") before its wgmma.wait_group: the registers of a pending wgmma must not be accessed before the wait (PTX wgmma async rules)");
            }
        for (auto& p : T.groups.front()) std::memcpy(p.d, p.val.data(), 4 * p.n);
        T.groups.pop_front();
    }
    T.fenced = false;
}
#define wgmma_ss(N, ...) ::emu::wgmma_ss_at<N>(EMU_HERE, __VA_ARGS__)
#define wgmma_rs(N, ...) ::emu::wgmma_rs_at<N>(EMU_HERE, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// setmaxnreg.{inc,dec}.sync.aligned.u32 n (see the file header).
struct RegReq {
    bool inc;
    unsigned n;
    Site site;
};
inline void setmaxnreg_grant(Block& b, Sm90State& s) {
    for (unsigned wg = 0; wg < s.regs.size(); wg++) {
        if (!s.inc_wait[wg]) continue;
        long need = 128L * (s.inc_wait[wg] - (long)s.regs[wg]);
        if (need > s.free_) continue;
        s.free_ -= need;
        s.regs[wg] = (unsigned)s.inc_wait[wg];
        s.inc_wait[wg] = 0;
        for (unsigned i = wg * 128; i < wg * 128 + 128; i++)
            if (b.th[i].st == St::Blocked) b.th[i].st = St::Ready;
    }
}
inline void setmaxnreg_compute(Block& b, WgRdv& r, unsigned wg) {
    Sm90State& s = sm90();
    const RegReq& q = *static_cast<const RegReq*>(r.in[0]);
    for (unsigned l = 1; l < 128; l++) {
        const RegReq& o = *static_cast<const RegReq*>(r.in[l]);
        if (o.inc != q.inc || o.n != q.n) fail(std::string("setmaxnreg at ") + site_str(q.site) + ": threads of warpgroup " + std::to_string(wg) + " give different counts (every warp must execute the same setmaxnreg)");
    }
    const char* nm = q.inc ? "setmaxnreg.inc" : "setmaxnreg.dec";
    std::string who = std::string(nm) + ".sync.aligned.u32 " + std::to_string(q.n) + " at " + site_str(q.site) + " (warpgroup " + std::to_string(wg) + ")";
    unsigned cur_n = s.regs[wg];
    if (q.inc && q.n < cur_n) fail(who + ": below the warpgroup's current " + std::to_string(cur_n) + " registers per thread");
    if (!q.inc && q.n > cur_n) fail(who + ": above the warpgroup's current " + std::to_string(cur_n) + " registers per thread");
    if (!q.inc) {
        s.free_ += 128L * (cur_n - q.n);
        s.regs[wg] = q.n;
        setmaxnreg_grant(b, s);
        return;
    }
    long need = 128L * (q.n - cur_n), reach = s.free_;
    for (unsigned o = 0; o < s.regs.size(); o++)
        if (o != wg) reach += 128L * ((long)s.regs[o] - 24);
    std::string pool = "requests " + std::to_string(q.n) + " registers per thread (" + std::to_string(need) + " more for its 128 threads); the CTA pool has " + std::to_string(s.free_) + " free of " + std::to_string(s.pool) + " (" + std::to_string(s.regs0) + " per thread at launch x " + std::to_string(b.th.size()) + " threads)";
    if (need > reach) fail(who + " exceeds what the launch allows: " + pool + ", at most " + std::to_string(reach) + " even if every other warpgroup went down to 24");
    s.inc_wait[wg] = (int)q.n;
    s.waits[wg] = who + ", blocked until another warpgroup's setmaxnreg.dec: " + pool;
    setmaxnreg_grant(b, s);
    if (s.inc_wait[wg])  // still blocked: the other threads stay parked with the wait line
        for (unsigned i = wg * 128; i < wg * 128 + 128; i++) b.th[i].wait_what = s.waits[wg].c_str();
}
inline void setmaxnreg_at(Site site, bool inc, unsigned n) {
    if (n % 8 || n < 24 || n > 256) fail(std::string(inc ? "setmaxnreg.inc" : "setmaxnreg.dec") + " at " + site_str(site) + ": count " + std::to_string(n) + " is not a multiple of 8 in [24, 256]");
    RegReq q{inc, n, site};
    wg_collective(inc ? "setmaxnreg.inc.sync.aligned.u32" : "setmaxnreg.dec.sync.aligned.u32", site, &setmaxnreg_compute, &q, nullptr);
}
// The warpgroup's registers per thread now (tests).
inline unsigned setmaxnreg_current() { return sm90().regs[cur().tid / 128]; }

// prefetch.tensormap [tm]: a cache hint; nothing to emulate (reference 5.2).
inline void prefetch_tensormap(const void*) {}

}  // namespace emu
