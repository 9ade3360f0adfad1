// activation.cu: elementwise activations on bf16 (raw bits), f32 math, RNE output.
//
//   silu(x: u16[n], n: u64)          in place: x <- bf16(x / (1 + expf(-x)))
//   gelu(x: u16[n], n: u64)          in place: x <- bf16(0.5 x (1 + erff(x / sqrt 2)))   (exact)
//   quick_gelu(x: u16[n], n: u64)    in place: x <- bf16(x / (1 + expf(-1.702 x)))       (CLIP)
//   swiglu(gate: u16[.], up: u16[.], out: u16[T, F], T: u64, F: u64, in_stride: u64)
//       out[t, j] = bf16(silu(gate[t*in_stride + j]) * up[t*in_stride + j])
//     separate gate[T, F] and up[T, F]: the host passes T = 1, F = T*F, in_stride = F*T (flat);
//     fused gate_up[T, 2F] (row t = gate then up): gate = gate_up, up = gate_up + F,
//     in_stride = 2F.
//
//   silu_backward / gelu_backward / quick_gelu_backward(x: u16[n], dy: u16[n], n: u64)
//       in place on dy: dy <- bf16(dy * act'(x)) (x is the activation's input), with
//       silu'(v) = s (1 + v (1 - s)), s = 1 / (1 + expf(-v));
//       gelu'(v) = 0.5 (1 + erff(v / sqrt 2)) + v expf(-v^2 / 2) / sqrt(2 pi);
//       quick_gelu'(v) = s + 1.702 v s (1 - s), s = 1 / (1 + expf(-1.702 v)).
//       The projector's backward (its linear_1 -> act -> linear_2). Scalar grid-stride loop.
//
// expf/erff are the accurate libdevice functions (no --use_fast_math). x / (1 + expf(-x)) is -0
// for very negative x (expf overflows to inf), as the f32 CPU reference.
//
// Launch: 1-D grid-stride loops, any grid/block (the host uses 256 threads per block, blocks
// enough to cover n / 8 vectors, capped at 32 per SM). No shared memory.
// Vector path (16-byte = 8 bf16 per step): the in-place ones when x is 16-byte aligned (the
// n % 8 tail is then done by a scalar loop); swiglu when F and in_stride are multiples of 8 and
// gate, up, out are 16-byte aligned. Otherwise scalar; both paths give the same bits.
// Aliasing: out must not overlap gate or up (gate and up may be views of one buffer).

#include "common.cuh"

enum Act { SILU = 0, GELU = 1, QUICK_GELU = 2 };

template <int A>
__device__ __forceinline__ float act(float v) {
    if (A == SILU) return v / (1.0f + expf(-v));
    if (A == GELU) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));
    return v / (1.0f + expf(-1.702f * v));  // QUICK_GELU
}

template <int A>
__device__ __forceinline__ void act_inplace(u16* __restrict__ x, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 done = 0;
    if (aligned16(x)) {
        const u64 nv = n / 8u;
        uint4* xv = reinterpret_cast<uint4*>(x);
        for (u64 i = tid; i < nv; i += stride) {
            float f[8];
            unpack_bf16x8(xv[i], f);
#pragma unroll
            for (int j = 0; j < 8; ++j) f[j] = act<A>(f[j]);
            xv[i] = pack_bf16x8(f);
        }
        done = nv * 8u;
    }
    for (u64 i = done + tid; i < n; i += stride) x[i] = f32_to_bf16_bits_rne(act<A>(bf16_bits_to_f32(x[i])));
}

extern "C" __global__ void silu(u16* __restrict__ x, u64 n) { act_inplace<SILU>(x, n); }
extern "C" __global__ void gelu(u16* __restrict__ x, u64 n) { act_inplace<GELU>(x, n); }
extern "C" __global__ void quick_gelu(u16* __restrict__ x, u64 n) { act_inplace<QUICK_GELU>(x, n); }

__device__ __forceinline__ float swiglu1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

extern "C" __global__ void swiglu(const u16* __restrict__ gate, const u16* __restrict__ up,
                                  u16* __restrict__ out, u64 T, u64 F, u64 in_stride) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = (F % 8u == 0u) && (in_stride % 8u == 0u) && aligned16(gate) && aligned16(up) &&
                     aligned16(out);
    if (vec) {
        const u64 fv = F / 8u, nv = T * fv;
        for (u64 i = tid; i < nv; i += stride) {
            const u64 t = i / fv;
            const u64 in = t * in_stride + (i - t * fv) * 8u;  // element offset of this vector
            float g[8], u[8];
            unpack_bf16x8(*reinterpret_cast<const uint4*>(gate + in), g);
            unpack_bf16x8(*reinterpret_cast<const uint4*>(up + in), u);
#pragma unroll
            for (int j = 0; j < 8; ++j) g[j] = swiglu1(g[j], u[j]);
            reinterpret_cast<uint4*>(out)[i] = pack_bf16x8(g);
        }
    } else {
        const u64 n = T * F;
        for (u64 i = tid; i < n; i += stride) {
            const u64 t = i / F;
            const u64 in = t * in_stride + (i - t * F);
            out[i] = f32_to_bf16_bits_rne(swiglu1(bf16_bits_to_f32(gate[in]), bf16_bits_to_f32(up[in])));
        }
    }
}

// swiglu_backward(gate, up, dout: u16[n], dgate, dup: u16[n], n: u64)
//   s = sigmoid(g); dgate = bf16(dout * u * s * (1 + g (1 - s))); dup = bf16(dout * g * s)
//   (the derivative of silu(g) * u; f32 arithmetic, each output rounded once). Reference:
//   cpu::swiglu_backward. Grid-stride over n, any launch; scalar (the backward is not on the
//   decode path). dgate and dup must not overlap the inputs.
extern "C" __global__ void swiglu_backward(const u16* __restrict__ gate, const u16* __restrict__ up,
                                           const u16* __restrict__ dout, u16* __restrict__ dgate,
                                           u16* __restrict__ dup, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = bf16_bits_to_f32(gate[i]), u = bf16_bits_to_f32(up[i]), d = bf16_bits_to_f32(dout[i]);
        const float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = f32_to_bf16_bits_rne(d * u * s * (1.0f + g * (1.0f - s)));
        dup[i] = f32_to_bf16_bits_rne(d * g * s);
    }
}

template <int A>
__device__ __forceinline__ float act_grad(float v) {
    if (A == GELU) return 0.5f * (1.0f + erff(v * 0.70710678118654752440f)) + v * expf(-0.5f * v * v) * 0.39894228040143267794f;
    const float k = (A == SILU) ? 1.0f : 1.702f;
    const float s = 1.0f / (1.0f + expf(-k * v));
    return s + k * v * s * (1.0f - s);
}

template <int A>
__device__ __forceinline__ void act_backward(const u16* __restrict__ x, u16* __restrict__ dy, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dy[i] = f32_to_bf16_bits_rne(bf16_bits_to_f32(dy[i]) * act_grad<A>(bf16_bits_to_f32(x[i])));
    }
}

extern "C" __global__ void silu_backward(const u16* __restrict__ x, u16* __restrict__ dy, u64 n) { act_backward<SILU>(x, dy, n); }
extern "C" __global__ void gelu_backward(const u16* __restrict__ x, u16* __restrict__ dy, u64 n) { act_backward<GELU>(x, dy, n); }
extern "C" __global__ void quick_gelu_backward(const u16* __restrict__ x, u16* __restrict__ dy, u64 n) { act_backward<QUICK_GELU>(x, dy, n); }
