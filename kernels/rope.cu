// rope.cu: rotary position embedding, HF's rotate_half (non-interleaved) form, in place on q and k
// in one launch.
//
//   rope(q: u16[T, H*D], k: u16[T, Hkv*D] or null, positions: u32[T], inv_freq: f32[D/2],
//        T: u32, half: u32 (= D/2), H: u32, Hkv: u32)
//   for every row t, head h and pair i < D/2, with x = that head's D values:
//       angle = f32(positions[t]) * inv_freq[i]          (one f32 multiply, as torch)
//       (x_i, x_{i+D/2}) <- (bf16(x_i cos - x_{i+D/2} sin), bf16(x_{i+D/2} cos + x_i sin))
//   cos/sin are sincosf of the f32 angle: the accurate libdevice version (build.rs has no
//   --use_fast_math; never __sinf/__cosf, whose error grows with |angle| and angles here reach
//   the position, thousands of radians). inv_freq comes from the host (cpu::RopeTable::inv_freq,
//   1 / theta^(2i/D) rounded to f32) so that the table is bit-identical to the CPU reference.
//
// Launch: 1-D grid-stride loop over the T * D/2 (row, pair) items, any grid/block (the host uses
// 128 threads per block); no shared memory. Each item computes its sincosf once and rotates that
// pair in all H heads of q and all Hkv heads of k (Hkv = 0 or k = null: q only).
// Consecutive threads take consecutive pairs of a row, so loads/stores of a head are coalesced.
// No alignment requirement beyond u16. q and k must not overlap.
// Note: sincosf has a slow path (Payne-Hanek reduction, a small local-memory array) for
// |angle| > 105615; ptxas reports its stack frame; it is not a spill.

#include "common.cuh"

__device__ __forceinline__ void rotate_pair(u16* __restrict__ p, u32 half, float c, float s) {
    const float a = bf16_bits_to_f32(p[0]);
    const float b = bf16_bits_to_f32(p[half]);
    p[0] = f32_to_bf16_bits_rne(a * c - b * s);
    p[half] = f32_to_bf16_bits_rne(b * c + a * s);
}

extern "C" __global__ void rope(u16* __restrict__ q, u16* __restrict__ k,
                                const u32* __restrict__ positions,
                                const float* __restrict__ inv_freq, u32 T, u32 half, u32 H,
                                u32 Hkv) {
    const u64 n = (u64)T * half;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u32 D = 2u * half;
    for (u64 item = (u64)blockIdx.x * blockDim.x + threadIdx.x; item < n; item += stride) {
        const u64 t = item / half;
        const u32 i = (u32)(item - t * half);
        const float angle = (float)positions[t] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        u16* qr = q + t * ((u64)H * D) + i;
        for (u32 h = 0; h < H; ++h) rotate_pair(qr + (u64)h * D, half, c, s);
        if (k != nullptr) {
            u16* kr = k + t * ((u64)Hkv * D) + i;
            for (u32 h = 0; h < Hkv; ++h) rotate_pair(kr + (u64)h * D, half, c, s);
        }
    }
}
