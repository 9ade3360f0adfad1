// attention_softmax.cuh: the per-row arithmetic of the FlashAttention forward, written once for
// attention_train.cu (mma.sync) and attention_hopper.cu (wgmma): scale and mask a score tile,
// the online softmax step (running max / sum, rescale of O), the P fragments, and the epilogue
// (O / l to bf16, lse). Never compiled on its own.
//
// Fragments: a lane holds two query rows r0 (row g of its warp's 16) and r1 = r0 + 8 of a tile of
// N/4 8-column blocks as a flat float[N]: x[4i], x[4i+1] = (r0, cols 8i + 2t, 8i + 2t + 1),
// x[4i+2], x[4i+3] = (r1, same cols) (lane = 4g + t). That is the mma.sync m16n8 C layout
// repeated over the column blocks and, per warp, the wgmma m64nN f32 accumulator layout, so both
// kernels keep S (keys as columns) and O (dims as columns) in this form. The four lanes of a
// quad share r0 and r1; the row max and sum are reduced over the quad with shuffles.

#pragma once

#include "attention_mask.cuh"  // SeqMask
#include "ptx.cuh"             // pack_rn

// s = s * scale; when `need`, scores of keys past the sequence (j >= len) or hidden by the mask
// become -inf: element 4i + e is (row e < 2 ? r0 : r1, key k0 + 8i + 2t + (e & 1)).
template <int N>
__device__ __forceinline__ void scale_mask(float (&s)[N], float scale, bool need, const SeqMask& mask, int k0, int len,
                                           int r0, int r1, int t) {
#pragma unroll
    for (int nt = 0; nt < N / 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float x = s[4 * nt + e] * scale;
            if (need) {
                const int j = k0 + nt * 8 + 2 * t + (e & 1), i = e < 2 ? r0 : r1;
                if (j >= len || !mask.visible(i, j)) x = NEG_INF;
            }
            s[4 * nt + e] = x;
        }
    }
}

// The online softmax state of a lane's rows r0, r1, held by the caller: m0, m1 the running max
// (-inf while no key has been visible; start there), l0, l1 this lane's partial running sum of
// exp(s - m) (start at 0; the quad is summed by softmax_store). Plain references rather than a
// struct: so the SASS is the one the kernels had with the code written out in place.

// One key tile: s (scaled, masked scores) becomes P = exp(s - m_new) in f32; l and the
// accumulator o are rescaled by exp(m_old - m_new), and l adds the tile's P.
template <int NS, int NO>
__device__ __forceinline__ void softmax_update(float (&s)[NS], float (&o)[NO], float& m0, float& m1, float& l0, float& l1) {
    // The row max over the quad (lanes 4g..4g+3 share rows r0, r1).
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * nt], s[4 * nt + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xFFFFFFFFu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xFFFFFFFFu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xFFFFFFFFu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xFFFFFFFFu, mx1, 2));
    // A row with nothing visible yet keeps m = -inf; subtract 0 then (exp(-inf) = 0).
    const float u0 = mx0 == NEG_INF ? 0.0f : mx0, u1 = mx1 == NEG_INF ? 0.0f : mx1;
    const float al0 = expf(m0 - u0), al1 = expf(m1 - u1);
    m0 = mx0;
    m1 = mx1;
    float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NS / 4; ++nt) {
        s[4 * nt] = expf(s[4 * nt] - u0);
        s[4 * nt + 1] = expf(s[4 * nt + 1] - u0);
        s[4 * nt + 2] = expf(s[4 * nt + 2] - u1);
        s[4 * nt + 3] = expf(s[4 * nt + 3] - u1);
        ps0 += s[4 * nt] + s[4 * nt + 1];
        ps1 += s[4 * nt + 2] + s[4 * nt + 3];
    }
    l0 = l0 * al0 + ps0;  // per-lane partial sums; the quad is summed at the end
    l1 = l1 * al1 + ps1;
#pragma unroll
    for (int i = 0; i < NO / 4; ++i) {
        o[4 * i] *= al0;
        o[4 * i + 1] *= al0;
        o[4 * i + 2] *= al1;
        o[4 * i + 3] *= al1;
    }
}

// The epilogue: l summed over the quad, out[start + r, h, :] = bf16(O / l) (u32 stores when
// ovec: out 4-byte aligned) and lse[h, start + r] = m + log(l) (lane t = 0) for r = r0, r1;
// rows r >= len are not stored. qs = H * D is out's row stride (elements), D = NO / 2.
template <int NO>
__device__ __forceinline__ void softmax_store(const float (&o)[NO], float m0, float m1, float l0, float l1, u16* out, float* lse,
                                              u32 start, u64 qs, u32 h, u32 T, int len, int r0, int r1, int t, bool ovec) {
    constexpr int D = 2 * NO;
    l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, 1);
    l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, 2);
    l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, 1);
    l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, 2);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = half ? r1 : r0;
        if (r >= len) continue;
        const float l = half ? l1 : l0, m = half ? m1 : m0;
        u16* orow = out + (u64)(start + r) * qs + (u64)h * D;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            const float x0 = o[4 * dt + 2 * half] / l, x1 = o[4 * dt + 2 * half + 1] / l;
            const int c = dt * 8 + 2 * t;
            if (ovec) {
                *reinterpret_cast<u32*>(orow + c) = pack_bf16x2(x0, x1);
            } else {
                orow[c] = f32_to_bf16_bits_rne(x0);
                orow[c + 1] = f32_to_bf16_bits_rne(x1);
            }
        }
        if (t == 0) lse[(u64)h * T + start + r] = m + logf(l);
    }
}

// The A fragment (m16n8k16 / wgmma-from-registers layout, bf16 RNE) of P's keys [16kc, 16kc + 16):
// a0 = (r0, k 2t..2t+1), a1 = (r1, k 2t..2t+1), a2 = (r0, k 2t+8..2t+9), a3 = (r1, k 2t+8..2t+9).
template <int N>
__device__ __forceinline__ void p_fragment(u32 pa[4], const float (&s)[N], int kc) {
    pa[0] = pack_rn(s[8 * kc], s[8 * kc + 1]);
    pa[1] = pack_rn(s[8 * kc + 2], s[8 * kc + 3]);
    pa[2] = pack_rn(s[8 * kc + 4], s[8 * kc + 5]);
    pa[3] = pack_rn(s[8 * kc + 6], s[8 * kc + 7]);
}
