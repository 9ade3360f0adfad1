// add.cu: x += y with y's rows repeating over x's (residual adds, CLIP's position embeddings).
//
//   add(x: u16[R, C] in place, y: u16[P, C], n = R*C: u64, period = P*C: u64)
//       x[i] = bf16(f32(x[i]) + f32(y[i % period])), one RNE rounding (bit-exact with the CPU
//       reference on the same bf16 inputs: one f32 add of two bf16 values is exact before the
//       rounding).
//
// Launch: grid-stride over n; any grid and block size. No shared memory.

#include "common.cuh"

extern "C" __global__ void add(u16* __restrict__ x, const u16* __restrict__ y, u64 n, u64 period) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        x[i] = f32_to_bf16_bits_rne(bf16_bits_to_f32(x[i]) + bf16_bits_to_f32(y[i % period]));
    }
}
