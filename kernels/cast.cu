// cast.cu: elementwise dtype conversion between bf16 (stored as raw u16 bits) and f32.
//
//   cast_bf16_to_f32(x: u16[n], y: f32[n], n)   y[i] = f32(x[i])              (exact)
//   cast_f32_to_bf16(x: f32[n], y: u16[n], n)   y[i] = bf16_rne(x[i])         (round to nearest,
//                                                                               ties to even)
// Shapes: any; both buffers are treated as flat arrays of n elements (n is a u64). No alignment
// is required beyond the element's own.
// Launch: 1-D grid-stride loop, any grid/block size (the host uses 256 threads per block).
//
// Bit-exact with the `half` crate (half::bf16::from_f32 / to_f32), which is the CPU reference:
// the conversions are done on the integer bits, so neither the FTZ mode nor the compiler's
// float contraction can change them, and:
//   - subnormals are kept (no flush to zero), overflow rounds to +-inf;
//   - NaN stays NaN with its sign and top payload bits, quiet bit set (0x0040 in bf16,
//     0x0040_0000 in f32), e.g. f32 0x7F80_0001 -> bf16 0x7FC0. (CUDA's __float2bfloat16_rn
//     would return the canonical 0x7FFF instead, hence no intrinsics here.)

#include "common.cuh"  // u16/u32/u64, bf16_bits_to_f32, f32_to_bf16_bits_rne

extern "C" __global__ void cast_bf16_to_f32(const u16* __restrict__ x, float* __restrict__ y,
                                            u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = bf16_bits_to_f32(x[i]);
    }
}

extern "C" __global__ void cast_f32_to_bf16(const float* __restrict__ x, u16* __restrict__ y,
                                            u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = f32_to_bf16_bits_rne(x[i]);
    }
}
