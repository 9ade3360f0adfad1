// ptx.cuh: every inline PTX instruction of the kernels, each behind one small __device__
// __forceinline__ function (#include "ptx.cuh"; it includes common.cuh). No kernels/*.cu file
// holds an asm statement of its own.
//
// Each function has two bodies, chosen by STIC_PTX_REAL:
//   1 (the default): the real asm, for nvcc's device passes (build.rs);
//   0 (STIC_EMULATOR defined): the host C++ build of the kernel sources on the emulated device
//     (issue #14; build.rs compiles it with g++ -include emu/cuda.h), where each function
//     forwards to the one of the same name in namespace stic_emu below: adapters onto the
//     emulator's core in kernels/emu (namespace emu: fibers, warp rendezvous, the sm_80
//     instructions). The warp-collective ones (ldmatrix, mma) also take the caller's source
//     line (STIC_PTX_SITE, a defaulted parameter that exists only in the emulator build: the
//     text nvcc compiles is unchanged), so that reports name the kernel's line, not this file's.
//     The sm_90a instructions are not emulated yet (issue #15): they fail the launch with a
//     report; the registry lists the Hopper kernels as not runnable.
// Functions marked "sm_90a" are called only from code compiled under __CUDA_ARCH_FEAT_SM90_ALL
// (attention_hopper.cu); the others run on sm_80 and later. Unused functions emit nothing.

#pragma once

#include "common.cuh"

#if defined(STIC_EMULATOR)
#define STIC_PTX_REAL 0
#define STIC_PTX_SITE , STIC_PTX_SITE_ONLY
#define STIC_PTX_SITE_ONLY ::emu::Site emu_site = ::emu::Site{__builtin_FILE(), __builtin_LINE()}
#else
#define STIC_PTX_REAL 1
#define STIC_PTX_SITE
#define STIC_PTX_SITE_ONLY
#endif

#if !STIC_PTX_REAL
// The emulated bodies (kernels/emu; PTX semantics in ../shared/reference/ptx-emulation.md).
namespace stic_emu {
inline u32 smem_addr(const void* p) { return ::emu::cvta_shared(p); }
inline u32 dynamic_smem_size() { return (u32)::emu::blk().opt.dyn_smem; }
inline void cp_async16(void* dst, const void* src, u32 src_bytes) { ::emu::cp_async_cg_16(::emu::cvta_shared(dst), src, src_bytes); }
inline void cp_async_commit() { ::emu::cp_async_commit_group(); }
template <int N>
void cp_async_wait() {
    ::emu::cp_async_wait_group((unsigned)N);
}
inline void ldsm_x4(u32 r[4], const u16* p, ::emu::Site site) { ::emu::ldmatrix_at<4, false>(site, r, ::emu::cvta_shared(p)); }
inline void ldsm_x4_t(u32 r[4], const u16* p, ::emu::Site site) { ::emu::ldmatrix_at<4, true>(site, r, ::emu::cvta_shared(p)); }
// c += a b: d and c are the same registers (the emulated mma reads every lane's c before it
// writes any d).
inline void mma16816(float c[4], const u32 a[4], u32 b0, u32 b1, ::emu::Site site) {
    const u32 b[2] = {b0, b1};
    ::emu::mma_m16n8k16_f32_bf16_at(site, c, a, b, c);
}
inline u32 pack_rn(float lo, float hi) { return ::emu::cvt_rn_bf16x2_f32(hi, lo); }

// sm_90a: mbarrier and TMA (emu/sm90_tma.h), wgmma, setmaxnreg, prefetch.tensormap
// (emu/sm90_wgmma.h). `site` is the kernel's call site, for the reports.
inline void mbar_init(u32 bar, u32 count) { ::emu::mbar_init(bar, count); }
inline void fence_mbarrier_init() { ::emu::fence_mbarrier_init(); }
inline void fence_proxy_async_shared() { ::emu::fence_proxy_async_shared(); }
inline void named_bar_sync(u32 id, u32 count, ::emu::Site site) { ::emu::bar_sync(id, count, site, "bar.sync"); }
inline void mbar_arrive(u32 bar) { (void)::emu::mbar_arrive(bar); }
inline void mbar_arrive_expect_tx(u32 bar, u32 bytes) { (void)::emu::mbar_arrive_expect_tx(bar, bytes); }
inline bool mbar_try_wait(u32 bar, u32 parity, ::emu::Site site) { return ::emu::mbar_try_wait(bar, parity, site); }
inline void tma_load_2d(u32 dst, const void* tm, int col, int row, u32 bar) { ::emu::tma_load_2d(dst, tm, col, row, bar); }
inline void prefetch_tensormap(const void* tm) { ::emu::prefetch_tensormap(tm); }
template <int N>
void setmaxnreg_dec(::emu::Site site) {
    ::emu::setmaxnreg_at(site, false, N);
}
template <int N>
void setmaxnreg_inc(::emu::Site site) {
    ::emu::setmaxnreg_at(site, true, N);
}
inline void wgmma_fence() { ::emu::wgmma_fence(); }
inline void wgmma_commit() { ::emu::wgmma_commit_group(); }
inline void wgmma_wait0() { ::emu::wgmma_wait_group(0); }
// The immediates of the real asm below: scale-a 1, scale-b 1, and trans-a 0 / trans-b 0 (SS),
// trans-b 1 (RS: B N-major); scale-d from the argument (SS) or 1 (RS).
inline void wgmma_ss_n128(float* d, u64 da, u64 db, u32 scale_d, ::emu::Site site) { ::emu::wgmma_ss_at<128>(site, d, da, db, scale_d, 1, 1, 0, 0); }
inline void wgmma_rs_n128(float* d, const u32* a, u64 db, ::emu::Site site) { ::emu::wgmma_rs_at<128>(site, d, a, db, 1u, 1, 1, 1); }
inline void wgmma_rs_n64(float* d, const u32* a, u64 db, ::emu::Site site) { ::emu::wgmma_rs_at<64>(site, d, a, db, 1u, 1, 1, 1); }
}  // namespace stic_emu
#endif

// ---------------------------------------------------------------------------------------------
// Shared-memory addresses.

// cvta.to.shared (the __cvta_generic_to_shared intrinsic): the 32-bit shared-window address of a
// generic pointer into shared memory, as the .shared operands below take it.
__device__ __forceinline__ u32 smem_addr(const void* p) {
#if STIC_PTX_REAL
    return (u32)__cvta_generic_to_shared(p);
#else
    return stic_emu::smem_addr(p);
#endif
}

// mov.u32 %dynamic_smem_size: the bytes of dynamic shared memory this launch got.
__device__ __forceinline__ u32 dynamic_smem_size() {
#if STIC_PTX_REAL
    u32 dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(dyn));
    return dyn;
#else
    return stic_emu::dynamic_smem_size();
#endif
}

// ---------------------------------------------------------------------------------------------
// cp.async (sm_80): 16-byte global -> shared copies in commit groups.

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: 16 bytes to dst (both addresses 16-byte
// aligned; cached in L2 only), of which the first src_bytes (16 or 0) are read from src and the
// rest zero-filled (src_bytes = 0: dst becomes 16 zero bytes, src is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, u32 src_bytes) {
#if STIC_PTX_REAL
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes) : "memory");
#else
    stic_emu::cp_async16(dst, src, src_bytes);
#endif
}

// cp.async.commit_group: the copies issued since the last commit form one group.
__device__ __forceinline__ void cp_async_commit() {
#if STIC_PTX_REAL
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
    stic_emu::cp_async_commit();
#endif
}

// cp.async.wait_group N: waits until at most N of this thread's groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if STIC_PTX_REAL
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
    stic_emu::cp_async_wait<N>();
#endif
}

// ---------------------------------------------------------------------------------------------
// Tensor cores, sm_80 (warp-wide; the fragment layouts are spelled out in attention_train.cu).

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 {r0..r3}, [p]: four 8x8 b16 matrices; lanes 8m..8m+7
// give the row addresses of matrix m, every lane receives its (row g, cols 2t, 2t+1) of each.
__device__ __forceinline__ void ldsm_x4(u32 r[4], const u16* p STIC_PTX_SITE) {
#if STIC_PTX_REAL
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)) : "memory");
#else
    stic_emu::ldsm_x4(r, p, emu_site);
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {r0..r3}, [p]: as ldsm_x4, each matrix
// transposed: every lane receives (rows 2t, 2t+1; col g) of each.
__device__ __forceinline__ void ldsm_x4_t(u32 r[4], const u16* p STIC_PTX_SITE) {
#if STIC_PTX_REAL
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)) : "memory");
#else
    stic_emu::ldsm_x4_t(r, p, emu_site);
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: c (16 x 8 f32, 4 per lane) += a (16 x 16
// bf16, 4 x bf16x2 per lane) * b (16 x 8 bf16, b0, b1: 2 x bf16x2 per lane).
__device__ __forceinline__ void mma16816(float c[4], const u32 a[4], u32 b0, u32 b1 STIC_PTX_SITE) {
#if STIC_PTX_REAL
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    stic_emu::mma16816(c, a, b0, b1, emu_site);
#endif
}

// cvt.rn.bf16x2.f32 d, hi, lo: two f32 -> bf16x2 with RNE, lo in the low half (the lower k index).
__device__ __forceinline__ u32 pack_rn(float lo, float hi) {
#if STIC_PTX_REAL
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return stic_emu::pack_rn(lo, hi);
#endif
}

// ---------------------------------------------------------------------------------------------
// mbarriers, TMA and register reallocation (sm_90a). `bar` is the shared address (smem_addr) of
// an 8-byte aligned mbarrier.

// mbarrier.init.shared::cta.b64 [bar], count: a barrier expecting `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
#if STIC_PTX_REAL
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#else
    stic_emu::mbar_init(bar, count);
#endif
}

// fence.mbarrier_init.release.cluster: makes this thread's mbarrier.init visible (to the TMA
// unit and the other threads) before the barrier is used.
__device__ __forceinline__ void fence_mbarrier_init() {
#if STIC_PTX_REAL
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    stic_emu::fence_mbarrier_init();
#endif
}

// fence.proxy.async.shared::cta: this thread's earlier ordinary stores to shared memory become
// visible to the async proxy (the TMA unit, wgmma's shared operands) for accesses ordered after
// the fence (e.g. by a barrier the writer and the wgmma's warpgroup then pass).
__device__ __forceinline__ void fence_proxy_async_shared() {
#if STIC_PTX_REAL
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
    stic_emu::fence_proxy_async_shared();
#endif
}

// bar.sync id, count: a named barrier (id 1..15; 0 is __syncthreads') for `count` threads, a
// multiple of 32, counted per warp; the warps that take part all execute it.
__device__ __forceinline__ void named_bar_sync(u32 id, u32 count STIC_PTX_SITE) {
#if STIC_PTX_REAL
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#else
    stic_emu::named_bar_sync(id, count, emu_site);
#endif
}

// mbarrier.arrive.shared::cta.b64 _, [bar]: one arrival (release, CTA scope).
__device__ __forceinline__ void mbar_arrive(u32 bar) {
#if STIC_PTX_REAL
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
    stic_emu::mbar_arrive(bar);
#endif
}

// mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes: one arrival that also expects
// `bytes` of transactions (the TMA copies' complete_tx) this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
#if STIC_PTX_REAL
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
    stic_emu::mbar_arrive_expect_tx(bar, bytes);
#endif
}

// mbarrier.try_wait.parity.shared::cta.b64 p, [bar], parity: whether the phase of parity
// `parity` has completed (acquire, CTA scope; may suspend the thread for a while first).
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity STIC_PTX_SITE) {
#if STIC_PTX_REAL
    u32 done;
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0u;
#else
    return stic_emu::mbar_try_wait(bar, parity, emu_site);
#endif
}

// Spins on mbar_try_wait until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity STIC_PTX_SITE) {
#if STIC_PTX_REAL
    while (!mbar_try_wait(bar, parity)) {
    }
#else
    while (!::mbar_try_wait(bar, parity, emu_site)) {
    }
#endif
}

// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [tm, {col,
// row}], [bar]: the TMA copies the box at (col, row) of the 2-D tensor map `tm` (a CUtensorMap
// in param / const / global memory) to shared memory at dst, completing the box's bytes of
// transactions on `bar`. Out-of-bound rows are zero-filled (and still counted in the bytes).
__device__ __forceinline__ void tma_load_2d(u32 dst, const void* tm, int col, int row, u32 bar) {
#if STIC_PTX_REAL
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"((u64)tm), "r"(col), "r"(row), "r"(bar)
        : "memory");
#else
    stic_emu::tma_load_2d(dst, tm, col, row, bar);
#endif
}

// prefetch.tensormap [tm]: brings the tensor map `tm` into the TMA unit's cache.
__device__ __forceinline__ void prefetch_tensormap(const void* tm) {
#if STIC_PTX_REAL
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((u64)tm) : "memory");
#else
    stic_emu::prefetch_tensormap(tm);
#endif
}

// setmaxnreg.dec.sync.aligned.u32 N: the warpgroup gives registers back, down to N per thread.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec(STIC_PTX_SITE_ONLY) {
#if STIC_PTX_REAL
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N) : "memory");
#else
    stic_emu::setmaxnreg_dec<N>(emu_site);
#endif
}

// setmaxnreg.inc.sync.aligned.u32 N: the warpgroup takes registers, up to N per thread.
template <int N>
__device__ __forceinline__ void setmaxnreg_inc(STIC_PTX_SITE_ONLY) {
#if STIC_PTX_REAL
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N) : "memory");
#else
    stic_emu::setmaxnreg_inc<N>(emu_site);
#endif
}

// ---------------------------------------------------------------------------------------------
// wgmma (sm_90a, warpgroup-wide; layouts and descriptors are spelled out in attention_hopper.cu).

// wgmma.fence.sync.aligned: orders the ordinary register writes of the accumulators / A
// fragments before the wgmma that follow.
__device__ __forceinline__ void wgmma_fence() {
#if STIC_PTX_REAL
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
    stic_emu::wgmma_fence();
#endif
}

// wgmma.commit_group.sync.aligned: the wgmma issued since the last commit form one group.
__device__ __forceinline__ void wgmma_commit() {
#if STIC_PTX_REAL
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
    stic_emu::wgmma_commit();
#endif
}

// wgmma.wait_group.sync.aligned 0: waits until every committed wgmma group has completed.
__device__ __forceinline__ void wgmma_wait0() {
#if STIC_PTX_REAL
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#else
    stic_emu::wgmma_wait0();
#endif
}

// An empty asm that "reads and writes" each register of an accumulator array: pins them at this
// point of the instruction stream, so that ordinary accesses are not moved into the window
// between a wgmma issue and its wait_group. (No instruction; nothing to emulate.)
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#if STIC_PTX_REAL
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}

// wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 d[64], da, db, p, 1, 1, 0, 0:
// d (64 x 128 f32) (+)= A (64 x 16) x B (16 x 128), A and B from shared memory through the
// descriptors da, db, both K-major (imm-trans-a = imm-trans-b = 0); scale_d = 0 overwrites d.
__device__ __forceinline__ void wgmma_ss_n128(float d[64], u64 da, u64 db, u32 scale_d STIC_PTX_SITE) {
#if STIC_PTX_REAL
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
#else
    stic_emu::wgmma_ss_n128(d, da, db, scale_d, emu_site);
#endif
}

// wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 d[64], {a0..a3}, db, 1, 1, 1, 1:
// d (64 x 128 f32) += A (64 x 16) x B (16 x 128), A from registers (4 x bf16x2 per thread, the
// m16n8k16 A layout per warp), B from shared memory N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_n128(float d[64], const u32 a[4], u64 db STIC_PTX_SITE) {
#if STIC_PTX_REAL
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
#else
    stic_emu::wgmma_rs_n128(d, a, db, emu_site);
#endif
}

// wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 d[32], {a0..a3}, db, 1, 1, 1, 1:
// d (64 x 64 f32) += A (64 x 16) x B (16 x 64), A from registers, B from shared memory N-major
// (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_n64(float d[32], const u32 a[4], u64 db STIC_PTX_SITE) {
#if STIC_PTX_REAL
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
#else
    stic_emu::wgmma_rs_n64(d, a, db, emu_site);
#endif
}
