// attention_train.cu: tensor-core FlashAttention-2 forward and backward over a packed
// variable-length batch (training and prefill). bf16 operands on mma.sync m16n8k16 (f32
// accumulation), online softmax in registers; the T x T score matrix is never materialised.
//
// Layout (as flash-attention's varlen API):
//   q, out, dout: u16[Ttot, H, D] (bf16 bits); k, v: u16[Ttot, Hkv, D]; dk, dv: u16[Ttot, Hkv, D];
//   cu_seqlens: u32[B + 1], sequence b is rows [cu_seqlens[b], cu_seqlens[b + 1]);
//   lse: f32[H, Ttot], the natural-log log-sum-exp of row i's scaled scores (written by the
//   forward, read by the backward); delta: f32[H, Ttot] = rowsum(dout * out) (backward workspace);
//   dq_acc: f32[Ttot, H, D] (backward workspace, zeroed by the host, atomically accumulated);
//   dq: u16[Ttot, H, D] (rounded from dq_acc by attention_bwd_dq).
//   Query head h reads kv head h / (H / Hkv) (GQA, MQA when Hkv = 1). D is 64 or 128 (template).
//
// Masks (positions i, j are sequence-local: 0 is the first row of the sequence):
//   causal = 0: every key of the sequence (bidirectional; window and sp are then 0/unused);
//   causal = 1: key j visible from query i when j <= i, and i - j < window when window > 0;
//   has_sp = 1 (causal = 1, window = 0): sp[2b], sp[2b + 1] = (prefix, chosen) of sequence b,
//   the DPO shared-prefix mask of stic::backend::cpu::AttnMask::SharedPrefix: j <= i and not
//   (prefix <= j < prefix + chosen <= i); (0, 0) is plain causal.
// Every row sees at least itself under these masks, so no row is empty.
//
// Robustness: cu_seqlens is clamped to [0, Ttot] (a sequence with end < start is empty), so no
// access leaves the buffers; rows that no sequence covers are left unwritten. Any max_seqlen >= 1
// is correct: blocks stride over the tiles of their sequence (the host passes the longest length
// to size the grid).
//
// Precision (the model the host check emulates): S = Q K^T exact bf16 products summed in f32 by
// the tensor cores; P = expf(S * scale - m) in f32 (expf, no fast math), rounded to bf16 (RNE) for
// P V; l sums the f32 P; out = acc / l rounded to bf16; lse = m + logf(l). Backward: P recomputed
// from lse in f32, dP = dO V^T in f32, delta from the bf16 out, dS = P (dP - delta) in f32; P and
// dS are rounded to bf16 for dV = P^T dO, dK = dS^T Q and dQ = dS K; dq is summed in f32 (atomics,
// order not deterministic) and rounded once; dk (times scale) and dv are rounded once.
//
// ---------------------------------------------------------------------------------------------
// Fragment layouts relied on (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16, and
// "ldmatrix"). lane = 0..31, g = lane >> 2 (groupID), t = lane & 3 (threadID_in_group). A 32-bit
// register holds two bf16, the lower column/k index in the low half.
//   A (16 x 16, row-major, M x K): a0 = (row g, k 2t..2t+1), a1 = (row g+8, k 2t..2t+1),
//                                  a2 = (row g, k 2t+8..2t+9), a3 = (row g+8, k 2t+8..2t+9).
//   B (16 x 8, "col", K x N):      b0 = (k 2t..2t+1, col g), b1 = (k 2t+8..2t+9, col g).
//   C/D (16 x 8, f32):             c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1).
//   ldmatrix.x4 (.b16, 8x8 matrices): lanes 8m..8m+7 give the row addresses of matrix m (lane
//   8m + r -> row r); every lane receives register m = (row g, cols 2t, 2t+1) of matrix m. With
//   .trans it receives (rows 2t, 2t+1; col g) of matrix m instead.
// So, for a tile stored row-major in shared memory (row stride LD elements):
//   * A fragment of rows [r0, r0+16) x cols [c0, c0+16): lane address row r0 + (lane & 7) +
//     ((lane >> 3) & 1) * 8, col c0 + (lane >> 4) * 8 (matrix m: rows +8 (m & 1), cols +8 (m >> 1)).
//   * B fragments where B[k][n] = X[n][k] (X row-major, n = row: keys of K for S = Q K^T): two
//     n-tiles [n0, n0+16) x k [c0, c0+16): lane address row n0 + (lane & 7) + (lane >> 4) * 8, col
//     c0 + ((lane >> 3) & 1) * 8; regs (0, 1) are b0, b1 of n-tile n0, regs (2, 3) of n0 + 8.
//   * B fragments where B[k][n] = X[k][n] (k = row: V for P V), with .trans: k [k0, k0+16) x two
//     n-tiles [c0, c0+16): lane address row k0 + (lane & 7) + ((lane >> 3) & 1) * 8, col c0 +
//     (lane >> 4) * 8; regs (0, 1) are b0, b1 of n-tile c0, regs (2, 3) of c0 + 8.
//   * An accumulator tile (16 x 16 of k, as two 8-col C tiles c[2j], c[2j+1]) becomes the A
//     fragment of the next product: a0 = pack(c[2j][0], c[2j][1]), a1 = pack(c[2j][2], c[2j][3]),
//     a2 = pack(c[2j+1][0], c[2j+1][1]), a3 = pack(c[2j+1][2], c[2j+1][3]).
//
// Forward (attention_fwd<D>): grid (ceil(max_seqlen / 64), H, B), block 128 threads (4 warps).
// A block owns a 64-row query tile of one head of one sequence (tiles in reverse order so that
// the longest causal tiles start first); warp w owns query rows [16w, 16w + 16). Shared memory
// (dynamic, row stride D + 8 bf16, so ldmatrix rows fall in distinct banks): Q [64], K [2][64],
// V [2][64]: 320 (D + 8) * 2 bytes (46,080 at D = 64, 87,040 at D = 128). K/V tiles are double
// buffered with cp.async (zero-filled past the sequence end; plain loads when a pointer is not
// 16-byte aligned). Per key tile: S (16 x 64 per warp, 32 f32 registers) = Q K^T, mask (only on
// tiles that need it), online softmax (row max / sum over the 4 lanes of a quad), O (16 x D, D/2
// registers) = O * alpha + P V. Key tiles outside the causal / window range are not visited;
// tiles fully hidden by the shared-prefix mask are skipped.
//
// Backward (attention_bwd<D, BQ = 32>): grid (ceil(max_seqlen / 64), Hkv, B), block 128. A block owns
// a 64-key tile of one kv head of one sequence and loops over the query heads of its group and
// the query tiles (BQ rows) that can see it; warp w owns keys [16w, 16w + 16) and keeps dK, dV
// (16 x D each) in registers, so dk and dv need no atomics. Per query tile: S^T = K Q^T,
// P^T = exp(S^T scale - lse), dP^T = V dO^T, dV += P^T dO, dS^T = P^T (dP^T - delta),
// dK += dS^T Q; dS goes to shared memory (bf16, query-major) and after a barrier the block
// computes dQ_tile = dS K (warp: 16 query rows x D/(4 / (BQ/16)) dims) and atomically adds it
// (times scale) into dq_acc. Shared memory: K, V [64], Q, dO [BQ] at stride D + 8, dS [BQ][72],
// lse and delta [BQ] f32.
//
// The PTX instructions (cp.async, ldmatrix, mma.sync, cvt) are the wrappers of ptx.cuh; the
// forward's mask, online softmax and epilogue are attention_softmax.cuh's, shared with
// attention_hopper.cu.

#include "common.cuh"
#include "ptx.cuh"

#define AT_THREADS 128
#define AT_BM 64  // forward query tile
#define AT_BN 64  // key tile (forward and backward)

// ---------------------------------------------------------------------------------------------
// Masks and tiles.

#include "attention_mask.cuh"
#include "attention_softmax.cuh"

// Stages `rows` rows of D bf16 (global row r at src + r * stride) into shared memory at row
// stride D + 8; rows >= valid are zero-filled. vec: cp.async 16-byte copies (src 16-byte aligned);
// otherwise plain 2-byte loads and 16-byte shared stores.
template <int D>
__device__ __forceinline__ void stage_rows(u16* dst, const u16* __restrict__ src, u64 stride, int rows, int valid, bool vec) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < rows * CH; c += AT_THREADS) {
        const int r = c / CH, cc = c - r * CH;
        u16* d = dst + r * (D + 8) + cc * 8;
        const u16* s = src + (u64)r * stride + cc * 8;
        if (vec) {
            cp_async16(d, r < valid ? s : src, r < valid ? 16u : 0u);
        } else {
            uint4 x = make_uint4(0, 0, 0, 0);
            if (r < valid) {
                x.x = (u32)s[0] | ((u32)s[1] << 16);
                x.y = (u32)s[2] | ((u32)s[3] << 16);
                x.z = (u32)s[4] | ((u32)s[5] << 16);
                x.w = (u32)s[6] | ((u32)s[7] << 16);
            }
            *reinterpret_cast<uint4*>(d) = x;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <int D>
__device__ __forceinline__ void attention_fwd_impl(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                                                   const u32* __restrict__ cu, const u32* __restrict__ sp, u16* __restrict__ out,
                                                   float* __restrict__ lse, u32 T, u32 H, u32 Hkv, u32 causal, u32 window, u32 has_sp,
                                                   float scale) {
    constexpr int LD = D + 8;
    extern __shared__ __align__(16) u16 smem[];
    u16* Qs = smem;
    u16* Ks = Qs + AT_BM * LD;  // [2][AT_BN][LD]
    u16* Vs = Ks + 2 * AT_BN * LD;

    const u32 b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv);
    u32 start;
    int len;
    seq_range(cu, b, T, start, len);
    const SeqMask mask = seq_mask(causal, window, sp, has_sp, b);
    const int ntiles = (len + AT_BM - 1) / AT_BM;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u64 qs = (u64)H * D, ks = (u64)Hkv * D;
    const bool vec = aligned16(q) && aligned16(k) && aligned16(v);
    const bool ovec = ((u64)out & 3ull) == 0ull;

    for (int it = blockIdx.x; it < ntiles; it += gridDim.x) {
        const int qt = ntiles - 1 - it;
        const int q0 = qt * AT_BM, q1 = min(q0 + AT_BM, len);
        // Key range of the tile: [kbeg, kend).
        int kbeg = 0, kend = len;
        if (causal) {
            kend = q1;
            if (window) kbeg = max(0, q0 - (int)window + 1);
        }
        kbeg = (kbeg / AT_BN) * AT_BN;
        auto next_tile = [&](int k0) {  // the first key tile at or after k0 that is not hidden
            while (k0 < kend && mask.tile_hidden(q0, q1, k0, min(k0 + AT_BN, len))) k0 += AT_BN;
            return k0;
        };

        __syncthreads();  // the previous tile's readers of Qs / Ks / Vs are done
        stage_rows<D>(Qs, q + (u64)(start + q0) * qs + (u64)h * D, qs, AT_BM, q1 - q0, vec);
        int kt = next_tile(kbeg);
        if (kt < kend) {
            const int n = min(AT_BN, len - kt);
            stage_rows<D>(Ks, k + (u64)(start + kt) * ks + (u64)kvh * D, ks, AT_BN, n, vec);
            stage_rows<D>(Vs, v + (u64)(start + kt) * ks + (u64)kvh * D, ks, AT_BN, n, vec);
        }
        cp_async_commit();

        float o[D / 2];  // O (16 x D per warp) in the fragment form of attention_softmax.cuh
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
        float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
        int buf = 0;
        while (kt < kend) {
            const int knext = next_tile(kt + AT_BN);
            if (knext < kend) {
                const int n = min(AT_BN, len - knext);
                stage_rows<D>(Ks + (buf ^ 1) * AT_BN * LD, k + (u64)(start + knext) * ks + (u64)kvh * D, ks, AT_BN, n, vec);
                stage_rows<D>(Vs + (buf ^ 1) * AT_BN * LD, v + (u64)(start + knext) * ks + (u64)kvh * D, ks, AT_BN, n, vec);
            }
            cp_async_commit();
            cp_async_wait<1>();  // everything but the prefetch just issued has landed
            __syncthreads();

            const u16* Kb = Ks + buf * AT_BN * LD;
            const u16* Vb = Vs + buf * AT_BN * LD;
            // S = Q K^T for the warp's 16 rows x 64 keys (8-key block nt: s[4nt .. 4nt + 3]).
            float s[AT_BN / 2];
#pragma unroll
            for (int i = 0; i < AT_BN / 2; ++i) s[i] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                u32 a[4];
                ldsm_x4(a, Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int np = 0; np < AT_BN / 16; ++np) {
                    u32 bb[4];
                    ldsm_x4(bb, Kb + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                    mma16816(s + 8 * np, a, bb[0], bb[1]);
                    mma16816(s + 8 * np + 4, a, bb[2], bb[3]);
                }
            }
            // Scale and mask (rows r0 = q0 + 16 warp + g, r1 = r0 + 8), then the online softmax.
            const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
            const bool need = kt + AT_BN > len || mask.tile_partial(q0, q1, kt, min(kt + AT_BN, len));
            scale_mask(s, scale, need, mask, kt, len, r0, r1, t);
            softmax_update(s, o, m0, m1, l0, l1);
            // O += P V: P (16 x 64 keys) from the S registers, V as B with .trans.
#pragma unroll
            for (int kc = 0; kc < AT_BN / 16; ++kc) {
                u32 pa[4];
                p_fragment(pa, s, kc);
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    u32 bb[4];
                    ldsm_x4_t(bb, Vb + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
                    mma16816(o + 8 * dp, pa, bb[0], bb[1]);
                    mma16816(o + 8 * dp + 4, pa, bb[2], bb[3]);
                }
            }
            __syncthreads();  // every warp is done with buffer `buf` before it is refilled
            buf ^= 1;
            kt = knext;
        }
        cp_async_wait<0>();

        // Epilogue: out = O / l, lse = m + log(l).
        const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
        softmax_store(o, m0, m1, l0, l1, out, lse, start, qs, h, T, len, r0, r1, t, ovec);
    }
}

#define FWD_ARGS                                                                                                     \
    const u16 *__restrict__ q, const u16 *__restrict__ k, const u16 *__restrict__ v, const u32 *__restrict__ cu,     \
        const u32 *__restrict__ sp, u16 *__restrict__ out, float *__restrict__ lse, u32 T, u32 H, u32 Hkv, u32 causal, \
        u32 window, u32 has_sp, float scale

extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_fwd_d64(FWD_ARGS) {
    attention_fwd_impl<64>(q, k, v, cu, sp, out, lse, T, H, Hkv, causal, window, has_sp, scale);
}
extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_fwd_d128(FWD_ARGS) {
    attention_fwd_impl<128>(q, k, v, cu, sp, out, lse, T, H, Hkv, causal, window, has_sp, scale);
}

// ---------------------------------------------------------------------------------------------
// Backward.

// delta[h, i] = sum_d dout[i, h, d] * out[i, h, d] (f32): one warp per (row, head).
// Launch: grid (ceil(T * H / 4)), block 128.
extern "C" __global__ void __launch_bounds__(AT_THREADS)
attention_bwd_preprocess(const u16* __restrict__ out, const u16* __restrict__ dout, float* __restrict__ delta, u32 T, u32 H, u32 D) {
    const u64 w = (u64)blockIdx.x * (AT_THREADS / 32) + (threadIdx.x >> 5);
    const u32 lane = threadIdx.x & 31u;
    if (w >= (u64)T * H) return;
    const u64 i = w / H, h = w - i * H;
    const u16* o = out + (i * H + h) * D;
    const u16* d = dout + (i * H + h) * D;
    float s = 0.0f;
    for (u32 c = lane; c < D; c += 32u) s = fmaf(bf16_bits_to_f32(o[c]), bf16_bits_to_f32(d[c]), s);
    s = warp_sum(s);
    if (lane == 0) delta[h * T + i] = s;
}

// dq[e] = bf16(dq_acc[e]) for e < n (grid-stride).
extern "C" __global__ void attention_bwd_dq(const float* __restrict__ acc, u16* __restrict__ dq, u64 n) {
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) dq[e] = f32_to_bf16_bits_rne(acc[e]);
}

template <int D, int BQ>
__device__ __forceinline__ void attention_bwd_impl(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                                                   const u16* __restrict__ dout, const float* __restrict__ lse,
                                                   const float* __restrict__ delta, const u32* __restrict__ cu,
                                                   const u32* __restrict__ sp, float* __restrict__ dq_acc, u16* __restrict__ dk,
                                                   u16* __restrict__ dv, u32 T, u32 H, u32 Hkv, u32 causal, u32 window,
                                                   u32 has_sp, float scale) {
    constexpr int LD = D + 8, LDS = AT_BN + 8;
    constexpr int RB = BQ / 16;       // 16-row query blocks of the dQ product
    constexpr int WPR = 4 / RB;       // warps per row block
    constexpr int DW = D / WPR;       // dims per warp in the dQ product
    static_assert(BQ % 16 == 0 && 4 % RB == 0 && DW % 16 == 0, "tile split");
    extern __shared__ __align__(16) u16 smem[];
    u16* Ks = smem;
    u16* Vs = Ks + AT_BN * LD;
    u16* Qs = Vs + AT_BN * LD;
    u16* dOs = Qs + BQ * LD;
    u16* dSs = dOs + BQ * LD;                                  // [BQ][LDS], dS[query][key]
    float* lse_s = reinterpret_cast<float*>(dSs + BQ * LDS);   // [BQ]
    float* dl_s = lse_s + BQ;                                  // [BQ]

    const u32 b = blockIdx.z, kvh = blockIdx.y, G = H / Hkv;
    u32 start;
    int len;
    seq_range(cu, b, T, start, len);
    const SeqMask mask = seq_mask(causal, window, sp, has_sp, b);
    const int ntiles = (len + AT_BN - 1) / AT_BN;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u64 qs = (u64)H * D, ks = (u64)Hkv * D;
    const bool vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout);
    const bool kvec = ((u64)dk & 3ull) == 0ull && ((u64)dv & 3ull) == 0ull;

    for (int kti = blockIdx.x; kti < ntiles; kti += gridDim.x) {
        const int k0 = kti * AT_BN, k1 = min(k0 + AT_BN, len);
        // Query range that can see the tile: [qbeg, qend).
        int qbeg = 0, qend = len;
        if (causal) {
            qbeg = (k0 / BQ) * BQ;
            if (window) qend = min(len, k1 - 1 + (int)window);
        }
        __syncthreads();  // the previous tile's readers of Ks / Vs are done
        stage_rows<D>(Ks, k + (u64)(start + k0) * ks + (u64)kvh * D, ks, AT_BN, k1 - k0, vec);
        stage_rows<D>(Vs, v + (u64)(start + k0) * ks + (u64)kvh * D, ks, AT_BN, k1 - k0, vec);
        cp_async_commit();

        float dkf[D / 8][4], dvf[D / 8][4];
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) dkf[i][e] = dvf[i][e] = 0.0f;

        const int kr0 = k0 + warp * 16 + g, kr1 = kr0 + 8;  // this lane's key rows
        for (u32 hh = 0; hh < G; ++hh) {
            const u32 h = kvh * G + hh;
            for (int q0 = qbeg; q0 < qend; q0 += BQ) {
                const int q1 = min(q0 + BQ, len);
                if (mask.tile_hidden(q0, q1, k0, k1)) continue;
                __syncthreads();  // previous readers of Qs / dOs / dSs / lse_s / dl_s are done
                stage_rows<D>(Qs, q + (u64)(start + q0) * qs + (u64)h * D, qs, BQ, q1 - q0, vec);
                stage_rows<D>(dOs, dout + (u64)(start + q0) * qs + (u64)h * D, qs, BQ, q1 - q0, vec);
                cp_async_commit();
                for (int r = threadIdx.x; r < BQ; r += AT_THREADS) {
                    const bool in = q0 + r < len;
                    lse_s[r] = in ? lse[(u64)h * T + start + q0 + r] : 0.0f;
                    dl_s[r] = in ? delta[(u64)h * T + start + q0 + r] : 0.0f;
                }
                cp_async_wait<0>();
                __syncthreads();

                // S^T = K Q^T: the warp's 16 keys x BQ queries.
                float st[BQ / 8][4];
#pragma unroll
                for (int i = 0; i < BQ / 8; ++i) st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    u32 a[4];
                    ldsm_x4(a, Ks + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int np = 0; np < BQ / 16; ++np) {
                        u32 bb[4];
                        ldsm_x4(bb, Qs + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                        mma16816(st[2 * np], a, bb[0], bb[1]);
                        mma16816(st[2 * np + 1], a, bb[2], bb[3]);
                    }
                }
                // P^T = exp(S^T scale - lse[query]); element (key kr0/kr1, query q0 + 8 nt + 2t + (e & 1)).
                const bool need = q1 - q0 < BQ || k1 - k0 < AT_BN || mask.tile_partial(q0, q1, k0, k1);
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int qc = nt * 8 + 2 * t + (e & 1);
                        float p = expf(st[nt][e] * scale - lse_s[qc]);
                        if (need) {
                            const int i = q0 + qc, j = e < 2 ? kr0 : kr1;
                            if (i >= len || j >= len || !mask.visible(i, j)) p = 0.0f;
                        }
                        st[nt][e] = p;
                    }
                }
                // dP^T = V dO^T: 16 keys x BQ queries.
                float dpt[BQ / 8][4];
#pragma unroll
                for (int i = 0; i < BQ / 8; ++i) dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    u32 a[4];
                    ldsm_x4(a, Vs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int np = 0; np < BQ / 16; ++np) {
                        u32 bb[4];
                        ldsm_x4(bb, dOs + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                        mma16816(dpt[2 * np], a, bb[0], bb[1]);
                        mma16816(dpt[2 * np + 1], a, bb[2], bb[3]);
                    }
                }
                // dV += P^T dO (k = query): dO as B with .trans.
#pragma unroll
                for (int kc = 0; kc < BQ / 16; ++kc) {
                    u32 pa[4];
                    pa[0] = pack_rn(st[2 * kc][0], st[2 * kc][1]);
                    pa[1] = pack_rn(st[2 * kc][2], st[2 * kc][3]);
                    pa[2] = pack_rn(st[2 * kc + 1][0], st[2 * kc + 1][1]);
                    pa[3] = pack_rn(st[2 * kc + 1][2], st[2 * kc + 1][3]);
#pragma unroll
                    for (int dp = 0; dp < D / 16; ++dp) {
                        u32 bb[4];
                        ldsm_x4_t(bb, dOs + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
                        mma16816(dvf[2 * dp], pa, bb[0], bb[1]);
                        mma16816(dvf[2 * dp + 1], pa, bb[2], bb[3]);
                    }
                }
                // dS^T = P^T (dP^T - delta[query]), into dpt; also stored (bf16) as dS[query][key].
                const int kl0 = warp * 16 + g, kl1 = kl0 + 8;  // tile-local key rows
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int qc = nt * 8 + 2 * t + (e & 1);
                        dpt[nt][e] = st[nt][e] * (dpt[nt][e] - dl_s[qc]);
                    }
                    const u32 lo = pack_rn(dpt[nt][0], dpt[nt][1]), hi = pack_rn(dpt[nt][2], dpt[nt][3]);
                    const int qc = nt * 8 + 2 * t;
                    dSs[qc * LDS + kl0] = (u16)(lo & 0xFFFFu);
                    dSs[(qc + 1) * LDS + kl0] = (u16)(lo >> 16);
                    dSs[qc * LDS + kl1] = (u16)(hi & 0xFFFFu);
                    dSs[(qc + 1) * LDS + kl1] = (u16)(hi >> 16);
                }
                // dK += dS^T Q (k = query): Q as B with .trans.
#pragma unroll
                for (int kc = 0; kc < BQ / 16; ++kc) {
                    u32 pa[4];
                    pa[0] = pack_rn(dpt[2 * kc][0], dpt[2 * kc][1]);
                    pa[1] = pack_rn(dpt[2 * kc][2], dpt[2 * kc][3]);
                    pa[2] = pack_rn(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]);
                    pa[3] = pack_rn(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3]);
#pragma unroll
                    for (int dp = 0; dp < D / 16; ++dp) {
                        u32 bb[4];
                        ldsm_x4_t(bb, Qs + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
                        mma16816(dkf[2 * dp], pa, bb[0], bb[1]);
                        mma16816(dkf[2 * dp + 1], pa, bb[2], bb[3]);
                    }
                }
                __syncthreads();  // dS is complete

                // dQ tile = dS K: warp w takes query rows [16 (w % RB), + 16), dims [DW (w / RB), + DW).
                {
                    const int rb = warp % RB, c0 = (warp / RB) * DW;
                    u32 a[AT_BN / 16][4];
#pragma unroll
                    for (int kc = 0; kc < AT_BN / 16; ++kc)
                        ldsm_x4(a[kc], dSs + (rb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + kc * 16 + (lane >> 4) * 8);
                    const int qr0 = q0 + rb * 16 + g, qr1 = qr0 + 8;
                    float* dq0 = dq_acc + (u64)(start + qr0) * qs + (u64)h * D;
                    float* dq1 = dq0 + 8 * qs;
#pragma unroll
                    for (int dp = 0; dp < DW / 16; ++dp) {
                        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                        for (int kc = 0; kc < AT_BN / 16; ++kc) {
                            u32 bb[4];
                            ldsm_x4_t(bb, Ks + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 + dp * 16 + (lane >> 4) * 8);
                            mma16816(acc[0], a[kc], bb[0], bb[1]);
                            mma16816(acc[1], a[kc], bb[2], bb[3]);
                        }
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            const int c = c0 + dp * 16 + j * 8 + 2 * t;
                            if (qr0 < len) {
                                atomicAdd(dq0 + c, acc[j][0] * scale);
                                atomicAdd(dq0 + c + 1, acc[j][1] * scale);
                            }
                            if (qr1 < len) {
                                atomicAdd(dq1 + c, acc[j][2] * scale);
                                atomicAdd(dq1 + c + 1, acc[j][3] * scale);
                            }
                        }
                    }
                }
            }
        }

        // dk = scale * dS^T Q, dv = P^T dO for the warp's 16 keys (rows kr0, kr1).
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = half ? kr1 : kr0;
            if (r >= len) continue;
            u16* dkr = dk + (u64)(start + r) * ks + (u64)kvh * D;
            u16* dvr = dv + (u64)(start + r) * ks + (u64)kvh * D;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                const int c = dt * 8 + 2 * t;
                const float k0v = dkf[dt][2 * half] * scale, k1v = dkf[dt][2 * half + 1] * scale;
                const float v0 = dvf[dt][2 * half], v1 = dvf[dt][2 * half + 1];
                if (kvec) {
                    *reinterpret_cast<u32*>(dkr + c) = pack_bf16x2(k0v, k1v);
                    *reinterpret_cast<u32*>(dvr + c) = pack_bf16x2(v0, v1);
                } else {
                    dkr[c] = f32_to_bf16_bits_rne(k0v);
                    dkr[c + 1] = f32_to_bf16_bits_rne(k1v);
                    dvr[c] = f32_to_bf16_bits_rne(v0);
                    dvr[c + 1] = f32_to_bf16_bits_rne(v1);
                }
            }
        }
    }
}

#define BWD_ARGS                                                                                                       \
    const u16 *__restrict__ q, const u16 *__restrict__ k, const u16 *__restrict__ v, const u16 *__restrict__ dout,     \
        const float *__restrict__ lse, const float *__restrict__ delta, const u32 *__restrict__ cu,                    \
        const u32 *__restrict__ sp, float *__restrict__ dq_acc, u16 *__restrict__ dk, u16 *__restrict__ dv, u32 T, u32 H, \
        u32 Hkv, u32 causal, u32 window, u32 has_sp, float scale

// Query tile of the backward: 32 rows for both head dims (64 rows spill at D = 64: S^T and dP^T
// then take 64 registers next to the dK / dV accumulators).
#define AT_BQ64 32
#define AT_BQ128 32

extern "C" __global__ void __launch_bounds__(AT_THREADS, 1) attention_bwd_d64(BWD_ARGS) {
    attention_bwd_impl<64, AT_BQ64>(q, k, v, dout, lse, delta, cu, sp, dq_acc, dk, dv, T, H, Hkv, causal, window, has_sp, scale);
}
extern "C" __global__ void __launch_bounds__(AT_THREADS) attention_bwd_d128(BWD_ARGS) {
    attention_bwd_impl<128, AT_BQ128>(q, k, v, dout, lse, delta, cu, sp, dq_acc, dk, dv, T, H, Hkv, causal, window, has_sp, scale);
}
