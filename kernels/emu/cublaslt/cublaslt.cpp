// emu/cublaslt/cublaslt.cpp: the emulated libcublasLt (SONAME libcublasLt.so): the subset
// src/backend/cuda/matmul.rs calls (reference section 7), on a CPU GEMM.
//
//   D = epilogue(alpha * op(A) op(B) + beta * C), every matrix column-major: element (i, j) of a
//   layout (type, rows, cols, ld) is p[i + j * ld]. op(A) is R x K, op(B) K x C, C and D R x C
//   (D's layout gives R and C; C may be D itself). TRANSA/TRANSB: 0 = N, 1 = T. EPILOGUE BIAS (4)
//   adds bias[i] to every column, bias typed by BIAS_DATA_TYPE (default: D's type).
//   Types: bf16 (CUDA_R_16BF = 14) or f32 (CUDA_R_32F = 0) matrices; compute COMPUTE_32F (68),
//   scale f32. Numerics (cuBLAS leaves its order unspecified), modelled on a tensor-core GEMM
//   as sm80.h models mma.sync: the f32 accumulator of each element takes the exact products of
//   one k16 block at a time (summed in double, in k order) and is rounded to f32 once per block;
//   then alpha, beta*C and the bias in f32, rounded once to D's type (bf16: round to nearest
//   even). A plain k-order f32 sum would carry 16x as many roundings as the hardware's.
//   The heuristic returns one algorithm that records the preference's minimum alignments;
//   cublasLtMatmul refuses pointers less aligned than that (the real library's kernels would
//   fault or read wrongly), checks every operand against the live device allocations (and that
//   A, B, the bias and, when beta != 0, C were written), and marks D written.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../registry.h"

#define EMU_API extern "C" __attribute__((visibility("default")))

typedef int cublasStatus_t;
enum : cublasStatus_t { ST_SUCCESS = 0, ST_NOT_INITIALIZED = 1, ST_INVALID_VALUE = 7, ST_EXECUTION_FAILED = 13, ST_NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16BF = 14 };

struct EmuLtHandle {
    int magic = 0x4c54;
};
struct EmuLayout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int order = 0;  // CUBLASLT_ORDER_COL
    int batch = 1;
};
struct EmuMatmulDesc {
    int compute, scale;
    int32_t transa = 0, transb = 0;
    uint32_t epilogue = 1;  // CUBLASLT_EPILOGUE_DEFAULT
    uint64_t bias = 0;
    int32_t bias_type = -1;  // -1: D's type
};
struct EmuPref {
    uint64_t workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};
};
struct Algo {
    uint64_t data[8];
};
struct Heuristic {
    Algo algo;
    size_t workspace;
    cublasStatus_t state;
    float waves;
    int reserved[4];
};

namespace {

cublasStatus_t fail(cublasStatus_t st, const std::string& msg) {
    std::fprintf(stderr, "emu: cublasLt: %s\n", msg.c_str());
    return st;
}
size_t elem_size(int t) { return t == R_32F ? 4 : 2; }
float bf16_to_f32(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
uint16_t f32_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x >> 16) + (((x & 0x8000u) != 0) && ((x & 0x17FFFu) != 0)));
}
float load(const void* p, int t, size_t i) { return t == R_32F ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const uint16_t*>(p)[i]); }
// Bytes a layout spans: ld * (cols - 1) + rows elements.
size_t span(const EmuLayout& l) { return l.rows == 0 || l.cols == 0 ? 0 : ((size_t)l.ld * (l.cols - 1) + l.rows) * elem_size(l.type); }

std::string check(const void* p, const EmuLayout& l, bool write, bool init, const char* what) {
    size_t n = span(l);
    return n ? emu::dev_check(p, n, write, init, what) : std::string();
}

}  // namespace

EMU_API cublasStatus_t cublasLtCreate(EmuLtHandle** h) {
    if (!h) return ST_INVALID_VALUE;
    *h = new EmuLtHandle;
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtDestroy(EmuLtHandle* h) {
    if (!h || h->magic != 0x4c54) return ST_NOT_INITIALIZED;
    delete h;
    return ST_SUCCESS;
}
EMU_API size_t cublasLtGetVersion() { return 130000; }

EMU_API cublasStatus_t cublasLtMatrixLayoutCreate(EmuLayout** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (!l) return ST_INVALID_VALUE;
    if (type != R_32F && type != R_16BF) return fail(ST_NOT_SUPPORTED, "matrix type " + std::to_string(type) + " is not emulated (bf16 = 14 and f32 = 0 are)");
    if (ld < (int64_t)rows || ld <= 0) return fail(ST_INVALID_VALUE, "layout " + std::to_string(rows) + "x" + std::to_string(cols) + " with ld " + std::to_string(ld) + " < rows");
    *l = new EmuLayout{type, rows, cols, ld};
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatrixLayoutDestroy(EmuLayout* l) {
    delete l;
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatrixLayoutSetAttribute(EmuLayout* l, int attr, const void* v, size_t n) {
    if (!l || !v) return ST_INVALID_VALUE;
    int32_t x = 0;
    if (n >= 4) std::memcpy(&x, v, 4);
    switch (attr) {
        case 1: l->order = x; return x == 0 ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "only column-major layouts are emulated");
        case 5: l->batch = x; return x == 1 ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "batched layouts are not emulated");
        default: return fail(ST_NOT_SUPPORTED, "layout attribute " + std::to_string(attr) + " is not emulated");
    }
}

EMU_API cublasStatus_t cublasLtMatmulDescCreate(EmuMatmulDesc** d, int compute, int scale) {
    if (!d) return ST_INVALID_VALUE;
    if (compute != 68 || scale != R_32F) return fail(ST_NOT_SUPPORTED, "compute type " + std::to_string(compute) + " / scale type " + std::to_string(scale) + " (COMPUTE_32F = 68 with f32 scale is emulated)");
    *d = new EmuMatmulDesc{compute, scale};
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatmulDescDestroy(EmuMatmulDesc* d) {
    delete d;
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatmulDescSetAttribute(EmuMatmulDesc* d, int attr, const void* v, size_t n) {
    if (!d || !v) return ST_INVALID_VALUE;
    auto want = [&](size_t size) { return n == size; };
    switch (attr) {
        case 3: if (!want(4)) break; std::memcpy(&d->transa, v, 4); return d->transa <= 1 ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "TRANSA must be N or T");
        case 4: if (!want(4)) break; std::memcpy(&d->transb, v, 4); return d->transb <= 1 ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "TRANSB must be N or T");
        case 7: if (!want(4)) break; std::memcpy(&d->epilogue, v, 4); return d->epilogue == 1 || d->epilogue == 4 ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "epilogue " + std::to_string(d->epilogue) + " (DEFAULT = 1 and BIAS = 4 are emulated)");
        case 8: if (!want(8)) break; std::memcpy(&d->bias, v, 8); return ST_SUCCESS;
        case 26: if (!want(4)) break; std::memcpy(&d->bias_type, v, 4); return d->bias_type == R_32F || d->bias_type == R_16BF ? ST_SUCCESS : fail(ST_NOT_SUPPORTED, "bias type");
        default: return fail(ST_NOT_SUPPORTED, "matmul descriptor attribute " + std::to_string(attr) + " is not emulated");
    }
    return fail(ST_INVALID_VALUE, "matmul descriptor attribute " + std::to_string(attr) + " given " + std::to_string(n) + " bytes");
}

EMU_API cublasStatus_t cublasLtMatmulPreferenceCreate(EmuPref** p) {
    if (!p) return ST_INVALID_VALUE;
    *p = new EmuPref;
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatmulPreferenceDestroy(EmuPref* p) {
    delete p;
    return ST_SUCCESS;
}
EMU_API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(EmuPref* p, int attr, const void* v, size_t n) {
    if (!p || !v) return ST_INVALID_VALUE;
    if (attr == 1 && n == 8) {
        std::memcpy(&p->workspace, v, 8);
        return ST_SUCCESS;
    }
    if (attr >= 5 && attr <= 8 && n == 4) {
        std::memcpy(&p->align[attr - 5], v, 4);
        return ST_SUCCESS;
    }
    if (attr == 0 || attr == 3) return ST_SUCCESS;  // search mode, reduction scheme: hints
    return fail(ST_NOT_SUPPORTED, "preference attribute " + std::to_string(attr) + " is not emulated");
}

// One algorithm, which needs no workspace and records the minimum alignments it was chosen for.
EMU_API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(EmuLtHandle* h, EmuMatmulDesc* d, EmuLayout* a, EmuLayout* b, EmuLayout* c, EmuLayout* dd, EmuPref* p, int requested, Heuristic* out, int* count) {
    if (!h || !d || !a || !b || !c || !dd || !p || !out || !count || requested < 1) return ST_INVALID_VALUE;
    std::memset(out, 0, sizeof(Heuristic));
    for (int i = 0; i < 4; i++) out->algo.data[i] = p->align[i];
    out->algo.data[7] = 0x656d75;  // "emu": marks an algorithm this library chose
    out->state = ST_SUCCESS;
    out->waves = 1.0f;
    *count = 1;
    return ST_SUCCESS;
}

EMU_API cublasStatus_t cublasLtMatmul(EmuLtHandle* h, EmuMatmulDesc* d, const void* alpha_p, const void* A, EmuLayout* la, const void* B, EmuLayout* lb, const void* beta_p, const void* C, EmuLayout* lc, void* D, EmuLayout* ld, const Algo* algo, void*, size_t, void*) {
    if (!h || !d || !la || !lb || !lc || !ld || !alpha_p || !beta_p) return ST_INVALID_VALUE;
    if (!algo || algo->data[7] != 0x656d75) return fail(ST_INVALID_VALUE, "the algorithm does not come from cublasLtMatmulAlgoGetHeuristic");
    const uint64_t R = ld->rows, Cn = ld->cols;
    const uint64_t K = d->transa ? la->rows : la->cols;
    const uint64_t ar = d->transa ? la->cols : la->rows, bk = d->transb ? lb->cols : lb->rows, bc = d->transb ? lb->rows : lb->cols;
    std::string shape = "D " + std::to_string(R) + "x" + std::to_string(Cn) + " = op(A) " + std::to_string(ar) + "x" + std::to_string(K) + " . op(B) " + std::to_string(bk) + "x" + std::to_string(bc);
    if (ar != R || bk != K || bc != Cn || lc->rows != R || lc->cols != Cn) return fail(ST_INVALID_VALUE, "shapes do not agree: " + shape);
    if (la->type != R_16BF || lb->type != R_16BF) return fail(ST_NOT_SUPPORTED, "A and B must be bf16: " + shape);
    if (lc->type != ld->type || (C != D && (lc->ld != ld->ld))) return fail(ST_NOT_SUPPORTED, "C must have D's type and layout: " + shape);
    const void* ptrs[4] = {A, B, C, D};
    const char* names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ptrs[i] % algo->data[i])
            return fail(ST_INVALID_VALUE, std::string(names[i]) + " at " + std::to_string((uintptr_t)ptrs[i]) + " is less aligned than the " + std::to_string(algo->data[i]) + " bytes the algorithm was chosen for: " + shape);
    float alpha, beta;
    std::memcpy(&alpha, alpha_p, 4);
    std::memcpy(&beta, beta_p, 4);
    const bool bias = d->epilogue == 4;
    const int bias_type = d->bias_type < 0 ? ld->type : d->bias_type;
    const void* bias_p = reinterpret_cast<const void*>(d->bias);
    EmuLayout lbias{bias_type, R, 1, (int64_t)R};
    std::string e;
    if (e.empty()) e = check(A, *la, false, true, "cublasLtMatmul A");
    if (e.empty()) e = check(B, *lb, false, true, "cublasLtMatmul B");
    if (e.empty() && beta != 0.0f) e = check(C, *lc, false, true, "cublasLtMatmul C");
    if (e.empty() && bias) e = check(bias_p, lbias, false, true, "cublasLtMatmul bias");
    if (e.empty()) e = check(D, *ld, true, false, "cublasLtMatmul D");
    if (!e.empty()) return fail(ST_EXECUTION_FAILED, e + " (" + shape + ")");

    // op(A) packed K x R (i contiguous), so each column of D accumulates over k in order with the
    // inner loop running over i (vectorisable without reassociation).
    std::vector<float> At((size_t)K * R);
    for (uint64_t k = 0; k < K; k++)
        for (uint64_t i = 0; i < R; i++) At[k * R + i] = load(A, la->type, d->transa ? k + i * la->ld : i + k * la->ld);
    auto columns = [&](uint64_t j0, uint64_t j1) {
        std::vector<float> acc(R);
        std::vector<double> blk(R);
        for (uint64_t j = j0; j < j1; j++) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (uint64_t k0 = 0; k0 < K; k0 += 16) {
                for (uint64_t i = 0; i < R; i++) blk[i] = acc[i];
                for (uint64_t k = k0; k < std::min<uint64_t>(K, k0 + 16); k++) {
                    double b = load(B, lb->type, d->transb ? j + k * lb->ld : k + j * lb->ld);
                    const float* a = &At[k * R];
                    for (uint64_t i = 0; i < R; i++) blk[i] += (double)a[i] * b;
                }
                for (uint64_t i = 0; i < R; i++) acc[i] = (float)blk[i];
            }
            for (uint64_t i = 0; i < R; i++) {
                float v = alpha * acc[i];
                if (beta != 0.0f) v += beta * load(C, lc->type, i + j * lc->ld);
                if (bias) v += load(bias_p, bias_type, i);
                size_t at = i + j * ld->ld;
                if (ld->type == R_32F)
                    static_cast<float*>(D)[at] = v;
                else
                    static_cast<uint16_t*>(D)[at] = f32_to_bf16(v);
            }
            emu::dev_mark_init(static_cast<char*>(D) + j * ld->ld * elem_size(ld->type), R * elem_size(ld->type));
        }
    };
    unsigned hw = std::thread::hardware_concurrency();
    unsigned nt = (unsigned)std::min<uint64_t>(hw ? hw : 1, Cn);
    if ((double)R * Cn * K < 4e6 || nt <= 1) {
        columns(0, Cn);
    } else {
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nt; t++) ts.emplace_back(columns, Cn * t / nt, Cn * (t + 1) / nt);
        for (auto& t : ts) t.join();
    }
    return ST_SUCCESS;
}
