// embedding.cu: token embedding gather with image feature rows scattered in.
//
//   embedding(table: u16[V, C], V: u64, features: u16[K, C] or null, K: u64,
//             sources: u32[T], out: u16[T, C], C: u32, oob: u32[1] or null)
//   row t of out is a bit-exact copy of
//       table[s]          when s = sources[t] < V            (text token)
//       features[s - V]   when V <= s < V + K                (image feature row)
//   and anything else is out of range: the row is filled with bf16 NaN (0x7FC0) and *oob is set
//   to 1 (never cleared by the kernel: the flag is sticky until the host resets it).
// The host builds the sources with cpu::embedding_sources (ids with every image position holding
// the image token; the i-th image token takes feature row i, i.e. source V + i).
//
// Launch: grid (T, 1, 1), one block per row; block (B, 1, 1), any B (the host uses 128); no
// shared memory. 16-byte copies when C % 8 == 0 and the source and destination rows are 16-byte
// aligned; 2-byte copies otherwise. out must not overlap table or features.

#include "common.cuh"

extern "C" __global__ void embedding(const u16* __restrict__ table, u64 V,
                                     const u16* __restrict__ features, u64 K,
                                     const u32* __restrict__ sources, u16* __restrict__ out, u32 C,
                                     u32* __restrict__ oob) {
    const u64 t = blockIdx.x;
    const u64 s = sources[t];
    u16* to = out + t * C;
    const u16* from = nullptr;
    if (s < V) {
        from = table + s * C;
    } else if (features != nullptr && s - V < K) {
        from = features + (s - V) * C;
    }
    if (from == nullptr) {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) to[i] = BF16_NAN_BITS;
        if (threadIdx.x == 0 && oob != nullptr) atomicExch(oob, 1u);
        return;
    }
    if (C % 8u == 0u && aligned16(from) && aligned16(to)) {
        const uint4* fv = reinterpret_cast<const uint4*>(from);
        uint4* tv = reinterpret_cast<uint4*>(to);
        for (u32 i = threadIdx.x; i < C / 8u; i += blockDim.x) tv[i] = fv[i];
    } else {
        for (u32 i = threadIdx.x; i < C; i += blockDim.x) to[i] = from[i];
    }
}

// embedding_backward(dx: u16[T, C], rows: u32[R], starts: u32[U + 1], ids: u32[U], dw: f32[V, C],
//                    C: u32)
//   for each u < U: dw[ids[u]] += sum_{j in [starts[u], starts[u+1])} dx[rows[j]]
// The embedding table's gradient (full-parameter training): d(input embeddings) scatter-added at
// the text rows. The host groups the rows by token id (ids distinct, each group's rows in
// ascending order), so each block owns one table row: no atomics, and the sum runs in the same
// order on every run (bit-identical resume). Reference: cpu::embedding_backward.
// Launch: grid (U, 1, 1), block (B, 1, 1), any B. dw must not overlap the inputs.
extern "C" __global__ void embedding_backward(const u16* __restrict__ dx,
                                              const u32* __restrict__ rows,
                                              const u32* __restrict__ starts,
                                              const u32* __restrict__ ids, float* __restrict__ dw,
                                              u32 C) {
    const u32 u = blockIdx.x;
    const u32 j0 = starts[u], j1 = starts[u + 1];
    float* to = dw + (u64)ids[u] * C;
    for (u32 i = threadIdx.x; i < C; i += blockDim.x) {
        float acc = 0.0f;
        for (u32 j = j0; j < j1; ++j) acc += bf16_bits_to_f32(dx[(u64)rows[j] * C + i]);
        to[i] += acc;
    }
}
