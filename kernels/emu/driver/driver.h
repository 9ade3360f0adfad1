// emu/driver/driver.h: the CUDA driver API types and constants the emulated libcuda implements
// (values from cuda.h of CUDA 13.0 as cudarc 0.19.10's bindings spell them; see
// ../shared/reference/ptx-emulation.md section 7), and the device description both fake
// libraries share. Written out here so the emulator needs no CUDA header.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct EmuCtx* CUcontext;
typedef struct EmuModule* CUmodule;
typedef struct EmuFunction* CUfunction;
typedef struct EmuStream* CUstream;
typedef struct EmuEvent* CUevent;
typedef struct EmuPool* CUmemoryPool;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;
typedef int CUmemPool_attribute;
}

namespace emu::drv {

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
};

// The emulated part: an A100 (sm_80) by default, an H100 SXM (sm_90) with STIC_CUDA_EMU_ARCH=90.
// Limits from the CUDA C++ Programming Guide's "Compute Capabilities" table and the parts' data
// sheets; the clocks only feed what callers print.
struct DeviceDesc {
    int major, minor;
    const char* name;
    int sms;
    int smem_per_block_optin;  // bytes (sm_80: 163 KiB, sm_90: 227 KiB)
    int smem_per_sm;
    int l2_bytes;
    int clock_khz, mem_clock_khz, bus_width;
    size_t total_mem;
};
const DeviceDesc& device();

// The fatbin header (reverse-engineered, reference section 7): the image's total length, or 0
// when `image` does not start with the fatbin magic.
size_t fatbin_len(const void* image);

// Asynchronous faults (stic_emu_set_async_faults, or STIC_CUDA_EMU_ASYNC_FAULTS=1 at load): a
// kernel that fails while running returns CUDA_SUCCESS from cuLaunchKernel, as on a GPU, and the
// fault is reported (CUDA_ERROR_LAUNCH_FAILED with its report) by the next synchronising call on
// its stream: cuStreamSynchronize, a device-to-host copy on it, or cuCtxSynchronize (any stream).
// Unlike a GPU's sticky error, it is reported once and the context stays usable (the tests share
// one process). Launch checks made before a kernel runs stay synchronous errors, as on a GPU.
bool async_faults();
void set_stream_fault(CUstream s, CUresult code);
CUresult take_stream_fault(CUstream s);  // SUCCESS when none; clears it
CUresult take_any_fault();               // cuCtxSynchronize: the first pending one, cleared

}  // namespace emu::drv
