// attention.cu: fused scaled dot-product attention forward for inference, over a KV cache laid
// out as S slots of `cap` rows, with grouped-query heads and a key range per query row. One call
// serves prefill, chunked prefill and batched decode of the decoder (causal, sliding window) and
// the bidirectional vision tower (each image a slot).
//
// Two paths, chosen by the host (CudaDevice::attention, `attention_splits`): the single-pass
// kernel `attention` below (one block per query row and group of query heads), and split-KV
// (flash-decoding) for few rows with long ranges (decode): `attention_split` writes the partial
// softmax state of chunks of each row's key range into an f32 workspace and `attention_combine`
// merges them in split order; see the section "Split-KV" after `attention`.
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
#include "ptx.cuh"

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
        m_s[tid] = NEG_INF;
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
            float s = NEG_INF;  // keys past the range: exp(-inf) = 0
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

// =============================================================================================
// Split-KV (flash-decoding): attention_split + attention_combine.
//
// The same operation as `attention` (same inputs, same out, same semantics: GQA, zero rows for
// empty ranges, NaN rows for rows outside the cache, any kv range per row, D % 8 == 0 up to 128)
// in two launches, so that a few long rows (decode: one query row per sequence) fill the GPU:
//
//   attention_split(q, k, v, rows, ws_acc: f32[N, H, splits, D], ws_ml: f32[N, H, splits, 2],
//                   H, Hkv, D, cap, S, HB, splits, scale)
//       grid (N, H/HB, splits); block (ATTN_THREADS = 128, 1, 1), exactly; no dynamic shared
//       memory (about 40 KiB static: up to 5 blocks per H100 SM, 4 per A100 SM).
//       Row i of length len = kv_end - kv_start is cut into chunks of
//         chunk = ceil(ceil(len / splits) / ATTS_TILE) * ATTS_TILE keys      (split_chunk)
//       and block (i, y, z) handles keys [kv_start + z * chunk, min(kv_end, .. + chunk)) for the
//       HB query heads [y * HB, (y + 1) * HB) that share kv head g (GQA: each K/V tile is read
//       once for the HB heads). Splits z >= nz = ceil(len / chunk) are empty: their blocks exit
//       at once and write nothing. For each of its heads h a non-empty split writes the partial
//       online-softmax state of its chunk: m = max_j s_j, l = sum_j exp(s_j - m) (>= 1) into
//       ws_ml[i, h, z, 0..2] and acc[d] = sum_j exp(s_j - m) v[j, d] (un-normalised) into
//       ws_acc[i, h, z, :]. Rows outside the cache and empty ranges write nothing.
//   attention_combine(rows, ws_acc, ws_ml, out, N, H, D, cap, S, splits)
//       any 1-D grid (grid-stride over the N*H*D outputs; the host uses 256 threads). Thread per
//       output element (i, h, d): in split order z = 0 .. nz-1 (deterministic),
//         M = max_z m_z,  w_z = exp(m_z - M),  out = (sum_z w_z acc_z[d]) / (sum_z w_z l_z),
//       rounded once to bf16 (RNE); NaN rows and zero rows as `attention`. It reads only the
//       splits z < nz of valid non-empty rows, which attention_split wrote: the workspace needs
//       no initialisation. With nz = 1, out = acc / l as in the single-pass kernel.
//
// The split kernel, per tile of ATTS_TILE = 32 keys:
//   - K and V tiles are double-buffered in shared memory with cp.async 16-byte copies (issued for
//     tile t+1 right after tile t has landed, so one tile (32 keys x 2 x D bf16 = 16 KiB at
//     D=128) is in flight per block while the block computes; with 4-5 blocks per SM that is
//     64-80 KiB per SM, above the ~25 KiB that Little's law asks for at 3 TB/s); plain loads of
//     the same layout when k or v is not 16-byte aligned. Rows are staged as u32 words (2 bf16)
//     with a row stride of (D/8 | 1) 16-byte chunks (odd), so that the thread-per-key 16-byte
//     reads of the score step hit 8 distinct bank quads per quarter warp (no conflicts).
//   - scores and softmax: warp w owns heads w and w + 4 (< HB), lane = key: s = scale * q.k
//     (f32 FMA chain in dim order, as `attention`), then the online update in registers (warp
//     max, expf, warp sum; running m and l live in the owning warp's registers, all lanes equal).
//     The probabilities go to shared memory as [key][head], the tile's rescale exp(m_old - m_new)
//     per head to a_s.
//   - P.V: thread (key lane kl, quad qd) with D/4 quads per row and kpp = min(128 / (D/4), 32)
//     key lanes: keys kl, kl + kpp, ... of the tile, 4 dims for all HB heads (v read once per
//     key for the whole group, 8-byte loads; p as 16-byte broadcasts), accumulators in
//     registers. At the end the kpp partial accumulators are added in key-lane order (fixed)
//     through shared memory.
// Per key of a sequence and kv head (512 bytes of K+V at D=128, ~40 SM cycles at 80% of H100
// HBM bandwidth per SM), HB=4 costs ~16 shared-memory wavefronts and ~70 warp instructions,
// against 4 schedulers x ~40 cycles: the memory path, not the arithmetic, should set the pace.
// Precision: as `attention` (f32, expf without fast math, one bf16 rounding); the partial states
// are combined in f32 with one more expf and FMA per split.
// Aliasing: out must not overlap q, k, v, rows or the workspace; ws_acc and ws_ml are distinct.

#define ATTS_TILE 32
// Largest staged row stride in 16-byte chunks ((D/8) | 1 at D = 128) and in u32 words.
#define ATTS_CH_MAX (ATTN_D_MAX / 8 + 1)
#define ATTS_KS_MAX (4 * ATTS_CH_MAX)
#define ATTS_WARPS (ATTN_THREADS / 32)

static_assert(ATTS_TILE == 32, "the softmax step gives each lane one key");
static_assert(ATTN_HB_MAX <= 2 * ATTS_WARPS, "a warp owns at most two heads of the group");
static_assert(ATTN_HB_MAX == 8, "P.V reads the probabilities of a key as two float4");

// Keys per split of a row of len >= 1 keys cut into `splits` (>= 1): ceil(len / splits) rounded
// up to whole tiles. The host's `attention_split_chunk` is the same formula. len < 2^31 and
// splits <= 2^16 keep every sum below 2^32.
__device__ __forceinline__ u32 split_chunk(u32 len, u32 splits) {
    const u32 c = (len + splits - 1u) / splits;
    return (c + ATTS_TILE - 1u) / ATTS_TILE * ATTS_TILE;
}

// Stages rows [0, n) of a key or value tile (row r at src + r * row_stride) at dst + r * ks
// (u32 words; ks a multiple of 4): cp.async 16-byte copies when `vec` (src 16-byte aligned, and
// with it every row), else `load_tile`'s plain loads. Rows >= n are left as they are (never read).
__device__ __forceinline__ void stage_tile(const u16* __restrict__ src, u64 row_stride, u32 n, u32 D,
                                           u32 ks, u32* __restrict__ dst, bool vec) {
    if (!vec) {
        load_tile(src, row_stride, n, D, ks, dst, false);
        return;
    }
    const u32 chunks = D / 8u;
    for (u32 t = threadIdx.x; t < n * chunks; t += blockDim.x) {
        const u32 r = t / chunks, c = t - r * chunks;
        cp_async16(dst + r * ks + c * 4u, src + (u64)r * row_stride + c * 8u, 16u);
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS, 4)
attention_split(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                const u32* __restrict__ rows, float* __restrict__ ws_acc, float* __restrict__ ws_ml,
                u32 H, u32 Hkv, u32 D, u32 cap, u32 S, u32 HB, u32 splits, float scale) {
    __shared__ __align__(16) u32 kv[2][2][ATTS_TILE * ATTS_KS_MAX];  // [stage][K, V] tiles
    __shared__ __align__(16) float qs[ATTN_HB_MAX * ATTN_D_MAX];     // the HB query heads
    __shared__ __align__(16) float pt[ATTS_TILE * ATTN_HB_MAX];      // probabilities [key][head]
    __shared__ float a_s[ATTN_HB_MAX];                               // tile rescale per head

    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 i = blockIdx.x, h0 = blockIdx.y * HB, z = blockIdx.z, g = h0 / (H / Hkv);
    const u32* row = rows + 3ull * i;
    const u32 slot = row[0], lo = row[1], hi = row[2];
    // Block-uniform exits before any barrier: rows outside the cache and empty ranges are written
    // by the combine alone; so are empty splits' nothing.
    if (slot >= S || lo > hi || hi > cap || lo == hi) return;
    const u32 len = hi - lo, chunk = split_chunk(len, splits);
    if ((u64)z * chunk >= len) return;
    const u32 c0 = lo + z * chunk, c1 = min(hi, c0 + chunk);  // z * chunk < len: no overflow
    const u32 ntiles = (c1 - c0 + ATTS_TILE - 1u) / ATTS_TILE;

    const u64 qw = (u64)H * D, kw = (u64)Hkv * D;
    const u16* qr = q + (u64)i * qw + (u64)h0 * D;
    for (u32 e = tid; e < HB * D; e += blockDim.x) qs[e] = bf16_bits_to_f32(qr[e]);

    const u32 chunks = D / 8u, ks = 4u * (chunks | 1u);
    const bool vec = aligned16(k) && aligned16(v);
    const u64 kvbase = (u64)slot * cap * kw + (u64)g * D;  // element (slot, j, g, 0) - j * kw
    stage_tile(k + kvbase + (u64)c0 * kw, kw, min((u32)ATTS_TILE, c1 - c0), D, ks, kv[0][0], vec);
    stage_tile(v + kvbase + (u64)c0 * kw, kw, min((u32)ATTS_TILE, c1 - c0), D, ks, kv[0][1], vec);
    cp_async_commit();

    // Softmax state of the heads this warp owns (warp, warp + ATTS_WARPS), equal in all lanes.
    float m_r[2] = {NEG_INF, NEG_INF}, l_r[2] = {0.0f, 0.0f};
    // P.V mapping.
    const u32 q4 = D / 4u, kpp = min((u32)ATTN_THREADS / q4, (u32)ATTS_TILE);
    const u32 kl = tid / q4, qd = tid - kl * q4;
    const bool pv = kl < kpp;
    float acc[ATTN_HB_MAX][4];
#pragma unroll
    for (int hh = 0; hh < ATTN_HB_MAX; ++hh) acc[hh][0] = acc[hh][1] = acc[hh][2] = acc[hh][3] = 0.0f;

    for (u32 t = 0; t < ntiles; ++t) {
        const u32 t0 = c0 + t * ATTS_TILE, n = min((u32)ATTS_TILE, c1 - t0);  // n >= 1
        const u32* kt = kv[t & 1u][0];
        const u32* vt = kv[t & 1u][1];
        // Tile t has landed (this thread's copies, then everyone's); every thread is done with
        // tile t-1 (its buffer, pt and a_s); on the first tile qs is written.
        cp_async_wait<0>();
        __syncthreads();
        if (t + 1u < ntiles) {
            const u32 t1 = t0 + ATTS_TILE, n1 = min((u32)ATTS_TILE, c1 - t1);
            stage_tile(k + kvbase + (u64)t1 * kw, kw, n1, D, ks, kv[(t + 1u) & 1u][0], vec);
            stage_tile(v + kvbase + (u64)t1 * kw, kw, n1, D, ks, kv[(t + 1u) & 1u][1], vec);
            cp_async_commit();
        }

        // Scores and the online softmax update: warp per head, lane per key (warp-uniform loop).
#pragma unroll
        for (u32 r = 0; r < 2u; ++r) {
            const u32 hh = warp + r * ATTS_WARPS;
            if (hh < HB) {
                float s = NEG_INF;  // keys past the chunk: exp(-inf) = 0
                if (lane < n) {
                    const float4* qh = reinterpret_cast<const float4*>(qs + hh * D);
                    const uint4* kr = reinterpret_cast<const uint4*>(kt + lane * ks);
                    float dot = 0.0f;
                    for (u32 c = 0; c < chunks; ++c) {
                        const uint4 x = kr[c];
                        const float4 qa = qh[2u * c], qb = qh[2u * c + 1u];
                        dot = fmaf(qa.x, bf16_lo(x.x), dot);
                        dot = fmaf(qa.y, bf16_hi(x.x), dot);
                        dot = fmaf(qa.z, bf16_lo(x.y), dot);
                        dot = fmaf(qa.w, bf16_hi(x.y), dot);
                        dot = fmaf(qb.x, bf16_lo(x.z), dot);
                        dot = fmaf(qb.y, bf16_hi(x.z), dot);
                        dot = fmaf(qb.z, bf16_lo(x.w), dot);
                        dot = fmaf(qb.w, bf16_hi(x.w), dot);
                    }
                    s = dot * scale;
                }
                // Lane 0 always holds a key, so m_new is finite for finite inputs; the first
                // tile's rescale is exp(-inf) = 0.
                const float m_new = fmaxf(m_r[r], warp_max(s));
                const float p = expf(s - m_new);
                const float sum = warp_sum(p);
                const float a = expf(m_r[r] - m_new);
                l_r[r] = l_r[r] * a + sum;
                m_r[r] = m_new;
                pt[lane * ATTN_HB_MAX + hh] = p;
                if (lane == 0) a_s[hh] = a;
            } else {
                // No head here: zeros, so that the float4 loads of pt below (which read heads
                // up to 4 or 8 whatever HB is) never read unwritten shared memory.
                pt[lane * ATTN_HB_MAX + hh] = 0.0f;
            }
        }
        __syncthreads();

        // acc = acc * rescale + P.V over this thread's keys of the tile.
        if (pv) {
#pragma unroll
            for (u32 hh = 0; hh < ATTN_HB_MAX; ++hh) {
                if (hh < HB) {
                    const float a = a_s[hh];
                    acc[hh][0] *= a;
                    acc[hh][1] *= a;
                    acc[hh][2] *= a;
                    acc[hh][3] *= a;
                }
            }
            for (u32 j = kl; j < n; j += kpp) {
                const uint2 x = *reinterpret_cast<const uint2*>(vt + j * ks + 2u * qd);
                const float v0 = bf16_lo(x.x), v1 = bf16_hi(x.x), v2 = bf16_lo(x.y), v3 = bf16_hi(x.y);
                const float4 pa = *reinterpret_cast<const float4*>(pt + j * ATTN_HB_MAX);
                const float4 pb = HB > 4u ? *reinterpret_cast<const float4*>(pt + j * ATTN_HB_MAX + 4u)
                                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const float p[ATTN_HB_MAX] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
                for (u32 hh = 0; hh < ATTN_HB_MAX; ++hh) {
                    if (hh < HB) {
                        acc[hh][0] = fmaf(p[hh], v0, acc[hh][0]);
                        acc[hh][1] = fmaf(p[hh], v1, acc[hh][1]);
                        acc[hh][2] = fmaf(p[hh], v2, acc[hh][2]);
                        acc[hh][3] = fmaf(p[hh], v3, acc[hh][3]);
                    }
                }
            }
        }
    }

    // The partial state of this split. Every cp.async group has completed (the last tile issued
    // none after its wait); after this barrier no thread reads the tiles, so they hold the kpp
    // partial accumulators: red[(kl * HB + hh) * D + d] (kpp * D <= 512 floats per head: 16 KiB
    // at most, within the 34 KiB of kv).
    __syncthreads();
    float* red = reinterpret_cast<float*>(&kv[0][0][0]);
    if (pv) {
#pragma unroll
        for (u32 hh = 0; hh < ATTN_HB_MAX; ++hh) {
            if (hh < HB) {
                float4* d4 = reinterpret_cast<float4*>(red + (kl * HB + hh) * D + 4u * qd);
                *d4 = make_float4(acc[hh][0], acc[hh][1], acc[hh][2], acc[hh][3]);
            }
        }
    }
    const u64 base = ((u64)i * H + h0) * splits + z;  // (i, h0, z); head h0 + hh adds hh * splits
#pragma unroll
    for (u32 r = 0; r < 2u; ++r) {
        const u32 hh = warp + r * ATTS_WARPS;
        if (hh < HB && lane == 0) {
            float* ml = ws_ml + 2ull * (base + (u64)hh * splits);
            ml[0] = m_r[r];
            ml[1] = l_r[r];
        }
    }
    __syncthreads();
    for (u32 e = tid; e < HB * D; e += blockDim.x) {
        const u32 hh = e / D, d = e - hh * D;
        float s = 0.0f;
        for (u32 r = 0; r < kpp; ++r) s += red[(r * HB + hh) * D + d];
        ws_acc[(base + (u64)hh * splits) * D + d] = s;
    }
}

extern "C" __global__ void __launch_bounds__(256)
attention_combine(const u32* __restrict__ rows, const float* __restrict__ ws_acc,
                  const float* __restrict__ ws_ml, u16* __restrict__ out, u32 N, u32 H, u32 D,
                  u32 cap, u32 S, u32 splits) {
    const u64 total = (u64)N * H * D;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        const u64 ih = e / D;  // (i, h)
        const u32 d = (u32)(e - ih * D);
        const u32* row = rows + 3ull * (ih / H);
        const u32 slot = row[0], lo = row[1], hi = row[2];
        if (slot >= S || lo > hi || hi > cap) {
            out[e] = BF16_NAN_BITS;
            continue;
        }
        if (lo == hi) {
            out[e] = 0;
            continue;
        }
        const u32 len = hi - lo, chunk = split_chunk(len, splits), nz = (len + chunk - 1u) / chunk;
        const float* ml = ws_ml + 2ull * ih * splits;
        const float* a = ws_acc + ih * splits * D + d;
        float m = NEG_INF;
        for (u32 s = 0; s < nz; ++s) m = fmaxf(m, ml[2u * s]);
        float l = 0.0f, o = 0.0f;
        for (u32 s = 0; s < nz; ++s) {
            const float w = expf(ml[2u * s] - m);
            l = fmaf(w, ml[2u * s + 1u], l);
            o = fmaf(w, a[(u64)s * D], o);
        }
        out[e] = f32_to_bf16_bits_rne(o / l);
    }
}
