// attention_hopper.cu: the Hopper (sm_90a) forward of the training / prefill attention, with the
// semantics and outputs of attention_fwd_d{64,128} in attention_train.cu: FlashAttention over a
// packed variable-length batch on wgmma tensor cores, K/V tiles brought in by the TMA copy engine
// through a multi-stage shared-memory ring, warp-specialised (one producer warp, two consumer
// warpgroups). Selected at run time on compute capability 9.x (src/backend/cuda/attention_hopper.rs).
//
// Signature (both head dims):
//   attention_fwd_hopper_d{64,128}(const CUtensorMap tm_q, tm_k, tm_v (__grid_constant__),
//       const u32* cu, const u32* sp, u16* out, float* lse,
//       u32 T, u32 H, u32 Hkv, u32 causal, u32 window, u32 has_sp, float scale)
// Layout, masks, lse and the precision model: exactly those of attention_train.cu (q, out
// u16[Ttot, H, D]; k, v u16[Ttot, Hkv, D]; cu u32[B + 1]; sp u32[2B]; lse f32[H, Ttot]; query
// head h reads kv head h / (H / Hkv)). S = Q K^T from exact bf16 products summed in f32 by the
// tensor cores, P = expf(S scale - m) in f32, rounded to bf16 (RNE) before P V, l sums the f32 P,
// out = acc / l rounded to bf16, lse = m + logf(l). Only the order of the f32 sums inside a
// tensor-core product differs from the sm_80 kernel.
//
// Tensor maps (made on the host by cuTensorMapEncodeTiled): 2-D bf16 views of q as
// [Ttot rows][H*D cols] and of k, v as [Ttot][Hkv*D] (row stride H*D*2 / Hkv*D*2 bytes, a
// multiple of 16; base 16-byte aligned: the host falls back to the sm_80 kernel otherwise), box
// [rows = 128][cols = 64] (64 bf16 = 128 bytes, the widest box the 128-byte swizzle allows),
// CU_TENSOR_MAP_SWIZZLE_128B, out-of-bound rows (past Ttot) zero-filled. A tile of D columns is
// D/64 boxes at column h*D + 64c. Rows of the box past the end of the sequence but inside Ttot
// belong to the next sequence: they are loaded, their K rows are masked exactly as the sm_80
// kernel masks its zero-filled rows (scores of keys j >= len are set to -inf, whatever Q K^T gave,
// so a NaN or inf there never reaches P), and their V rows are zeroed in shared memory before the
// P V product (clear_tail below): P = 0 times a non-finite V value would be NaN in the sum. Query
// rows >= len are computed from whatever they hold and never stored (each output row depends on
// its own query row only).
//
// Launch: grid (ceil(max_seqlen / 128), H, B), block 384 threads = 3 warpgroups, dynamic shared
// memory hopper_smem_bytes(D) (host: attention_hopper.rs; the kernel traps if it got less).
//   warpgroup 0: the producer. Its warps give registers back (setmaxnreg.dec 40); thread 0 issues
//     every TMA copy, warps 1-3 return at once.
//   warpgroups 1, 2: the consumers (setmaxnreg.inc 232): warpgroup 1 + c owns the query rows
//     [64c, 64c + 64) of the block's 128-row tile; warp w of it owns rows [16w, 16w + 16).
// A block owns 128 query rows of one head of one sequence (tiles in reverse order, longest causal
// tiles first; blocks stride over tiles when max_seqlen undercounts); it visits the 128-key tiles
// of the causal / window range that the mask does not hide entirely, as attention_train.cu does
// (the same tile_hidden / tile_partial / visible tests, on 128-row tiles).
//
// Shared memory (from a 1024-byte aligned base; every tile base is 1024-aligned, which the
// 128-byte swizzle pattern and the wgmma descriptors below assume):
//   Q:         D/64 column blocks of [128 rows][128 bytes]                 (16 KiB per block)
//   K[STAGES]: D/64 column blocks of [128 keys][128 bytes] per stage
//   V[STAGES]: same
//   mbarriers: full[STAGES], empty[STAGES], q_full, q_empty (8 bytes each)
// STAGES = 2 at D = 128 (160 KiB of tiles), 3 at D = 64 (112 KiB).
//
// ---------------------------------------------------------------------------------------------
// Synchronisation (mbarriers; "phase k" is the k-th completion of a barrier, counted from 0; a
// wait for phase k polls try_wait.parity with parity k & 1, which returns once phase k has
// completed; it never runs two phases ahead of a waiter, see below):
//   full[s]  (count 1 + tx bytes): the producer's arrive.expect_tx(2 * 128 * D * 2 bytes) and the
//            TMA's complete_tx of the K and V tiles. Key tile number n (counted over the block's
//            whole life, all query tiles) uses stage s = n % STAGES in round r = n / STAGES:
//            consumers wait full[s] phase r.
//   empty[s] (count 256): every consumer thread arrives once it has waited for its last wgmma
//            that reads stage s (wgmma.wait_group 0). The producer waits empty[s] phase r - 1
//            before refilling stage s in round r >= 1.
//   q_full   (count 1 + tx): the Q tile of query tile number m (phase m); q_empty (count 256):
//            the consumers are done with Q of tile m (the producer waits phase m - 1 before
//            loading tile m >= 1).
// Neither side can lap the other: the producer refills stage s for round r + 1 only after
// empty[s] phase r, i.e. after every consumer thread has waited full[s] phase r; consumers wait
// full[s] phase r + 1 only after the producer has waited empty[s] phase r. So a waiter's parity
// always names the next phase to complete or the one just completed.
// TMA writes and wgmma reads are both async-proxy accesses to shared memory ordered by the
// mbarrier (complete_tx -> try_wait acquire) and by wgmma.wait_group -> mbarrier arrive
// (release) -> producer try_wait (acquire) -> next TMA. The one ordinary store to a tile is
// clear_tail's zeroing of the V rows past the sequence in the last partial key tile: each
// consumer thread stores its share, issues fence.proxy.async.shared::cta (its stores become
// visible to the async proxy), and the 256 consumer threads meet at named barrier 1 before either
// warpgroup's P V wgmma reads the tile. The stores come after full[s]'s wait (the TMA's writes
// are complete) and before empty[s]'s arrive (the next TMA into the stage waits for it).
//
// ---------------------------------------------------------------------------------------------
// wgmma (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"), per consumer
// warpgroup and key tile:
//   S (64 x 128, f32)  = Q_wg (64 x D) K^T:  D/16 x wgmma.m64n128k16, A = Q and B = K both from
//                        shared memory, both K-major (the reduction index d is contiguous),
//                        imm-trans-a = imm-trans-b = 0; the first with scale-d = 0.
//   O (64 x D, f32)   += P (64 x 128) V:     8 x wgmma.m64n{D}k16, A = P from registers, B = V from
//                        shared memory N-major (V rows are keys = the reduction index, d is
//                        contiguous): imm-trans-b = 1.
// Accumulator layout (m64nNk16, f32 D): thread (warp w of the warpgroup, lane = 4g + t) holds
//   d[4i + 0], d[4i + 1] = (row 16w + g,     cols 8i + 2t, 8i + 2t + 1)
//   d[4i + 2], d[4i + 3] = (row 16w + g + 8, cols 8i + 2t, 8i + 2t + 1)      for i < N/8,
// i.e. per warp exactly the m16n8k16 C layout of attention_train.cu repeated over N/8 column
// blocks. The A-from-registers layout (bf16, 4 x 32-bit registers per k16 slice) is per warp the
// m16n8k16 A layout: a0 = (row g, k 2t..2t+1), a1 = (row g+8, k 2t..2t+1), a2 = (row g,
// k 2t+8..2t+9), a3 = (row g+8, k 2t+8..2t+9), low half = lower k. So the P fragment of keys
// [16j, 16j + 16) is, with no data movement: a0 = pack(s[8j], s[8j+1]), a1 = pack(s[8j+2], s[8j+3]),
// a2 = pack(s[8j+4], s[8j+5]), a3 = pack(s[8j+6], s[8j+7]).
//
// Shared-memory matrix descriptors (64-bit): bits 0-13 start address >> 4, 16-29 leading-
// dimension byte offset (LBO) >> 4, 32-45 stride-dimension byte offset (SBO) >> 4, 49-51 base
// offset (0 here), 62-63 swizzle mode (1 = 128-byte swizzle). The 128-byte swizzle, as the TMA
// writes it: inside each 1024-byte block of 8 rows x 128 bytes, the 16-byte chunk c of row r
// (r = address bits 7-9) is stored at chunk c ^ r (address bits 4-6 ^= bits 7-9). The wgmma
// unit applies the same XOR on the absolute shared address, hence the 1024-byte alignment.
//   K-major operand (Q as A, K as B), rows of 64 bf16 = 128 bytes, 8-row groups 1024 bytes apart:
//     canonical layout Swizzle<3,4,3> o ((8, m), (8 elts, 2)) : ((128 B, SBO), (2 B, -)):
//     SBO = 1024, LBO unused for swizzled K-major layouts (a k16 slice, 32 bytes, never crosses
//     a 128-byte row), set to 16 (encoded 1) as CUTLASS does. The k16 slice kk of a D-wide tile
//     starts at column block kk / 4, byte 32 (kk % 4) of the row: start address + 32 (kk % 4),
//     which leaves address bits 7-9 (and so the base offset) unchanged.
//   N-major operand (V as B of P V, 16 keys x N dims): canonical layout Swizzle<3,4,3> o
//     ((64 elts, n), (8, k)) : ((2 B, LBO), (128 B, SBO)): 64 dims contiguous per row (one
//     128-byte swizzled row of a column block), the next 64 dims LBO bytes away (the next column
//     block: 128 keys x 128 bytes = 16384), 8-key groups SBO = 1024 bytes apart. The k16 slice kc
//     (keys 16kc..16kc+15) starts at byte 2048 kc of the stage's column block 0.
//   The warpgroup's 64 query rows start 64 x 128 = 8192 bytes into each Q column block.
//
// Fences: wgmma.fence before the first wgmma of each batch (the accumulators or the P registers
// were written by ordinary instructions since the last batch); wgmma.commit_group after the batch;
// wgmma.wait_group 0 before the results are read; the accumulator registers pass through empty
// asm statements ("+f", fence_regs in ptx.cuh) around each batch so that the compiler cannot move
// ordinary accesses of them across the asynchronous window. Every PTX instruction is a wrapper of
// ptx.cuh; the mask, online softmax and epilogue are attention_softmax.cuh's, shared with the
// sm_80 kernel.

#include <cuda.h>

#include "common.cuh"
#include "ptx.cuh"

#define HP_THREADS 384
#define HP_BM 128        // query rows per block (2 consumer warpgroups x 64)
#define HP_BN 128        // keys per tile
#define HP_CONSUMERS 256 // consumer threads (arrivals on empty[s] and q_empty)
#define HP_BLOCK_BYTES (128 * 128)  // one [128 rows][64 cols] bf16 column block

static_assert(HP_BM == 128 && HP_BN == 128, "one column block is [128 rows][128 bytes] for Q, K and V alike, and the TMA box has 128 rows");

// Dynamic shared memory of the D-wide kernel (must equal hopper_smem_bytes in attention_hopper.rs):
// 1024 bytes of alignment slack, Q, STAGES x (K, V), 2 STAGES + 2 mbarriers.
template <int D, int STAGES>
struct HopperSmem {
    static constexpr u32 BLOCKS = D / 64;
    static constexpr u32 Q = 0;
    static constexpr u32 K = Q + BLOCKS * HP_BLOCK_BYTES;
    static constexpr u32 V = K + STAGES * BLOCKS * HP_BLOCK_BYTES;
    static constexpr u32 BAR = V + STAGES * BLOCKS * HP_BLOCK_BYTES;
    static constexpr u32 BYTES = 1024 + BAR + 8 * (2 * STAGES + 2);
};

#include "attention_mask.cuh"
#include "attention_softmax.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// ---------------------------------------------------------------------------------------------
// The kernel body (sm_90a).

// The shared-memory matrix descriptor of a 128-byte-swizzled operand at shared address `addr`
// (see the header: LBO, SBO in bytes, multiples of 16; swizzle mode 1 in bits 62-63).
__device__ __forceinline__ u64 sw128_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}

// Key range [kbeg, kend) of the query tile [q0, q1) and the first visible key tile at or after k0:
// computed identically by the producer and the consumers, so that both walk the same tiles.
struct KeyWalk {
    SeqMask mask;
    int len, q0, q1, kbeg, kend;
    __device__ __forceinline__ KeyWalk(const SeqMask& m, int len_, int q0_, int q1_) : mask(m), len(len_), q0(q0_), q1(q1_) {
        kbeg = 0;
        kend = len;
        if (mask.causal) {
            kend = q1;
            if (mask.window) kbeg = max(0, q0 - (int)mask.window + 1);
        }
        kbeg = (kbeg / HP_BN) * HP_BN;
    }
    __device__ __forceinline__ int next(int k0) const {
        while (k0 < kend && mask.tile_hidden(q0, q1, k0, min(k0 + HP_BN, len))) k0 += HP_BN;
        return k0;
    }
};

// Zeroes the V rows [valid, 128) of the key tile at shared address vbuf (D/64 column blocks of
// [128 rows][128 bytes]; the 128-byte swizzle permutes 16-byte chunks within a row, so a whole
// row stays in its own 128-byte line and is cleared without knowing the pattern), shared by the
// 256 consumer threads (ct = 0..255), then fences them for the async proxy and meets the other
// consumers at named barrier 1 (see the header). Every consumer thread must call it.
template <int D>
__device__ __forceinline__ void clear_tail(unsigned char* smem_raw, u32 vbuf, int valid, int ct) {
    constexpr int BLOCKS = D / 64;
    const int rows = HP_BN - valid, chunks = rows * 8 * BLOCKS;
    unsigned char* v = smem_raw + (vbuf - smem_addr(smem_raw));
    for (int i = ct; i < chunks; i += HP_CONSUMERS) {
        const int blk = i / (rows * 8), rem = i % (rows * 8);
        *reinterpret_cast<uint4*>(v + blk * HP_BLOCK_BYTES + (valid + rem / 8) * 128 + (rem % 8) * 16) = make_uint4(0u, 0u, 0u, 0u);
    }
    fence_proxy_async_shared();
    named_bar_sync(1, HP_CONSUMERS);
}

template <int D, int STAGES>
__device__ __forceinline__ void attention_fwd_hopper_impl(const CUtensorMap* tm_q, const CUtensorMap* tm_k, const CUtensorMap* tm_v,
                                                          const u32* __restrict__ cu, const u32* __restrict__ sp, u16* __restrict__ out,
                                                          float* __restrict__ lse, u32 T, u32 H, u32 Hkv, u32 causal, u32 window,
                                                          u32 has_sp, float scale) {
    using L = HopperSmem<D, STAGES>;
    constexpr int BLOCKS = D / 64;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    if (dynamic_smem_size() < L::BYTES) __trap();  // the host passed too little: never run off the end
    const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    const u32 sQ = base + L::Q, sK = base + L::K, sV = base + L::V, sBar = base + L::BAR;
    auto full = [&](int s) { return sBar + 8u * (u32)s; };
    auto empty = [&](int s) { return sBar + 8u * (u32)(STAGES + s); };
    const u32 q_full = sBar + 8u * (2 * STAGES), q_empty = q_full + 8u;

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), HP_CONSUMERS);
        }
        mbar_init(q_full, 1);
        mbar_init(q_empty, HP_CONSUMERS);
        fence_mbarrier_init();
    }
    __syncthreads();  // the last block-wide barrier: the roles below never meet again but on mbarriers

    const u32 b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv);
    u32 start;
    int len;
    seq_range(cu, b, T, start, len);
    const SeqMask mask = seq_mask(causal, window, sp, has_sp, b);
    const int ntiles = (len + HP_BM - 1) / HP_BM;
    const int wg = threadIdx.x >> 7;

    if (wg == 0) {
        // ---- Producer warpgroup.
        setmaxnreg_dec<40>();
        if (threadIdx.x != 0) return;
        prefetch_tensormap(tm_q);
        prefetch_tensormap(tm_k);
        prefetch_tensormap(tm_v);
        constexpr u32 Q_BYTES = HP_BM * D * 2, KV_BYTES = 2 * HP_BN * D * 2;
        u32 nq = 0, nkv = 0;
        for (int it = blockIdx.x; it < ntiles; it += gridDim.x, ++nq) {
            const int q0 = (ntiles - 1 - it) * HP_BM, q1 = min(q0 + HP_BM, len);
            const KeyWalk walk(mask, len, q0, q1);
            if (nq > 0) mbar_wait(q_empty, (nq - 1) & 1u);
            mbar_arrive_expect_tx(q_full, Q_BYTES);
#pragma unroll
            for (int c = 0; c < BLOCKS; ++c) tma_load_2d(sQ + c * HP_BLOCK_BYTES, tm_q, (int)(h * D) + 64 * c, (int)(start + q0), q_full);
            for (int kt = walk.next(walk.kbeg); kt < walk.kend; kt = walk.next(kt + HP_BN), ++nkv) {
                const int s = (int)(nkv % STAGES);
                const u32 r = nkv / STAGES;
                if (r > 0) mbar_wait(empty(s), (r - 1) & 1u);
                mbar_arrive_expect_tx(full(s), KV_BYTES);
                const u32 kbuf = sK + (u32)s * BLOCKS * HP_BLOCK_BYTES, vbuf = sV + (u32)s * BLOCKS * HP_BLOCK_BYTES;
#pragma unroll
                for (int c = 0; c < BLOCKS; ++c) {
                    tma_load_2d(kbuf + c * HP_BLOCK_BYTES, tm_k, (int)(kvh * D) + 64 * c, (int)(start + kt), full(s));
                    tma_load_2d(vbuf + c * HP_BLOCK_BYTES, tm_v, (int)(kvh * D) + 64 * c, (int)(start + kt), full(s));
                }
            }
        }
        return;
    }

    // ---- Consumer warpgroups 1, 2: rows [64 cw, 64 cw + 64) of the query tile.
    setmaxnreg_inc<232>();
    const int cw = wg - 1, wt = threadIdx.x & 127, warp = wt >> 5, lane = wt & 31, g = lane >> 2, t = lane & 3;
    const u64 qs = (u64)H * D;
    const bool ovec = ((u64)out & 3ull) == 0ull;
    // Descriptor constants: K-major (Q, K): LBO 16 (unused), SBO 1024; N-major (V): LBO = the next
    // 64-dim column block (128 keys x 128 bytes), SBO 1024.
    const u32 q_rows = sQ + (u32)cw * 64u * 128u;  // this warpgroup's 64 rows of column block 0

    u32 nq = 0, nkv = 0;
    for (int it = blockIdx.x; it < ntiles; it += gridDim.x, ++nq) {
        const int q0 = (ntiles - 1 - it) * HP_BM, q1 = min(q0 + HP_BM, len);
        const KeyWalk walk(mask, len, q0, q1);
        // This warpgroup's rows [qw0, qw1) (possibly empty past the end of the sequence) and this
        // thread's two rows r0, r1 (sequence-local).
        const int qw0 = q0 + 64 * cw, qw1 = min(qw0 + 64, len);
        const int r0 = qw0 + 16 * warp + g, r1 = r0 + 8;

        float o[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
        float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

        mbar_wait(q_full, nq & 1u);
        for (int kt = walk.next(walk.kbeg); kt < walk.kend; kt = walk.next(kt + HP_BN), ++nkv) {
            const int s = (int)(nkv % STAGES);
            const u32 r = nkv / STAGES;
            const u32 kbuf = sK + (u32)s * BLOCKS * HP_BLOCK_BYTES, vbuf = sV + (u32)s * BLOCKS * HP_BLOCK_BYTES;
            mbar_wait(full(s), r & 1u);
            // The last tile of the sequence: the V rows of the next sequence (or the zero fill
            // past Ttot) become zeros, so that P = 0 there adds exactly 0 (header).
            if (kt + HP_BN > len) clear_tail<D>(smem_raw, vbuf, len - kt, (int)threadIdx.x - 128);

            // S = Q K^T (64 x 128 per warpgroup).
            float sc[HP_BN / 2];
            fence_regs(sc);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const u32 off = (u32)(kk / 4) * HP_BLOCK_BYTES + 32u * (u32)(kk % 4);
                wgmma_ss_n128(sc, sw128_desc(q_rows + off, 16, 1024), sw128_desc(kbuf + off, 16, 1024), kk > 0 ? 1u : 0u);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(sc);

            // Scale and mask, then the online softmax (attention_softmax.cuh).
            const bool need = kt + HP_BN > len || (qw1 > qw0 && mask.tile_partial(qw0, qw1, kt, min(kt + HP_BN, len)));
            scale_mask(sc, scale, need, mask, kt, len, r0, r1, t);
            softmax_update(sc, o, m0, m1, l0, l1);
            // P (bf16, RNE) as the A fragments of the 8 k16 slices of keys.
            u32 pa[HP_BN / 16][4];
#pragma unroll
            for (int kc = 0; kc < HP_BN / 16; ++kc) p_fragment(pa[kc], sc, kc);
            // O += P V.
            fence_regs(o);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < HP_BN / 16; ++kc) {
                const u64 dv = sw128_desc(vbuf + 2048u * (u32)kc, HP_BLOCK_BYTES, 1024);
                if constexpr (D == 128) {
                    wgmma_rs_n128(o, pa[kc], dv);
                } else {
                    wgmma_rs_n64(o, pa[kc], dv);
                }
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs(o);
            mbar_arrive(empty(s));  // this thread is done with stage s
        }
        mbar_arrive(q_empty);  // ... and with Q

        // Epilogue: out = O / l, lse = m + log(l); rows past the sequence are not stored.
        softmax_store(o, m0, m1, l0, l1, out, lse, start, qs, h, T, len, r0, r1, t, ovec);
    }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

#define HOPPER_ARGS                                                                                                   \
    const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,                               \
        const __grid_constant__ CUtensorMap tm_v, const u32 *__restrict__ cu, const u32 *__restrict__ sp,             \
        u16 *__restrict__ out, float *__restrict__ lse, u32 T, u32 H, u32 Hkv, u32 causal, u32 window, u32 has_sp, \
        float scale

// Register cap at entry (384 threads, 1 block per SM: 168) that setmaxnreg then redistributes:
// 128 x 40 + 256 x 232 = 64,512 <= 65,536. On other targets (the sm_80 SASS and the compute_90
// PTX of this file) the kernels are never launched: the host selects them on 9.x only.
extern "C" __global__ void __launch_bounds__(HP_THREADS, 1) attention_fwd_hopper_d64(HOPPER_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    attention_fwd_hopper_impl<64, 3>(&tm_q, &tm_k, &tm_v, cu, sp, out, lse, T, H, Hkv, causal, window, has_sp, scale);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(HP_THREADS, 1) attention_fwd_hopper_d128(HOPPER_ARGS) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    attention_fwd_hopper_impl<128, 2>(&tm_q, &tm_k, &tm_v, cu, sp, out, lse, T, H, Hkv, causal, window, has_sp, scale);
#else
    __trap();
#endif
}
