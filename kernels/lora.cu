// lora.cu: the low-rank GEMMs of a LoRA linear layer (the base GEMM x W^T is cuBLASLt's).
//
// One tiled f32 GEMM, C[I, J] = sum_k A[i, k] B[k, j], with every operand addressed through
// element strides (so transposes cost nothing) and each operand bf16 (raw bits) or f32:
//
//   lora_gemm_bb_f32(A: u16, sai, sak, B: u16, sbk, sbj, C: f32, I, J, Kd, kchunk, alpha, acc)
//   lora_gemm_bf_f32(A: u16, ..., B: f32, ...)     (dB = s dy^T u)
//   lora_gemm_fb_f32(A: f32, ..., B: u16, ...)     (dA = s v^T x)
//       split z = blockIdx.z sums k in [z * kchunk, min((z + 1) * kchunk, Kd)).
//       gridDim.z == 1: C[i*J + j] = alpha * sum (+ C[i*J + j] when acc != 0).
//       gridDim.z > 1:  C[(z*I + i)*J + j] = the raw partial sum (a scratch of gridDim.z * I * J);
//                       lora_splitk_reduce then adds the splits in order (deterministic).
//   lora_gemm_fb_bf16(A: f32, ..., B: u16, ..., Y: u16, base: f32, I, J, Kd, alpha)
//       the epilogue: Y[i*J + j] = bf16(base[i*J + j] + alpha * sum), one rounding. With A = u
//       [M, r] (rows staged in shared memory) and B[k, j] = Bm[j*sbj + k*sbk] this is
//       y = bf16(x W^T + s u B^T) in the forward and dx = bf16(dy W + s v A) in the backward.
//   lora_splitk_reduce(P: f32[S, n], S, n, C: f32[n], alpha, acc)
//       C[e] = alpha * (P[0][e] + ... + P[S-1][e]) (+ C[e] when acc != 0), summed in z order.
//
// Precision: products of bf16/f32 inputs and the sums in f32 (FMA); alpha applied once to the
// finished sum (as the CPU reference scales the finished product). No tensor cores: the
// operands mix bf16 and f32 and one dimension is the rank r <= 128, too thin to pay for them.
//
// Launch (GEMMs): grid (ceil(J / 64), ceil(I / 64), splits), block (256, 1, 1), 8,320 bytes of
// static shared memory (As and Bs: 2 x KSTEP 16 x (TILE 64 + 1) f32 = 2 x 16 x 65 x 4 bytes, as
// ptxas reports). Each block computes a 64 x 64 tile of C in steps of 16 k, each thread a 4 x 4
// sub-tile (rows ty*4 .. ty*4+3, columns tx + 16*jj). Any I, J, Kd >= 1 (the loads are guarded).
// The tile loads walk whichever of an operand's two strides is 1 fastest (coalesced).
// Aliasing: C (and Y) must not overlap A, B or base (Y may not be base either).

#include "common.cuh"

#define TILE 64
#define KSTEP 16

template <typename T> __device__ __forceinline__ float load_f(const T* p, u64 i);
template <> __device__ __forceinline__ float load_f<u16>(const u16* p, u64 i) {
    return bf16_bits_to_f32(p[i]);
}
template <> __device__ __forceinline__ float load_f<float>(const float* p, u64 i) { return p[i]; }

// Stages the [KSTEP, TILE] slice of an operand into s[k][t] (t the row of A or column of B):
// element (t, k) of the tile is src[(t0 + t) * st + (k0 + k) * sk], zero outside [0, tn) x [k0, kend).
template <typename T>
__device__ __forceinline__ void stage(float (*s)[TILE + 1], const T* __restrict__ src, u64 st,
                                      u64 sk, u32 t0, u32 tn, u32 k0, u32 kend) {
    const bool k_fast = (sk == 1ull);
    for (u32 e = threadIdx.x; e < TILE * KSTEP; e += blockDim.x) {
        u32 t, k;
        if (k_fast) {
            t = e / KSTEP;
            k = e % KSTEP;
        } else {
            t = e % TILE;
            k = e / TILE;
        }
        const u32 gt = t0 + t, gk = k0 + k;
        s[k][t] = (gt < tn && gk < kend) ? load_f<T>(src, (u64)gt * st + (u64)gk * sk) : 0.0f;
    }
}

// The 4 x 4 accumulators of this thread for C's tile at (i0, j0), over k in [kbeg, kend).
template <typename TA, typename TB>
__device__ __forceinline__ void tile_sum(const TA* __restrict__ A, u64 sai, u64 sak,
                                         const TB* __restrict__ B, u64 sbk, u64 sbj, u32 I, u32 J,
                                         u32 i0, u32 j0, u32 kbeg, u32 kend, float acc[4][4]) {
    __shared__ float As[KSTEP][TILE + 1];
    __shared__ float Bs[KSTEP][TILE + 1];
    const u32 tx = threadIdx.x % 16u, ty = threadIdx.x / 16u;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    for (u32 k0 = kbeg; k0 < kend; k0 += KSTEP) {
        __syncthreads();  // the previous step's readers are done
        stage<TA>(As, A, sai, sak, i0, I, k0, kend);
        stage<TB>(Bs, B, sbj, sbk, j0, J, k0, kend);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < KSTEP; ++k) {
            float a[4], b[4];
#pragma unroll
            for (int ii = 0; ii < 4; ++ii) a[ii] = As[k][ty * 4 + ii];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) b[jj] = Bs[k][tx + 16 * jj];
#pragma unroll
            for (int ii = 0; ii < 4; ++ii)
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) acc[ii][jj] = fmaf(a[ii], b[jj], acc[ii][jj]);
        }
    }
}

template <typename TA, typename TB>
__device__ __forceinline__ void gemm_f32(const TA* __restrict__ A, u64 sai, u64 sak,
                                         const TB* __restrict__ B, u64 sbk, u64 sbj,
                                         float* __restrict__ C, u32 I, u32 J, u32 Kd, u32 kchunk,
                                         float alpha, u32 accumulate) {
    const u32 i0 = blockIdx.y * TILE, j0 = blockIdx.x * TILE;
    const u32 kbeg = blockIdx.z * kchunk;
    const u32 kend = min(Kd, kbeg + kchunk);
    float acc[4][4];
    tile_sum<TA, TB>(A, sai, sak, B, sbk, sbj, I, J, i0, j0, kbeg, kend, acc);
    const u32 tx = threadIdx.x % 16u, ty = threadIdx.x / 16u;
    const bool split = gridDim.z > 1;
    float* out = split ? C + (u64)blockIdx.z * I * J : C;
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) {
        const u32 i = i0 + ty * 4 + ii;
        if (i >= I) continue;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const u32 j = j0 + tx + 16 * jj;
            if (j >= J) continue;
            const u64 at = (u64)i * J + j;
            if (split) {
                out[at] = acc[ii][jj];
            } else {
                const float v = alpha * acc[ii][jj];
                out[at] = accumulate ? out[at] + v : v;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
lora_gemm_bb_f32(const u16* __restrict__ A, u64 sai, u64 sak, const u16* __restrict__ B, u64 sbk,
                 u64 sbj, float* __restrict__ C, u32 I, u32 J, u32 Kd, u32 kchunk, float alpha,
                 u32 accumulate) {
    gemm_f32<u16, u16>(A, sai, sak, B, sbk, sbj, C, I, J, Kd, kchunk, alpha, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
lora_gemm_bf_f32(const u16* __restrict__ A, u64 sai, u64 sak, const float* __restrict__ B, u64 sbk,
                 u64 sbj, float* __restrict__ C, u32 I, u32 J, u32 Kd, u32 kchunk, float alpha,
                 u32 accumulate) {
    gemm_f32<u16, float>(A, sai, sak, B, sbk, sbj, C, I, J, Kd, kchunk, alpha, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
lora_gemm_fb_f32(const float* __restrict__ A, u64 sai, u64 sak, const u16* __restrict__ B, u64 sbk,
                 u64 sbj, float* __restrict__ C, u32 I, u32 J, u32 Kd, u32 kchunk, float alpha,
                 u32 accumulate) {
    gemm_f32<float, u16>(A, sai, sak, B, sbk, sbj, C, I, J, Kd, kchunk, alpha, accumulate);
}

// The epilogue: Y = bf16(base + alpha * A B), grid (ceil(J / 64), ceil(I / 64), 1).
extern "C" __global__ void __launch_bounds__(256)
lora_gemm_fb_bf16(const float* __restrict__ A, u64 sai, u64 sak, const u16* __restrict__ B,
                  u64 sbk, u64 sbj, u16* __restrict__ Y, const float* __restrict__ base, u32 I,
                  u32 J, u32 Kd, float alpha) {
    const u32 i0 = blockIdx.y * TILE, j0 = blockIdx.x * TILE;
    float acc[4][4];
    tile_sum<float, u16>(A, sai, sak, B, sbk, sbj, I, J, i0, j0, 0u, Kd, acc);
    const u32 tx = threadIdx.x % 16u, ty = threadIdx.x / 16u;
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) {
        const u32 i = i0 + ty * 4 + ii;
        if (i >= I) continue;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const u32 j = j0 + tx + 16 * jj;
            if (j >= J) continue;
            const u64 at = (u64)i * J + j;
            Y[at] = f32_to_bf16_bits_rne(base[at] + alpha * acc[ii][jj]);
        }
    }
}

// Grid-stride over n elements.
extern "C" __global__ void lora_splitk_reduce(const float* __restrict__ P, u32 S, u64 n,
                                              float* __restrict__ C, float alpha, u32 accumulate) {
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (u32 z = 0; z < S; ++z) s += P[(u64)z * n + e];
        const float v = alpha * s;
        C[e] = accumulate ? C[e] + v : v;
    }
}
