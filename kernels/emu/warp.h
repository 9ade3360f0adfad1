// emu/warp.h: warp collectives on the emulated device, each a rendezvous of the lanes named in
// the mask (runtime.h `collective`). Semantics from the CUDA C++ Programming Guide ("Warp Shuffle
// Functions", "Warp Vote Functions", "Warp Reduce Functions", "__syncwarp") and PTX "shfl.sync",
// "vote.sync", "redux.sync"; the source-lane table is section 4 of
// ../shared/reference/ptx-emulation.md:
//   idx: base + (src % w); up: lane - d, own value if below base; down: lane + d, own value if
//   past base + w - 1; xor: lane ^ m, own value if past base + w - 1 (an earlier segment may be
//   read). Out-of-range lanes never wrap. 64-bit values move with the same mapping.
// Reported errors (never hangs): the caller's bit missing from the mask, a mask naming an exited
// or nonexistent lane, lanes of one warp in overlapping collectives with different masks or
// kinds, and a shuffle reading a lane outside the mask (an undefined value on the hardware).
#pragma once
#include <type_traits>

#include "runtime.h"

namespace emu {

struct ShflIn {
    uint64_t v;
    int b;  // src lane, delta or lane mask
    int w;  // width
};

enum class ShflKind { Idx, Up, Down, Xor };

template <ShflKind K>
void shfl_compute(Block&, Rdv& r) {
    uint64_t res[32];
    for (unsigned l = 0; l < 32; l++) {
        if (!((r.mask >> l) & 1u)) continue;
        auto* in = static_cast<const ShflIn*>(r.in[l]);
        int w = in->w;
        if (w < 1 || w > 32 || (w & (w - 1))) fail(std::string(r.name) + " at " + site_str(r.site) + ": width " + std::to_string(w) + " is not a power of two in 1..32");
        int base = (int)l & ~(w - 1), end = base + w - 1, j = 0;
        switch (K) {
            case ShflKind::Idx: j = base + (int)((unsigned)in->b % (unsigned)w); break;
            case ShflKind::Up: j = (int)l - (int)(unsigned)in->b; if (j < base) j = (int)l; break;
            case ShflKind::Down: j = (int)l + (int)(unsigned)in->b; if (j > end) j = (int)l; break;
            case ShflKind::Xor: j = (int)l ^ in->b; if (j > end || j < 0) j = (int)l; break;
        }
        if (!((r.mask >> j) & 1u)) fail(std::string(r.name) + " at " + site_str(r.site) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(j) + ", which is not in the mask " + hex(r.mask) + " (undefined value)");
        res[l] = static_cast<const ShflIn*>(r.in[j])->v;
    }
    for (unsigned l = 0; l < 32; l++)
        if ((r.mask >> l) & 1u) *static_cast<uint64_t*>(r.out[l]) = res[l];
}

template <ShflKind K, class T>
T shfl(const char* name, Site site, unsigned mask, T v, int b, int w = 32) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move 32- or 64-bit values");
    ShflIn in{0, b, w};
    std::memcpy(&in.v, &v, sizeof(T));
    uint64_t out = 0;
    collective(name, mask, site, false, &shfl_compute<K>, &in, &out);
    T r;
    std::memcpy(&r, &out, sizeof(T));
    return r;
}

// ---------------------------------------------------------------------------------------------
// Vote (ballot, any, all) and redux (add, min, max, and, or, xor) over the mask's lanes.

enum class VoteKind { Ballot, Any, All };
template <VoteKind K>
void vote_compute(Block&, Rdv& r) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; l++)
        if (((r.mask >> l) & 1u) && *static_cast<const int*>(r.in[l])) ballot |= 1u << l;
    unsigned res = K == VoteKind::Ballot ? ballot : K == VoteKind::Any ? (ballot != 0) : (ballot == r.mask);
    for (unsigned l = 0; l < 32; l++)
        if ((r.mask >> l) & 1u) *static_cast<unsigned*>(r.out[l]) = res;
}
template <VoteKind K>
unsigned vote(const char* name, Site site, unsigned mask, int pred) {
    int in = pred != 0;
    unsigned out = 0;
    collective(name, mask, site, false, &vote_compute<K>, &in, &out);
    return out;
}

enum class RedKind { Add, Min, Max, And, Or, Xor };
template <RedKind K, class T>
void red_compute(Block&, Rdv& r) {
    bool first = true;
    T acc{};
    for (unsigned l = 0; l < 32; l++) {
        if (!((r.mask >> l) & 1u)) continue;
        T v = *static_cast<const T*>(r.in[l]);
        if (first) {
            acc = v;
            first = false;
            continue;
        }
        switch (K) {
            case RedKind::Add: acc = (T)((uint32_t)acc + (uint32_t)v); break;  // wraps to 32 bits
            case RedKind::Min: acc = v < acc ? v : acc; break;
            case RedKind::Max: acc = v > acc ? v : acc; break;
            case RedKind::And: acc = acc & v; break;
            case RedKind::Or: acc = acc | v; break;
            case RedKind::Xor: acc = acc ^ v; break;
        }
    }
    for (unsigned l = 0; l < 32; l++)
        if ((r.mask >> l) & 1u) *static_cast<T*>(r.out[l]) = acc;
}
template <RedKind K, class T>
T reduce(const char* name, Site site, unsigned mask, T v) {
    static_assert(std::is_same<T, int>::value || std::is_same<T, unsigned>::value, "redux.sync takes .u32 or .s32");
    T out{};
    collective(name, mask, site, false, &red_compute<K, T>, &v, &out);
    return out;
}

inline void syncwarp_compute(Block&, Rdv&) {}
// __syncwarp(mask = all): the call site is bound first so the mask can stay optional.
struct SyncWarp {
    Site site;
    void operator()(unsigned mask = 0xFFFFFFFFu) const { collective("__syncwarp", mask, site, false, &syncwarp_compute, nullptr, nullptr); }
};

}  // namespace emu

// The CUDA names (the call site is recorded for the reports).
#define __shfl_sync(m, v, ...) ::emu::shfl<::emu::ShflKind::Idx>("__shfl_sync", EMU_HERE, m, v, __VA_ARGS__)
#define __shfl_up_sync(m, v, ...) ::emu::shfl<::emu::ShflKind::Up>("__shfl_up_sync", EMU_HERE, m, v, __VA_ARGS__)
#define __shfl_down_sync(m, v, ...) ::emu::shfl<::emu::ShflKind::Down>("__shfl_down_sync", EMU_HERE, m, v, __VA_ARGS__)
#define __shfl_xor_sync(m, v, ...) ::emu::shfl<::emu::ShflKind::Xor>("__shfl_xor_sync", EMU_HERE, m, v, __VA_ARGS__)
#define __ballot_sync(m, p) ::emu::vote<::emu::VoteKind::Ballot>("__ballot_sync", EMU_HERE, m, (p) ? 1 : 0)
#define __any_sync(m, p) ((int)::emu::vote<::emu::VoteKind::Any>("__any_sync", EMU_HERE, m, (p) ? 1 : 0))
#define __all_sync(m, p) ((int)::emu::vote<::emu::VoteKind::All>("__all_sync", EMU_HERE, m, (p) ? 1 : 0))
#define __reduce_add_sync(m, v) ::emu::reduce<::emu::RedKind::Add>("__reduce_add_sync", EMU_HERE, m, v)
#define __reduce_min_sync(m, v) ::emu::reduce<::emu::RedKind::Min>("__reduce_min_sync", EMU_HERE, m, v)
#define __reduce_max_sync(m, v) ::emu::reduce<::emu::RedKind::Max>("__reduce_max_sync", EMU_HERE, m, v)
#define __reduce_and_sync(m, v) ::emu::reduce<::emu::RedKind::And>("__reduce_and_sync", EMU_HERE, m, (unsigned)(v))
#define __reduce_or_sync(m, v) ::emu::reduce<::emu::RedKind::Or>("__reduce_or_sync", EMU_HERE, m, (unsigned)(v))
#define __reduce_xor_sync(m, v) ::emu::reduce<::emu::RedKind::Xor>("__reduce_xor_sync", EMU_HERE, m, (unsigned)(v))
#define __syncwarp(...) ::emu::SyncWarp{EMU_HERE}(__VA_ARGS__)
