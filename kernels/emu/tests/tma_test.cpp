// emu/tests/tma_test.cpp: unit tests of the emulated sm_90 mbarrier and TMA (kernels/emu/sm90_tma.h)
// and of the emulated cuTensorMapEncodeTiled (kernels/emu/driver/tensormap.cpp, included here so
// this test is one TU), written from the PTX ISA's mbarrier and cp.async.bulk.tensor sections and
// the Driver API's requirements (../shared/reference/ptx-emulation.md 5.2, 5.3), never from the
// project's kernels. Built and run by tests/emu_tma.rs like isa_test (instrumented, sanitizer on).
#include <cstdio>
#include <string>
#include <vector>

#include "../cuda.h"
#include "../driver/tensormap.cpp"
#include "../sm90_tma.h"
#include "check.h"

using emu::mbar_arrive;
using emu::mbar_arrive_expect_tx;
using emu::mbar_init;
using emu::mbar_test_wait;
using emu::mbar_try_wait;

static emu::LaunchOptions dyn(size_t bytes) {
    emu::LaunchOptions o;
    o.static_smem = 0;
    o.dyn_smem = bytes;
    return o;
}
// Shared addresses in the dynamic part: the barrier at +0, data from +1024 (1024-byte aligned:
// the 128-byte swizzle's pattern span).
static uint32_t bar0() { return emu::cvta_shared(emu::dyn_smem()); }
static uint32_t data0() { return (bar0() + 1024 + 1023) & ~1023u; }

// ---------------------------------------------------------------------------------------------
// mbarrier phases (PTX "mbarrier": phase completes when pending arrivals and tx count are both 0).

static void test_phases() {
    std::vector<int> seen;
    auto rec = [&](bool v) { seen.push_back(v ? 1 : 0); };
    emu::launch("k_phases", emu::dim3(1), emu::dim3(1), dyn(4096), [&] {
        uint32_t b = bar0();
        mbar_init(b, 2);
        emu::fence_mbarrier_init();
        rec(mbar_test_wait(b, 0));                 // 0: phase 0 in progress -> false
        rec(mbar_test_wait(b, 1));                 // 1: "phase -1" (parity 1) counts as complete -> true
        rec(mbar_arrive(b) == 0);                  // 2: token = phase 0
        rec(mbar_test_wait(b, 0));                 // 3: one arrival of 2 -> false
        rec(mbar_arrive(b) == 0);                  // 4: completes phase 0
        rec(mbar_test_wait(b, 0));                 // 5: true
        rec(mbar_test_wait(b, 1));                 // 6: phase 1 in progress -> false
        rec(mbar_arrive_expect_tx(b, 48) == 1);    // 7: tx 48, 1 arrival pending
        rec(mbar_arrive(b) == 1);                  // 8: arrivals done, tx 48 pending
        rec(mbar_test_wait(b, 1));                 // 9: false (tx)
        emu::mbar_expect_tx(b, 0);                 // no change
        emu::mbar_complete_tx(emu::mbar_table().bars.at(b), 48);  // an async copy's 48 bytes
        rec(mbar_test_wait(b, 1));                 // 10: phase 1 complete -> true
        rec(mbar_test_wait(b, 0));                 // 11: phase 2 in progress -> false
        // complete_tx before expect_tx: tx goes negative and the phase still waits for both.
        emu::mbar_complete_tx(emu::mbar_table().bars.at(b), 32);
        rec(mbar_arrive(b) == 2);                  // 12
        rec(mbar_test_wait(b, 0));                 // 13: false: tx -32, 1 arrival pending
        rec(mbar_arrive_expect_tx(b, 32) == 2);    // 14: tx 0, pending 0 -> phase 2 completes
        rec(mbar_test_wait(b, 0));                 // 15: true
        rec(mbar_try_wait(b, 0));                  // 16: try_wait of a completed phase: true at once
    });
    std::vector<int> want = {0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1};
    CHECK(seen == want, "mbarrier phase/parity sequence differs from the ISA's rule");
}

// try_wait blocks the thread until another thread's arrive completes the phase, and orders the
// arriving thread's shared writes before the waiter's reads (release/acquire).
static void test_handoff() {
    std::vector<float> out(64);
    emu::launch("k_handoff", emu::dim3(1), emu::dim3(64), dyn(8192), [&] {
        uint32_t b = bar0();
        float* s = reinterpret_cast<float*>(emu::smem_at(data0(), 256, "test"));
        unsigned t = threadIdx.x;
        if (t == 0) mbar_init(b, 32);
        __syncthreads();
        if (t < 32) {
            s[t] = 1.5f * (float)t;  // producers: write, then arrive (release)
            mbar_arrive(b);
        } else {
            while (!mbar_try_wait(b, 0)) {
            }
            out[t] = s[t - 32];  // consumers: after the acquiring wait
        }
    });
    bool ok = true;
    for (unsigned t = 32; t < 64; t++) ok &= out[t] == 1.5f * (float)(t - 32);
    CHECK(ok, "try_wait handoff: wrong values");
    // A write after the arrive is not released by it: the waiter's read of it is a race.
    expect_error("a write after the arrive, read after the wait", [&] {
        emu::launch("k_late_write", emu::dim3(1), emu::dim3(64), dyn(8192), [&] {
            uint32_t b = bar0();
            float* s = reinterpret_cast<float*>(emu::smem_at(data0(), 256, "test"));
            unsigned t = threadIdx.x;
            if (t == 0) mbar_init(b, 32);
            __syncthreads();
            if (t < 32) {
                mbar_arrive(b);
                s[t] = 1.0f;
            } else {
                mbar_try_wait(b, 0);
                out[t] = s[t - 32];
            }
        });
    }, {"racecheck: RAW hazard", "thread (32,0,0) (tid 32) reads 4 bytes there, thread (0,0,0) (tid 0) wrote it", "k_late_write"});
}

static void test_hang_and_misuse() {
    expect_error("a wait that never completes", [&] {
        emu::launch("k_hang", emu::dim3(1), emu::dim3(64), dyn(4096), [&] {
            uint32_t b = bar0();
            if (threadIdx.x == 0) mbar_init(b, 2);
            __syncthreads();
            if (threadIdx.x == 0) mbar_arrive(b);  // one arrival of the two expected
            mbar_try_wait(b, 0);
        });
    }, {"deadlock", "kernel `k_hang`", "threads 0-63 wait in mbarrier.try_wait.parity 0 on the mbarrier at shared 0x400 (phase 0 in progress: 1 of 2 arrivals and 0 transaction bytes pending)"});
    expect_error("mbarrier.init count 0", [&] {
        emu::launch("k_init0", emu::dim3(1), emu::dim3(1), dyn(4096), [&] { mbar_init(bar0(), 0); });
    }, {"mbarrier.init: count 0 outside 1..2^20-1"});
    expect_error("an arrive on a barrier never initialised", [&] {
        emu::launch("k_noinit", emu::dim3(1), emu::dim3(1), dyn(4096), [&] { mbar_arrive(bar0() + 8); });
    }, {"mbarrier.arrive on the mbarrier at shared 0x408, which was never initialised"});
    expect_error("more arrivals than the count", [&] {
        emu::launch("k_over", emu::dim3(1), emu::dim3(1), dyn(4096), [&] {
            uint32_t b = bar0();
            mbar_init(b, 1);
            mbar_arrive_expect_tx(b, 16);  // tx pending: the phase stays open with 0 arrivals left
            mbar_arrive(b);
        });
    }, {"no arrival pending in phase 0"});
    expect_error("an arrive with no barrier between init and use", [&] {
        emu::launch("k_nosync", emu::dim3(1), emu::dim3(64), dyn(4096), [&] {
            uint32_t b = bar0();
            if (threadIdx.x == 0) mbar_init(b, 64);
            else mbar_arrive(b);
        });
    }, {"racecheck: RAW hazard at shared 0x400", "reads 8 bytes there, thread (0,0,0) (tid 0) wrote it"});
    expect_error("a misaligned barrier", [&] {
        emu::launch("k_mis", emu::dim3(1), emu::dim3(1), dyn(4096), [&] { mbar_init(bar0() + 4, 1); });
    }, {"not 8-byte aligned"});
}

// ---------------------------------------------------------------------------------------------
// cuTensorMapEncodeTiled argument checks (Driver API requirements).

struct Map {
    alignas(64) unsigned char bytes[128];
};
static CUresult encode(Map& m, int dtype, void* g, uint64_t cols, uint64_t rows, uint64_t stride, uint32_t b0, uint32_t b1, int swz, uint32_t rank = 2, uint32_t es = 1) {
    uint64_t dims[2] = {cols, rows}, strides[1] = {stride};
    uint32_t box[2] = {b0, b1}, el[2] = {es, es};
    return cuTensorMapEncodeTiled(m.bytes, dtype, rank, g, dims, strides, box, el, 0, swz, 2, 0);
}
static void test_encode() {
    alignas(16) static uint16_t g[64 * 64];
    Map m;
    const int BF16 = 9, F32 = 7;
    CHECK(encode(m, BF16, g, 64, 64, 128, 64, 8, 3) == 0, "a valid bf16 128B map");
    CHECK(encode(m, F32, g, 32, 64, 128, 32, 8, 3) == 0, "a valid f32 128B map");
    CHECK(encode(m, BF16, reinterpret_cast<char*>(g) + 8, 64, 64, 128, 64, 8, 3) == 1, "globalAddress not 16-byte aligned");
    CHECK(encode(m, BF16, g, 60, 64, 120, 64, 8, 0) == 1, "stride not a multiple of 16");
    CHECK(encode(m, BF16, g, 64, 64, 112, 8, 8, 0) == 1, "stride below a row");
    CHECK(encode(m, BF16, g, 64, 64, 128, 40, 8, 2) == 1, "box inner 80 bytes > 64B swizzle span");
    CHECK(encode(m, BF16, g, 64, 64, 128, 32, 8, 1) == 1, "box inner 64 bytes > 32B swizzle span");
    CHECK(encode(m, BF16, g, 64, 64, 128, 4, 8, 0) == 1, "box inner 8 bytes, not a multiple of 16");
    CHECK(encode(m, BF16, g, 64, 64, 128, 8, 257, 0) == 1, "box dim above 256");
    CHECK(encode(m, BF16, g, 0, 64, 128, 8, 8, 0) == 1, "global dim 0");
    CHECK(encode(m, BF16, g, 64, 64, 128, 8, 8, 0, 2, 9) == 1, "element stride 9");
    CHECK(encode(m, BF16, g, 64, 64, 128, 8, 8, 0, 3) == 801, "rank 3: not supported by the emulator");
    CHECK(encode(m, 13, g, 64, 64, 128, 8, 8, 0) == 1, "unknown data type");
}

// ---------------------------------------------------------------------------------------------
// TMA box copies. The global tensor: rows x cols u16 (bf16-sized) elements, row pitch `pitch`
// elements, value = 1 + row * 256 + col (never 0, so the zero fill shows).

static uint16_t gval(int r, int c) { return (uint16_t)(1 + r * 256 + c); }

// The expected shared bytes of a box, from the PTX/CUDA description: element (r, e) of the box
// at linear byte L = (r * box0 + e) * 2 from the destination; the swizzle moves its 16-byte chunk
// within its 128-byte segment to chunk (chunk XOR (segment index mod span/16)), span = 32/64/128.
static std::vector<uint16_t> expected_box(int rows, int cols, int c0, int c1, int box0, int box1, int swz) {
    std::vector<uint16_t> s((size_t)box0 * box1, 0xDEAD);
    for (int r = 0; r < box1; r++)
        for (int e = 0; e < box0; e++) {
            int y = c1 + r, x = c0 + e;
            uint16_t v = (y >= 0 && y < rows && x >= 0 && x < cols) ? gval(y, x) : 0;
            unsigned L = (unsigned)(r * box0 + e) * 2, seg = L / 128, chunk = (L / 16) % 8;
            if (swz) chunk ^= seg % ((16u << swz) / 16);
            s[(seg * 128 + chunk * 16 + L % 16) / 2] = v;
        }
    return s;
}

// One producer (thread 0) issues the box; every thread waits, then thread 0 copies the shared
// bytes out. Returns the shared bytes and whether the phase completed.
static std::vector<uint16_t> run_box(const char* name, int rows, int cols, int pitch, int c0, int c1, int box0, int box1, int swz, uint32_t expect_bytes) {
    std::vector<uint16_t> g((size_t)rows * pitch + 8);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < pitch; c++) g[(size_t)r * pitch + c] = c < cols ? gval(r, c) : 0xBEEF;
    Map m;
    CUresult rc = encode(m, 9, g.data(), (uint64_t)cols, (uint64_t)rows, (uint64_t)pitch * 2, (uint32_t)box0, (uint32_t)box1, swz);
    CHECK(rc == 0, "%s: encode failed (%d)", name, rc);
    std::vector<uint16_t> out((size_t)box0 * box1);
    emu::launch(name, emu::dim3(1), emu::dim3(32), dyn(64 * 1024), [&] {
        uint32_t b = bar0(), d = data0();
        if (threadIdx.x == 0) mbar_init(b, 1);
        __syncthreads();
        if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(b, expect_bytes);
            emu::tma_load_2d(d, m.bytes, c0, c1, b);
        }
        mbar_try_wait(b, 0);
        if (threadIdx.x == 0) {
            const uint16_t* s = reinterpret_cast<const uint16_t*>(emu::smem_at(d, out.size() * 2, "test"));
            for (size_t i = 0; i < out.size(); i++) out[i] = s[i];
        }
    });
    return out;
}

static void test_tma_boxes() {
    struct Case {
        const char* name;
        int swz, box0, box1, c0, c1;
    };
    // 50 x 100 elements (pitch 104: 208-byte rows); boxes over the right and bottom edges, inside,
    // and over the left/top edges (negative coordinates).
    const int rows = 50, cols = 100, pitch = 104;
    const Case cases[] = {
        {"tma_none_inside", 0, 24, 5, 8, 3},       {"tma_none_right_bottom", 0, 24, 6, 88, 47},
        {"tma_32b_right_bottom", 1, 16, 9, 92, 44}, {"tma_64b_inside", 2, 32, 12, 16, 10},
        {"tma_64b_right_bottom", 2, 32, 12, 80, 45}, {"tma_128b_inside", 3, 64, 16, 8, 2},
        {"tma_128b_right_bottom", 3, 64, 16, 64, 40}, {"tma_128b_left_top", 3, 64, 8, -8, -3},
    };
    for (const Case& c : cases) {
        uint32_t bytes = (uint32_t)(c.box0 * c.box1 * 2);  // the full box, out-of-bounds bytes included
        std::vector<uint16_t> got = run_box(c.name, rows, cols, pitch, c.c0, c.c1, c.box0, c.box1, c.swz, bytes);
        std::vector<uint16_t> want = expected_box(rows, cols, c.c0, c.c1, c.box0, c.box1, c.swz);
        size_t bad = 0;
        for (size_t i = 0; i < got.size(); i++) bad += got[i] != want[i];
        CHECK(bad == 0, "%s: %zu of %zu shared elements differ from the swizzled layout", c.name, bad, got.size());
    }
    // Literal spot checks of the 128-byte swizzle (64 bf16 columns per row, rows of 128 bytes): box
    // row 1's columns 0..7 (chunk 0) land in chunk 1 of its row; row 3's columns 16..23 (chunk 2)
    // in chunk 2^3 = 1; row 7's chunk 7 in chunk 0; row 8 repeats row 0 (no change).
    {
        std::vector<uint16_t> s = run_box("tma_128b_literal", 50, 100, 104, 0, 0, 64, 9, 3, 64 * 9 * 2);
        CHECK(s[64 * 1 + 8] == gval(1, 0), "128B: row 1 chunk 0 -> chunk 1");
        CHECK(s[64 * 3 + 8] == gval(3, 16), "128B: row 3 chunk 2 -> chunk 1");
        CHECK(s[64 * 7 + 0] == gval(7, 56), "128B: row 7 chunk 7 -> chunk 0");
        CHECK(s[64 * 8 + 8] == gval(8, 8), "128B: row 8 chunk 1 stays");
    }
    // Transaction bytes: a box half out of bounds still completes its full size; expecting only
    // the in-bounds bytes leaves tx at -(the rest) and the phase never completes.
    expect_error("expect_tx of only the in-bounds bytes", [&] {
        run_box("tma_tx_short", rows, cols, pitch, 96, 0, 8, 2, 0, 2 * 4 * 2);
    }, {"deadlock", "kernel `tma_tx_short`", "phase 0 in progress: 0 of 1 arrivals and -16 transaction bytes pending"});
}

// A read of the destination before the wait is reported; so is a box to a misaligned address.
static void test_tma_pending() {
    alignas(16) static uint16_t g[16 * 64];
    for (int i = 0; i < 16 * 64; i++) g[i] = (uint16_t)i;
    Map m;
    CHECK(encode(m, 9, g, 64, 16, 128, 64, 4, 3) == 0, "encode");
    expect_error("a read of a TMA destination before the wait", [&] {
        emu::launch("k_early", emu::dim3(1), emu::dim3(1), dyn(16384), [&] {
            uint32_t b = bar0(), d = data0();
            mbar_init(b, 1);
            mbar_arrive_expect_tx(b, 512);
            emu::tma_load_2d(d, m.bytes, 0, 0, b);
            volatile uint16_t* s = reinterpret_cast<uint16_t*>(emu::smem_at(d, 512, "test"));
            (void)s[3];
        });
    }, {"initcheck", "not yet waited for", "k_early"});
    expect_error("a TMA destination not 128-byte aligned", [&] {
        emu::launch("k_align", emu::dim3(1), emu::dim3(1), dyn(16384), [&] {
            uint32_t b = bar0();
            mbar_init(b, 1);
            emu::tma_load_2d(data0() + 64, m.bytes, 0, 0, b);
        });
    }, {"not 128-byte aligned"});
}

// ---------------------------------------------------------------------------------------------
// Planted bug: the wrong mbarrier parity. A consumer that waits for parity 1 on a fresh barrier
// passes at once (the phase before phase 0 counts as complete) and reads the TMA destination
// while it is pending: caught as a read of pending bytes. A consumer that waits for parity 1
// after phase 0 (the only one) completed waits for phase 1 forever: caught as a hang.
static void test_wrong_parity() {
    alignas(16) static uint16_t g[16 * 64];
    for (int i = 0; i < 16 * 64; i++) g[i] = (uint16_t)(i + 1);
    Map m;
    CHECK(encode(m, 9, g, 64, 16, 128, 64, 8, 3) == 0, "encode");
    auto kernel = [&](uint32_t first_parity, uint32_t second_parity) {
        uint32_t b = bar0(), d = data0();
        if (threadIdx.x == 0) {  // producer: init, then the copy of phase 0
            mbar_init(b, 1);
            mbar_arrive_expect_tx(b, 1024);
            emu::tma_load_2d(d, m.bytes, 0, 0, b);
        }
        __syncthreads();
        if (threadIdx.x != 0) {  // consumers
            mbar_try_wait(b, first_parity);
            volatile uint16_t* s = reinterpret_cast<uint16_t*>(emu::smem_at(d, 1024, "test"));
            (void)s[threadIdx.x];
            mbar_try_wait(b, second_parity);
        }
    };
    // Correct parities: phase 0 has parity 0; waiting on it again returns at once.
    emu::launch("k_parity_ok", emu::dim3(1), emu::dim3(64), dyn(16384), [&] { kernel(0, 0); });
    CHECK(true, "correct parity runs");
    expect_error("wrong parity passes too early", [&] {
        emu::launch("k_parity_early", emu::dim3(1), emu::dim3(64), dyn(16384), [&] { kernel(1, 0); });
    }, {"initcheck", "is the destination of a cp.async by thread (0,0,0) (tid 0) not yet waited for", "k_parity_early"});
    expect_error("wrong parity hangs", [&] {
        emu::launch("k_parity_hang", emu::dim3(1), emu::dim3(64), dyn(16384), [&] { kernel(0, 1); });
    }, {"deadlock in kernel `k_parity_hang`", "threads 1-63 wait in mbarrier.try_wait.parity 1 on the mbarrier at shared 0x400 (phase 1 in progress: 1 of 1 arrivals and 0 transaction bytes pending)", "threads 0 exited"});
}

// A one-stage TMA pipeline (the pattern of PTX's producer/consumer examples): the producer waits
// on `empty` before refilling the stage, consumers wait on `full`, read, and arrive on `empty`.
// The mbarrier edges order every access: no report, and each round's values arrive.
static void test_pipeline() {
    alignas(16) static uint16_t g[64 * 64];
    for (int i = 0; i < 64 * 64; i++) g[i] = (uint16_t)(i + 1);
    Map m;
    CHECK(encode(m, 9, g, 64, 64, 128, 64, 8, 3) == 0, "encode");
    const int rounds = 6;
    std::vector<int> bad(33, 0);
    emu::launch("k_pipeline", emu::dim3(1), emu::dim3(33), dyn(16384), [&] {
        uint32_t full = bar0(), empty = bar0() + 8, d = data0();
        unsigned t = threadIdx.x;
        if (t == 0) mbar_init(full, 1), mbar_init(empty, 32), emu::fence_mbarrier_init();
        __syncthreads();
        for (int r = 0; r < rounds; r++) {
            if (t == 32) {  // producer
                if (r > 0) mbar_try_wait(empty, (uint32_t)(r - 1) & 1u);
                mbar_arrive_expect_tx(full, 1024);
                emu::tma_load_2d(d, m.bytes, 0, 8 * r, full);
            } else {  // consumers: row t % 8, columns (t / 8) * 16 + 0..15, through the 128B swizzle
                mbar_try_wait(full, (uint32_t)r & 1u);
                const uint16_t* s = reinterpret_cast<const uint16_t*>(emu::smem_at(d, 1024, "test"));
                unsigned row = t % 8;
                for (unsigned c = (t / 8) * 16; c < (t / 8) * 16 + 16; c++) {
                    unsigned L = row * 128 + c * 2, a = (L & ~0x70u) | ((((L >> 4) & 7u) ^ (row & 7u)) << 4);
                    bad[t] += s[a / 2] != g[(8 * r + row) * 64 + c];
                }
                mbar_arrive(empty);
            }
        }
    });
    int nbad = 0;
    for (int v : bad) nbad += v;
    CHECK(nbad == 0, "pipeline: %d wrong elements", nbad);
}

int main() {
    test_phases();
    test_handoff();
    test_hang_and_misuse();
    test_encode();
    test_tma_boxes();
    test_tma_pending();
    test_wrong_parity();
    test_pipeline();
    return summary("tma_test");
}
