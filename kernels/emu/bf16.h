// emu/bf16.h: __nv_bfloat16 / __nv_bfloat162 / __half / __half2 on the host, with the rounding of
// cuda_bf16.hpp / cuda_fp16.hpp (CUDA 13, read for behaviour; no code copied):
//   - f32 -> bf16 (__float2bfloat16, _rn, __floats2bfloat162_rn): round to nearest, ties to even
//     on the bit pattern (the dropped 16 bits above 0x8000, or equal with an odd kept lsb, round
//     up; the carry may reach the exponent, up to inf). Every NaN becomes 0x7FFF (sign and payload
//     dropped), as the header's host path does; that the sm_80 cvt.rn.bf16.f32 gives the same
//     canonical NaN is [U]. Subnormals are kept (no flush).
//   - bf16 -> f32: the 16 bits shifted up (exact; a NaN keeps its payload).
//   - f32 -> f16 (__float2half, _rn): IEEE binary16 round to nearest even, overflow (|x| >= 65520)
//     to inf, subnormals kept, results below 2^-25 (or equal: a tie to the even 0) to zero; every
//     NaN becomes 0x7FFF.
//   - f16 -> f32: exact; a NaN becomes 0x7FFFFFFF (the header's host path drops its sign and
//     payload; device payloads [U]).
// cvt.rn.bf16x2.f32 d, a, b puts a in the HIGH half (PTX "cvt"): emu::cvt_rn_bf16x2_f32 in sm80.h.
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
inline uint32_t f2u(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float u2f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_bf16_rn(float f) {
    uint32_t x = f2u(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
    uint32_t kept = x >> 16, rem = x & 0xFFFFu;
    if (rem > 0x8000u || (rem == 0x8000u && (kept & 1u))) kept++;
    return (uint16_t)kept;
}
inline float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }
inline uint16_t f32_to_f16_rn(float f) {
    uint32_t x = f2u(f), u = x & 0x7FFFFFFFu, sign = (x >> 16) & 0x8000u;
    if (u > 0x7F800000u) return 0x7FFF;
    if (u == 0x7F800000u) return (uint16_t)(sign | 0x7C00u);
    int e = (int)(u >> 23) - 127;  // unbiased exponent of the f32
    uint32_t m = (u & 0x7FFFFFu) | 0x800000u;
    if (e >= 16) return (uint16_t)(sign | 0x7C00u);  // >= 65536: inf
    // The f16 result, counted in units of its last place (2^-24 for subnormals, 2^(e-10) for
    // normals): shift the 24-bit significand so that the kept part is in those units.
    int shift = e >= -14 ? 13 : 13 + (-14 - e);  // bits of m dropped
    if (shift > 24) return (uint16_t)sign;       // below 2^-25: rounds to zero
    uint32_t kept = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (kept & 1u))) kept++;
    // kept: a significand with the implicit bit for normals; adding the biased exponent as a
    // field lets a carry ripple into the exponent (and up to inf = 0x7C00).
    uint32_t bits = e >= -14 ? (((uint32_t)(e + 14) << 10) + kept) : kept;
    return (uint16_t)(sign | bits);
}
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1F) return u2f(m ? 0x7FFFFFFFu : (sign | 0x7F800000u));
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in f32
        float v = (float)m * u2f(0x33800000u);
        return u2f(f2u(v) | sign);
    }
    return u2f(sign | ((e + 112) << 23) | (m << 13));
}
}  // namespace emu

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __half_raw {
    unsigned short x;
};

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(emu::f32_to_bf16_rn(f)) {}
    __nv_bfloat16(double d) : __x(emu::f32_to_bf16_rn((float)d)) {}  // [U] double rounding (the header rounds to odd first)
    operator float() const { return emu::bf16_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return {__x}; }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;  // x = low half, y = high half
};
struct __half {
    unsigned short __x;
    __half() = default;
    __half(const __half_raw& r) : __x(r.x) {}
    __half(float f) : __x(emu::f32_to_f16_rn(f)) {}
    operator float() const { return emu::f16_to_f32(__x); }
    operator __half_raw() const { return {__x}; }
};
struct __half2 {
    __half x, y;
};

inline __nv_bfloat16 __float2bfloat16(float a) { return __nv_bfloat16_raw{emu::f32_to_bf16_rn(a)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float a) { return __nv_bfloat16_raw{emu::f32_to_bf16_rn(a)}; }
inline float __bfloat162float(__nv_bfloat16 a) { return emu::bf16_to_f32(a.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline float __low2float(__nv_bfloat162 a) { return __bfloat162float(a.x); }
inline float __high2float(__nv_bfloat162 a) { return __bfloat162float(a.y); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }

inline __half __float2half(float a) { return __half_raw{emu::f32_to_f16_rn(a)}; }
inline __half __float2half_rn(float a) { return __half_raw{emu::f32_to_f16_rn(a)}; }
inline float __half2float(__half a) { return emu::f16_to_f32(a.__x); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline float __low2float(__half2 a) { return __half2float(a.x); }
inline float __high2float(__half2 a) { return __half2float(a.y); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
