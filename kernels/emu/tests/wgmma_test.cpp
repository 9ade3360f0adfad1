// emu/tests/wgmma_test.cpp: unit tests of kernels/emu/sm90_wgmma.h (wgmma.mma_async m64nNk16
// bf16 -> f32, SS and RS forms, shared-memory matrix descriptors in every swizzle mode, the
// warpgroup fragments, scale-d, fence/commit/wait and the read-before-wait check, setmaxnreg's
// per-CTA register pool), written from the PTX ISA's tables and figures as collected in
// ../shared/reference/ptx-emulation.md 5.1 and 5.4, never from attention_hopper.cu. The operands
// are placed in shared memory by this file's own placement (the ISA's core matrices and the
// swizzle figures: in an S-byte swizzle the 16-byte chunk j of row i of an 8-row pattern is stored
// at chunk j ^ (i / (128 / S))), and the products are checked against a host matrix product.
// Run by tests/emu_wgmma.rs (instrumented, sanitizer on, like isa_test).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../cuda.h"
#include "../sm90_wgmma.h"
#include "check.h"

using emu::Site;

// ---------------------------------------------------------------------------------------------
// Descriptors and placement.

static uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint32_t mode) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) | ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | ((uint64_t)mode << 62);
}
static uint32_t mode_bytes(uint32_t mode) { return mode == 1 ? 128 : mode == 2 ? 64 : mode == 3 ? 32 : 16; }

// Byte offset (from a 1024-aligned base) of element (r, c) of an operand of R rows (M or N) x 16
// (K), placed by the ISA's canonical layouts with this file's dense choice of LBO / SBO:
//   K-major, no swizzle: core matrices of 8 rows x 16 B (row i at 16 i); core (r/8, c/8) at
//     (r/8) SBO + (c/8) LBO with SBO = 128, LBO = 128 R/8 (the second k-half after all rows);
//   K-major, S-byte swizzle: row r at (r%8) S + (r/8) SBO, SBO = 8 S; the 32 bytes of k
//     contiguous in the row, chunks permuted;
//   MN-major, S-byte swizzle (W = S/2 elements along MN per row): k-row c%8 at (c%8) S, c/8 at
//     SBO = 8 S, MN-block r/W at LBO = 16 S; no swizzle: r%8 contiguous (16 B), c%8 rows of
//     16 B, r/8 at SBO = 128, c/8 at LBO = 128 R/8.
struct Placement {
    uint32_t mode;
    bool mn;
    uint32_t R;
    uint32_t lbo() const {
        uint32_t S = mode_bytes(mode);
        if (!mode) return 128 * R / 8;
        return mn ? 16 * S : 16;  // K-major swizzled: unused (any value)
    }
    uint32_t sbo() const { return mode ? 8 * mode_bytes(mode) : 128; }
    uint32_t bytes() const { return mode && mn ? ((R + mode_bytes(mode) / 2 - 1) / (mode_bytes(mode) / 2)) * lbo() : mode ? (R / 8) * sbo() : 2 * R * 16; }
    uint32_t at(uint32_t r, uint32_t c) const {
        uint32_t S = mode_bytes(mode), row, o;  // row: the row of the 8-row swizzle pattern
        if (!mn && !mode) return (r / 8) * sbo() + (c / 8) * lbo() + 16 * (r % 8) + 2 * (c % 8);
        if (mn && !mode) return (r / 8) * sbo() + (c / 8) * lbo() + 16 * (c % 8) + 2 * (r % 8);
        uint32_t line;
        if (!mn) row = r % 8, line = (r / 8) * sbo() + row * S, o = 2 * c;
        else row = c % 8, line = (r / (S / 2)) * lbo() + (c / 8) * sbo() + row * S, o = 2 * (r % (S / 2));
        uint32_t chunk = (o / 16) ^ (row / (128 / S));
        return line + chunk * 16 + o % 16;
    }
};

static float bf(uint16_t h) { return emu::bf16_to_f32(h); }

// The warpgroup fragments from the reference's table, written out again here.
static void d_rc(unsigned tid, unsigned i, unsigned& r, unsigned& c) {
    unsigned w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    r = 16 * w + g + 8 * ((i / 2) % 2);
    c = 8 * (i / 4) + 2 * t + i % 2;
}
static void a_rc(unsigned tid, unsigned i, unsigned& r, unsigned& c) {
    unsigned w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    r = 16 * w + g + 8 * ((i / 2) % 2);
    c = 2 * t + i % 2 + 8 * (i / 4);
}

// ---------------------------------------------------------------------------------------------
// One warpgroup runs `body(tid, smem base address)` after copying `img` into dynamic shared memory
// at a 1024-aligned window address (bytes past img.size() stay never written). The copy is made
// of ordinary stores, which wgmma (the async proxy) may read only after each writer's
// fence.proxy.async and a barrier (PTX memory consistency model): `proxy` says how the copy ends:
// FENCE_THEN_BAR (correct), NO_FENCE or BAR_THEN_FENCE (planted bugs of test_proxy).
enum Proxy { FENCE_THEN_BAR, NO_FENCE, BAR_THEN_FENCE };
static void run_wg(const char* name, const std::vector<uint16_t>& img, unsigned threads, unsigned regs, const std::function<void(unsigned, uint32_t)>& body, Proxy proxy = FENCE_THEN_BAR) {
    emu::LaunchOptions opt;
    opt.dyn_smem = 96 * 1024;
    opt.regs = regs;
    emu::launch(name, emu::dim3(1), emu::dim3(threads), opt, [&] {
        uint8_t* dyn = static_cast<uint8_t*>(emu::dyn_smem());
        uint32_t w = __cvta_generic_to_shared(dyn), base = (w + 1023) & ~1023u;
        uint16_t* s = reinterpret_cast<uint16_t*>(dyn + (base - w));
        for (size_t i = threadIdx.x; i < img.size(); i += blockDim.x) s[i] = img[i];
        if (proxy == FENCE_THEN_BAR) emu::fence_proxy_async_shared();
        __syncthreads();
        if (proxy == BAR_THEN_FENCE) emu::fence_proxy_async_shared();
        body(threadIdx.x, base);
    });
}

struct Mat {
    unsigned R;
    std::vector<uint16_t> v;  // R x 16, [r][k]
    uint16_t operator()(unsigned r, unsigned k) const { return v[r * 16 + k]; }
};
static Mat rand_mat(unsigned R, std::mt19937& g) {
    std::uniform_int_distribution<int> d(-64, 64);
    Mat m{R, std::vector<uint16_t>(R * 16)};
    for (auto& x : m.v) x = emu::f32_to_bf16_rn(d(g) / 16.0f * (1.0f + d(g) / 1024.0f));
    return m;
}
// D[m][n] = C + sum_k A[m][k] B[n][k] (B given [n][k]) in double in k order, one rounding.
static std::vector<float> ref(const Mat& A, const Mat& B, const std::vector<float>& C, double sa = 1) {
    unsigned N = B.R;
    std::vector<float> D(64 * N);
    for (unsigned m = 0; m < 64; m++)
        for (unsigned n = 0; n < N; n++) {
            double s = C.empty() ? 0.0 : C[m * N + n];
            for (unsigned k = 0; k < 16; k++) s += sa * (double)bf(A(m, k)) * (double)bf(B(n, k));
            D[m * N + n] = (float)s;
        }
    return D;
}
static void place(std::vector<uint16_t>& img, uint32_t off, const Placement& p, const Mat& M) {
    if (img.size() < (off + p.bytes()) / 2) img.resize((off + p.bytes()) / 2, 0);
    for (unsigned r = 0; r < M.R; r++)
        for (unsigned k = 0; k < 16; k++) img[(off + p.at(r, k)) / 2] = M(r, k);
}

// SS: A (64 x 16) at offset 0, B (N x 16) at offset 32768; D gathered from the fragments.
template <unsigned N>
static std::vector<float> ss(const char* name, const Mat& A, const Mat& B, Placement pa, Placement pb, uint32_t use_mode_b, bool* threw = nullptr) {
    std::vector<uint16_t> img;
    place(img, 0, pa, A);
    place(img, 32768, pb, B);
    std::vector<float> D(64 * N, -1.0f);
    auto k = [&](unsigned tid, uint32_t base) {
        float d[N / 2];
        for (auto& x : d) x = 1e30f;  // scale-d 0 ignores it
        emu::wgmma_fence();
        emu::wgmma_ss_at<N>(EMU_HERE, d, desc(base, pa.lbo(), pa.sbo(), pa.mode), desc(base + 32768, pb.lbo(), pb.sbo(), use_mode_b), 0u, 1, 1, pa.mn, pb.mn);
        emu::wgmma_commit_group();
        emu::wgmma_wait_group(0);
        for (unsigned i = 0; i < N / 2; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            D[r * N + c] = d[i];
        }
    };
    if (!threw) {
        run_wg(name, img, 128, 0, k);
        return D;
    }
    try {
        run_wg(name, img, 128, 0, k);
        *threw = false;
    } catch (const emu::Error& e) {
        *threw = true;
        std::printf("ok: %s reported:\n  %s\n", name, e.what());
    }
    return D;
}

static void test_descriptors() {
    emu::WgDesc d = emu::wg_desc_decode(desc(0x12340, 16384, 1024, 1) | (5ull << 49));
    CHECK(d.start == 0x12340 && d.lbo == 16384 && d.sbo == 1024 && d.swz == 1 && d.base == 5, "descriptor fields: start %x lbo %u sbo %u swz %u base %u", d.start, d.lbo, d.sbo, d.swz, d.base);
    d = emu::wg_desc_decode(desc(0x3FFF0, 0x3FFF0, 0x3FFF0, 3));
    CHECK(d.start == 0x3FFF0 && d.lbo == 0x3FFF0 && d.sbo == 0x3FFF0 && d.swz == 3, "14-bit fields of addresses >> 4");
    // The swizzle on absolute byte addresses (reference 5.1): bits 4-6 ^= bits 7-9 (128B), 4-5 ^=
    // 7-8 (64B), 4 ^= 7 (32B).
    CHECK(emu::wg_swizzle(0x3A0, 1) == (0x3A0u ^ (7u << 4)), "128B swizzle of 0x3A0");
    CHECK(emu::wg_swizzle(0x3A0, 2) == (0x3A0u ^ (3u << 4)), "64B swizzle of 0x3A0");
    CHECK(emu::wg_swizzle(0x3A0, 3) == (0x3A0u ^ (1u << 4)), "32B swizzle of 0x3A0");
    CHECK(emu::wg_swizzle(0x3A5, 0) == 0x3A5u, "no swizzle");
    // Thread 0's accumulators (reference 5.1): (0,0), (0,1), (8,0), (8,1), (0,8).
    unsigned want[5][2] = {{0, 0}, {0, 1}, {8, 0}, {8, 1}, {0, 8}};
    bool ok = true;
    for (unsigned i = 0; i < 5; i++) ok &= emu::wg_d_row(0, i) == want[i][0] && emu::wg_d_col(0, i) == want[i][1];
    for (unsigned tid = 0; tid < 128; tid++)
        for (unsigned i = 0; i < 64; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            ok &= emu::wg_d_row(tid, i) == r && emu::wg_d_col(tid, i) == c;
            if (i < 8) a_rc(tid, i, r, c), ok &= emu::wg_a_row(tid, i) == r && emu::wg_a_col(tid, i) == c;
        }
    CHECK(ok, "warpgroup D and A fragments follow the table");
}

// SS products for every swizzle mode, K-major A and B, and MN-major B.
static void test_ss_modes() {
    std::mt19937 g(7);
    Mat A = rand_mat(64, g), B64 = rand_mat(64, g), B128 = rand_mat(128, g), B256 = rand_mat(256, g);
    for (uint32_t mode = 0; mode < 4; mode++) {
        for (int mn = 0; mn < 2; mn++) {
            Placement pa{mode, false, 64}, pb{mode, mn != 0, 64};
            auto D = ss<64>("k_wgmma_ss_n64", A, B64, pa, pb, mode);
            CHECK(D == ref(A, B64, {}), "SS m64n64k16, A K-major, B %s, swizzle mode %u", mn ? "N-major" : "K-major", mode);
            Placement pa2{mode, true, 64};  // A M-major (imm-trans-a 1)
            D = ss<64>("k_wgmma_ss_n64_ta", A, B64, pa2, pb, mode);
            CHECK(D == ref(A, B64, {}), "SS m64n64k16, A M-major, B %s, swizzle mode %u", mn ? "N-major" : "K-major", mode);
        }
        Placement pa{mode, false, 64}, pb{mode, false, 128};
        CHECK(ss<128>("k_wgmma_ss_n128", A, B128, pa, pb, mode) == ref(A, B128, {}), "SS m64n128k16, swizzle mode %u", mode);
    }
    Placement pa{1, false, 64}, pb{1, false, 256};
    CHECK(ss<256>("k_wgmma_ss_n256", A, B256, pa, pb, 1) == ref(A, B256, {}), "SS m64n256k16, 128B swizzle");
    // Planted bug: B placed with the 128B swizzle, descriptor says 64B: a different product.
    Placement pb1{1, false, 64};
    bool threw = false;
    auto D = ss<64>("k_wrong_swizzle", A, B64, pa, pb1, 2, &threw);
    CHECK(threw || D != ref(A, B64, {}), "planted bug: a descriptor with the wrong swizzle mode (64B for a 128B tile) changes the product");
    // Planted bug: a 32B-swizzled tile read as 128B reaches bytes never written: initcheck.
    Placement pa3{3, false, 64};
    std::vector<uint16_t> img;
    place(img, 0, pa3, A);  // 2048 bytes only
    expect_error("wgmma reading a tile with the wrong swizzle (32B tile, 128B descriptor)", [&] {
        run_wg("k_wrong_swizzle_init", img, 128, 0, [&](unsigned, uint32_t base) {
            float d[32];
            emu::wgmma_fence();
            emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base, 16, 1024, 1), 0u);
            emu::wgmma_commit_group();
            emu::wgmma_wait_group(0);
        });
    }, {"initcheck", "never written", "k_wrong_swizzle_init", "swizzle mode 1"});
}

// RS form (A from registers) with an N-major 128B-swizzled B, N = 64 and 128; scale-d; imm-scale-a.
template <unsigned N>
static void rs_case(const char* what, std::mt19937& g) {
    Mat A = rand_mat(64, g), B = rand_mat(N, g);
    Placement pb{1, true, N};
    std::vector<uint16_t> img;
    place(img, 0, pb, B);
    std::vector<float> C(64 * N);
    for (auto& x : C) x = (float)(g() % 1000) / 64.0f - 7.0f;
    std::vector<float> D1(64 * N), D2(64 * N), D3(64 * N);
    run_wg(what, img, 128, 0, [&](unsigned tid, uint32_t base) {
        uint32_t a[4];
        for (unsigned i = 0; i < 8; i += 2) {
            unsigned r, c;
            a_rc(tid, i, r, c);
            a[i / 2] = (uint32_t)A(r, c) | ((uint32_t)A(r, c + 1) << 16);
        }
        float d[N / 2];
        for (unsigned i = 0; i < N / 2; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            d[i] = C[r * N + c];
        }
        uint64_t db = desc(base, pb.lbo(), pb.sbo(), 1);
        emu::wgmma_fence();
        emu::wgmma_rs_at<N>(EMU_HERE, d, a, db, 1u, 1, 1, 1);  // D = C + A B
        emu::wgmma_commit_group();
        emu::wgmma_wait_group(0);
        for (unsigned i = 0; i < N / 2; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            D1[r * N + c] = d[i];
        }
        emu::wgmma_fence();
        emu::wgmma_rs_at<N>(EMU_HERE, d, a, db, 0u, 1, 1, 1);   // D = A B
        emu::wgmma_rs_at<N>(EMU_HERE, d, a, db, 1u, -1, 1, 1);  // chained, same group: D -= A B
        emu::wgmma_rs_at<N>(EMU_HERE, d, a, db, 1u, 1, 1, 1);   // D += A B
        emu::wgmma_commit_group();
        emu::wgmma_wait_group(0);
        for (unsigned i = 0; i < N / 2; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            D2[r * N + c] = d[i];
        }
    });
    CHECK(D1 == ref(A, B, C), "%s: scale-d 1 (D = C + A B), RS form, B N-major 128B", what);
    // D = fl(AB); D = fl(D - AB) = 0 exactly; D = fl(0 + AB) = fl(AB).
    auto AB = ref(A, B, {});
    CHECK(D2 == AB, "%s: scale-d 0 then chained imm-scale-a -1 and +1 in one group gives A B", what);
}
static void test_rs() {
    std::mt19937 g(11);
    rs_case<64>("k_wgmma_rs_n64", g);
    rs_case<128>("k_wgmma_rs_n128", g);
}

// Async rules: results only at the covering wait; reads before it see NaN; writes are reported.
static void test_async() {
    std::mt19937 g(3);
    Mat A = rand_mat(64, g), B = rand_mat(64, g);
    Placement pa{1, false, 64}, pb{1, false, 64};
    std::vector<uint16_t> img;
    place(img, 0, pa, A);
    place(img, 8192, pb, B);
    auto AB = ref(A, B, {});
    std::vector<float> early(64 * 64), late(64 * 64), mid(64 * 64), fin(64 * 64);
    run_wg("k_wait_groups", img, 128, 0, [&](unsigned tid, uint32_t base) {
        float d[32], e[32];
        uint64_t da = desc(base, 16, 1024, 1), db = desc(base + 8192, 16, 1024, 1);
        emu::wgmma_fence();
        emu::wgmma_ss_at<64>(EMU_HERE, d, da, db, 0u);
        emu::wgmma_commit_group();
        emu::wgmma_ss_at<64>(EMU_HERE, e, da, db, 0u);
        emu::wgmma_commit_group();
        for (unsigned i = 0; i < 32; i++) {  // planted bug: read before wgmma.wait_group
            unsigned r, c;
            d_rc(tid, i, r, c);
            early[r * 64 + c] = d[i] * 2.0f;
        }
        emu::wgmma_wait_group(1);  // the first group completes, the second stays pending
        for (unsigned i = 0; i < 32; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            mid[r * 64 + c] = e[i];
            late[r * 64 + c] = d[i];
        }
        emu::wgmma_wait_group(0);
        for (unsigned i = 0; i < 32; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            fin[r * 64 + c] = e[i];
        }
    });
    bool nan = true;
    for (float x : early) nan &= std::isnan(x);
    CHECK(nan, "planted bug: accumulators read before wgmma.wait_group are NaN (the output shows it)");
    CHECK(late == AB, "wait_group 1 completes the older group");
    nan = true;
    for (float x : mid) nan &= std::isnan(x);
    CHECK(nan, "wait_group 1 leaves the newer group pending (its registers still NaN)");
    CHECK(fin == AB, "wait_group 0 completes the newer group");
    expect_error("accumulator written before wgmma.wait_group", [&] {
        run_wg("k_read_before_wait", img, 128, 0, [&](unsigned, uint32_t base) {
            float d[32];
            emu::wgmma_fence();
            emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base + 8192, 16, 1024, 1), 0u);
            emu::wgmma_commit_group();
            for (auto& x : d) x = x * 0.5f;  // planted bug: a read-modify-write of pending registers
            emu::wgmma_wait_group(0);
        });
    }, {"before its wgmma.wait_group", "k_read_before_wait", "d[0]"});
    expect_error("wgmma.mma_async without wgmma.fence", [&] {
        run_wg("k_no_fence", img, 128, 0, [&](unsigned, uint32_t base) {
            float d[32];
            emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base + 8192, 16, 1024, 1), 0u);
        });
    }, {"no wgmma.fence", "k_no_fence"});
    expect_error("a thread of the warpgroup exited", [&] {
        run_wg("k_wg_exit", img, 128, 0, [&](unsigned tid, uint32_t base) {
            if (tid == 77) return;
            float d[32];
            emu::wgmma_fence();
            emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base + 8192, 16, 1024, 1), 0u);
        });
    }, {"thread 77", "exited", "k_wg_exit"});
    expect_error("warpgroup of 96 threads", [&] {
        run_wg("k_wg_partial", img, 96, 0, [&](unsigned, uint32_t base) {
            float d[32];
            emu::wgmma_fence();
            emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base + 8192, 16, 1024, 1), 0u);
        });
    }, {"warpgroup 0 has only 96 threads"});
}

// fence.proxy.async (PTX memory consistency model, "proxies"): operands written by ordinary
// stores reach wgmma only through each writer's fence.proxy.async ordered before the wgmma by a
// barrier. Planted bugs: no fence; the fence after the barrier. Correct: fence, then barrier (the
// operands then give A B exactly).
static void test_proxy() {
    std::mt19937 g(5);
    Mat A = rand_mat(64, g), B = rand_mat(64, g);
    Placement pa{1, false, 64}, pb{1, false, 64};
    std::vector<uint16_t> img;
    place(img, 0, pa, A);
    place(img, 8192, pb, B);
    std::vector<float> D(64 * 64);
    auto body = [&](unsigned tid, uint32_t base) {
        float d[32];
        emu::wgmma_fence();
        emu::wgmma_ss_at<64>(EMU_HERE, d, desc(base, 16, 1024, 1), desc(base + 8192, 16, 1024, 1), 0u);
        emu::wgmma_commit_group();
        emu::wgmma_wait_group(0);
        for (unsigned i = 0; i < 32; i++) {
            unsigned r, c;
            d_rc(tid, i, r, c);
            D[r * 64 + c] = d[i];
        }
    };
    expect_error("generic stores read by wgmma with no fence.proxy.async", [&] { run_wg("k_no_proxy_fence", img, 128, 0, body, NO_FENCE); },
                 {"proxy:", "k_no_proxy_fence", "has issued no fence.proxy.async since that store"});
    expect_error("fence.proxy.async after the barrier", [&] { run_wg("k_fence_after_bar", img, 128, 0, body, BAR_THEN_FENCE); },
                 {"proxy:", "k_fence_after_bar", "no barrier ordering the fence before this read"});
    run_wg("k_fence_then_bar", img, 128, 0, body, FENCE_THEN_BAR);
    CHECK(D == ref(A, B, {}), "fence.proxy.async then bar.sync: wgmma reads the stored operands");
}

// setmaxnreg: the CTA pool = regs at launch x threads (PTX "setmaxnreg"; reference 5.4).
static void test_setmaxnreg() {
    std::vector<uint16_t> img(8, 0);
    std::vector<unsigned> got(3);
    // 384 threads at 168: producer .dec 40, two consumers .inc 232 = exactly the pool.
    run_wg("k_regs", img, 384, 168, [&](unsigned tid, uint32_t) {
        if (tid < 128) emu::setmaxnreg_at(EMU_HERE, false, 40);
        else emu::setmaxnreg_at(EMU_HERE, true, 232);
        if (tid % 128 == 0) got[tid / 128] = emu::setmaxnreg_current();
    });
    CHECK(got[0] == 40 && got[1] == 232 && got[2] == 232, "setmaxnreg: 40 / 232 / 232 (%u %u %u)", got[0], got[1], got[2]);
    // The .inc arrives first (warpgroup 0 runs first) and blocks until warpgroup 1's .dec.
    run_wg("k_regs_order", img, 256, 168, [&](unsigned tid, uint32_t) {
        if (tid < 128) emu::setmaxnreg_at(EMU_HERE, true, 232);
        else emu::setmaxnreg_at(EMU_HERE, false, 40);
        if (tid % 128 == 0) got[tid / 128] = emu::setmaxnreg_current();
    });
    CHECK(got[0] == 232 && got[1] == 40, "setmaxnreg.inc waits for the other warpgroup's .dec");
    expect_error("setmaxnreg.inc beyond the launch's registers", [&] {
        run_wg("k_regs_over", img, 128, 168, [&](unsigned, uint32_t) { emu::setmaxnreg_at(EMU_HERE, true, 176); });
    }, {"k_regs_over", "setmaxnreg.inc.sync.aligned.u32 176", "warpgroup 0", "exceeds what the launch allows", "requests 176", "0 free of 21504", "168 per thread at launch x 128 threads"});
    // Two consumers at 232 with a producer at 40 fit 384 x 168 exactly; at 256 they do not: the
    // second .inc waits for a .dec that never comes (the producer exits), a reported hang.
    expect_error("setmaxnreg.inc beyond the pool once the others are done", [&] {
        run_wg("k_regs_over3", img, 384, 168, [&](unsigned tid, uint32_t) {
            if (tid < 128) emu::setmaxnreg_at(EMU_HERE, false, 24);
            else emu::setmaxnreg_at(EMU_HERE, true, 256);
        });
    }, {"deadlock", "k_regs_over3", "setmaxnreg.inc.sync.aligned.u32 256", "warpgroup 2", "requests 256", "7168 free of 64512", "168 per thread at launch x 384 threads"});
    expect_error("setmaxnreg.inc that waits for a .dec that never comes", [&] {
        run_wg("k_regs_hang", img, 256, 168, [&](unsigned tid, uint32_t) {
            if (tid < 128) emu::setmaxnreg_at(EMU_HERE, true, 232);
        });
    }, {"deadlock", "k_regs_hang", "setmaxnreg.inc.sync.aligned.u32 232", "warpgroup 0", "blocked", "0 free of 43008"});
    expect_error("setmaxnreg count not a multiple of 8", [&] {
        run_wg("k_regs_bad", img, 128, 168, [&](unsigned, uint32_t) { emu::setmaxnreg_at(EMU_HERE, false, 100); });
    }, {"count 100 is not a multiple of 8 in [24, 256]"});
    expect_error("setmaxnreg.dec above the current count", [&] {
        run_wg("k_regs_dec_up", img, 128, 168, [&](unsigned, uint32_t) { emu::setmaxnreg_at(EMU_HERE, false, 200); });
    }, {"above the warpgroup's current 168"});
    // Unknown registers at launch (0): floor(65536 / 384) rounded down to 8 = 168.
    run_wg("k_regs_default", img, 384, 0, [&](unsigned tid, uint32_t) {
        if (tid % 128 == 0) got[tid / 128] = emu::setmaxnreg_current();
    });
    CHECK(got[0] == 168, "regs at launch unknown: 168 for 384 threads (%u)", got[0]);
    emu::launch("k_prefetch", emu::dim3(1), emu::dim3(32), [&] { emu::prefetch_tensormap(&got); });
    CHECK(true, "prefetch.tensormap is a no-op");
}

int main() {
    test_descriptors();
    test_ss_modes();
    test_rs();
    test_async();
    test_proxy();
    test_setmaxnreg();
    return summary("wgmma_test");
}
