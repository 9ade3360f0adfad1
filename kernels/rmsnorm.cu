// rmsnorm.cu: RMS normalisation over the last dim (LLaMA/Mistral), and the decoder's fused
// "add then norm".
//
//   rmsnorm(x: u16[T, C], w: u16[C], y: u16[T, C], C: u32, eps: f32)
//       y = bf16(w * (x * inv)),  inv = 1 / sqrt(sum(x^2) / C + eps)
//   rmsnorm_residual(x: u16[T, C], residual: u16[T, C] (in/out), w: u16[C], y: u16[T, C],
//                    C: u32, eps: f32)
//       r = bf16(x + residual); residual <- r; y = rmsnorm(r) as above
//
// All bf16 (raw bits). f32 arithmetic, the sum of squares reduced in f32 (per-thread partial sums,
// warp shuffles, then the warp sums in a fixed order); the output is rounded once (RNE). HF rounds
// twice (the normalised x to bf16, then w * x in bf16): this is within 1 bf16 ulp of it and closer
// to the f32 result. rmsnorm_residual normalises the rounded sum r, i.e. exactly the residual
// stream it stores, as HF's bf16 `residual + hidden_states` followed by the norm does.
// eps is f32, as torch adds the Python float to an f32 tensor.
//
// Launch: grid (T, 1, 1), one block per row; block (B, 1, 1) with B a multiple of 32, <= 1024
// (the host uses min(256, C / 8 or C rounded up to 32)); no dynamic shared memory. Any C >= 1.
// Vector path (16-byte loads, 8 bf16 per thread per step) when C % 8 == 0 and x, w, y (and
// residual) are 16-byte aligned (then every row is); otherwise the scalar path (the two paths
// split the row among threads differently, so the f32 sum of squares may differ in its last bits).
// Aliasing: y must not overlap x, w or residual (in place is not supported); x and residual must
// not overlap.

#include "common.cuh"

// y = bf16(w * (src * inv)) over one row of C; `vec` selects the 16-byte path (see above).
__device__ __forceinline__ void scale_row(const u16* src, const u16* __restrict__ w,
                                          u16* __restrict__ yr, u32 C, float inv, bool vec) {
    if (vec) {
        const uint4* sv = reinterpret_cast<const uint4*>(src);
        const uint4* wv = reinterpret_cast<const uint4*>(w);
        uint4* yv = reinterpret_cast<uint4*>(yr);
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float f[8], g[8];
            unpack_bf16x8(sv[i], f);
            unpack_bf16x8(wv[i], g);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = g[j] * (f[j] * inv);
            yv[i] = pack_bf16x8(f);
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
            const float v = bf16_bits_to_f32(src[i]);
            yr[i] = f32_to_bf16_bits_rne(bf16_bits_to_f32(w[i]) * (v * inv));
        }
    }
}

extern "C" __global__ void rmsnorm(const u16* __restrict__ x, const u16* __restrict__ w,
                                   u16* __restrict__ y, u32 C, float eps) {
    const u64 row = (u64)blockIdx.x * C;
    const u16* xr = x + row;
    u16* yr = y + row;
    const bool vec = (C % 8u == 0u) && aligned16(x) && aligned16(w) && aligned16(y);

    float ss = 0.0f;
    if (vec) {
        const uint4* xv = reinterpret_cast<const uint4*>(xr);
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float f[8];
            unpack_bf16x8(xv[i], f);
#pragma unroll
            for (int j = 0; j < 8; ++j) ss += f[j] * f[j];
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
            const float v = bf16_bits_to_f32(xr[i]);
            ss += v * v;
        }
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)C + eps);

    scale_row(xr, w, yr, C, inv, vec);
}

extern "C" __global__ void rmsnorm_residual(const u16* __restrict__ x, u16* __restrict__ residual,
                                            const u16* __restrict__ w, u16* __restrict__ y, u32 C,
                                            float eps) {
    const u64 row = (u64)blockIdx.x * C;
    const u16* xr = x + row;
    u16* rr = residual + row;
    u16* yr = y + row;
    const bool vec = (C % 8u == 0u) && aligned16(x) && aligned16(residual) && aligned16(w) &&
                     aligned16(y);

    // Pass 1: r = bf16(x + residual), stored; the sum of squares of the rounded r.
    float ss = 0.0f;
    if (vec) {
        const uint4* xv = reinterpret_cast<const uint4*>(xr);
        uint4* rv = reinterpret_cast<uint4*>(rr);
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float a[8], b[8];
            unpack_bf16x8(xv[i], a);
            unpack_bf16x8(rv[i], b);
#pragma unroll
            for (int j = 0; j < 8; ++j) a[j] = a[j] + b[j];
            const uint4 r = pack_bf16x8(a);
            rv[i] = r;
            unpack_bf16x8(r, a);  // the rounded values
#pragma unroll
            for (int j = 0; j < 8; ++j) ss += a[j] * a[j];
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
            const u16 r = f32_to_bf16_bits_rne(bf16_bits_to_f32(xr[i]) + bf16_bits_to_f32(rr[i]));
            rr[i] = r;
            const float v = bf16_bits_to_f32(r);
            ss += v * v;
        }
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)C + eps);

    // Pass 2: y from the stored r. Each thread reads back the elements it wrote itself (same index
    // loop), and block_sum's __syncthreads orders the block's global writes before these reads
    // in any case.
    scale_row(rr, w, yr, C, inv, vec);
}

// rmsnorm_backward(x: u16[T, C], w: u16[C], dy: u16[T, C], dx: u16[T, C], C: u32, eps: f32)
//   inv = 1 / sqrt(sum(x^2) / C + eps);  gx = sum(w * dy * x) / C
//   dx = bf16(inv * w * dy - x * inv^3 * gx)
// inv_out (f32[T], or null): each row's inv, for rmsnorm_dw (the norm weight's gradient when it
// trains in full; under LoRA it is frozen and inv_out is null).
// Reference: cpu::rmsnorm_backward (its dx). One block per row, as rmsnorm; scalar loads; the two
// sums reduced in f32 like rmsnorm's. dx must not overlap x, w or dy.
extern "C" __global__ void rmsnorm_backward(const u16* __restrict__ x, const u16* __restrict__ w,
                                            const u16* __restrict__ dy, u16* __restrict__ dx,
                                            u32 C, float eps, float* __restrict__ inv_out) {
    const u64 row = (u64)blockIdx.x * C;
    const u16* xr = x + row;
    const u16* dyr = dy + row;
    float ss = 0.0f, sg = 0.0f;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        const float v = bf16_bits_to_f32(xr[i]);
        ss += v * v;
        sg += bf16_bits_to_f32(w[i]) * bf16_bits_to_f32(dyr[i]) * v;
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)C + eps);
    const float gx = block_sum(sg) / (float)C;
    const float k = inv * inv * inv * gx;
    if (inv_out != nullptr && threadIdx.x == 0) inv_out[blockIdx.x] = inv;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        const float v = bf16_bits_to_f32(xr[i]);
        dx[row + i] = f32_to_bf16_bits_rne(inv * bf16_bits_to_f32(w[i]) * bf16_bits_to_f32(dyr[i]) - v * k);
    }
}

// rmsnorm_dw(x: u16[T, C], dy: u16[T, C], inv: f32[T], dw: f32[C], T: u32, C: u32)
//   dw[c] += sum_t dy[t, c] * x[t, c] * inv[t]     (inv: rmsnorm_backward's inv_out)
// The norm weight's gradient (full-parameter training). One thread per column, the rows summed in
// order in f32 (no atomics: the same bits on every run); threads of a warp read adjacent columns.
// Reference: cpu::rmsnorm_backward (its dw). dw must not overlap the inputs.
extern "C" __global__ void rmsnorm_dw(const u16* __restrict__ x, const u16* __restrict__ dy,
                                      const float* __restrict__ inv, float* __restrict__ dw, u32 T,
                                      u32 C) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (u32 t = 0; t < T; ++t) {
        const u64 i = (u64)t * C + c;
        acc += bf16_bits_to_f32(dy[i]) * bf16_bits_to_f32(x[i]) * inv[t];
    }
    dw[c] += acc;
}
