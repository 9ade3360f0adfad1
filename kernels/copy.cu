// copy.cu: row moves between bf16 matrices (bit-exact copies, no arithmetic).
//
//   scatter_rows(src: u16[N, W], dst: u16[R, W], idx: u32[N], W: u32, R: u64)
//       dst[idx[i]] = src[i] for every row i < N; an index >= R is skipped (the host checks the
//       indices, which it builds: KV-cache writes, slot = sequence, row = position).
//   concat_cols(src: u16[R, Cs], Cs: u32, dst: u16[R, Cd], Cd: u32, offset: u32)
//       dst[r, offset + j] = src[r, j] for j < Cs: one part of a column concatenation.
//
// Launch: grid (rows, 1, 1), one block per row; block (B, 1, 1), any B (the host uses 128); no
// shared memory. 16-byte copies when the row length is a multiple of 8 and both rows are 16-byte
// aligned; 2-byte copies otherwise. src and dst must not overlap.

#include "common.cuh"

__device__ __forceinline__ void copy_row(const u16* __restrict__ from, u16* __restrict__ to, u32 n) {
    if (n % 8u == 0u && aligned16(from) && aligned16(to)) {
        const uint4* fv = reinterpret_cast<const uint4*>(from);
        uint4* tv = reinterpret_cast<uint4*>(to);
        for (u32 i = threadIdx.x; i < n / 8u; i += blockDim.x) tv[i] = fv[i];
    } else {
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) to[i] = from[i];
    }
}

extern "C" __global__ void scatter_rows(const u16* __restrict__ src, u16* __restrict__ dst,
                                        const u32* __restrict__ idx, u32 W, u64 R) {
    const u64 i = blockIdx.x;
    const u64 to = idx[i];
    if (to >= R) return;
    copy_row(src + i * W, dst + to * W, W);
}

extern "C" __global__ void concat_cols(const u16* __restrict__ src, u32 Cs, u16* __restrict__ dst,
                                       u32 Cd, u32 offset) {
    const u64 r = blockIdx.x;
    copy_row(src + r * Cs, dst + r * Cd + offset, Cs);
}
