// adamw.cu: one AdamW step over every trainable tensor at once (the LoRA A and B of every
// projection, the projector), torch.optim.AdamW's arithmetic in f32 (src/optim.rs).
//
//   adamw(p, g, m, v: f32[n] (p, m, v in place), n: u64,
//         seg_end: u64[S] (tensor s holds elements [seg_end[s-1], seg_end[s]), seg_end[-1] = 0),
//         decay: f32[S] (1 - lr_s * wd_s), step_size: f32[S] (lr_s / (1 - beta1^t)), S: u32,
//         beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt (sqrt(1 - beta2^t)), eps,
//         gscale: f32)
//   per element, in this order (every operation rounded on its own: __f*_rn keeps nvcc from
//   contracting a*b+c into an FMA, so the result is bit-identical with the CPU's):
//       g = g * gscale (gradient clipping and the 1/accumulation factor folded in: the CPU
//                       scales its gradients by the same f32 factor before the step; 1 is exact)
//       p *= decay;  m = m*b1 + g*(1-b1);  v = v*b2 + (g*g)*(1-b2)
//       p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
//   The per-tensor factors are computed on the host exactly as AdamWState::step does.
//
// Launch: grid-stride over n, any grid and block; each element finds its tensor by binary search
// over seg_end (S is a few hundred). No shared memory.
//
//   grad_sumsq(g: f32[n], n: u64, partial: f64[gridDim.x])
//       partial[b] = sum of g[i]^2 (in f64) over the elements i of block b's grid-stride sweep;
//       the host adds the partials in block order (deterministic): the squared global L2 norm
//       of clip_grad_norm_. Launch: block GS_THREADS (256) exactly, any grid.

#include "common.cuh"

extern "C" __global__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                 float* __restrict__ v, u64 n, const u64* __restrict__ seg_end,
                                 const float* __restrict__ decay, const float* __restrict__ step_size, u32 S,
                                 float b1, float omb1, float b2, float omb2, float bc2_sqrt, float eps,
                                 float gscale) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        // The first segment whose end is > i.
        u32 lo = 0, hi = S;
        while (lo < hi) {
            const u32 mid = (lo + hi) / 2u;
            if (seg_end[mid] > i) hi = mid; else lo = mid + 1u;
        }
        if (lo >= S) continue;  // beyond the last tensor (the host makes n == seg_end[S-1])
        const float gi = __fmul_rn(g[i], gscale);
        const float pi = __fmul_rn(p[i], decay[lo]);
        const float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(gi, omb1));
        const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(gi, gi), omb2));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size[lo], mi), denom));
    }
}

#define GS_THREADS 256

extern "C" __global__ void grad_sumsq(const float* __restrict__ g, u64 n, double* __restrict__ partial) {
    __shared__ double warp_sums[GS_THREADS / 32];
    const u64 stride = (u64)gridDim.x * GS_THREADS;
    double acc = 0.0;
    for (u64 i = (u64)blockIdx.x * GS_THREADS + threadIdx.x; i < n; i += stride) {
        const double x = (double)g[i];
        acc = fma(x, x, acc);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31u) == 0) warp_sums[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < GS_THREADS / 32; ++w) s += warp_sums[w];
        partial[blockIdx.x] = s;
    }
}
