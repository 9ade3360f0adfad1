// emu/sys/cuda.h: what `#include <cuda.h>` finds in a kernel source compiled for the emulated
// device (build.rs passes -I kernels/emu/sys): the CUDA dialect header, which also defines the
// few driver types the kernels take as parameters (CUtensorMap).
#pragma once
#include "../cuda.h"
