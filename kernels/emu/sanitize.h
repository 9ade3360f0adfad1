// emu/sanitize.h: the emulated device's sanitizers (issue #14 item 5), as the runtime sees them.
// sanitize.cpp (compiled WITHOUT instrumentation) defines these, the device memory of registry.h
// and the ThreadSanitizer entry points that g++ -fsanitize=thread calls before every memory
// access of the kernel TUs (__tsan_read4(addr), __tsan_write16, __tsan_read_range(addr, n),
// __tsan_atomic32_fetch_add(...) ...; the tsan runtime is never linked). Checks, all on unless
// STIC_CUDA_EMU_SANITIZE=0 (for speed measurements only):
//   - memcheck: a global access must lie in a live allocation (dev_alloc) and be naturally
//     aligned (size 2, 4, 8, 16); a shared access in the block's static variables or its dynamic
//     shared memory;
//   - initcheck: a read of global or shared bytes never written (global: dev_mark_init or kernel
//     stores; shared: per block), or of a cp.async destination before the issuer's wait;
//   - racecheck (shared memory): RAW, WAR, WAW between two threads with no synchronisation in
//     between. Sync is tracked with stamps, not vector clocks: the block has one counter `clock`,
//     bumped at every completed barrier or warp collective; each thread keeps the stamp of the
//     last barrier (bar_stamp) and the last warp collective (warp_stamp) it took part in; each
//     shared byte keeps (thread, clock) of its last write and of up to two reads since. An earlier
//     access by u at clock s is ordered before thread t now iff u == t, or both passed a barrier
//     after s (bar_stamp[u] > s && bar_stamp[t] > s), or they share a warp and both took part in a
//     warp collective after s. Block-wide barriers are exact; a partial named barrier (bar.sync
//     id, count) or a partial-mask collective orders its participants only when both took part in
//     some sync after s, not necessarily the same one: it can hide a race, never invent one.
//     A WAW whose store leaves the bytes unchanged (the same value) is not reported (INFO).
//   - proxy check (PTX memory consistency model, "proxies"; ISA "fence.proxy.async"): a shared
//     byte last written by an ordinary (generic-proxy) store and then read by the async proxy
//     (a wgmma operand) must have been covered by a fence.proxy.async of its writer, issued after
//     the store and ordered before the read (by a barrier both took part in after the fence, or
//     the same thread). Bytes written by TMA or cp.async are async-proxy writes and need none.
//     Atomics are checked for bounds, alignment and initialisation, never as races.
// Build: every kernel TU with -fsanitize=thread --param=tsan-instrument-func-entry-exit=0
// -fno-tree-vectorize -Wno-tsan, linked without libtsan (see tests/emu_cxx). The explicit checks
// of ldmatrix/cp.async assume the TU is instrumented (an uninstrumented store leaves its shared
// bytes "never written"). -fno-tree-vectorize: GCC's vectorizer may merge two 8-byte accesses
// into one 16-byte access known only to be 8-aligned, which the alignment check would report.
// Not seen: accesses inside libc calls (a memcpy/memset of non-constant size).
// A report in a hook cannot throw (g++ treats the hooks as nothrow): it parks the thread for
// good and the launch fails with emu::Error naming kind, kernel, block, thread, address, size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace emu {

struct Block;
struct Thread;

// The shadow state of one shared byte, as the tests look at it.
enum Shadow : uint8_t { SH_UNKNOWN = 0, SH_PENDING_ASYNC = 1, SH_WRITTEN = 2 };

bool san_on();  // the checks are on (STIC_CUDA_EMU_SANITIZE != 0)

// The calling OS thread's shared-memory arena: `bytes` of read-write memory that the hooks see
// as the current block's shared memory (reused block after block; contents unspecified). Bytes
// just before and after it, up to 64 KiB, are reported as out of bounds.
uint8_t* san_arena(size_t bytes);
// A new block on this OS thread: every shared byte becomes "never written" (a new serial).
void san_block_begin(Block& b);

// The emulated instructions' own checks (the runtime's accesses are not hooked). Each returns ""
// or the report's text; the caller fails with it. `off` is the shared-window address.
std::string san_shared_read(const Block& b, const Thread& t, uint32_t off, size_t n, const char* what);
// A read by the async proxy (wgmma's shared operands) on behalf of thread t: san_shared_read,
// plus the proxy check above.
std::string san_async_proxy_read(const Block& b, const Thread& t, uint32_t off, size_t n, const char* what);
// fence.proxy.async by t: its generic writes so far become visible to the async proxy (bumps the
// block clock, so that later writes are not covered).
void san_proxy_fence(Block& b, Thread& t);
// cp.async issue: the destination may be written from now on (race check as a write by t) and
// is pending until t's covering wait (san_async_done: a write by t, then).
std::string san_async_issue(Block& b, Thread& t, uint32_t off, size_t n, const char* what);
void san_async_done(Block& b, Thread& t, uint32_t off, size_t n);
// A global read by an instruction (cp.async's source): live allocation, alignment, initialised.
std::string san_global_read(const void* p, size_t n, size_t align, const char* what);
// The thread's deferred same-value check of a WAW (at park and exit): "" or the WAW report.
std::string san_flush(Block& b, Thread& t);
Shadow san_shadow_of(const Block& b, uint32_t off);

}  // namespace emu
