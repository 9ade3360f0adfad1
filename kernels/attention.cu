// attention.cu: fused scaled dot-product attention forward for inference, over a KV cache laid
// out as S slots of `cap` rows, with grouped-query heads and a key range per query row. One launch
// serves prefill, chunked prefill and batched decode of the decoder (causal, sliding window) and
// the bidirectional vision tower (each image a slot).
//
//   attention(q: u16[N, H*D], k: u16[S, cap, Hkv*D], v: u16[S, cap, Hkv*D], rows: u32[N, 3],
//             out: u16[N, H*D], H: u32, Hkv: u32, D: u32, cap: u32, S: u32, HB: u32,
//             scale: f32)
//       query row i has rows[i] = (slot, kv_start, kv_end); query head h reads kv head
//       g = h / (H/Hkv):
//         s_j = scale * dot(q[i, h, :], k[slot, j, g, :])          for j in [kv_start, kv_end)
//         out[i, h, :] = sum_j softmax(s)_j * v[slot, j, g, :]
//       An empty range (kv_start == kv_end) gives a zero row. A row outside the cache
//       (slot >= S, kv_start > kv_end or kv_end > cap) is an error the host cannot see (rows live
//       on the device): nothing is read for it and its whole output row is bf16 NaN (0x7FC0).
//
// Reference: stic::backend::cpu::attention_rows. bf16 inputs (raw bits, widened exactly), f32
// arithmetic: the dot products are f32 FMA chains over D, the softmax is the online (streaming)
// form in f32 (running max m, running sum l, accumulator rescaled by exp(m_old - m_new) per key
// tile, expf without fast math), the output is acc / l rounded once to bf16 (RNE). NaN inputs give
// NaN outputs (their payload is not preserved).
//
// Launch: grid (N, H/HB, 1); block (ATTN_THREADS = 128, 1, 1), exactly; no dynamic shared memory
// (about 39 KiB static). A block computes query row blockIdx.x for the HB query heads
// [blockIdx.y * HB, (blockIdx.y + 1) * HB), which must share one kv head: HB divides H/Hkv and
// HB <= ATTN_HB_MAX = 8 (the host takes the largest such divisor), so each key/value tile is read
// from global memory once for all HB heads (GQA).
// Requirements: D % 8 == 0 and 8 <= D <= ATTN_D_MAX = 128 (64, 80, 96, 128 among them); cap < 2^31.
// Key/value tiles of ATTN_TILE = 64 rows are staged in shared memory as u32 words (2 bf16) with a
// row stride of D/2 + 1 words (odd, so the thread-per-key score loop is free of bank conflicts);
// 16-byte global loads when k and v are 16-byte aligned (then every row is, as D % 8 == 0),
// scalar loads otherwise (same values, same arithmetic).
// Per tile: load K and V -> scores (thread per (head, key)) -> softmax update (warp per head) ->
// P.V (thread per (head, pair of dims), accumulators in registers).
// Aliasing: out must not overlap q, k, v or rows.

#include "common.cuh"

#define ATTN_THREADS 128
#define ATTN_TILE 64
#define ATTN_D_MAX 128
#define ATTN_HB_MAX 8
// Shared-memory row stride bound (words) of a staged key/value row.
#define ATTN_KS_MAX (ATTN_D_MAX / 2 + 1)
// Accumulator pairs per thread: HB * D/2 pairs over the block's threads, at most.
#define ATTN_PAIRS (ATTN_HB_MAX * (ATTN_D_MAX / 2) / ATTN_THREADS)

static_assert(ATTN_TILE == 64, "the softmax step gives each lane keys lane and lane + 32");
static_assert(ATTN_THREADS % 32 == 0 && ATTN_THREADS >= 32, "whole warps");
static_assert(ATTN_PAIRS * ATTN_THREADS == ATTN_HB_MAX * (ATTN_D_MAX / 2), "pairs divide evenly");

// The two bf16 of a u32 word (element 2w in the low half, as in memory), widened exactly.
__device__ __forceinline__ float bf16_lo(u32 x) { return __uint_as_float(x << 16); }
__device__ __forceinline__ float bf16_hi(u32 x) { return __uint_as_float(x & 0xFFFF0000u); }

// Stages rows [0, n) of a key or value tile into shared memory: row r of D bf16 starts at
// src + r * row_stride (global) and at dst + r * ks (u32 words, ks = D/2 + 1). `vec`: src is
// 16-byte aligned (and so is every row, row_stride and D being multiples of 8).
__device__ __forceinline__ void load_tile(const u16* __restrict__ src, u64 row_stride, u32 n,
                                          u32 D, u32 ks, u32* __restrict__ dst, bool vec) {
    const u32 chunks = D / 8u;  // 16-byte chunks per row
    for (u32 t = threadIdx.x; t < n * chunks; t += blockDim.x) {
        const u32 r = t / chunks, c = t - r * chunks;
        const u16* p = src + (u64)r * row_stride + c * 8u;
        u32* d = dst + r * ks + c * 4u;
        if (vec) {
            const uint4 x = *reinterpret_cast<const uint4*>(p);
            d[0] = x.x;
            d[1] = x.y;
            d[2] = x.z;
            d[3] = x.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) d[e] = (u32)p[2 * e] | ((u32)p[2 * e + 1] << 16);
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
attention(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
          const u32* __restrict__ rows, u16* __restrict__ out, u32 H, u32 Hkv, u32 D, u32 cap,
          u32 S, u32 HB, float scale) {
    __shared__ u32 ks[ATTN_TILE * ATTN_KS_MAX];      // key tile, bf16 pairs
    __shared__ u32 vs[ATTN_TILE * ATTN_KS_MAX];      // value tile, bf16 pairs
    __shared__ float qs[ATTN_HB_MAX * ATTN_D_MAX];   // the HB query heads, widened
    __shared__ float ps[ATTN_HB_MAX * ATTN_TILE];    // scores, then probabilities, of the tile
    __shared__ float m_s[ATTN_HB_MAX];               // running max per head
    __shared__ float l_s[ATTN_HB_MAX];               // running sum of exp(s - m) per head
    __shared__ float a_s[ATTN_HB_MAX];               // this tile's rescale exp(m_old - m_new)

    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 i = blockIdx.x, h0 = blockIdx.y * HB, g = h0 / (H / Hkv);
    const u64 qw = (u64)H * D, kw = (u64)Hkv * D;
    u16* o = out + (u64)i * qw + (u64)h0 * D;
    const u32* row = rows + 3ull * i;
    const u32 slot = row[0], lo = row[1], hi = row[2];

    // Block-uniform early exits (before any __syncthreads).
    if (slot >= S || lo > hi || hi > cap) {
        for (u32 e = tid; e < HB * D; e += blockDim.x) o[e] = BF16_NAN_BITS;
        return;
    }
    if (lo == hi) {
        for (u32 e = tid; e < HB * D; e += blockDim.x) o[e] = 0;
        return;
    }

    const u16* qr = q + (u64)i * qw + (u64)h0 * D;
    for (u32 e = tid; e < HB * D; e += blockDim.x) qs[e] = bf16_bits_to_f32(qr[e]);
    if (tid < HB) {
        m_s[tid] = __uint_as_float(0xFF800000u);  // -inf
        l_s[tid] = 0.0f;
    }

    const u32 words = D / 2u, kstride = words + 1u, npairs = HB * words;
    const bool vec = aligned16(k) && aligned16(v);
    // Element (slot, j, g, 0) is at kvbase + j * kw.
    const u64 kvbase = (u64)slot * cap * kw + (u64)g * D;
    float acc[ATTN_PAIRS][2];
#pragma unroll
    for (int r = 0; r < ATTN_PAIRS; ++r) acc[r][0] = acc[r][1] = 0.0f;

    for (u32 t0 = lo; t0 < hi; t0 += ATTN_TILE) {
        const u32 n = min((u32)ATTN_TILE, hi - t0);  // keys in this tile, >= 1
        // The previous tile's readers of ks, vs, ps and a_s are done (first tile: qs, m_s and
        // l_s are initialised).
        __syncthreads();
        load_tile(k + kvbase + (u64)t0 * kw, kw, n, D, kstride, ks, vec);
        load_tile(v + kvbase + (u64)t0 * kw, kw, n, D, kstride, vs, vec);
        __syncthreads();

        // Scores: thread per (head hh, key j); a warp covers 32 keys of one head, so the q reads
        // are broadcasts and the key rows (odd word stride) hit 32 distinct banks.
        for (u32 p = tid; p < HB * ATTN_TILE; p += blockDim.x) {
            const u32 hh = p / ATTN_TILE, j = p % ATTN_TILE;
            float s = __uint_as_float(0xFF800000u);  // keys past the range: exp(-inf) = 0
            if (j < n) {
                const float* qh = qs + hh * D;
                const u32* kr = ks + j * kstride;
                float dot = 0.0f;
                for (u32 w = 0; w < words; ++w) {
                    const u32 x = kr[w];
                    dot = fmaf(qh[2u * w], bf16_lo(x), dot);
                    dot = fmaf(qh[2u * w + 1u], bf16_hi(x), dot);
                }
                s = dot * scale;
            }
            ps[p] = s;
        }
        __syncthreads();

        // Online softmax update: warp per head. The tile has at least one key in range, so m_new
        // is finite for finite inputs; the first tile's rescale is exp(-inf) = 0.
        for (u32 hh = warp; hh < HB; hh += blockDim.x >> 5) {
            float* sr = ps + hh * ATTN_TILE;
            const float s0 = sr[lane], s1 = sr[lane + 32u];
            const float m_old = m_s[hh];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
            const float p0 = expf(s0 - m_new), p1 = expf(s1 - m_new);
            sr[lane] = p0;
            sr[lane + 32u] = p1;
            const float sum = warp_sum(p0 + p1);
            if (lane == 0) {
                const float a = expf(m_old - m_new);
                a_s[hh] = a;
                l_s[hh] = l_s[hh] * a + sum;
                m_s[hh] = m_new;
            }
        }
        __syncthreads();

        // acc = acc * rescale + P.V: thread per (head, pair of dims); consecutive threads read
        // consecutive words of a value row, the probabilities are broadcasts.
#pragma unroll
        for (int r = 0; r < ATTN_PAIRS; ++r) {
            const u32 e = tid + (u32)r * ATTN_THREADS;
            if (e < npairs) {
                const u32 hh = e / words, w = e - hh * words;
                const float a = a_s[hh];
                float a0 = acc[r][0] * a, a1 = acc[r][1] * a;
                const float* pr = ps + hh * ATTN_TILE;
                const u32* vc = vs + w;
                for (u32 j = 0; j < n; ++j) {
                    const float pj = pr[j];
                    const u32 x = vc[j * kstride];
                    a0 = fmaf(pj, bf16_lo(x), a0);
                    a1 = fmaf(pj, bf16_hi(x), a1);
                }
                acc[r][0] = a0;
                acc[r][1] = a1;
            }
        }
    }

    // out = acc / l (l >= 1: the max key contributes exp(0)). l_s was last written before the
    // __syncthreads that precedes the last P.V step.
#pragma unroll
    for (int r = 0; r < ATTN_PAIRS; ++r) {
        const u32 e = tid + (u32)r * ATTN_THREADS;
        if (e < npairs) {
            const u32 hh = e / words, w = e - hh * words;
            const float l = l_s[hh];
            o[hh * D + 2u * w] = f32_to_bf16_bits_rne(acc[r][0] / l);
            o[hh * D + 2u * w + 1u] = f32_to_bf16_bits_rne(acc[r][1] / l);
        }
    }
}
