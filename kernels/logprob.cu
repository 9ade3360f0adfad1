// logprob.cu: per-token log-probabilities of target ids over a vocabulary processed in chunks
// (the chunk's logits come from a cuBLASLt GEMM into an f32 scratch; [T, V] never exists).
//
//   logprob_fold(z: f32[T, n], T, n, c0, targets: u32[T], V, run_max: f32[T], run_sum: f32[T],
//                zt: f32[T], first: u32, last: u32, logp: f32[T], lse: f32[T])
//       one chunk z = logits[:, c0 .. c0 + n) folded into the online log-sum-exp of each row:
//         cm = max_j z[t, j]; nm = max(m, cm); s = s * exp(m - nm) + sum_j exp(z[t, j] - nm); m = nm
//       (first != 0: m = -inf, s = 0 before the fold), and zt[t] = z[t, target - c0] when the
//       target lies in the chunk. last != 0: lse[t] = m + log(s), logp[t] = zt[t] - lse[t]; a row
//       whose target is >= V gets logp = NaN.
//   logprob_dlogits(z: f32[T, n], T, n, c0, targets: u32[T], lse: f32[T], dlogp: f32[T],
//                   hi: u16[T, n], lo: u16[T, n])
//       g = dlogp[t] * ([c0 + j == target_t] - exp(z[t, j] - lse[t])) (f32), the gradient of logp
//       with respect to the chunk's logits, split into two bf16 for the dh GEMMs:
//       hi = bf16(g), lo = bf16(g - hi), so that hi + lo carries ~16 significant bits.
//
// f32 arithmetic with expf/logf (no fast math); the running max and sum per row live in global
// f32[T] arrays between chunks (each row is owned by one block, so no atomics). The row
// reductions are block trees (warp shuffles, then the warp results in a fixed order).
//
// Launch: grid (T, 1, 1), one block per row; block (B, 1, 1), B a multiple of 32, <= 1024 (the
// host uses 256); no dynamic shared memory. Any n >= 1.

#include "common.cuh"

__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float s = NEG_INF;
    for (u32 i = 0; i < nwarps; ++i) s = fmaxf(s, partial[i]);
    return s;
}

extern "C" __global__ void logprob_fold(const float* __restrict__ z, u32 T, u32 n, u32 c0,
                                        const u32* __restrict__ targets, u32 V,
                                        float* __restrict__ run_max, float* __restrict__ run_sum,
                                        float* __restrict__ zt, u32 first, u32 last,
                                        float* __restrict__ logp, float* __restrict__ lse) {
    const u32 t = blockIdx.x;
    if (t >= T) return;
    const float* zr = z + (u64)t * n;
    float cm = NEG_INF;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) cm = fmaxf(cm, zr[j]);
    cm = block_max(cm);
    const float m = first ? NEG_INF : run_max[t];
    const float nm = fmaxf(m, cm);
    float s = 0.0f;
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) s += expf(zr[j] - nm);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float old = first ? 0.0f : run_sum[t] * expf(m - nm);
        const float ns = old + s;
        const u32 y = targets[t];
        float zy = first ? __int_as_float(0x7FC00000) : zt[t];
        if (y >= c0 && y - c0 < n) zy = zr[y - c0];
        run_max[t] = nm;
        run_sum[t] = ns;
        zt[t] = zy;
        if (last) {
            const float l = nm + logf(ns);
            lse[t] = l;
            logp[t] = (y < V) ? zy - l : __int_as_float(0x7FC00000);
        }
    }
}

extern "C" __global__ void logprob_dlogits(const float* __restrict__ z, u32 T, u32 n, u32 c0,
                                           const u32* __restrict__ targets,
                                           const float* __restrict__ lse,
                                           const float* __restrict__ dlogp, u16* __restrict__ hi,
                                           u16* __restrict__ lo) {
    const u32 t = blockIdx.x;
    if (t >= T) return;
    const float* zr = z + (u64)t * n;
    u16* hr = hi + (u64)t * n;
    u16* lr = lo + (u64)t * n;
    const float g = dlogp[t], l = lse[t];
    const u32 y = targets[t];
    for (u32 j = threadIdx.x; j < n; j += blockDim.x) {
        const float p = expf(zr[j] - l);
        const float onehot = (c0 + j == y) ? 1.0f : 0.0f;
        const float d = g * (onehot - p);
        const u16 h = f32_to_bf16_bits_rne(d);
        hr[j] = h;
        lr[j] = f32_to_bf16_bits_rne(d - bf16_bits_to_f32(h));
    }
}
