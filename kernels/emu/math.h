// emu/math.h: the device math library and bit intrinsics on the host.
//
// expf, logf, exp2f, log2f, erff, sinf, cosf, sincosf, tanhf, powf, sqrtf, fmaf, fmaxf, exp, log,
// sqrt ... are the C library's (glibc), called by the kernels' own names. Accuracy: the CUDA C++
// Programming Guide ("Mathematical Functions" appendix, maximum ulp error, default flags) gives
// expf 2, exp2f 2, logf 1, log2f 1, erff 2, sinf/cosf/sincosf 2, tanhf 2, powf 4, rsqrtf 2,
// sqrtf 0 (IEEE with -prec-sqrt=true), fmaf 0, double exp/log 1, sqrt 0; glibc's float versions
// are within 1 ulp (most correctly rounded). So emulator and GPU may differ by a few ulps in any
// transcendental: tests must compare them with a tolerance, never bit for bit. Likewise nvcc
// contracts a*b+c into fma by default (--fmad=true) while the host build does not
// (-ffp-contract=off): plain expressions may differ in the last bit; the _rn intrinsics
// (__fmul_rn, __fadd_rn ...) are never contracted on either side, so they are exact here.
// The fast intrinsics (__expf: 2 + floor(|1.173 x|) ulp; __logf; __fdividef: 2 ulp for |y| in
// [2^-126, 2^126]) are emulated by the accurate functions: the emulator is never less accurate.
// min/max: the overloads of CUDA's math_functions.hpp ("Integer Intrinsics", "Single/Double
// Precision Mathematical Functions"): same-type integers; a signed and an unsigned operand of one
// width compare as unsigned; float/double as fminf/fmin (a NaN operand yields the other one).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "bf16.h"

inline float __uint_as_float(unsigned u) { return emu::u2f(u); }
inline unsigned __float_as_uint(float f) { return emu::f2u(f); }
inline float __int_as_float(int i) { return emu::u2f((uint32_t)i); }
inline int __float_as_int(float f) { return (int)emu::f2u(f); }
inline double __longlong_as_double(long long v) {
    double d;
    std::memcpy(&d, &v, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long v;
    std::memcpy(&v, &d, 8);
    return v;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

// Round-to-nearest arithmetic, never contracted (volatile keeps g++ from fusing even with
// -ffp-contract=fast).
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}
inline float __fsub_rn(float a, float b) {
    volatile float r = a - b;
    return r;
}
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dmul_rn(double a, double b) {
    volatile double r = a * b;
    return r;
}
inline double __dadd_rn(double a, double b) {
    volatile double r = a + b;
    return r;
}
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }

inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x), *c = std::cos(x); }

// ---------------------------------------------------------------------------------------------
// min / max (see the header).
#define EMU_MINMAX(R, A, B)                                  \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned, unsigned, unsigned)
EMU_MINMAX(unsigned, int, unsigned)
EMU_MINMAX(unsigned, unsigned, int)
EMU_MINMAX(long, long, long)
EMU_MINMAX(unsigned long, unsigned long, unsigned long)
EMU_MINMAX(unsigned long, long, unsigned long)
EMU_MINMAX(unsigned long, unsigned long, long)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMU_MINMAX(unsigned long long, long long, unsigned long long)
EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef EMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin((double)a, b); }
inline double max(float a, double b) { return std::fmax((double)a, b); }
inline double min(double a, float b) { return std::fmin(a, (double)b); }
inline double max(double a, float b) { return std::fmax(a, (double)b); }
