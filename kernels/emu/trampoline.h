// emu/trampoline.h: the registry's per-kernel entry (registry.h `Trampoline`) for a kernel
// compiled as host C++. build.rs appends to each rewritten kernel source a table
//
//   extern "C++" const emu::KernelInfo emu_kernels_<module>[] = {
//       {"add", &emu::trampoline<&add>, static_smem, regs, max_threads, nullptr}, ...};
//
// so that each trampoline is instantiated in its kernel's own translation unit (the C++ types
// of the parameters come from the kernel's declaration; macros such as FWD_ARGS need no parsing).
//
// emu::trampoline<&K>(name, params, cfg, static_smem) does what cuLaunchKernel does with
// kernelParams: argument i is read from params[i] as the parameter's own type (by value, cv and
// __restrict__ dropped), once, before the launch; every CUDA thread then calls K with copies of
// those values. The block's shared-memory arena is [static_smem rounded up to 16 | cfg.dyn_smem]
// (runtime.h LaunchOptions). Throws emu::Error (runtime.h) when the launch fails.
#pragma once
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "registry.h"
#include "runtime.h"

namespace emu {

template <class F>
struct KernelSig;
template <class... A>
struct KernelSig<void (*)(A...)> {
    using Args = std::tuple<std::decay_t<A>...>;
    static constexpr size_t arity = sizeof...(A);
};

template <class Args, size_t... I>
Args read_params(void** params, std::index_sequence<I...>) {
    return Args{*static_cast<const std::tuple_element_t<I, Args>*>(params[I])...};
}

// The arena for static __shared__ variables: ptxas's byte count (runtime.h adds the slack its
// 16-byte placement of each variable may need).
inline size_t static_arena(size_t static_smem) { return static_smem; }

template <auto K>
void trampoline(const char* name, void** params, const LaunchCfg& cfg, size_t static_smem) {
    using Sig = KernelSig<decltype(K)>;
    typename Sig::Args args{};
    if constexpr (Sig::arity > 0) {
        if (!params) throw Error(std::string("emu: kernel `") + name + "` takes " + std::to_string(Sig::arity) + " arguments but kernelParams is null");
        args = read_params<typename Sig::Args>(params, std::make_index_sequence<Sig::arity>{});
    }
    LaunchOptions opt;
    opt.static_smem = static_arena(static_smem);
    opt.dyn_smem = cfg.dyn_smem;
    opt.regs = cfg.regs;
    launch(name, dim3(cfg.grid[0], cfg.grid[1], cfg.grid[2]), dim3(cfg.block[0], cfg.block[1], cfg.block[2]), opt,
           [&args] { std::apply(K, args); });
}

}  // namespace emu
