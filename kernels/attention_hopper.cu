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
// belong to the next sequence: they are loaded and then masked exactly as the sm_80 kernel masks
// its zero-filled rows (scores of keys j >= len are -inf, so P = 0 multiplies those V rows;
// query rows >= len are computed and never stored). One difference from the sm_80 kernel, which
// zero-fills those rows: a non-finite V value in the next sequence's rows would turn 0 * inf into
// NaN; finite inputs (every real batch) give the same results.
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
// (release) -> producer try_wait (acquire) -> next TMA; no ordinary store touches the tiles, so
// no fence.proxy.async is needed.
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
// asm statements ("+f") around each batch so that the compiler cannot move ordinary accesses of
// them across the asynchronous window.

#include <cuda.h>

#include "common.cuh"

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

#define NEG_INF __uint_as_float(0xFF800000u)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// ---------------------------------------------------------------------------------------------
// sm_90a only: PTX wrappers.

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// One arrival (release, CTA scope).
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival that also expects `bytes` of transactions (the TMA copies' complete_tx) this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Spins until the phase of parity `parity` has completed (acquire, CTA scope).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n.reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}

// TMA: the box at (col, row) of the 2-D tensor map `tm` into shared memory at dst, completing
// `box bytes` of transactions on the mbarrier `bar`. Out-of-bound rows are zero-filled (and
// still counted in the bytes).
__device__ __forceinline__ void tma_load_2d(u32 dst, const CUtensorMap* tm, int col, int row, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"((u64)tm), "r"(col), "r"(row), "r"(bar)
        : "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// Pins the registers of an accumulator array at this point of the instruction stream (an empty
// asm that "reads and writes" each one), so that ordinary accesses are not moved into the window
// between a wgmma issue and its wait_group.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The shared-memory matrix descriptor of a 128-byte-swizzled operand at shared address `addr`
// (see the header: LBO, SBO in bytes, multiples of 16; swizzle mode 1 in bits 62-63).
__device__ __forceinline__ u64 sw128_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}

// Two f32 -> bf16x2 with RNE: lo in the low half (the lower k index).
__device__ __forceinline__ u32 pack_rn(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ---------------------------------------------------------------------------------------------
// wgmma wrappers (operand lists written out: %0.. are the accumulators).

// d[64] (+)= A x B, m64n128k16: A (64 x 16) and B (16 x 128) both from shared memory, both
// K-major (imm-trans-a = imm-trans-b = 0), scale-d = 0 overwrites d instead of accumulating.
__device__ __forceinline__ void wgmma_ss_n128(float d[64], u64 da, u64 db, u32 scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scale_d)
        : "memory");
}

// d[64] += A x B, m64n128k16: A (64 x 16) from registers (4 x bf16x2 per thread, the m16n8k16
// A layout per warp), B (16 x 128) from shared memory N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_n128(float d[64], const u32 a[4], u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u)
        : "memory");
}

// d[32] += A x B, m64n64k16: A (64 x 16) from registers (4 x bf16x2 per thread, the m16n8k16
// A layout per warp), B (16 x 64) from shared memory N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_n64(float d[32], const u32 a[4], u64 db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1u)
        : "memory");
}

// ---------------------------------------------------------------------------------------------
// The kernel body (sm_90a).

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

template <int D, int STAGES>
__device__ __forceinline__ void attention_fwd_hopper_impl(const CUtensorMap* tm_q, const CUtensorMap* tm_k, const CUtensorMap* tm_v,
                                                          const u32* __restrict__ cu, const u32* __restrict__ sp, u16* __restrict__ out,
                                                          float* __restrict__ lse, u32 T, u32 H, u32 Hkv, u32 causal, u32 window,
                                                          u32 has_sp, float scale) {
    using L = HopperSmem<D, STAGES>;
    constexpr int BLOCKS = D / 64;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    {
        u32 dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(dyn));
        if (dyn < L::BYTES) __trap();  // the host passed too little: never run off the end
    }
    const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u;
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
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
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
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x != 0) return;
        asm volatile("prefetch.tensormap [%0];\n" ::"l"((u64)tm_q) : "memory");
        asm volatile("prefetch.tensormap [%0];\n" ::"l"((u64)tm_k) : "memory");
        asm volatile("prefetch.tensormap [%0];\n" ::"l"((u64)tm_v) : "memory");
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
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
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

            // Scale and mask: element (row r0 / r1, key kt + 8 nt + 2t + (e & 1)).
            const bool need = kt + HP_BN > len || (qw1 > qw0 && mask.tile_partial(qw0, qw1, kt, min(kt + HP_BN, len)));
#pragma unroll
            for (int nt = 0; nt < HP_BN / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = sc[4 * nt + e] * scale;
                    if (need) {
                        const int j = kt + nt * 8 + 2 * t + (e & 1), i = e < 2 ? r0 : r1;
                        if (j >= len || !mask.visible(i, j)) x = NEG_INF;
                    }
                    sc[4 * nt + e] = x;
                }
            }
            // Online softmax: the row max over the quad (lanes 4g..4g+3 share rows r0, r1).
            float mx0 = m0, mx1 = m1;
#pragma unroll
            for (int nt = 0; nt < HP_BN / 8; ++nt) {
                mx0 = fmaxf(mx0, fmaxf(sc[4 * nt], sc[4 * nt + 1]));
                mx1 = fmaxf(mx1, fmaxf(sc[4 * nt + 2], sc[4 * nt + 3]));
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
            for (int nt = 0; nt < HP_BN / 8; ++nt) {
                sc[4 * nt] = expf(sc[4 * nt] - u0);
                sc[4 * nt + 1] = expf(sc[4 * nt + 1] - u0);
                sc[4 * nt + 2] = expf(sc[4 * nt + 2] - u1);
                sc[4 * nt + 3] = expf(sc[4 * nt + 3] - u1);
                ps0 += sc[4 * nt] + sc[4 * nt + 1];
                ps1 += sc[4 * nt + 2] + sc[4 * nt + 3];
            }
            l0 = l0 * al0 + ps0;  // per-lane partial sums; the quad is summed at the end
            l1 = l1 * al1 + ps1;
#pragma unroll
            for (int i = 0; i < D / 8; ++i) {
                o[4 * i] *= al0;
                o[4 * i + 1] *= al0;
                o[4 * i + 2] *= al1;
                o[4 * i + 3] *= al1;
            }
            // P (bf16, RNE) as the A fragments of the 8 k16 slices of keys.
            u32 pa[HP_BN / 16][4];
#pragma unroll
            for (int kc = 0; kc < HP_BN / 16; ++kc) {
                pa[kc][0] = pack_rn(sc[8 * kc], sc[8 * kc + 1]);
                pa[kc][1] = pack_rn(sc[8 * kc + 2], sc[8 * kc + 3]);
                pa[kc][2] = pack_rn(sc[8 * kc + 4], sc[8 * kc + 5]);
                pa[kc][3] = pack_rn(sc[8 * kc + 6], sc[8 * kc + 7]);
            }
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

        // Epilogue: l over the quad, out = O / l, lse = m + log(l); rows past the sequence are
        // not stored.
        l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, 1);
        l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, 2);
        l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, 1);
        l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, 2);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int rr = half ? r1 : r0;
            if (rr >= len) continue;
            const float l = half ? l1 : l0, m = half ? m1 : m0;
            u16* orow = out + (u64)(start + rr) * qs + (u64)h * D;
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
            if (t == 0) lse[(u64)h * T + start + rr] = m + logf(l);
        }
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
