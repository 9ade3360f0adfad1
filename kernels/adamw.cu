// adamw.cu: one AdamW step over every trainable tensor at once (the LoRA A and B of every
// projection, the projector), torch.optim.AdamW's arithmetic in f32 (src/optim.rs).
//
//   adamw(p, g, m, v: f32[n] (p, m, v in place), n: u64,
//         seg_end: u64[S] (tensor s holds elements [seg_end[s-1], seg_end[s]), seg_end[-1] = 0),
//         decay: f32[S] (1 - lr_s * wd_s), step_size: f32[S] (lr_s / (1 - beta1^t)), S: u32,
//         beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt (sqrt(1 - beta2^t)), eps: f32)
//   per element, in this order (every operation rounded on its own: __f*_rn keeps nvcc from
//   contracting a*b+c into an FMA, so the result is bit-identical with the CPU's):
//       p *= decay;  m = m*b1 + g*(1-b1);  v = v*b2 + (g*g)*(1-b2)
//       p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
//   The per-tensor factors are computed on the host exactly as AdamWState::step does.
//
// Launch: grid-stride over n, any grid and block; each element finds its tensor by binary search
// over seg_end (S is a few hundred). No shared memory.

#include "common.cuh"

extern "C" __global__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                 float* __restrict__ v, u64 n, const u64* __restrict__ seg_end,
                                 const float* __restrict__ decay, const float* __restrict__ step_size, u32 S,
                                 float b1, float omb1, float b2, float omb2, float bc2_sqrt, float eps) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        // The first segment whose end is > i.
        u32 lo = 0, hi = S;
        while (lo < hi) {
            const u32 mid = (lo + hi) / 2u;
            if (seg_end[mid] > i) hi = mid; else lo = mid + 1u;
        }
        if (lo >= S) continue;  // beyond the last tensor (the host makes n == seg_end[S-1])
        const float gi = g[i];
        const float pi = __fmul_rn(p[i], decay[lo]);
        const float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(gi, omb1));
        const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(gi, gi), omb2));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size[lo], mi), denom));
    }
}
