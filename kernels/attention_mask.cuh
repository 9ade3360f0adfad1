// attention_mask.cuh: the per-sequence masks and row ranges of the training / prefill attention,
// shared by attention_train.cu (sm_80 mma.sync) and attention_hopper.cu (sm_90a wgmma) so that
// both evaluate the same mask. Never compiled on its own.
//
// Positions i (query), j (key) are sequence-local. causal = 0: every key; causal = 1: j <= i and
// i - j < window when window > 0; a shared prefix (p, pc = prefix + chosen, pc = 0: none) also
// hides keys p <= j < pc from queries i >= pc (the DPO pair mask).

#pragma once

#include "common.cuh"

struct SeqMask {
    u32 causal, window, p, pc;  // pc = prefix + chosen (0: no shared prefix)
    // Whether query i sees key j (sequence-local), both known to be < len.
    __device__ __forceinline__ bool visible(int i, int j) const {
        if (!causal) return true;
        if (j > i) return false;
        if (window && (u32)(i - j) >= window) return false;
        if (pc && j >= (int)p && j < (int)pc && i >= (int)pc) return false;
        return true;
    }
    // Queries [q0, q1) x keys [k0, k1) (non-empty ranges): every pair hidden.
    __device__ __forceinline__ bool tile_hidden(int q0, int q1, int k0, int k1) const {
        if (!causal) return false;
        if (k0 > q1 - 1) return true;
        if (window && q0 - (k1 - 1) >= (int)window) return true;
        if (pc && k0 >= (int)p && k1 <= (int)pc && q0 >= (int)pc) return true;
        return false;
    }
    // Some pair of the tile is hidden (then the tile is masked elementwise).
    __device__ __forceinline__ bool tile_partial(int q0, int q1, int k0, int k1) const {
        if (!causal) return false;
        if (k1 - 1 > q0) return true;
        if (window && (q1 - 1) - k0 >= (int)window) return true;
        if (pc && k0 < (int)pc && k1 > (int)p && q1 > (int)pc) return true;
        return false;
    }
};

__device__ __forceinline__ SeqMask seq_mask(u32 causal, u32 window, const u32* sp, u32 has_sp, u32 b) {
    SeqMask m;
    m.causal = causal;
    m.window = window;
    m.p = 0;
    m.pc = 0;
    if (has_sp) {
        m.p = sp[2 * b];
        m.pc = m.p + sp[2 * b + 1];
    }
    return m;
}

// Sequence b's rows [start, start + len), clamped to [0, T].
__device__ __forceinline__ void seq_range(const u32* cu, u32 b, u32 T, u32& start, int& len) {
    const u32 s = min(cu[b], T), e = min(cu[b + 1], T);
    start = s;
    len = e > s ? (int)(e - s) : 0;
}
