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

// layernorm_backward(x: u16[T, C], w: u16[C], dy: u16[T, C], dx: u16[T, C], C: u32, eps: f32,
//                    stats_out: f32[2T] or null)
//   mean, inv as layernorm (two passes);  xh = (x - mean) * inv;  g = w * dy
//   dx = bf16(inv * (g - sum(g) / C - xh * sum(g * xh) / C))
// stats_out (or null): each row's (mean, inv) at [2t], [2t + 1], for layernorm_dwdb (the norm's
// weight and bias gradients when it trains in full).
// Reference: cpu::layernorm_backward (its dx). One block per row, as layernorm; scalar loads; the
// sums reduced in f32 (block_sum). dx must not overlap x, w or dy.
extern "C" __global__ void layernorm_backward(const u16* __restrict__ x, const u16* __restrict__ w,
                                              const u16* __restrict__ dy, u16* __restrict__ dx,
                                              u32 C, float eps, float* __restrict__ stats_out) {
    const u64 row = (u64)blockIdx.x * C;
    const u16* xr = x + row;
    const u16* dyr = dy + row;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) s += bf16_bits_to_f32(xr[i]);
    const float mean = block_sum(s) / (float)C;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        const float d = bf16_bits_to_f32(xr[i]) - mean;
        ss += d * d;
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)C + eps);
    float sg = 0.0f, sgx = 0.0f;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        const float g = bf16_bits_to_f32(w[i]) * bf16_bits_to_f32(dyr[i]);
        sg += g;
        sgx += g * (bf16_bits_to_f32(xr[i]) - mean) * inv;
    }
    const float mg = block_sum(sg) / (float)C;
    const float mgx = block_sum(sgx) / (float)C;
    if (stats_out != nullptr && threadIdx.x == 0) {
        stats_out[2u * blockIdx.x] = mean;
        stats_out[2u * blockIdx.x + 1u] = inv;
    }
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        const float xh = (bf16_bits_to_f32(xr[i]) - mean) * inv;
        const float g = bf16_bits_to_f32(w[i]) * bf16_bits_to_f32(dyr[i]);
        dx[row + i] = f32_to_bf16_bits_rne(inv * (g - mg - xh * mgx));
    }
}

// layernorm_dwdb(x: u16[T, C], dy: u16[T, C], stats: f32[2T], dw: f32[C], db: f32[C], T: u32, C: u32)
//   dw[c] += sum_t dy[t, c] * (x[t, c] - mean[t]) * inv[t];   db[c] += sum_t dy[t, c]
// (stats: layernorm_backward's stats_out). One thread per column, the rows summed in order in f32
// (no atomics: the same bits on every run). Reference: cpu::layernorm_backward (its dw, db).
// dw and db must not overlap the inputs or each other.
extern "C" __global__ void layernorm_dwdb(const u16* __restrict__ x, const u16* __restrict__ dy,
                                          const float* __restrict__ stats, float* __restrict__ dw,
                                          float* __restrict__ db, u32 T, u32 C) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float aw = 0.0f, ab = 0.0f;
    for (u32 t = 0; t < T; ++t) {
        const u64 i = (u64)t * C + c;
        const float d = bf16_bits_to_f32(dy[i]);
        aw += d * (bf16_bits_to_f32(x[i]) - stats[2u * t]) * stats[2u * t + 1u];
        ab += d;
    }
    dw[c] += aw;
    db[c] += ab;
}
