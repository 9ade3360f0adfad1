// emu/cuda.h: the CUDA C++ dialect on the host (the one header a kernel source compiled by g++
// includes): qualifiers, vector types, the builtins threadIdx/blockIdx/blockDim/gridDim (read
// from the current fiber), __syncthreads/bar.sync, fences, __trap, shared-memory helpers, and
// every emulated intrinsic (warp.h, bf16.h, sm80.h, math.h). Compile with -std=c++17
// -ffp-contract=off and link -lboost_context.
#pragma once
#include <type_traits>

#include "bf16.h"
#include "math.h"
#include "runtime.h"
#include "sm80.h"
#include "sm90_tma.h"
#include "sm90_wgmma.h"
#include "warp.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict
#define __grid_constant__

struct uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
using uint3 = emu::dim3;
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// The driver type a kernel takes as a __grid_constant__ parameter (cuda.h: 128 opaque bytes,
// 64-byte aligned); only the Hopper kernels use it, and they do not run here (issue #15).
typedef struct CUtensorMap_st {
    alignas(64) unsigned long long opaque[16];
} CUtensorMap;

// The builtins: the current fiber's thread and block (CUDA Programming Guide "Built-in Variables").
#define threadIdx (::emu::cur().idx)
#define blockIdx (::emu::blk().bidx)
#define blockDim (::emu::blk().bdim)
#define gridDim (::emu::blk().grid)
#define warpSize 32

#define __syncthreads() ::emu::bar_sync(0, 0, EMU_HERE)
// bar.sync id{, count}: count threads (a multiple of 32) or, without it, the whole block.
#define emu_bar_sync(...) ::emu::bar_sync(__VA_ARGS__, EMU_HERE, "bar.sync")

// One OS thread runs a block, so fences order nothing more than program order already does; with
// blocks on parallel OS threads they become seq_cst host fences (reference section 6).
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { ::emu::fail("__trap() called"); }

inline unsigned __cvta_generic_to_shared(const void* p) { return ::emu::cvta_shared(p); }
// A static __shared__ variable (one per block): EMU_SHARED(float[32], partial);
#define EMU_SHARED(T, name)          \
    static const char emu_tag_##name = 0; \
    std::add_lvalue_reference_t<T> name = ::emu::shared_var<T>(&emu_tag_##name)
