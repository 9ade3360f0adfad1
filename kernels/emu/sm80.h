// emu/sm80.h: sm_80 instructions of the kernels on the emulated device: mma.sync m16n8k16,
// ldmatrix, cvt.rn.bf16x2.f32, cp.async (+ commit/wait groups) and the atomics. Tables and rules
// from the PTX ISA, collected with sources in ../shared/reference/ptx-emulation.md (sections 1-3).
// Signatures take what the PTX operands are (.b32 registers, shared-window addresses), so the
// #else branch of kernels/ptx.cuh can call them one for one.
#pragma once
#include "bf16.h"
#include "runtime.h"

namespace emu {

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c (PTX §9.7.14.5.8,
// fragment table in section 1 of the reference), g = lane >> 2, t = lane & 3:
//   A 16x16: 4 .b32 per lane, element i in reg i/2 (even i low half): row g + 8((i>>1)&1),
//            col 2t + (i&1) + 8(i>>2);
//   B 16x8:  2 .b32, element i in reg i/2: row (k) 2t + (i&1) + 8(i>>1), col (n) g;
//   C/D 16x8 f32: 4 f32, element i: row g + 8(i>>1), col 2t + (i&1).
// Numerics (the hardware's order and internal rounding are unspecified): every product is exact
// in double (8- or 11-bit significands), the 16 products are summed in k order in double
// starting from c, and the sum is rounded to f32 once. So the emulator is at least as accurate
// as any hardware order; tests comparing with a GPU need a tolerance of a few f32 ulps of the
// sum of |products|.

template <bool F16>
void mma_compute(Block&, Rdv& r) {
    struct In {
        const uint32_t* a;
        const uint32_t* b;
        const float* c;
    };
    double A[16][16], B[16][8], C[16][8];
    auto conv = [](uint16_t h) { return F16 ? (double)f16_to_f32(h) : (double)bf16_to_f32(h); };
    for (unsigned l = 0; l < 32; l++) {
        auto* in = static_cast<const In*>(r.in[l]);
        unsigned g = l >> 2, t = l & 3;
        for (unsigned i = 0; i < 8; i++) {
            uint32_t reg = in->a[i / 2];
            A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = conv((uint16_t)(i & 1 ? reg >> 16 : reg));
        }
        for (unsigned i = 0; i < 4; i++) {
            uint32_t reg = in->b[i / 2];
            B[2 * t + (i & 1) + 8 * (i >> 1)][g] = conv((uint16_t)(i & 1 ? reg >> 16 : reg));
        }
        for (unsigned i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = in->c[i];
    }
    float D[16][8];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double s = C[m][n];
            for (int k = 0; k < 16; k++) s += A[m][k] * B[k][n];
            D[m][n] = (float)s;
        }
    for (unsigned l = 0; l < 32; l++) {  // scatter only after every input was read (d may alias c)
        unsigned g = l >> 2, t = l & 3;
        float* d = static_cast<float*>(r.out[l]);
        for (unsigned i = 0; i < 4; i++) d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    }
}
// d[4] = a . b + c for one lane; every lane of the warp must call it at the same site.
inline void mma_m16n8k16_f32_bf16_at(Site site, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct {
        const uint32_t* a;
        const uint32_t* b;
        const float* c;
    } in{a, b, c};
    collective("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", 0xFFFFFFFFu, site, true, &mma_compute<false>, &in, d);
}
inline void mma_m16n8k16_f32_f16_at(Site site, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct {
        const uint32_t* a;
        const uint32_t* b;
        const float* c;
    } in{a, b, c};
    collective("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", 0xFFFFFFFFu, site, true, &mma_compute<true>, &in, d);
}
#define mma_m16n8k16_f32_bf16(...) ::emu::mma_m16n8k16_f32_bf16_at(EMU_HERE, __VA_ARGS__)
#define mma_m16n8k16_f32_f16(...) ::emu::mma_m16n8k16_f32_f16_at(EMU_HERE, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 (PTX §9.7.14.5.15; reference section 2).
// Lane 8j + r supplies the 16-byte-aligned shared address of row r of matrix j (the higher lanes'
// addresses are ignored for .x1/.x2). Register j of lane l gets, without .trans, M_j[l/4][2(l%4)]
// (low) and M_j[l/4][2(l%4)+1] (high); with .trans, M_j[2(l%4)][l/4] and M_j[2(l%4)+1][l/4].
// A misaligned or out-of-range row address, a row still pending a cp.async, never written or
// racing with a write (sanitize.h) is reported.

template <unsigned N, bool T>
void ldmatrix_compute(Block& b, Rdv& r) {
    uint16_t M[4][8][8];
    for (unsigned l = 0; l < 8 * N; l++) {
        uint32_t a = *static_cast<const uint32_t*>(r.in[l]);
        if (a % 16) fail(std::string(r.name) + " at " + site_str(r.site) + ": lane " + std::to_string(l) + " gives row address " + hex(a) + ", not 16-byte aligned");
        smem_at(a, 16, r.name);
    }
    for (unsigned j = 0; j < N; j++)
        for (unsigned row = 0; row < 8; row++) {
            uint32_t a = *static_cast<const uint32_t*>(r.in[8 * j + row]);
            // The row is read by the lane that addressed it, after the warp's sync (sanitize.h).
            std::string e = san_shared_read(b, b.th[r.warp * 32 + 8 * j + row], a, 16, r.name);
            if (!e.empty()) {
                tl_thread = &b.th[r.warp * 32 + 8 * j + row];  // the report names that lane's thread
                fail(std::string(r.name) + " at " + site_str(r.site) + ", row address of lane " + std::to_string(8 * j + row) + ": " + e);
            }
            std::memcpy(M[j][row], b.smem.data() + a, 16);
        }
    for (unsigned l = 0; l < 32; l++) {
        uint32_t* d = static_cast<uint32_t*>(r.out[l]);
        for (unsigned j = 0; j < N; j++) {
            uint16_t lo = T ? M[j][2 * (l % 4)][l / 4] : M[j][l / 4][2 * (l % 4)];
            uint16_t hi = T ? M[j][2 * (l % 4) + 1][l / 4] : M[j][l / 4][2 * (l % 4) + 1];
            d[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
}
template <unsigned N, bool T>
void ldmatrix_at(Site site, uint32_t* d, uint32_t saddr) {
    static const char* names[2][5] = {{"", "ldmatrix.sync.aligned.m8n8.x1.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.shared.b16", "", "ldmatrix.sync.aligned.m8n8.x4.shared.b16"},
                                      {"", "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"}};
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix .x1, .x2 or .x4");
    collective(names[T][N], 0xFFFFFFFFu, site, true, &ldmatrix_compute<N, T>, &saddr, d);
}
#define ldmatrix_x1(d, a) ::emu::ldmatrix_at<1, false>(EMU_HERE, d, a)
#define ldmatrix_x2(d, a) ::emu::ldmatrix_at<2, false>(EMU_HERE, d, a)
#define ldmatrix_x4(d, a) ::emu::ldmatrix_at<4, false>(EMU_HERE, d, a)
#define ldmatrix_x1_trans(d, a) ::emu::ldmatrix_at<1, true>(EMU_HERE, d, a)
#define ldmatrix_x2_trans(d, a) ::emu::ldmatrix_at<2, true>(EMU_HERE, d, a)
#define ldmatrix_x4_trans(d, a) ::emu::ldmatrix_at<4, true>(EMU_HERE, d, a)

// ---------------------------------------------------------------------------------------------
// cvt.rn.bf16x2.f32 d, a, b: a -> high half, b -> low half, each RNE (PTX "cvt").
inline uint32_t cvt_rn_bf16x2_f32(float a, float b) { return ((uint32_t)f32_to_bf16_rn(a) << 16) | f32_to_bf16_rn(b); }

// ---------------------------------------------------------------------------------------------
// cp.async (PTX §9.7.9.25.3; reference section 3). The copy is queued on the issuing thread and
// performed at the wait_group that covers its group (or when the thread exits): a legal schedule
// ("a copy may land at any time up to its wait") that exposes reads before the wait. At issue the
// destination is poisoned with 0xFF bytes (a NaN in bf16, f16 and f32) and marked pending for
// the sanitizer (a read before the wait is reported; issue = a write by the issuer for racecheck,
// the source is checked like a global read); the wait copies src_size bytes, zero-fills the rest
// and records a write by the issuer at the wait. Only src_size source bytes are ever read. Alignment of both addresses to cp-size is
// checked ([U]: the ISA's wording not re-read).

inline void cp_async(const char* name, uint32_t dst, const void* src, uint32_t size, uint32_t src_size) {
    if (src_size > size) fail(std::string(name) + ": src-size " + std::to_string(src_size) + " > cp-size " + std::to_string(size) + " (undefined)");
    if (dst % size || reinterpret_cast<uintptr_t>(src) % size) fail(std::string(name) + ": addresses not aligned to cp-size " + std::to_string(size) + " (shared " + hex(dst) + ")");
    uint8_t* d = smem_at(dst, size, name);
    std::string e = san_global_read(src, src_size, size, name);  // memcheck/initcheck of the source
    if (e.empty()) e = san_async_issue(blk(), cur(), dst, size, name);  // racecheck; pending until the wait
    if (!e.empty()) fail(e);
    NoSan quiet;
    std::memset(d, 0xFF, size);
    cur().uncommitted.push_back({dst, src, size, src_size});
}
// .cg: 16 bytes (L2 only); .ca: 4, 8 or 16.
inline void cp_async_cg_16(uint32_t dst, const void* src, uint32_t src_size = 16) { cp_async("cp.async.cg.shared.global", dst, src, 16, src_size); }
inline void cp_async_ca(uint32_t dst, const void* src, uint32_t size, uint32_t src_size) {
    if (size != 4 && size != 8 && size != 16) fail("cp.async.ca: cp-size " + std::to_string(size) + " is not 4, 8 or 16");
    cp_async("cp.async.ca.shared.global", dst, src, size, src_size);
}
inline void cp_async_commit_group() {
    Thread& t = cur();
    t.groups.push_back(std::move(t.uncommitted));
    t.uncommitted.clear();
}
// At most n of this thread's newest committed groups stay pending.
inline void cp_async_wait_group(unsigned n) {
    Thread& t = cur();
    while (t.groups.size() > n) {
        perform_copies(t.groups.front());
        t.groups.pop_front();
    }
}
inline void cp_async_wait_all() {
    cp_async_commit_group();
    cp_async_wait_group(0);
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// Atomics (CUDA C++ Programming Guide "Atomic Functions"): relaxed read-modify-writes on the host
// address, real host atomics so that blocks may later run on parallel OS threads. Return the old
// value. atomicAdd(float*) flushes subnormal inputs and results to sign-preserving zero, as PTX
// documents for atom/red .add.f32 ([U]: recalled, not re-read).

namespace emu {
inline float ftz(float x) { return (f2u(x) & 0x7F800000u) == 0 ? u2f(f2u(x) & 0x80000000u) : x; }
template <class T, class F>
T atomic_rmw(T* p, F f) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, f(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
}  // namespace emu

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    uint32_t* q = reinterpret_cast<uint32_t*>(p);
    return emu::u2f(emu::atomic_rmw(q, [v](uint32_t o) { return emu::f2u(emu::ftz(emu::ftz(emu::u2f(o)) + emu::ftz(v))); }));
}
inline double atomicAdd(double* p, double v) {
    auto add = [v](uint64_t o) {
        double d;
        std::memcpy(&d, &o, 8);
        d += v;
        std::memcpy(&o, &d, 8);
        return o;
    };
    uint64_t old = emu::atomic_rmw(reinterpret_cast<uint64_t*>(p), add);
    double r;
    std::memcpy(&r, &old, 8);
    return r;
}
inline int atomicMax(int* p, int v) { return emu::atomic_rmw(p, [v](int o) { return o > v ? o : v; }); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu::atomic_rmw(p, [v](unsigned o) { return o > v ? o : v; }); }
inline int atomicMin(int* p, int v) { return emu::atomic_rmw(p, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return emu::atomic_rmw(p, [v](unsigned o) { return o < v ? o : v; }); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* p, float v) { return emu::u2f(__atomic_exchange_n(reinterpret_cast<uint32_t*>(p), emu::f2u(v), __ATOMIC_RELAXED)); }
template <class T>
T atomicCAS(T* p, T expected, T desired) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 2, "atomicCAS on 16, 32 or 64 bits");
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;  // the old value either way
}
