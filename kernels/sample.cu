// sample.cu: token selection from logits.
//
//   argmax_f32(logits: f32[B, V], V: u32, out: u32[B])
//   argmax_bf16(logits: u16[B, V], V: u32, out: u32[B])
//       out[b] = the index of the maximum of row b; the first (lowest) index on ties, and NaN
//       counts as larger than everything (the first NaN wins), as torch.argmax.
//
// Launch: grid (B, 1, 1), one block per row; block (B_t, 1, 1), B_t a multiple of 32, <= 1024
// (the host uses 512); no dynamic shared memory. Each thread scans a strided part of the row
// keeping its best (value, index); warps reduce with shuffles, then thread 0 combines the warp
// results. `better` is a strict total order on (value, index), so the result does not depend on
// the reduction order. V >= 1 (checked on the host).

#include "common.cuh"

// Whether (v, i) beats (bv, bi): NaN beats any number; otherwise the larger value; equal values
// (or two NaNs): the lower index. The initial state (-inf, 0xFFFFFFFF) loses to every element.
__device__ __forceinline__ bool better(float v, u32 i, float bv, u32 bi) {
    const bool vn = v != v, bn = bv != bv;
    if (vn || bn) return vn && (!bn || i < bi);
    return v > bv || (v == bv && i < bi);
}

template <typename Load>
__device__ __forceinline__ void argmax_row(Load load, u32 V, u32* __restrict__ out) {
    float bv = -__int_as_float(0x7F800000);  // -inf
    u32 bi = 0xFFFFFFFFu;
    for (u32 i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = load(i);
        if (better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, bv, o);
        const u32 oi = __shfl_xor_sync(0xFFFFFFFFu, bi, o);
        if (better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __shared__ float wv[32];
    __shared__ u32 wi[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wv[warp] = bv;
        wi[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < (blockDim.x >> 5); ++w) {
            if (better(wv[w], wi[w], bv, bi)) {
                bv = wv[w];
                bi = wi[w];
            }
        }
        out[blockIdx.x] = bi;
    }
}

struct LoadF32 {
    const float* row;
    __device__ __forceinline__ float operator()(u32 i) const { return row[i]; }
};
struct LoadBf16 {
    const u16* row;
    __device__ __forceinline__ float operator()(u32 i) const { return bf16_bits_to_f32(row[i]); }
};

extern "C" __global__ void argmax_f32(const float* __restrict__ logits, u32 V,
                                      u32* __restrict__ out) {
    argmax_row(LoadF32{logits + (u64)blockIdx.x * V}, V, out);
}

extern "C" __global__ void argmax_bf16(const u16* __restrict__ logits, u32 V,
                                       u32* __restrict__ out) {
    argmax_row(LoadBf16{logits + (u64)blockIdx.x * V}, V, out);
}
