// emu/tests/sanitize_test.cpp: the sanitizers of the emulated device (kernels/emu/sanitize.h)
// proven by planted bugs (issue #14 item 6): each small kernel below comes in a correct and a
// buggy variant (template flag BUG); the correct one must pass, the buggy one must fail its
// launch with the right report. Also: device memory (registry.h), the block thread pool.
// Built by tests/emu_sanitize.rs like the kernels (tests/emu_cxx): g++ -std=c++17 -O2
// -ffp-contract=off -fno-tree-vectorize -fsanitize=thread --param=tsan-instrument-func-entry-exit=0
// -c sanitize_test.cpp, linked without the tsan runtime: g++ -Wl,-z,defs sanitize_test.o
// sanitize.o -lboost_context. `sanitize_test off` (run with STIC_CUDA_EMU_SANITIZE=0) checks that
// the switch turns the checks off. Exit status 0 = every check passed.
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "../cuda.h"
#include "../registry.h"
#include "check.h"


// Runs f, which must not throw.
static void expect_ok(const char* what, const std::function<void()>& f) {
    try {
        f();
        std::printf("ok: %s passes\n", what);
    } catch (const emu::Error& e) {
        CHECK(false, "%s: unexpected report:\n%s", what, e.what());
    }
}
static emu::dim3 d1(unsigned x) { return emu::dim3(x); }
static std::string hexs(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    return b;
}

// Device memory holding `v`, initialised (as an HtoD copy leaves it).
template <class T>
static T* upload(const std::vector<T>& v) {
    T* p = static_cast<T*>(emu::dev_alloc(v.size() * sizeof(T)));
    std::memcpy(p, v.data(), v.size() * sizeof(T));
    emu::dev_mark_init(p, v.size() * sizeof(T));
    return p;
}

// ---------------------------------------------------------------------------------------------
// Planted bug 1: a missing __syncthreads before a tile is reused. Each block sums, per thread,
// a rotated element of every 64-float tile; the tile buffer is refilled each iteration.

template <bool BUG>
__global__ void k_tiles(const float* in, float* out, int ntiles) {
    EMU_SHARED(float[64], tile);
    unsigned t = threadIdx.x;
    float acc = 0;
    for (int i = 0; i < ntiles; i++) {
        tile[t] = in[(blockIdx.x * ntiles + i) * 64 + t];
        __syncthreads();
        acc += tile[(t + 1) % 64];
        if (!BUG) __syncthreads();  // the next iteration overwrites what others still read
    }
    out[blockIdx.x * 64 + t] = acc;
}

static void test_tile_reuse() {
    const int nb = 3, nt = 4;
    std::vector<float> h(nb * nt * 64);
    for (size_t i = 0; i < h.size(); i++) h[i] = (float)(i % 97);
    float* in = upload(h);
    float* out = static_cast<float*>(emu::dev_alloc(nb * 64 * sizeof(float)));
    expect_ok("tile reuse with __syncthreads", [&] { emu::launch("k_tiles", d1(nb), d1(64), [&] { k_tiles<false>(in, out, nt); }); });
    bool ok = true;
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < 64; t++) {
            float want = 0;
            for (int i = 0; i < nt; i++) want += h[(b * nt + i) * 64 + (t + 1) % 64];
            ok &= out[b * 64 + t] == want;
        }
    CHECK(ok, "k_tiles results");
    expect_error("missing __syncthreads before a tile is reused", [&] {
        emu::launch("k_tiles_bug", d1(nb), d1(64), [&] { k_tiles<true>(in, out, nt); });
    }, {"racecheck: WAR hazard at shared 0x", "kernel `k_tiles_bug`", "block (0,0,0)", "writes 4 bytes", "read it with no __syncthreads", "thread (63,0,0) (tid 63)"});
    emu::dev_free(in);
    emu::dev_free(out);
}

// ---------------------------------------------------------------------------------------------
// Planted bug 2: an off-by-one store past an allocation (`i <= n`), in the page slack (1000
// bytes) and onto the guard page (4096 bytes; the hook reports before the access would fault).

template <bool BUG>
__global__ void k_scale(const float* in, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (BUG ? i <= n : i < n) out[i] = 2.0f * (i < n ? in[i] : 0.0f);
}

static void test_off_by_one() {
    for (int n : {250, 1024}) {
        std::vector<float> h(n, 1.5f);
        float* in = upload(h);
        float* out = static_cast<float*>(emu::dev_alloc(n * sizeof(float)));
        unsigned nb = (n + 128) / 128;
        expect_ok("in-bounds stores", [&] { emu::launch("k_scale", d1(nb), d1(128), [&] { k_scale<false>(in, out, n); }); });
        CHECK(out[0] == 3.0f && out[n - 1] == 3.0f, "k_scale results");
        std::string where = "offset " + std::to_string(n * 4) + " of the " + std::to_string(n * 4) + "-byte allocation at " + hexs(out);
        expect_error(n == 1024 ? "off-by-one store onto the guard page" : "off-by-one store past an allocation", [&] {
            emu::launch("k_scale_bug", d1(nb), d1(128), [&] { k_scale<true>(in, out, n); });
        }, {"memcheck: out-of-bounds global write of 4 bytes at ", where, "4 bytes past its end", "kernel `k_scale_bug`", "block (" + std::to_string(n / 128) + ",0,0)", "thread (" + std::to_string(n % 128) + ",0,0)"});
        emu::dev_free(in);
        emu::dev_free(out);
    }
}

// ---------------------------------------------------------------------------------------------
// Planted bug 3: a wrong lane address for ldmatrix. A 16x16 bf16 tile (rows of 16 values, the
// buffer holds 32 rows) is written row by row, then read with ldmatrix.x4: lane l must address
// row l % 16, k-half l / 16. The bug uses row l (lanes 16-31 address rows never written); a
// second bug adds 32 rows (past the buffer: outside the block's shared memory).

template <int BUG>
__global__ void k_ldsm(uint32_t* out) {
    EMU_SHARED(uint16_t[32 * 16], S);
    unsigned l = threadIdx.x;
    for (unsigned i = l; i < 16 * 16; i += 32) S[i] = (uint16_t)i;
    __syncwarp();
    unsigned row = BUG == 1 ? l : BUG == 2 ? l + 32 : l % 16;
    uint32_t r[4];
    ldmatrix_x4(r, __cvta_generic_to_shared(&S[row * 16 + 8 * (l / 16)]));
    for (int j = 0; j < 4; j++) out[l * 4 + j] = r[j];
}

static void test_ldmatrix_address() {
    uint32_t* out = static_cast<uint32_t*>(emu::dev_alloc(32 * 4 * 4));
    expect_ok("ldmatrix with the right lane addresses", [&] { emu::launch("k_ldsm", d1(1), d1(32), [&] { k_ldsm<0>(out); }); });
    bool ok = true;  // the mma A fragment of the tile: element i of lane l at row g + 8((i>>1)&1), col 2t + (i&1) + 8(i>>2)
    for (unsigned l = 0; l < 32; l++)
        for (unsigned i = 0; i < 8; i++) {
            unsigned want = (l / 4 + 8 * ((i >> 1) & 1)) * 16 + 2 * (l % 4) + (i & 1) + 8 * (i >> 2);
            ok &= ((out[l * 4 + i / 2] >> (16 * (i & 1))) & 0xFFFFu) == want;
        }
    CHECK(ok, "k_ldsm gives the mma A fragment");
    expect_error("ldmatrix row never written (wrong lane address)", [&] {
        emu::launch("k_ldsm_bug", d1(1), d1(32), [&] { k_ldsm<1>(out); });
    }, {"ldmatrix.sync.aligned.m8n8.x4.shared.b16 at sanitize_test.cpp:", "row address of lane 16", "initcheck", "shared 0x210", "never written in this block", "kernel `k_ldsm_bug`", "thread (16,0,0) (tid 16)"});
    expect_error("ldmatrix row outside the block's shared memory", [&] {
        emu::launch("k_ldsm_bug2", d1(1), d1(32), [&] { k_ldsm<2>(out); });
    }, {"row address of lane 0", "memcheck: out-of-bounds ldmatrix", "read of 16 bytes at shared offset 0x400", "1024 bytes of static __shared__ variables", "kernel `k_ldsm_bug2`", "thread (0,0,0) (tid 0)"});
    emu::dev_free(out);
}

// ---------------------------------------------------------------------------------------------
// Planted bug 4: a read of a cp.async destination before its wait. Warp 0 copies a 512-byte
// row to shared memory (16 bytes per lane), then every thread of the block reads a piece.
// Correct: wait_group 0, __syncthreads, read. Bug 1: no wait (the read sees the pending copy).
// Bug 2: the issuers waited but the readers of warp 1 did not synchronise with them (RAW).

template <int BUG>
__global__ void k_cp(const uint4* in, uint4* out) {
    EMU_SHARED(uint4[32], S);
    unsigned t = threadIdx.x;
    if (t < 32) {
        emu::cp_async_cg_16(__cvta_generic_to_shared(&S[t]), &in[t], 16);
        emu::cp_async_commit_group();
        if (BUG != 1) emu::cp_async_wait_group(0);
    }
    if (BUG == 0) __syncthreads();
    out[t] = S[t % 32];
    if (BUG == 1 && t < 32) emu::cp_async_wait_group(0);
}

static void test_cp_async_early_read() {
    std::vector<uint4> h(32);
    for (unsigned i = 0; i < 32; i++) h[i] = uint4{i, i * 3, i * 5, i * 7};
    uint4* in = upload(h);
    uint4* out = static_cast<uint4*>(emu::dev_alloc(64 * sizeof(uint4)));
    expect_ok("cp.async read after wait_group + __syncthreads", [&] { emu::launch("k_cp", d1(1), d1(64), [&] { k_cp<0>(in, out); }); });
    bool ok = true;
    for (unsigned t = 0; t < 64; t++) ok &= out[t].x == t % 32 && out[t].w == t % 32 * 7;
    CHECK(ok, "k_cp results");
    expect_error("read of a cp.async destination before its wait", [&] {
        emu::launch("k_cp_bug", d1(1), d1(64), [&] { k_cp<1>(in, out); });
    }, {"initcheck: shared read of 16 bytes at shared 0x0", "destination of a cp.async by thread (0,0,0) (tid 0) not yet waited for", "kernel `k_cp_bug`", "thread (0,0,0) (tid 0)"});
    expect_error("read of another thread's cp.async destination without a barrier", [&] {
        emu::launch("k_cp_bug2", d1(1), d1(64), [&] { k_cp<2>(in, out); });
    }, {"racecheck: RAW hazard at shared 0x0", "thread (32,0,0) (tid 32) reads 16 bytes there, thread (0,0,0) (tid 0) wrote it"});
    // The source is a global read: outside the allocation is reported at issue.
    expect_error("cp.async source past an allocation", [&] {
        emu::launch("k_cp_src", d1(1), d1(64), [&] { k_cp<0>(in + 1, out); });
    }, {"memcheck: out-of-bounds cp.async.cg.shared.global read of 16 bytes", "offset 512 of the 512-byte allocation", "thread (31,0,0)"});
    emu::dev_free(in);
    emu::dev_free(out);
}

// ---------------------------------------------------------------------------------------------
// Planted bug 5: a barrier in divergent code: threads past n return before the __syncthreads.

template <bool BUG>
__global__ void k_reverse(const float* in, float* out, unsigned n) {
    EMU_SHARED(float[64], s);
    unsigned t = threadIdx.x;
    if (BUG && t >= n) return;
    if (t < n) s[t] = in[t];
    __syncthreads();
    if (t < n) out[t] = s[n - 1 - t];
}

static void test_divergent_barrier() {
    std::vector<float> h(40);
    for (int i = 0; i < 40; i++) h[i] = (float)i;
    float* in = upload(h);
    float* out = static_cast<float*>(emu::dev_alloc(40 * sizeof(float)));
    expect_ok("__syncthreads reached by every thread", [&] { emu::launch("k_reverse", d1(1), d1(64), [&] { k_reverse<false>(in, out, 40); }); });
    CHECK(out[0] == 39.0f && out[39] == 0.0f, "k_reverse results");
    expect_error("barrier in divergent code", [&] {
        emu::launch("k_reverse_bug", d1(1), d1(64), [&] { k_reverse<true>(in, out, 40); });
    }, {"divergent barrier", "threads 0-39 wait at __syncthreads", "kernel `k_reverse_bug`", "thread (40,0,0)"});
    emu::dev_free(in);
    emu::dev_free(out);
}

// ---------------------------------------------------------------------------------------------
// More reports: use after free, misaligned vector access, uninitialised global and shared reads,
// shared out of bounds, WAW (same value: no report), lanes of one warp without __syncwarp,
// atomics.

__global__ void k_read(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x]; }
__global__ void k_vec(const float* in, float4* out, int off) { out[threadIdx.x] = *reinterpret_cast<const float4*>(in + 4 * threadIdx.x + off); }
template <bool BUG>
__global__ void k_smem_oob(float* out) {
    EMU_SHARED(float[32], s);
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[BUG ? threadIdx.x + 1 : 31 - threadIdx.x];
}
template <bool BUG>
__global__ void k_smem_uninit(float* out) {
    EMU_SHARED(float[64], s);
    if (threadIdx.x < (BUG ? 31u : 32u)) s[2 * threadIdx.x] = s[2 * threadIdx.x + 1] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = s[63 - 2 * threadIdx.x];
}
template <bool SAME>
__global__ void k_waw(float* out) {
    EMU_SHARED(float, flag);
    flag = SAME ? 1.0f : (float)threadIdx.x;  // every thread stores, no barrier in between
    __syncthreads();
    out[threadIdx.x] = flag;
}
template <bool BUG>
__global__ void k_warp(float* out) {
    EMU_SHARED(float[64], s);
    unsigned t = threadIdx.x;
    s[t] = (float)t;
    if (!BUG) __syncwarp();
    out[t] = s[t % 32 ? t - 1 : t];  // the previous lane of the same warp
}
__global__ void k_atomics(float* sum, unsigned* cnt) {
    EMU_SHARED(unsigned, local);
    if (threadIdx.x == 0) local = 0;
    __syncthreads();
    atomicAdd(&local, 1u);
    atomicAdd(sum, 0.5f);
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(cnt, local);
}

static void test_more_reports() {
    std::vector<float> h(256, 1.0f);
    float* in = upload(h);
    float* out = static_cast<float*>(emu::dev_alloc(256 * sizeof(float)));
    expect_ok("read of initialised device memory", [&] { emu::launch("k_read", d1(1), d1(64), [&] { k_read(in, out); }); });
    float* raw = static_cast<float*>(emu::dev_alloc(256 * sizeof(float)));
    expect_error("read of device memory never written", [&] { emu::launch("k_read_uninit", d1(1), d1(64), [&] { k_read(raw, out); }); },
                 {"initcheck: global read of 4 bytes at " + hexs(raw), "offset 0 of the 1024-byte allocation", "never written", "thread (0,0,0)"});
    emu::dev_mark_init(raw, 64 * sizeof(float));
    expect_ok("dev_mark_init marks bytes written", [&] { emu::launch("k_read_marked", d1(1), d1(64), [&] { k_read(raw, out); }); });
    float4* out4 = static_cast<float4*>(emu::dev_alloc(16 * sizeof(float4)));
    expect_ok("aligned float4 loads", [&] { emu::launch("k_vec", d1(1), d1(16), [&] { k_vec(in, out4, 0); }); });
    expect_error("misaligned vector access", [&] { emu::launch("k_vec_bug", d1(1), d1(16), [&] { k_vec(in, out4, 2); }); },
                 {"memcheck: misaligned global read of 16 bytes", "offset 8 of the 1024-byte allocation", "needs 16-byte alignment", "thread (0,0,0)"});
    float* gone = upload(h);
    CHECK(emu::dev_free(gone) && !emu::dev_free(gone), "dev_free once");
    expect_error("use after free", [&] { emu::launch("k_uaf", d1(1), d1(64), [&] { k_read(gone, out); }); },
                 {"memcheck: use after free: global read of 4 bytes at " + hexs(gone), "(freed)", "kernel `k_uaf`"});
    expect_ok("shared reads in bounds", [&] { emu::launch("k_smem", d1(1), d1(32), [&] { k_smem_oob<false>(out); }); });
    expect_error("shared read past the static variables", [&] { emu::launch("k_smem_oob", d1(1), d1(32), [&] { k_smem_oob<true>(out); }); },
                 {"memcheck: out-of-bounds shared read of 4 bytes at shared offset 0x80", "128 bytes of static __shared__ variables", "thread (31,0,0)"});
    expect_ok("shared bytes all written", [&] { emu::launch("k_smem_init", d1(1), d1(32), [&] { k_smem_uninit<false>(out); }); });
    expect_error("shared read never written", [&] { emu::launch("k_smem_uninit", d1(1), d1(32), [&] { k_smem_uninit<true>(out); }); },
                 {"initcheck: shared read of 4 bytes at shared 0xfc", "never written in this block", "thread (0,0,0)"});
    expect_ok("WAW of the same value (racecheck INFO)", [&] { emu::launch("k_waw_same", d1(1), d1(64), [&] { k_waw<true>(out); }); });
    expect_error("WAW of different values", [&] { emu::launch("k_waw", d1(1), d1(64), [&] { k_waw<false>(out); }); },
                 {"racecheck: WAW hazard at shared 0x0", "thread (1,0,0) (tid 1) wrote a different value to 4 bytes there, thread (0,0,0) (tid 0) wrote it"});
    expect_ok("lanes exchanging through shared memory after __syncwarp", [&] { emu::launch("k_warp", d1(2), d1(64), [&] { k_warp<false>(out); }); });
    CHECK(out[6] == 5.0f && out[32] == 32.0f && out[63] == 62.0f, "k_warp results");
    expect_error("lanes of one warp without __syncwarp", [&] { emu::launch("k_warp_bug", d1(2), d1(64), [&] { k_warp<true>(out); }); },
                 {"racecheck: RAW hazard at shared 0x0", "thread (1,0,0) (tid 1) reads 4 bytes there, thread (0,0,0) (tid 0) wrote it", "block (0,0,0)"});
    float* sum = upload(std::vector<float>{0.0f});
    unsigned* cnt = upload(std::vector<unsigned>{0u});
    expect_ok("atomics on shared and global memory", [&] { emu::launch("k_atomics", d1(8), d1(128), [&] { k_atomics(sum, cnt); }); });
    CHECK(*sum == 512.0f && *cnt == 1024, "atomics: %g %u", *sum, *cnt);
    unsigned* ucnt = static_cast<unsigned*>(emu::dev_alloc(4));
    expect_error("atomic on device memory never written", [&] { emu::launch("k_atomics_uninit", d1(1), d1(32), [&] { k_atomics(sum, ucnt); }); },
                 {"initcheck: global atomic of 4 bytes at " + hexs(ucnt), "thread (0,0,0)"});
    for (void* p : {(void*)in, (void*)out, (void*)raw, (void*)out4, (void*)sum, (void*)cnt, (void*)ucnt}) emu::dev_free(p);
}

// ---------------------------------------------------------------------------------------------
// Device memory (registry.h) and the block thread pool.

__global__ void k_sum_rows(const float* in, float* out, int n) {
    EMU_SHARED(float[128], part);
    unsigned t = threadIdx.x;
    float acc = 0;
    for (int i = (int)t; i < n; i += 128) acc += in[blockIdx.x * n + i];
    part[t] = acc;
    __syncthreads();
    for (unsigned s = 64; s > 0; s >>= 1) {
        if (t < s) part[t] += part[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = part[0];
}

static void test_device_memory_and_pool() {
    size_t used0 = emu::dev_used_bytes();
    char* a = static_cast<char*>(emu::dev_alloc(1000));
    char* z = static_cast<char*>(emu::dev_alloc(0));
    char* b = static_cast<char*>(emu::dev_alloc(5000));
    CHECK(a && z && b && z != a && z != b && (uintptr_t)a % 256 == 0 && (uintptr_t)b % 256 == 0, "dev_alloc: distinct, 256-byte aligned");
    CHECK(emu::dev_used_bytes() == used0 + 6000 && emu::dev_peak_bytes() >= used0 + 6000, "dev_used_bytes");
    void* base = nullptr;
    size_t size = 0;
    CHECK(emu::dev_find(a + 10, 990, &base, &size) && base == a && size == 1000 && !emu::dev_find(a + 10, 991, &base, &size), "dev_find");
    CHECK(emu::dev_is_device(a) && !emu::dev_is_device(&size) && !emu::dev_free(a + 1) && !emu::dev_free(&size), "dev_is_device / dev_free of a non-start");
    std::string r = emu::dev_check(a + 996, 8, false, false, "cuMemcpyDtoH");
    CHECK(r.find("memcheck: out-of-bounds cuMemcpyDtoH read of 8 bytes") != std::string::npos && r.find("offset 996 of the 1000-byte allocation") != std::string::npos, "dev_check bounds: %s", r.c_str());
    CHECK(emu::dev_check(a, 16, true, false, "cuMemsetD8").empty(), "dev_check write");
    r = emu::dev_check(a, 16, false, true, "cuMemcpyDtoH");
    CHECK(r.find("initcheck") != std::string::npos, "dev_check init: %s", r.c_str());
    emu::dev_mark_init(a, 16);
    CHECK(emu::dev_check(a, 16, false, true, "cuMemcpyDtoH").empty(), "dev_mark_init");
    emu::dev_copy_init(b, a, 16);
    CHECK(emu::dev_check(b, 16, false, true, "x").empty() && !emu::dev_check(b, 17, false, true, "x").empty(), "dev_copy_init carries the shadow");
    CHECK(!emu::dev_check(z, 1, false, false, "x").empty(), "a 0-byte allocation holds no byte");
    for (char* p : {a, z, b}) CHECK(emu::dev_free(p), "dev_free");
    CHECK(emu::dev_used_bytes() == used0 && !emu::dev_check(a, 1, false, false, "x").empty(), "freed memory is no longer usable");
    // Many blocks on the pool: every block's sum, then the lowest failing block's report.
    const int nb = 64, n = 1000;
    std::vector<float> h(nb * n);
    for (size_t i = 0; i < h.size(); i++) h[i] = (float)(i % 7);
    float* in = upload(h);
    float* out = static_cast<float*>(emu::dev_alloc(nb * sizeof(float)));
    expect_ok("64 blocks on the thread pool", [&] { emu::launch("k_sum_rows", d1(nb), d1(128), [&] { k_sum_rows(in, out, n); }); });
    bool ok = true;
    for (int blk = 0; blk < nb; blk++) {
        double want = 0;
        for (int i = 0; i < n; i++) want += h[blk * n + i];
        ok &= out[blk] == (float)want;
    }
    CHECK(ok, "k_sum_rows results on %u OS threads", emu::emu_threads());
    expect_error("the lowest failing block is reported", [&] {
        emu::launch("k_sum_rows_bug", d1(nb), d1(128), [&] { k_sum_rows(in + (blockIdx.x >= 37 ? (nb - blockIdx.x) * n : 0), out, n); });
    }, {"memcheck: out-of-bounds global read", "block (37,0,0)"});
    emu::dev_free(in);
    emu::dev_free(out);
}

// With STIC_CUDA_EMU_SANITIZE=0: the planted bugs run without a report.
static void test_off() {
    CHECK(!emu::san_on(), "STIC_CUDA_EMU_SANITIZE=0 turns the sanitizer off");
    float* in = upload(std::vector<float>(64, 1.0f));
    float* out = static_cast<float*>(emu::dev_alloc(64 * sizeof(float)));
    expect_ok("missing __syncthreads, sanitizer off", [&] { emu::launch("k_tiles_bug", d1(1), d1(64), [&] { k_tiles<true>(in, out, 1); }); });
    expect_ok("off-by-one store, sanitizer off", [&] { emu::launch("k_scale_bug", d1(1), d1(64), [&] { k_scale<true>(in, out, 63); }); });
}

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "off") {
        test_off();
    } else {
        CHECK(emu::san_on(), "the sanitizer is on by default");
        test_tile_reuse();
        test_off_by_one();
        test_ldmatrix_address();
        test_cp_async_early_read();
        test_divergent_barrier();
        test_more_reports();
        test_device_memory_and_pool();
    }
    return summary("sanitize_test");
}
