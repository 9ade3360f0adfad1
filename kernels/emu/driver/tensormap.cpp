// emu/driver/tensormap.cpp: the emulated libcuda's cuTensorMapEncodeTiled (issue #15). It checks
// the arguments against the CUDA Driver API's "Tensor Map Object Management" requirements
// (reference ../shared/reference/ptx-emulation.md 5.2) and stores the decoded fields as an
// emu::TmaMap (sm90_tma.h) in the 128 opaque bytes, which the kernel's __grid_constant__ copy
// carries to cp.async.bulk.tensor (emu::tma_load_2d).
//
// A violated requirement returns CUDA_ERROR_INVALID_VALUE with a message on stderr. What the
// driver accepts but the emulator does not implement returns CUDA_ERROR_NOT_SUPPORTED, also with
// a message: rank other than 2, elementStrides other than 1, interleave, the CUDA 12.8+ swizzle
// atoms (enum values above 3), and OOB fill NAN_REQUEST_ZERO_FMA (its NaN bit pattern is not
// documented). L2 promotion is a hint and is only range-checked.
#include <cstdio>
#include <cstring>

#include "../sm90_tma.h"
#include "driver.h"

#ifndef EMU_API
#define EMU_API extern "C" __attribute__((visibility("default")))
#endif

namespace {

// CUtensorMapDataType: element sizes in bytes, in enum order (UINT8 .. TFLOAT32_FTZ = 12).
constexpr uint32_t kElemBytes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
constexpr bool kIsFloat[] = {false, false, false, false, false, false, true, true, true, true, true, true, true};

CUresult bad(CUresult code, const char* fmt, unsigned long long a = 0, unsigned long long b = 0) {
    std::fprintf(stderr, "emu: cuTensorMapEncodeTiled: ");
    std::fprintf(stderr, fmt, a, b);
    std::fprintf(stderr, "\n");
    return code;
}

}  // namespace

// tensorMap: a CUtensorMap* (128 bytes, 64-byte aligned).
EMU_API CUresult cuTensorMapEncodeTiled(void* tensorMap, int dataType, uint32_t rank, void* globalAddress, const uint64_t* globalDim, const uint64_t* globalStrides, const uint32_t* boxDim, const uint32_t* elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill) {
    using namespace emu::drv;
    if (!tensorMap || reinterpret_cast<uintptr_t>(tensorMap) % 64) return bad(INVALID_VALUE, "tensorMap %#llx is null or not 64-byte aligned", (unsigned long long)(uintptr_t)tensorMap);
    if (dataType < 0 || dataType > 12) return bad(INVALID_VALUE, "tensorDataType %llu is not a CUtensorMapDataType this emulator knows (0..12)", (unsigned long long)dataType);
    if (rank < 1 || rank > 5) return bad(INVALID_VALUE, "tensorRank %llu outside 1..5", rank);
    if (rank != 2) return bad(NOT_SUPPORTED, "tensorRank %llu: the emulator implements rank 2 only", rank);
    if (interleave < 0 || interleave > 2) return bad(INVALID_VALUE, "interleave %llu outside CU_TENSOR_MAP_INTERLEAVE_NONE..32B", (unsigned long long)interleave);
    if (interleave != 0) return bad(NOT_SUPPORTED, "interleave %llu: the emulator implements CU_TENSOR_MAP_INTERLEAVE_NONE only", (unsigned long long)interleave);
    if (swizzle < 0 || swizzle > 3) return bad(NOT_SUPPORTED, "swizzle %llu: the emulator implements NONE, 32B, 64B and 128B (0..3) only", (unsigned long long)swizzle);
    if (l2Promotion < 0 || l2Promotion > 4) return bad(INVALID_VALUE, "l2Promotion %llu outside 0..4", (unsigned long long)l2Promotion);
    if (oobFill < 0 || oobFill > 1) return bad(INVALID_VALUE, "oobFill %llu outside 0..1", (unsigned long long)oobFill);
    if (oobFill == 1 && !kIsFloat[dataType]) return bad(INVALID_VALUE, "oobFill NAN_REQUEST_ZERO_FMA needs a floating-point tensorDataType, not %llu", (unsigned long long)dataType);
    if (oobFill == 1) return bad(NOT_SUPPORTED, "oobFill NAN_REQUEST_ZERO_FMA is not implemented by the emulator");
    const uint64_t ga = reinterpret_cast<uintptr_t>(globalAddress);
    if (!globalDim || !globalStrides || !boxDim || !elementStrides) return bad(INVALID_VALUE, "a null globalDim, globalStrides, boxDim or elementStrides array");
    if (ga % 16) return bad(INVALID_VALUE, "globalAddress %#llx is not 16-byte aligned", ga);
    const uint32_t elem = kElemBytes[dataType];
    for (uint32_t i = 0; i < rank; i++) {
        if (globalDim[i] == 0 || globalDim[i] > (1ull << 32)) return bad(INVALID_VALUE, "globalDim[%llu] = %llu outside 1..2^32", i, globalDim[i]);
        if (boxDim[i] == 0 || boxDim[i] > 256) return bad(INVALID_VALUE, "boxDim[%llu] = %llu outside 1..256", i, boxDim[i]);
        if (elementStrides[i] == 0 || elementStrides[i] > 8) return bad(INVALID_VALUE, "elementStrides[%llu] = %llu outside 1..8", i, elementStrides[i]);
        if (elementStrides[i] != 1) return bad(NOT_SUPPORTED, "elementStrides[%llu] = %llu: the emulator implements 1 only", i, elementStrides[i]);
    }
    const uint64_t s1 = globalStrides[0];
    if (s1 % 16 || s1 >= (1ull << 40)) return bad(INVALID_VALUE, "globalStrides[0] = %llu bytes is not a multiple of 16 below 2^40", s1);
    if (s1 < globalDim[0] * elem) return bad(INVALID_VALUE, "globalStrides[0] = %llu bytes is below a row of globalDim[0] elements (%llu bytes)", s1, globalDim[0] * elem);
    const uint64_t inner = (uint64_t)boxDim[0] * elem;
    if (inner % 16) return bad(INVALID_VALUE, "boxDim[0] * element size = %llu bytes is not a multiple of 16", inner);
    if (swizzle != 0 && inner > (16ull << swizzle)) return bad(INVALID_VALUE, "boxDim[0] * element size = %llu bytes exceeds the swizzle span of %llu bytes", inner, 16ull << swizzle);
    emu::TmaMap m{};
    m.magic = emu::kTmaMagic;
    m.gaddr = ga;
    m.dim[0] = globalDim[0];
    m.dim[1] = globalDim[1];
    m.stride1 = s1;
    m.box[0] = boxDim[0];
    m.box[1] = boxDim[1];
    m.elem = elem;
    m.swizzle = (uint32_t)swizzle;
    m.dtype = (uint32_t)dataType;
    std::memset(tensorMap, 0, 128);
    std::memcpy(tensorMap, &m, sizeof m);
    return SUCCESS;
}
