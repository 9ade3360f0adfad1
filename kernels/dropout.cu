// dropout.cu: LoRA dropout on the device with the CPU's masks (nn::Linear::dropout_mask), so a
// GPU step drops exactly the elements the CPU reference drops.
//
// Mask: element i (row-major) of an [M, K] layer input takes the (i + 1)-th draw of SplitMix64
// seeded `seed` (stic::rng::Rng): state_i = seed + (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64),
// z = mix(state_i), u = (z >> 11) * 2^-53 (exact in f64); mask_i = 0 when u < p, else keep, where
// p is the f32 dropout probability widened to f64 and keep = f32(1 / (1 - p)) from the host (the
// CPU's values).
//
//   dropout(x: u16[n], y: u16[n], n: u64, seed: u64, p: f64, keep: f32)
//       y[i] = bf16(x[i] * mask_i)                     (the LoRA path's input, forward)
//   dropout_add(base: f32[n], t: f32[n], y: u16[n], n: u64, seed: u64, p: f64, keep: f32)
//       y[i] = bf16(base[i] + mask_i * t[i])           (dx = dy W + mask * (s v A), backward)
//
// One rounding per output (RNE). Launch: grid-stride over n, any grid and block. No shared memory.
// Aliasing: y must not overlap the inputs.

#include "common.cuh"

__device__ __forceinline__ float dropout_mask(u64 i, u64 seed, double p, float keep) {
    u64 z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    const double u = (double)(z >> 11) * 0x1p-53;
    return u < p ? 0.0f : keep;
}

extern "C" __global__ void dropout(const u16* __restrict__ x, u16* __restrict__ y, u64 n, u64 seed, double p, float keep) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = f32_to_bf16_bits_rne(bf16_bits_to_f32(x[i]) * dropout_mask(i, seed, p, keep));
    }
}

extern "C" __global__ void dropout_add(const float* __restrict__ base, const float* __restrict__ t, u16* __restrict__ y, u64 n, u64 seed,
                                       double p, float keep) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = f32_to_bf16_bits_rne(base[i] + dropout_mask(i, seed, p, keep) * t[i]);
    }
}
