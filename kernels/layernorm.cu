// layernorm.cu: layer normalisation over the last dim (CLIP, torch.nn.functional.layer_norm).
//
//   layernorm(x: u16[T, C], w: u16[C], b: u16[C], y: u16[T, C], C: u32, eps: f32)
//       mean = sum(x) / C;  var = sum((x - mean)^2) / C   (biased, two passes over the row)
//       y = bf16((x - mean) * inv * w + b),  inv = 1 / sqrt(var + eps)
//
// All bf16 (raw bits); f32 arithmetic and f32 block reductions (see common.cuh: block_sum).
// The two-pass variance has no cancellation problem (unlike E[x^2] - mean^2); the row is read
// three times (L1/L2 serve the re-reads: C <= 8192 bf16 is 16 KiB).
//
// Launch: grid (T, 1, 1), one block per row; block (B, 1, 1), B a multiple of 32, <= 1024 (the
// host uses min(256, C / 8 or C rounded up to 32)); no dynamic shared memory. Any C >= 1.
// Vector path when C % 8 == 0 and x, w, b, y are 16-byte aligned; scalar path otherwise.
// Aliasing: y must not overlap x, w or b.

#include "common.cuh"

extern "C" __global__ void layernorm(const u16* __restrict__ x, const u16* __restrict__ w,
                                     const u16* __restrict__ b, u16* __restrict__ y, u32 C,
                                     float eps) {
    const u64 row = (u64)blockIdx.x * C;
    const u16* xr = x + row;
    u16* yr = y + row;
    const bool vec = (C % 8u == 0u) && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
    const uint4* xv = reinterpret_cast<const uint4*>(xr);

    // Pass 1: mean.
    float s = 0.0f;
    if (vec) {
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float f[8];
            unpack_bf16x8(xv[i], f);
#pragma unroll
            for (int j = 0; j < 8; ++j) s += f[j];
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) s += bf16_bits_to_f32(xr[i]);
    }
    const float mean = block_sum(s) / (float)C;

    // Pass 2: biased variance around that mean.
    float ss = 0.0f;
    if (vec) {
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float f[8];
            unpack_bf16x8(xv[i], f);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float d = f[j] - mean;
                ss += d * d;
            }
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
            const float d = bf16_bits_to_f32(xr[i]) - mean;
            ss += d * d;
        }
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)C + eps);

    // Pass 3: normalise, scale, shift.
    if (vec) {
        const uint4* wv = reinterpret_cast<const uint4*>(w);
        const uint4* bv = reinterpret_cast<const uint4*>(b);
        uint4* yv = reinterpret_cast<uint4*>(yr);
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) {
            float f[8], g[8], h[8];
            unpack_bf16x8(xv[i], f);
            unpack_bf16x8(wv[i], g);
            unpack_bf16x8(bv[i], h);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = (f[j] - mean) * inv * g[j] + h[j];
            yv[i] = pack_bf16x8(f);
        }
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
            const float v = bf16_bits_to_f32(xr[i]);
            yr[i] = f32_to_bf16_bits_rne((v - mean) * inv * bf16_bits_to_f32(w[i]) +
                                         bf16_bits_to_f32(b[i]));
        }
    }
}
