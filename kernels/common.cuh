// common.cuh: device helpers shared by the kernels/*.cu files (#include "common.cuh"; build.rs
// passes -I kernels/). Never compiled on its own.
//
// Conventions of every kernel:
//   - bf16 tensors are stored as raw u16 bits (half::bf16::to_bits on the host);
//   - all arithmetic is f32; outputs are rounded to bf16 with round-to-nearest-even
//     (f32_to_bf16_bits_rne, bit-exact with half::bf16::from_f32);
//   - rows are the leading dims folded: x[T, C] is T rows of C contiguous elements;
//   - 16-byte vector loads (uint4 = 8 bf16) are used only after checking, on the device, that the
//     pointers involved are 16-byte aligned and the row length is a multiple of 8; otherwise a
//     scalar loop does the same per-element arithmetic (elementwise results are identical bits;
//     a reduction's partial sums are associated differently, so they may differ in the last bits).

#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// bf16 <-> f32 on the bits (no intrinsics: __float2bfloat16_rn returns the canonical NaN 0x7FFF,
// half keeps the payload).

// Exact widening; a NaN gets its quiet bit set (as half::bf16::to_f32).
__device__ __forceinline__ float bf16_bits_to_f32(u16 h) {
    u32 b = (u32)h;
    if ((b & 0x7FFFu) > 0x7F80u) b |= 0x0040u;  // NaN: set the quiet bit
    return __uint_as_float(b << 16);
}

// Round to nearest, ties to even, on the integer bits: neither FTZ nor float contraction can
// change it. Subnormals are kept, overflow rounds to +-inf, NaN keeps its sign and top payload
// bits with the quiet bit set (f32 0x7F80_0001 -> bf16 0x7FC0).
__device__ __forceinline__ u16 f32_to_bf16_bits_rne(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((x >> 16) | 0x0040u);  // NaN: quiet it
    // Round half to even: round up when the dropped half is > 0x8000, or == 0x8000 and the kept
    // lsb is odd. The carry may ripple into the exponent, which is exactly right (up to inf).
    u32 round_up = ((x & 0x8000u) != 0u) && ((x & 0x17FFFu) != 0u);
    return (u16)((x >> 16) + round_up);
}

// The canonical bf16 quiet NaN that kernels write where a row has no valid value.
#define BF16_NAN_BITS ((u16)0x7FC0u)

// f32 -inf (the start of a running max; the score of a masked key: exp(-inf) = 0).
#define NEG_INF __uint_as_float(0xFF800000u)

// ---------------------------------------------------------------------------------------------
// 16-byte vectors of 8 bf16. Element order is memory order: element 2k is the low half of the
// k-th 32-bit word (little-endian), element 2k+1 the high half.

__device__ __forceinline__ bool aligned16(const void* p) {
    return ((unsigned long long)p & 15ull) == 0ull;
}

__device__ __forceinline__ void unpack_bf16x8(const uint4 v, float f[8]) {
    f[0] = bf16_bits_to_f32((u16)(v.x & 0xFFFFu));
    f[1] = bf16_bits_to_f32((u16)(v.x >> 16));
    f[2] = bf16_bits_to_f32((u16)(v.y & 0xFFFFu));
    f[3] = bf16_bits_to_f32((u16)(v.y >> 16));
    f[4] = bf16_bits_to_f32((u16)(v.z & 0xFFFFu));
    f[5] = bf16_bits_to_f32((u16)(v.z >> 16));
    f[6] = bf16_bits_to_f32((u16)(v.w & 0xFFFFu));
    f[7] = bf16_bits_to_f32((u16)(v.w >> 16));
}

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)f32_to_bf16_bits_rne(lo) | ((u32)f32_to_bf16_bits_rne(hi) << 16);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float f[8]) {
    uint4 v;
    v.x = pack_bf16x2(f[0], f[1]);
    v.y = pack_bf16x2(f[2], f[3]);
    v.z = pack_bf16x2(f[4], f[5]);
    v.w = pack_bf16x2(f[6], f[7]);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Reductions. Preconditions: blockDim.x is a multiple of 32 and at most 1024, blockDim.y ==
// blockDim.z == 1, and every thread of the block makes the call (they use full-warp shuffles and
// __syncthreads).

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

// The sum of v over the block, returned to every thread. Each warp reduces with shuffles, then
// every thread adds the (at most 32) warp sums in the same order, so all threads get the same
// bits. Safe to call repeatedly: the first __syncthreads keeps a previous call's readers of
// `partial` ahead of this call's writers.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (u32 i = 0; i < nwarps; ++i) s += partial[i];
    return s;
}
