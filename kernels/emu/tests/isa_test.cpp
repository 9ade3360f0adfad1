// emu/tests/isa_test.cpp: unit tests of the emulated device (kernels/emu), written from the PTX
// ISA's tables and the CUDA Programming Guide's definitions (../shared/reference/ptx-emulation.md),
// never from the project's kernels. Run by tests/emu_isa.rs: g++ -std=c++17 -O2 -ffp-contract=off
// -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 isa_test.cpp sanitize.o
// -lboost_context (instrumented like the kernels, the sanitizer on); exit status 0 = every check
// passed. Prints the fiber-switch speed.
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../cuda.h"
#include "check.h"


static emu::dim3 d1(unsigned x) { return emu::dim3(x); }

// ---------------------------------------------------------------------------------------------
// Runtime: builtins, barriers, fiber speed.

static void k_ids(unsigned* out) {
    unsigned b = blockIdx.x + gridDim.x * blockIdx.y, t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = (b << 16) | (threadIdx.z << 12) | (threadIdx.y << 8) | threadIdx.x;
}
static void k_reverse(const int* in, int* out) {
    EMU_SHARED(int[256], s);
    s[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
static void test_runtime() {
    std::vector<unsigned> out(3 * 2 * 64);
    emu::launch("k_ids", emu::dim3(3, 2), emu::dim3(4, 4, 4), [&] { k_ids(out.data()); });
    bool ok = true;
    for (unsigned b = 0; b < 6; b++)
        for (unsigned z = 0; z < 4; z++)
            for (unsigned y = 0; y < 4; y++)
                for (unsigned x = 0; x < 4; x++) ok &= out[b * 64 + z * 16 + y * 4 + x] == ((b << 16) | (z << 12) | (y << 8) | x);
    CHECK(ok, "threadIdx/blockIdx/blockDim/gridDim");
    std::vector<int> in(256), rev(256);
    for (int i = 0; i < 256; i++) in[i] = i * 3 + 1;
    emu::launch("k_reverse", d1(1), d1(256), [&] { k_reverse(in.data(), rev.data()); });
    ok = true;
    for (int i = 0; i < 256; i++) ok &= rev[i] == in[255 - i];
    CHECK(ok, "__syncthreads orders a shared-memory reversal");
    // Fiber switch speed: every barrier parks and resumes each thread once.
    const int iters = 200;
    auto t0 = std::chrono::steady_clock::now();
    emu::launch("k_bench", d1(1), d1(1024), [&] {
        for (int i = 0; i < iters; i++) __syncthreads();
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double sw = 2.0 * 1024 * iters;  // a switch into each fiber and one back, per barrier
    std::printf("fiber switches: %.0f in %.3f s = %.1f M switches/s (1024 threads x %d __syncthreads)\n", sw, s, sw / s / 1e6, iters);
    t0 = std::chrono::steady_clock::now();
    emu::launch("k_bench_shfl", d1(1), d1(256), [&] {
        float v = threadIdx.x;
        for (int i = 0; i < iters; i++) v += __shfl_xor_sync(0xFFFFFFFFu, v, 1 + i % 31);
        if (v < 0) __trap();
    });
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("warp shuffles: %.1f M lane-shuffles/s\n", 256.0 * iters / s / 1e6);
}

static void test_barrier_reports() {
    // A barrier in divergent code: in block 1, threads 32-63 exit while 0-31 wait.
    expect_error("divergent __syncthreads (exit)", [] {
        emu::launch("k_divergent_bar", d1(2), d1(64), [] {
            if (blockIdx.x == 1 && threadIdx.x >= 32) return;
            __syncthreads();
        });
    }, {"divergent barrier", "k_divergent_bar", "block (1,0,0)", "threads 0-31 wait at __syncthreads", "thread (32,0,0)"});
    // Two different __syncthreads sites.
    expect_error("divergent __syncthreads (two sites)", [] {
        emu::launch("k_two_bars", d1(1), d1(64), [] {
            if (threadIdx.x < 32) __syncthreads();
            else __syncthreads();
        });
    }, {"divergent barrier", "k_two_bars", "block (0,0,0)", "threads 0-31 wait at __syncthreads"});
    // A deadlock: lane 5 waits at the block barrier, the rest of its warp in a shuffle naming it.
    expect_error("deadlock", [] {
        emu::launch("k_deadlock", d1(1), d1(32), [] {
            float v = 1.0f;
            if (threadIdx.x == 5) __syncthreads();
            else v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
            (void)v;
        });
    }, {"deadlock", "k_deadlock", "block (0,0,0)", "threads 0-4,6-31 wait in __shfl_xor_sync", "arrived 0xffffffdf", "threads 5 wait in __syncthreads", "1/32 arrived"});
    // A thread exiting before a later block barrier.
    expect_error("early exit before __syncthreads", [] {
        emu::launch("k_early_exit", d1(1), d1(64), [] {
            if (threadIdx.x == 0) return;
            __syncthreads();
        });
    }, {"divergent barrier", "k_early_exit", "after threads 0 exited"});
    // The hardware's rule (strict_barriers = false): exited threads no longer count.
    emu::LaunchOptions relaxed;
    relaxed.strict_barriers = false;
    int after = 0;
    emu::launch("k_relaxed", d1(1), d1(64), relaxed, [&] {
        if (threadIdx.x == 0 || threadIdx.x == 40) return;
        __syncthreads();
        if (threadIdx.x >= 50) return;
        __syncthreads();
        atomicAdd(&after, 1);
    });
    CHECK(after == 48, "relaxed barriers count only live threads: %d", after);
}

// ---------------------------------------------------------------------------------------------
// Warp collectives against their definitions (Programming Guide; reference section 4).

static int ref_src(int kind, int lane, int b, int w) {  // 0 idx, 1 up, 2 down, 3 xor
    int seg = lane / w;
    switch (kind) {
        case 0: return seg * w + (b % w);
        case 1: return lane % w >= b ? lane - b : lane;
        case 2: return lane % w + b < w ? lane + b : lane;
        default: return (lane ^ b) <= seg * w + w - 1 ? (lane ^ b) : lane;
    }
}
static void test_shuffles() {
    for (int kind = 0; kind < 4; kind++)
        for (int w = 1; w <= 32; w *= 2)
            for (int b : {0, 1, 2, 3, 5, 8, 16, 31}) {
                std::vector<int> got(64);
                std::vector<double> gotd(64);
                emu::launch("k_shfl", d1(1), d1(64), [&] {
                    int lane = threadIdx.x % 32;
                    int v = 1000 * (int)threadIdx.x + 7;
                    double dv = 0.5 + (double)threadIdx.x * 1e9;
                    int r = 0;
                    double rd = 0;
                    switch (kind) {
                        case 0: r = __shfl_sync(0xFFFFFFFFu, v, b, w), rd = __shfl_sync(0xFFFFFFFFu, dv, b, w); break;
                        case 1: r = __shfl_up_sync(0xFFFFFFFFu, v, b, w), rd = __shfl_up_sync(0xFFFFFFFFu, dv, b, w); break;
                        case 2: r = __shfl_down_sync(0xFFFFFFFFu, v, b, w), rd = __shfl_down_sync(0xFFFFFFFFu, dv, b, w); break;
                        default: r = __shfl_xor_sync(0xFFFFFFFFu, v, b, w), rd = __shfl_xor_sync(0xFFFFFFFFu, dv, b, w); break;
                    }
                    (void)lane;
                    got[threadIdx.x] = r;
                    gotd[threadIdx.x] = rd;
                });
                bool ok = true;
                for (int t = 0; t < 64; t++) {
                    int j = (t / 32) * 32 + ref_src(kind, t % 32, b, w);
                    ok &= got[t] == 1000 * j + 7 && gotd[t] == 0.5 + (double)j * 1e9;
                }
                CHECK(ok, "shfl kind %d width %d b %d", kind, w, b);
            }
    // Two half-warps in disjoint collectives at the same time; a prefix sum with shfl_up.
    std::vector<int> out(32);
    emu::launch("k_halves", d1(1), d1(32), [&] {
        unsigned lane = threadIdx.x, m = lane < 16 ? 0x0000FFFFu : 0xFFFF0000u;
        int v = (int)lane;
        for (int d = 1; d < 16; d *= 2) {
            int o = __shfl_up_sync(m, v, d, 16);
            if ((int)(lane % 16) >= d) v += o;
        }
        out[lane] = v;
    });
    bool ok = true;
    for (int l = 0; l < 32; l++) {
        int s = 0;
        for (int k = l / 16 * 16; k <= l; k++) s += k;
        ok &= out[l] == s;
    }
    CHECK(ok, "half-warp prefix sums with disjoint masks");
}

static void test_votes() {
    std::vector<unsigned> bal(64), any_(64), all_(64);
    std::vector<int> smin(64), smax(64), sadd(64);
    std::vector<unsigned> umin(64), umax(64), uor(64);
    emu::launch("k_votes", d1(1), d1(64), [&] {
        unsigned t = threadIdx.x, lane = t % 32;
        bool p = (lane * 7) % 3 == 0;
        unsigned m = 0x0F0F0F0Fu;
        if ((m >> lane) & 1u) bal[t] = __ballot_sync(m, p);
        any_[t] = __any_sync(0xFFFFFFFFu, lane == 17 && t >= 32);
        all_[t] = __all_sync(0xFFFFFFFFu, lane < 31 || t < 32);
        int sv = (int)lane - 20;  // negative values: signed min/max differ from unsigned
        smin[t] = __reduce_min_sync(0xFFFFFFFFu, sv);
        smax[t] = __reduce_max_sync(0xFFFFFFFFu, sv);
        sadd[t] = __reduce_add_sync(0xFFFFFFFFu, sv);
        umin[t] = __reduce_min_sync(0xFFFFFFFFu, (unsigned)sv);
        umax[t] = __reduce_max_sync(0xFFFFFFFFu, (unsigned)sv);
        uor[t] = __reduce_or_sync(0xFFFFFFFFu, 1u << lane);
    });
    unsigned want = 0;
    for (unsigned l = 0; l < 32; l++)
        if (((0x0F0F0F0Fu >> l) & 1u) && (l * 7) % 3 == 0) want |= 1u << l;
    bool ok = true;
    for (unsigned t = 0; t < 64; t++) {
        unsigned lane = t % 32;
        if ((0x0F0F0F0Fu >> lane) & 1u) ok &= bal[t] == want;
        ok &= any_[t] == (t >= 32) && all_[t] == (t < 32);
        ok &= smin[t] == -20 && smax[t] == 11 && sadd[t] == (31 * 32 / 2 - 20 * 32);
        ok &= umin[t] == 0u && umax[t] == (unsigned)-1 && uor[t] == 0xFFFFFFFFu;
    }
    CHECK(ok, "ballot / any / all / reduce (signed and unsigned)");
}

static void test_collective_reports() {
    // Lanes 16-31 complete their own half-warp shuffle, then exit while 0-15 still wait for them.
    expect_error("divergent collective (masks)", [] {
        emu::launch("k_bad_mask", d1(1), d1(32), [] {
            float v = threadIdx.x;
            v = __shfl_xor_sync(threadIdx.x < 16 ? 0xFFFFFFFFu : 0xFFFF0000u, v, 1);
        });
    }, {"divergent warp collective", "k_bad_mask", "block (0,0,0)", "exits while lanes 0-15", "mask 0xffffffff"});
    // Lanes waiting for each other in two different collectives.
    expect_error("divergent collective (kinds)", [] {
        emu::launch("k_bad_kind", d1(2), d1(64), [] {
            if (blockIdx.x == 1 && threadIdx.x >= 48) (void)__ballot_sync(0xFFFFFFFFu, 1);
            else (void)__shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
        });
    }, {"divergent warp collective", "k_bad_kind", "block (1,0,0)", "lane 16 calls __ballot_sync", "lanes 0-15 of warp 1 wait for it in __shfl_xor_sync", "thread (48,0,0)"});
    expect_error("collective naming an exited lane", [] {
        emu::launch("k_lane_exit", d1(1), d1(32), [] {
            if (threadIdx.x == 31) return;
            float v = __shfl_down_sync(0xFFFFFFFFu, (float)threadIdx.x, 1);
            (void)v;
        });
    }, {"k_lane_exit", "lane 31", "__shfl_down_sync"});
    expect_error("mask without the caller", [] {
        emu::launch("k_self", d1(1), d1(32), [] { (void)__ballot_sync(1u, true); });
    }, {"does not name the calling lane"});
    expect_error("shuffle from a lane outside the mask", [] {
        emu::launch("k_outside", d1(1), d1(32), [] {
            if (threadIdx.x < 16) (void)__shfl_down_sync(0xFFFFu, 1, 8);
        });
    }, {"reads lane 16", "not in the mask"});
}

// ---------------------------------------------------------------------------------------------
// bf16 / half conversions: hand-derived bit patterns, then the nearest-value definition.

static uint16_t ref_bf16(float f) {  // the nearer of the two bf16 neighbours, ties to the even one
    uint32_t u = emu::f2u(f);
    uint32_t lo = u >> 16, hi = lo + 1;  // truncation and the next one away from zero
    double x = std::fabs((double)f), a = std::fabs((double)emu::u2f(lo << 16));
    double b = (hi & 0x7FFFu) >= 0x7F80u ? std::ldexp(1.0, 128) : std::fabs((double)emu::u2f(hi << 16));
    if (x - a < b - x) return (uint16_t)lo;
    if (x - a > b - x) return (uint16_t)hi;
    return (uint16_t)((lo & 1u) ? hi : lo);
}
static void test_bf16_half() {
    struct { uint32_t f; uint16_t bf; } bcases[] = {
        {0x3F800000u, 0x3F80}, {0x3F808000u, 0x3F80}, {0x3F818000u, 0x3F82}, {0x3F808001u, 0x3F81},
        {0x3F80FFFFu, 0x3F81}, {0x7F7FFFFFu, 0x7F80}, {0x7F7F7FFFu, 0x7F7F}, {0xFF7F8000u, 0xFF80},
        {0x7F800000u, 0x7F80}, {0xFF800000u, 0xFF80}, {0x7FC00000u, 0x7FFF}, {0xFFC00001u, 0x7FFF},
        {0x7F800001u, 0x7FFF}, {0x00000001u, 0x0000}, {0x00008000u, 0x0000}, {0x00018000u, 0x0002},
        {0x80008001u, 0x8001}, {0x00000000u, 0x0000}, {0x80000000u, 0x8000}};
    for (auto& c : bcases) CHECK(__float2bfloat16_rn(emu::u2f(c.f)).__x == c.bf, "bf16(%08x) = %04x, want %04x", c.f, __float2bfloat16_rn(emu::u2f(c.f)).__x, c.bf);
    CHECK(emu::f2u(__bfloat162float(__ushort_as_bfloat16(0x7FC1))) == 0x7FC10000u, "bf16 -> f32 keeps the NaN payload");
    CHECK(emu::cvt_rn_bf16x2_f32(1.0f, 2.0f) == 0x3F804000u, "cvt.rn.bf16x2.f32: a in the high half");
    __nv_bfloat162 p = __floats2bfloat162_rn(1.0f, 2.0f);
    CHECK(p.x.__x == 0x3F80 && p.y.__x == 0x4000, "__floats2bfloat162_rn(a, b): a in .x (low)");
    // Every f32 whose low 16 bits sit at or next to the rounding boundaries, all exponents, both
    // signs; plus random patterns.
    uint32_t lows[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000, 0xC000};
    long bad = 0, n = 0;
    for (uint32_t hi = 0; hi < 0x10000u; hi++) {
        if ((hi & 0x7FFFu) >= 0x7F80u) continue;  // inf/NaN handled above
        for (uint32_t lo : lows) {
            float f = emu::u2f((hi << 16) | lo);
            bad += emu::f32_to_bf16_rn(f) != ref_bf16(f), n++;
        }
    }
    std::mt19937 rng(1);
    for (int i = 0; i < 2000000; i++) {
        float f = emu::u2f(rng());
        if (f != f || std::isinf(f)) continue;
        bad += emu::f32_to_bf16_rn(f) != ref_bf16(f), n++;
    }
    CHECK(bad == 0, "bf16 RNE: %ld of %ld f32 patterns differ from the nearest-even definition", bad, n);
    // half: hand-derived cases, then every f32 near each f16 rounding boundary against the IEEE
    // conversion of the compiler's _Float16 (x86-64 GCC 12 converts in software, RNE).
    struct { uint32_t f; uint16_t h; } hcases[] = {
        {0x3F800000u, 0x3C00}, {0x477FE000u, 0x7BFF}, {0x477FEFFFu, 0x7BFF}, {0x477FF000u, 0x7C00},
        {0x33000000u, 0x0000}, {0x33000001u, 0x0001}, {0x33C00000u, 0x0002}, {0x387FC000u, 0x03FF}, {0x387FE000u, 0x0400},
        {0x7FC00000u, 0x7FFF}, {0xFF800000u, 0xFC00}, {0x80000000u, 0x8000}, {0xC7800000u, 0xFC00}};
    for (auto& c : hcases) CHECK(__float2half_rn(emu::u2f(c.f)).__x == c.h, "f16(%08x) = %04x, want %04x", c.f, __float2half_rn(emu::u2f(c.f)).__x, c.h);
    CHECK(emu::f2u(__half2float(__ushort_as_half(0xFE01))) == 0x7FFFFFFFu, "f16 NaN -> f32 0x7FFFFFFF");
    bad = n = 0;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        uint16_t hh = (uint16_t)h;
        _Float16 x;
        std::memcpy(&x, &hh, 2);
        float f = __half2float(__ushort_as_half(hh));
        if ((h & 0x7C00u) == 0x7C00u) continue;
        bad += emu::f2u(f) != emu::f2u((float)x), n++;  // widening is exact
        uint32_t u = emu::f2u(f);
        for (int d = -3; d <= 3; d++)
            for (uint32_t off : {0x0000u, 0x1000u, 0x0FFFu, 0x1001u}) {
                float g = emu::u2f(u + (uint32_t)d + off);
                if (g != g || std::isinf(g)) continue;
                _Float16 r = (_Float16)g;
                uint16_t rb;
                std::memcpy(&rb, &r, 2);
                bad += emu::f32_to_f16_rn(g) != rb, n++;
            }
    }
    CHECK(bad == 0, "f16 RNE: %ld of %ld patterns differ from _Float16", bad, n);
}

// ---------------------------------------------------------------------------------------------
// mma.m16n8k16 from the fragment table against a plain row-major product; ldmatrix against the
// row-address table and (cross-table) against the mma fragments.

static uint16_t conv16(float v, bool f16) { return f16 ? __float2half_rn(v).__x : __float2bfloat16_rn(v).__x; }
static float back16(uint16_t h, bool f16) { return f16 ? __half2float(__ushort_as_half(h)) : __bfloat162float(__ushort_as_bfloat16(h)); }

static void test_mma(bool f16) {
    std::mt19937 rng(f16 ? 7 : 3);
    std::uniform_real_distribution<float> U(-2.0f, 2.0f);
    uint16_t A[16][16], B[16][8];
    float C[16][8], D[16][8];
    for (auto& r : A) for (auto& v : r) v = conv16(U(rng), f16);
    for (auto& r : B) for (auto& v : r) v = conv16(U(rng), f16);
    for (auto& r : C) for (auto& v : r) v = U(rng);
    emu::launch("k_mma", d1(1), d1(64), [&] {  // two warps, both computing the same tile
        unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        uint32_t a[4], b[2];
        float c[4];
        // Table: reg0 = (row g, k 2t..2t+1), reg1 = (row g+8), reg2 = (row g, k+8), reg3 = (g+8, k+8).
        a[0] = A[g][2 * t] | (uint32_t)A[g][2 * t + 1] << 16;
        a[1] = A[g + 8][2 * t] | (uint32_t)A[g + 8][2 * t + 1] << 16;
        a[2] = A[g][2 * t + 8] | (uint32_t)A[g][2 * t + 9] << 16;
        a[3] = A[g + 8][2 * t + 8] | (uint32_t)A[g + 8][2 * t + 9] << 16;
        b[0] = B[2 * t][g] | (uint32_t)B[2 * t + 1][g] << 16;
        b[1] = B[2 * t + 8][g] | (uint32_t)B[2 * t + 9][g] << 16;
        c[0] = C[g][2 * t], c[1] = C[g][2 * t + 1], c[2] = C[g + 8][2 * t], c[3] = C[g + 8][2 * t + 1];
        if (f16) mma_m16n8k16_f32_f16(c, a, b, c);  // d aliases c, as in the kernels
        else mma_m16n8k16_f32_bf16(c, a, b, c);
        if (threadIdx.x < 32) D[g][2 * t] = c[0], D[g][2 * t + 1] = c[1], D[g + 8][2 * t] = c[2], D[g + 8][2 * t + 1] = c[3];
    });
    double worst = 0;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double s = C[m][n], mag = std::fabs(C[m][n]);
            for (int k = 0; k < 16; k++) s += (double)back16(A[m][k], f16) * back16(B[k][n], f16), mag += std::fabs((double)back16(A[m][k], f16) * back16(B[k][n], f16));
            worst = std::max(worst, std::fabs(D[m][n] - s) / (mag * 0x1p-23));
        }
    CHECK(worst <= 1.0, "mma m16n8k16 %s: error %.3f f32 ulps of sum|terms|", f16 ? "f16" : "bf16", worst);
}

static void test_ldmatrix() {
    // A 32x24 u16 matrix in shared memory (row stride 48 bytes, so 16-byte aligned rows), value
    // r*256 + c.
    std::vector<uint32_t> regs(32 * 4 * 6);
    emu::launch("k_ldsm", d1(1), d1(32), [&] {
        EMU_SHARED(uint16_t[32 * 24], S);
        unsigned lane = threadIdx.x;
        for (unsigned i = lane; i < 32 * 24; i += 32) S[i] = (uint16_t)((i / 24) * 256 + i % 24);
        __syncwarp();
        // Lane 8j + r addresses row r of matrix j: matrix j = rows 8j..8j+7, columns 8..15.
        uint32_t addr = __cvta_generic_to_shared(&S[lane * 24 + 8]);
        uint32_t* R = &regs[lane * 24];
        ldmatrix_x1(R + 0, addr);
        ldmatrix_x2(R + 1, addr);
        ldmatrix_x4(R + 3, addr);
        ldmatrix_x1_trans(R + 7, addr);
        ldmatrix_x2_trans(R + 8, addr);
        ldmatrix_x4_trans(R + 10, addr);
        // The cross check: lane l at row l%16, k-column 8(l/16) of the 16x16 tile at (0, 0)
        // gives the mma A fragment; rows k = l%16 of a 16x8 tile with .x2.trans give B.
        ldmatrix_x4(R + 14, __cvta_generic_to_shared(&S[(lane % 16) * 24 + 8 * (lane / 16)]));
        ldmatrix_x2_trans(R + 18, __cvta_generic_to_shared(&S[(lane % 16) * 24]));
    });
    auto M = [](unsigned j, unsigned r, unsigned c) { return (uint32_t)((8 * j + r) * 256 + 8 + c); };
    auto el = [](uint32_t reg, int hi) { return hi ? reg >> 16 : reg & 0xFFFFu; };
    bool ok = true, okx = true;
    for (unsigned l = 0; l < 32; l++) {
        const uint32_t* R = &regs[l * 24];
        const int off[6] = {0, 1, 3, 7, 8, 10}, cnt[6] = {1, 2, 4, 1, 2, 4};
        for (int f = 0; f < 6; f++)
            for (int j = 0; j < cnt[f]; j++) {
                uint32_t reg = R[off[f] + j];
                bool tr = f >= 3;
                for (int h = 0; h < 2; h++) {
                    uint32_t want = tr ? M(j, 2 * (l % 4) + h, l / 4) : M(j, l / 4, 2 * (l % 4) + h);
                    ok &= el(reg, h) == want;
                }
            }
        unsigned g = l / 4, t = l % 4;
        for (int i = 0; i < 8; i++) {  // A element i: row g + 8((i>>1)&1), col 2t + (i&1) + 8(i>>2)
            uint32_t want = (g + 8 * ((i >> 1) & 1)) * 256 + 2 * t + (i & 1) + 8 * (i >> 2);
            okx &= el(R[14 + i / 2], i & 1) == want;
        }
        for (int i = 0; i < 4; i++) {  // B element i: k 2t + (i&1) + 8(i>>1), n g
            uint32_t want = (2 * t + (i & 1) + 8 * (i >> 1)) * 256 + g;
            okx &= el(R[18 + i / 2], i & 1) == want;
        }
    }
    CHECK(ok, "ldmatrix x1/x2/x4 (.trans) against the PTX lane table");
    CHECK(okx, "ldmatrix.x4 / .x2.trans give the mma A / B fragments");
    expect_error("misaligned ldmatrix row address", [] {
        emu::launch("k_ldsm_bad", d1(1), d1(32), [] {
            EMU_SHARED(uint16_t[8 * 16], S);
            uint32_t r[1];
            unsigned lane = threadIdx.x % 8;
            ldmatrix_x1(r, __cvta_generic_to_shared(&S[lane * 16 + (lane == 3 ? 1 : 0)]));
        });
    }, {"k_ldsm_bad", "lane 3", "not 16-byte aligned"});
}

// ---------------------------------------------------------------------------------------------
// cp.async: zero fill, groups, the pending shadow state, a read before the wait.

static void test_cp_async() {
    std::vector<uint8_t> src(64 * 16);
    for (size_t i = 0; i < src.size(); i++) src[i] = (uint8_t)(i * 13 + 1);
    std::vector<uint8_t> got(64 * 16);
    std::vector<int> st(64 * 4);
    emu::launch("k_cp", d1(1), d1(64), [&] {
        EMU_SHARED(uint8_t[64 * 16], S);
        unsigned t = threadIdx.x;
        uint32_t dst = __cvta_generic_to_shared(&S[t * 16]);
        unsigned ss = t % 17 > 16 ? 16 : t % 17;  // src-size 0..16
        if (t < 32) emu::cp_async_cg_16(dst, &src[t * 16], ss);
        else emu::cp_async_ca(dst, &src[t * 16], 16, ss);
        emu::cp_async_commit_group();
        st[t * 4 + 0] = emu::shadow_of(&S[t * 16]);
        {
            emu::NoSan peek;  // a read before the wait, which the sanitizer would report
            st[t * 4 + 1] = S[t * 16 + 15];  // poisoned until the wait
        }
        emu::cp_async_wait_group(0);
        st[t * 4 + 2] = emu::shadow_of(&S[t * 16]);
        __syncthreads();
        for (int i = 0; i < 16; i++) got[t * 16 + i] = S[t * 16 + i];
    });
    bool ok = true;
    for (unsigned t = 0; t < 64; t++) {
        unsigned ss = t % 17;
        for (unsigned i = 0; i < 16; i++) ok &= got[t * 16 + i] == (i < ss ? src[t * 16 + i] : 0);
        ok &= st[t * 4] == emu::SH_PENDING_ASYNC && st[t * 4 + 1] == 0xFF && st[t * 4 + 2] == emu::SH_WRITTEN;
    }
    CHECK(ok, "cp.async src-size zero fill, poison and shadow state");
    // wait_group 1 completes the older group only.
    std::vector<int> s2(2);
    emu::launch("k_cp_groups", d1(1), d1(1), [&] {
        EMU_SHARED(uint8_t[32], S);
        emu::cp_async_cg_16(__cvta_generic_to_shared(&S[0]), &src[0], 16);
        emu::cp_async_commit_group();
        emu::cp_async_cg_16(__cvta_generic_to_shared(&S[16]), &src[16], 16);
        emu::cp_async_commit_group();
        emu::cp_async_wait_group(1);
        s2[0] = emu::shadow_of(&S[0]), s2[1] = emu::shadow_of(&S[16]);
        emu::cp_async_wait_all();
    });
    CHECK(s2[0] == emu::SH_WRITTEN && s2[1] == emu::SH_PENDING_ASYNC, "wait_group 1 leaves the newest group pending");
    expect_error("read of a cp.async destination before its wait", [&] {
        emu::launch("k_cp_early", d1(1), d1(32), [&] {
            EMU_SHARED(uint16_t[8 * 8], S);
            unsigned l = threadIdx.x;
            if (l < 8) emu::cp_async_cg_16(__cvta_generic_to_shared(&S[l * 8]), &src[l * 16], 16);
            emu::cp_async_commit_group();
            uint32_t r[1];
            ldmatrix_x1(r, __cvta_generic_to_shared(&S[(l % 8) * 8]));  // missing wait_group
        });
    }, {"k_cp_early", "not yet waited for"});
}

// ---------------------------------------------------------------------------------------------
// Atomics and math.

static void test_atomics_math() {
    float fsum = 0;
    int imax = -100;
    unsigned cnt = 0, cas = 0;
    emu::launch("k_atomics", d1(4), d1(128), [&] {
        atomicAdd(&fsum, 0.5f);
        atomicMax(&imax, (int)(blockIdx.x * 128 + threadIdx.x) - 7);
        atomicAdd(&cnt, 1u);
        unsigned old = atomicCAS(&cas, 0u, threadIdx.x + 1);
        if (old == 0u) atomicExch(&cnt, atomicAdd(&cnt, 0u));  // the single winner
    });
    CHECK(fsum == 256.0f && imax == 504 && cnt == 512 && cas >= 1 && cas <= 128, "atomics: %g %d %u %u", fsum, imax, cnt, cas);
    float tiny = 0x1p-130f;
    float acc = 0;
    atomicAdd(&acc, tiny);
    CHECK(acc == 0.0f, "atomicAdd(float) flushes subnormals");
    auto ulps = [](float a, double ref) { return std::fabs(a - ref) / std::ldexp(1.0, std::ilogb((float)ref) - 23); };
    double worst = 0;
    for (float x = -10.0f; x < 10.0f; x += 0.37f) {
        worst = std::max(worst, ulps(expf(x), std::exp((double)x)));
        worst = std::max(worst, ulps(erff(x), std::erf((double)x)));
        float s, c;
        sincosf(x, &s, &c);
        worst = std::max(worst, ulps(s, std::sin((double)x)));
        if (x > 0) worst = std::max(worst, ulps(logf(x), std::log((double)x)));
    }
    CHECK(worst <= 2.0, "libm float functions within CUDA's documented 2 ulp: %.2f", worst);
    CHECK(__fmul_rn(3.0f, 0.1f) == 3.0f * 0.1f && rsqrtf(4.0f) == 0.5f && __popc(0xF0F0u) == 8 && __ffs(8) == 4 && __clz(1) == 31, "bit and _rn intrinsics");
}

// min/max: the overloads of CUDA's math_functions.hpp. Integers of one width compare as unsigned
// when either operand is unsigned (min(-1, 1u) is 1u: -1 converts to 0xFFFFFFFF); float and
// double are fminf/fmin, which return the other operand when one is NaN. make_* build vectors.
static void test_minmax_vectors() {
    CHECK(min(-3, 2) == -3 && max(-3, 2) == 2, "min/max(int, int)");
    CHECK(min(-1, 1u) == 1u && max(-1, 1u) == 0xFFFFFFFFu && min(1u, -1) == 1u, "min/max(int, unsigned) compare as unsigned");
    CHECK(min(-1LL, 1ULL) == 1ULL && max(5ULL, 7ULL) == 7ULL && min(-2LL, 3LL) == -2LL, "min/max on 64 bits");
    float nan = __uint_as_float(0x7FC00000u);
    CHECK(min(nan, 2.0f) == 2.0f && max(2.0f, nan) == 2.0f && min(-0.5f, 0.25f) == -0.5f, "min/max(float): a NaN operand yields the other");
    CHECK(min(1.0f, 0.5) == 0.5 && max(0.25, 2.0f) == 2.0, "min/max(float, double) in double");
    uint4 u = make_uint4(1, 2, 3, 4);
    float4 f = make_float4(1.0f, 2.0f, 3.0f, 4.0f);
    CHECK(u.x == 1 && u.w == 4 && f.y == 2.0f && f.z == 3.0f && alignof(uint4) == 16 && sizeof(float4) == 16, "make_uint4 / make_float4");
}

int main() {
    test_runtime();
    test_barrier_reports();
    test_shuffles();
    test_votes();
    test_collective_reports();
    test_bf16_half();
    test_mma(false);
    test_mma(true);
    test_ldmatrix();
    test_cp_async();
    test_atomics_math();
    test_minmax_vectors();
    return summary("isa_test");
}
