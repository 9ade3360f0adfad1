// emu/tests/kernels_smoke.cpp: the project's own kernels run on the emulated device through the
// generated registry (build.rs, build/emu.rs): the trampolines read cuLaunchKernel-style
// `void** params`, launch, and the results match plain C++ loops (add, rmsnorm; attention_fwd_d64,
// i.e. ptx.cuh's mma.sync/ldmatrix/cp.async adapters, against attention in double). Also checks the registry's
// shape (every module, the Hopper kernels listed as not runnable with a reason) and that a
// module's image hash is the FNV-1a-64 of its fatbin.
//
// Run by tests/emu_kernels.rs (feature `cuda`): g++ -std=c++17 -O2 -ffp-contract=off
// kernels_smoke.cpp $OUT_DIR/emu/{every kernel object, registry.o, sanitize.o} -lboost_context,
// then `./kernels_smoke $OUT_DIR/kernels`. Exit status 0 = every check passed.
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../registry.h"
#include "../runtime.h"
#include "check.h"


// bf16 with round-to-nearest-even, as common.cuh (f32_to_bf16_bits_rne, no NaNs here).
static uint16_t bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t up = ((x & 0x8000u) != 0u) && ((x & 0x17FFFu) != 0u);
    return (uint16_t)((x >> 16) + up);
}
static float f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

// Device memory holding `v` (marked initialised, as an HtoD copy does).
template <class T>
static T* to_dev(const std::vector<T>& v) {
    T* p = static_cast<T*>(emu::dev_alloc(v.size() * sizeof(T)));
    std::memcpy(p, v.data(), v.size() * sizeof(T));
    emu::dev_mark_init(p, v.size() * sizeof(T));
    return p;
}

static const emu::ModuleInfo* find_module(const char* name) {
    size_t n = 0;
    const emu::ModuleInfo* m = emu::registry(&n);
    for (size_t i = 0; i < n; i++)
        if (std::strcmp(m[i].name, name) == 0) return &m[i];
    return nullptr;
}
static const emu::KernelInfo* find_kernel(const char* module, const char* name) {
    const emu::ModuleInfo* m = find_module(module);
    for (size_t i = 0; m && i < m->n_kernels; i++)
        if (std::strcmp(m->kernels[i].name, name) == 0) return &m->kernels[i];
    return nullptr;
}

// Launches `k` as cuLaunchKernel would; returns the error text ("" when it ran).
static std::string launch(const emu::KernelInfo* k, std::vector<void*> params, unsigned grid, unsigned block, size_t dyn = 0) {
    emu::LaunchCfg cfg{{grid, 1, 1}, {block, 1, 1}, dyn, 0};
    try {
        k->run(k->name, params.data(), cfg, k->static_smem);
        return "";
    } catch (const std::exception& e) {
        return e.what();
    }
}

static void registry_shape(const std::string& fatbins) {
    size_t n = 0;
    const emu::ModuleInfo* m = emu::registry(&n);
    CHECK(n >= 17, "registry has %zu modules", n);
    for (size_t i = 0; i < n; i++) {
        CHECK(i == 0 || std::strcmp(m[i - 1].name, m[i].name) < 0, "modules not in file-name order at %s", m[i].name);
        CHECK(m[i].n_kernels > 0, "module %s has no kernels", m[i].name);
        bool hopper = std::strcmp(m[i].name, "attention_hopper") == 0;
        for (size_t j = 0; j < m[i].n_kernels; j++) {
            const emu::KernelInfo& k = m[i].kernels[j];
            CHECK(k.run != nullptr && k.why_not == nullptr, "%s.%s: not runnable", m[i].name, k.name);
            CHECK(k.min_arch == (hopper ? 90u : 80u), "%s.%s: min_arch %u", m[i].name, k.name, k.min_arch);
            CHECK(!hopper || k.regs == 168, "%s: %u registers at entry (sm_90a), the kernel's setmaxnreg budget assumes 168", k.name, k.regs);
            CHECK(k.max_threads >= 32 && k.max_threads <= 1024, "%s: max_threads %u", k.name, k.max_threads);
        }
        std::ifstream f(fatbins + "/" + m[i].name + ".fatbin", std::ios::binary);
        std::vector<char> img((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        CHECK(img.size() == m[i].image_len, "%s: fatbin is %zu bytes, registry says %llu", m[i].name, img.size(), (unsigned long long)m[i].image_len);
        CHECK(emu::fnv1a64(img.data(), img.size()) == m[i].image_hash, "%s: image hash differs", m[i].name);
    }
    const emu::KernelInfo* at = find_kernel("attention", "attention");
    CHECK(at && at->static_smem == 39520 && at->max_threads == 128, "attention: static_smem %u max_threads %u (ptxas says 39520, __launch_bounds__(ATTN_THREADS = 128))", at ? at->static_smem : 0, at ? at->max_threads : 0);
    const emu::KernelInfo* add = find_kernel("add", "add");
    CHECK(add && add->max_threads == 1024 && add->regs > 0, "add: max_threads %u regs %u", add ? add->max_threads : 0, add ? add->regs : 0);
}

// add(x: u16[n] in place, y: u16[period], n: u64, period: u64): x[i] = bf16(x[i] + y[i % period]).
static void add_kernel() {
    const unsigned long long n = 1000, period = 96;
    std::vector<uint16_t> x(n), y(period);
    for (size_t i = 0; i < n; i++) x[i] = bf16(std::sin(0.1f * (float)i) * 3.0f);
    for (size_t i = 0; i < period; i++) y[i] = bf16(0.25f * (float)i - 7.0f);
    uint16_t* dx = to_dev(x);
    uint16_t* dy = to_dev(y);
    std::string err = launch(find_kernel("add", "add"), {&dx, &dy, (void*)&n, (void*)&period}, 3, 128);  // grid-stride: 384 threads for 1000
    CHECK(err.empty(), "add failed: %s", err.c_str());
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += dx[i] != bf16(f32(x[i]) + f32(y[i % period]));
    CHECK(bad == 0, "add: %d of %llu elements differ", bad, n);
    emu::dev_free(dx);
    emu::dev_free(dy);
}

// rmsnorm(x: u16[T, C], w: u16[C], y: u16[T, C], C: u32, eps: f32), grid T, block B: the vector
// path (C % 8 == 0) and the scalar one; the f32 sum order differs from this loop's, so the
// result may differ by one bf16 rounding.
static void rmsnorm_kernel(unsigned C, unsigned B) {
    const unsigned T = 5;
    const float eps = 1e-5f;
    std::vector<uint16_t> x((size_t)T * C), w(C), y((size_t)T * C, 0);
    for (size_t i = 0; i < x.size(); i++) x[i] = bf16(std::cos(0.37f * (float)i) * 2.0f + 0.1f);
    for (size_t i = 0; i < C; i++) w[i] = bf16(1.0f + 0.01f * (float)i);
    uint16_t* dx = to_dev(x);
    uint16_t* dw = to_dev(w);
    uint16_t* dy = to_dev(y);
    std::string err = launch(find_kernel("rmsnorm", "rmsnorm"), {&dx, &dw, &dy, &C, (void*)&eps}, T, B);
    CHECK(err.empty(), "rmsnorm C=%u failed: %s", C, err.c_str());
    int bad = 0;
    for (unsigned t = 0; t < T; t++) {
        double ss = 0;
        for (unsigned c = 0; c < C; c++) ss += (double)f32(x[t * C + c]) * f32(x[t * C + c]);
        double inv = 1.0 / std::sqrt(ss / C + eps);
        for (unsigned c = 0; c < C; c++) {
            double want = f32(w[c]) * (f32(x[t * C + c]) * inv);
            double got = f32(dy[t * C + c]);
            if (std::fabs(got - want) > std::fabs(want) * (1.0 / 128) + 1e-30) bad++;
        }
    }
    CHECK(bad == 0, "rmsnorm C=%u B=%u: %d elements beyond one bf16 ulp", C, B, bad);
    emu::dev_free(dx);
    emu::dev_free(dw);
    emu::dev_free(dy);
}

// attention_fwd_d64 (attention_train.cu: FlashAttention-2 on mma.sync/ldmatrix/cp.async, i.e.
// ptx.cuh's adapters): one causal sequence of T = 80 rows (a full and a ragged 64-row tile), H = 2
// query heads on Hkv = 1 (GQA), against softmax attention in double on the same bf16 inputs. P is
// rounded to bf16 before P V, so out may differ by about 2^-8 of max|v|.
static void attention_fwd_kernel() {
    const unsigned T = 80, H = 2, Hkv = 1, D = 64, causal = 1, window = 0, has_sp = 0;
    const float scale = 0.125f;
    std::vector<uint16_t> q((size_t)T * H * D), k((size_t)T * Hkv * D), v((size_t)T * Hkv * D), out((size_t)T * H * D, 0);
    for (size_t i = 0; i < q.size(); i++) q[i] = bf16(std::sin(0.731f * (float)i) * 1.5f);
    for (size_t i = 0; i < k.size(); i++) k[i] = bf16(std::cos(0.417f * (float)i) * 1.5f);
    for (size_t i = 0; i < v.size(); i++) v[i] = bf16(std::sin(0.193f * (float)i + 1.0f));
    std::vector<uint32_t> cu = {0, T}, sp = {0, 0};
    std::vector<float> lse((size_t)H * T, 0.0f);
    uint16_t *dq = to_dev(q), *dk = to_dev(k), *dv = to_dev(v), *dout = to_dev(out);
    uint32_t *dcu = to_dev(cu), *dsp = to_dev(sp);
    float* dlse = to_dev(lse);
    const emu::KernelInfo* kern = find_kernel("attention_train", "attention_fwd_d64");
    std::vector<void*> params = {&dq, &dk, &dv, &dcu, &dsp, &dout, &dlse, (void*)&T, (void*)&H, (void*)&Hkv, (void*)&causal, (void*)&window, (void*)&has_sp, (void*)&scale};
    emu::LaunchCfg cfg{{(T + 63) / 64, H, 1}, {128, 1, 1}, 320 * (D + 8) * 2, 0};
    std::string err;
    try {
        kern->run(kern->name, params.data(), cfg, kern->static_smem);
    } catch (const std::exception& e) {
        err = e.what();
    }
    CHECK(err.empty(), "attention_fwd_d64 failed: %s", err.c_str());
    double worst_o = 0, worst_l = 0;
    for (unsigned h = 0; h < H; h++)
        for (unsigned i = 0; i < T; i++) {
            std::vector<double> s(i + 1);
            double m = -1e300, l = 0;
            for (unsigned j = 0; j <= i; j++) {
                double d = 0;
                for (unsigned c = 0; c < D; c++) d += (double)f32(q[((size_t)i * H + h) * D + c]) * f32(k[(size_t)j * D + c]);
                s[j] = d * scale;
                m = std::max(m, s[j]);
            }
            for (unsigned j = 0; j <= i; j++) l += std::exp(s[j] - m);
            worst_l = std::max(worst_l, std::fabs(dlse[(size_t)h * T + i] - (m + std::log(l))));
            for (unsigned c = 0; c < D; c++) {
                double o = 0;
                for (unsigned j = 0; j <= i; j++) o += std::exp(s[j] - m) / l * f32(v[(size_t)j * D + c]);
                worst_o = std::max(worst_o, std::fabs(f32(dout[((size_t)i * H + h) * D + c]) - o));
            }
        }
    CHECK(worst_o < 1.5e-2 && worst_l < 1e-3, "attention_fwd_d64: max |out - ref| %.3g, max |lse - ref| %.3g", worst_o, worst_l);
    std::printf("attention_fwd_d64: max |out - ref| %.3g, max |lse - ref| %.3g\n", worst_o, worst_l);
    for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)dout, (void*)dcu, (void*)dsp, (void*)dlse}) emu::dev_free(p);
}

// A launch the emulator refuses must come back as an error naming the kernel.
static void refused_launch() {
    uint16_t* d = static_cast<uint16_t*>(emu::dev_alloc(64));
    unsigned long long n = 0, period = 1;
    std::string err = launch(find_kernel("add", "add"), {&d, &d, &n, &period}, 1, 2048);
    CHECK(err.find("`add`") != std::string::npos, "an oversized block was not refused with the kernel's name: \"%s\"", err.c_str());
    emu::dev_free(d);
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s $OUT_DIR/kernels\n", argv[0]);
        return 2;
    }
    registry_shape(argv[1]);
    add_kernel();
    rmsnorm_kernel(256, 64);  // vector path, several loads per thread
    rmsnorm_kernel(37, 64);   // scalar path, idle threads
    attention_fwd_kernel();
    refused_launch();
    return summary("kernels_smoke");
}
