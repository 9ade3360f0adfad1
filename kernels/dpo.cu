// dpo.cu: the DPO loss (and STIC's, with the likelihood term) from per-token log-probs, with its
// gradient, in one launch over the pairs of a batch (src/loss.rs has the formulas).
//
//   dpo(logp: f32[T], spans: u32[B, 4] (chosen start, chosen len, rejected start, rejected len:
//       rows of logp), reference: f64[B, 2] (rc, rr: the reference policy's summed log-probs),
//       beta, alpha: f64, out: f64[B, 7], dlogp: f32[T], T: u64)
//   per pair b:  pc, pr = sums of logp over its spans (f64);  x = beta ((pc - pr) - (rc - rr))
//       loss = softplus(-x) - alpha pc;  s = sigmoid(-x)
//       d_chosen = -beta s - alpha;  d_rejected = beta s
//       out[b] = (loss, d_chosen, d_rejected, beta (pc - rc), beta (pr - rr), pc, pr)
//       dlogp[t] = f32(d_chosen) on the chosen span, f32(d_rejected) on the rejected span
//   (d loss / d logp[t]: the loss depends on each token's log-prob through its span's sum).
//   Rows of dlogp outside every span are not written. Spans past T are clamped (read nothing).
//
// Launch: grid (B, 1, 1), one block per pair; block (256, 1, 1) (any multiple of 32 <= 1024).
// The span sums are f64: per-thread partials, warp shuffles, then the warps in a fixed order.

#include "common.cuh"

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double partial[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (u32 i = 0; i < nwarps; ++i) s += partial[i];
    return s;
}

__device__ __forceinline__ double span_sum(const float* __restrict__ logp, u64 T, u64 start, u64 len) {
    const u64 end = min(start + len, T);
    double s = 0.0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) s += (double)logp[i];
    return block_sum_f64(s);
}

extern "C" __global__ void dpo(const float* __restrict__ logp, const u32* __restrict__ spans,
                               const double* __restrict__ reference, double beta, double alpha,
                               double* __restrict__ out, float* __restrict__ dlogp, u64 T) {
    const u64 b = blockIdx.x;
    const u32* sp = spans + 4u * b;
    const double pc = span_sum(logp, T, sp[0], sp[1]);
    const double pr = span_sum(logp, T, sp[2], sp[3]);
    const double rc = reference[2u * b], rr = reference[2u * b + 1u];
    const double x = beta * ((pc - pr) - (rc - rr));
    // softplus(-x) without overflow, as src/loss.rs.
    const double sp_neg = x > 0.0 ? log1p(exp(-x)) : -x + log1p(exp(x));
    const double s = 1.0 / (1.0 + exp(x));
    const double d_chosen = -beta * s - alpha, d_rejected = beta * s;
    if (threadIdx.x == 0) {
        double* o = out + 7u * b;
        o[0] = sp_neg - alpha * pc;
        o[1] = d_chosen;
        o[2] = d_rejected;
        o[3] = beta * (pc - rc);
        o[4] = beta * (pr - rr);
        o[5] = pc;
        o[6] = pr;
    }
    const float dc = (float)d_chosen, dr = (float)d_rejected;
    for (u64 i = sp[0] + threadIdx.x; i < min((u64)sp[0] + sp[1], T); i += blockDim.x) dlogp[i] = dc;
    for (u64 i = sp[2] + threadIdx.x; i < min((u64)sp[2] + sp[3], T); i += blockDim.x) dlogp[i] = dr;
}
