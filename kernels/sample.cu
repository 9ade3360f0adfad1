// sample.cu: token selection from logits.
//
//   argmax_f32(logits: f32[B, V], V: u32, out: u32[B])
//   argmax_bf16(logits: u16[B, V], V: u32, out: u32[B])
//       out[b] = the index of the maximum of row b; the first (lowest) index on ties, and NaN
//       counts as larger than everything (the first NaN wins), as torch.argmax.
//
// Launch: grid (B, 1, 1), one block per row; block (B_t, 1, 1), B_t a multiple of 32, <= 1024
// (the host uses 512); no dynamic shared memory. Each thread scans a strided part of the row
// keeping its best (value, index); warps reduce with shuffles, then thread 0 combines the warp
// results. `better` is a strict total order on (value, index), so the result does not depend on
// the reduction order. V >= 1 (checked on the host).

#include "common.cuh"

// Whether (v, i) beats (bv, bi): NaN beats any number; otherwise the larger value; equal values
// (or two NaNs): the lower index. The initial state (-inf, 0xFFFFFFFF) loses to every element.
__device__ __forceinline__ bool better(float v, u32 i, float bv, u32 bi) {
    const bool vn = v != v, bn = bv != bv;
    if (vn || bn) return vn && (!bn || i < bi);
    return v > bv || (v == bv && i < bi);
}

template <typename Load>
__device__ __forceinline__ void argmax_row(Load load, u32 V, u32* __restrict__ out) {
    float bv = NEG_INF;
    u32 bi = 0xFFFFFFFFu;
    for (u32 i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = load(i);
        if (better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, bv, o);
        const u32 oi = __shfl_xor_sync(0xFFFFFFFFu, bi, o);
        if (better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __shared__ float wv[32];
    __shared__ u32 wi[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wv[warp] = bv;
        wi[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < (blockDim.x >> 5); ++w) {
            if (better(wv[w], wi[w], bv, bi)) {
                bv = wv[w];
                bi = wi[w];
            }
        }
        out[blockIdx.x] = bi;
    }
}

struct LoadF32 {
    const float* row;
    __device__ __forceinline__ float operator()(u32 i) const { return row[i]; }
};
struct LoadBf16 {
    const u16* row;
    __device__ __forceinline__ float operator()(u32 i) const { return bf16_bits_to_f32(row[i]); }
};

extern "C" __global__ void argmax_f32(const float* __restrict__ logits, u32 V,
                                      u32* __restrict__ out) {
    argmax_row(LoadF32{logits + (u64)blockIdx.x * V}, V, out);
}

extern "C" __global__ void argmax_bf16(const u16* __restrict__ logits, u32 V,
                                       u32* __restrict__ out) {
    argmax_row(LoadBf16{logits + (u64)blockIdx.x * V}, V, out);
}

// =============================================================================================
//   sample_f32(logits: f32[B, V], V: u32, temperature: f32, top_k: u32, top_p: f32,
//              uniforms: f64[B], out: u32[B])
//       out[b] = cpu::sample_row(row b, temperature, top_k, top_p, uniforms[b]): HF's order of
//       logits processors. s = logits / temperature (one IEEE f32 division); top-k (0 < k < V)
//       keeps the s that are not < the k-th largest s under total_cmp; top-p (top_p < 1) sorts
//       ascending by total_cmp with a stable sort (ties in index order) and drops the low tail
//       while the ascending cumulative probability (f64) is <= 1 - top_p, always keeping the last
//       (largest) element; then softmax in f64 and inverse-CDF in index order at u: the first
//       index with q > 0 whose running sum exceeds u, else the last index with q > 0.
//       temperature > 0 (greedy is argmax_*, the host rejects <= 0). Probabilities are f64:
//       e_i = exp((f64)s_i - (f64)max s) (0 for s = -inf), p_i = e_i / z, as the CPU.
//
// Launch: grid (B, 1, 1), one block per row; block (SAMPLE_THREADS = 512, 1, 1) (any multiple
// of 32 up to 512, the __launch_bounds__; at 1024 threads the 15 f64 split sums + exp spill past
// 64 registers, at 512 it takes ~94 with no spill); static shared memory ~4.7 KiB, no dynamic.
// 1 <= V < 2^31 (checked on the host).
//
// No sort. Every f32 score s has an order-preserving u32 key (key order == total_cmp order).
// Both thresholds are found by a radix select over the keys, 4 bits per pass, from the highest bit
// where the row's min and max keys differ (<= 8 passes each): for the 15 split points of the
// current key range a pass sums, per thread in a fixed order, the weight of the elements below
// each split point, then reduces the 15 sums over the block in a fixed tree; the largest split
// point whose "weight below" G(K) stays <= the limit narrows the range. Only elements inside the
// current range are weighed (later passes are cheap).
//   top-k: weight 1, limit V - k: K = the largest key with #(key < K) <= V - k is the k-th
//          largest key (counts are exact, so top-k is exact).
//   top-p: weight p_i (0 outside top-k), limit 1 - top_p: Kb = the largest key with
//          G(Kb) <= 1 - top_p is the key of the element at which the ascending cumulative sum
//          crosses the limit. Its tie group (n elements with that exact score, the stable sort's
//          index order) is resolved as the CPU does: from c0 = G(Kb), add p once per element and
//          drop while the sum is <= the limit (sequentially for n <= 4096, closed form beyond),
//          then a ballot walk over warp segments finds the index of the first kept tie.
// Then z2 = the sum of the kept e_i, and a block-wide prefix scan in index order of q_i = e_i/z2
// (f64; warp-contiguous segments, shuffle scans inside a warp, segment totals summed in order)
// inverts the CDF at u. Every reduction is in a fixed order: the result is deterministic.
//
// Passes over the row (re-read from global memory / L2; nothing is cached): 1 (max, key range)
// + <= 8 (top-k) + 1 (z) + <= 8 (top-p) + 1-2 (ties) + 1 (z2) + 2 (scan, walk).
//
// What can differ from the CPU (only through f64 summation order and exp's last ulp; CUDA's exp
// is within 1 ulp, glibc's is correctly rounded in practice):
//   - the sampled index, when u lies within ~1e-12 (relative) of a CDF boundary: the CPU sums q
//     sequentially, the kernel by warp scans and segment totals;
//   - the top-p cut, when an ascending cumulative sum lies within rounding (~1e-12) of 1 - top_p:
//     the kernel's G(K) is a tree sum, the CPU's a sequential sum in sorted order (in that case
//     a tie group can also be found empty or wholly dropped; the kernel then keeps the elements
//     above it, i.e. it decides the cut at the group boundary).
// NaN or +inf logits: unspecified (the CPU's probabilities are NaN there). -inf logits are fine.
// =============================================================================================

#define SAMPLE_THREADS 512
#define SAMPLE_SPLITS 15        // split points per radix pass (4 bits)
#define SAMPLE_TIE_SIM_MAX 4096 // tie groups up to this size are resolved by sequential sums
#define SAMPLE_NONE 0xFFFFFFFFu

// Order-preserving key of an f32 under total_cmp: positive -> set the sign bit, negative -> flip
// all bits. key_value is its inverse.
__device__ __forceinline__ u32 order_key(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

struct SampleShared {
    double part[SAMPLE_SPLITS][32];  // per-warp partial sums
    double total[SAMPLE_SPLITS];     // block sums
    float fmax[32];
    u32 umin[32], umax[32];
    u32 cnt[32];
    u32 hit[32], lastnz[32];
    u32 ctl[2];                      // tie resolution: Kb, index of the first kept tie
};

struct SampleRow {
    const float* x;
    u32 V;
    float temp;
    bool use_k;
    float kth;   // top-k threshold (when use_k)
    double m;    // (f64) max s
    __device__ __forceinline__ float score(u32 i) const { return x[i] / temp; }
    __device__ __forceinline__ bool in_topk(float s) const { return !use_k || !(s < kth); }
    __device__ __forceinline__ double expo(float s) const {
        return s == NEG_INF ? 0.0 : exp((double)s - m);
    }
};

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

// Inclusive prefix sum over the lanes of a warp (Kogge-Stone; a fixed order).
__device__ __forceinline__ double warp_scan_f64(double v, u32 lane) {
#pragma unroll
    for (u32 o = 1; o < 32; o <<= 1) {
        const double t = __shfl_up_sync(0xFFFFFFFFu, v, o);
        if (lane >= o) v += t;
    }
    return v;
}

// The sum of v over the block, the same bits in every thread (warp trees, then the warp sums in
// warp order). Starts with a barrier so that earlier readers of sh.part are done.
__device__ __forceinline__ double block_sum_f64(double v, SampleShared& sh) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) sh.part[0][warp] = v;
    __syncthreads();
    double s = 0.0;
    for (u32 w = 0; w < nwarps; ++w) s += sh.part[0][w];
    return s;
}

// The largest key K in the row's key range with G(K) = sum of weight(s_i) over key_i < K staying
// <= limit, and *g_at = G(K) as computed. Precondition: limit >= 0 (G(kmin) = 0). G is computed
// per pass relative to the current range, so it is monotone within a pass; if every G stays
// <= limit the result may exceed kmax (the caller clamps).
template <typename Weight>
__device__ u32 radix_select(const SampleRow& r, u32 kmin, u32 kmax, double limit, Weight weight,
                            double* g_at, SampleShared& sh) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const u32 diff = kmin ^ kmax;
    if (diff == 0u) {
        *g_at = 0.0;
        return kmin;
    }
    u32 shift = ((31u - (u32)__clz(diff)) / 4u) * 4u;  // the nibble holding the top differing bit
    u64 prefix = (u64)kmin >> (shift + 4u);             // keys of the range: key >> (shift+4) == prefix
    double glo = 0.0;                                   // G(start of the range)
    for (;;) {
        double acc[SAMPLE_SPLITS];
#pragma unroll
        for (u32 j = 0; j < SAMPLE_SPLITS; ++j) acc[j] = 0.0;
        #pragma unroll 1
        for (u32 i = threadIdx.x; i < r.V; i += blockDim.x) {
            const float s = r.score(i);
            const u32 k = order_key(s);
            if (((u64)k >> (shift + 4u)) == prefix) {
                const double w = weight(s);
                const u32 nib = (k >> shift) & 15u;
                // Split point j+1 is (prefix << 4 | (j+1)) << shift: key below it <=> nib <= j.
#pragma unroll
                for (u32 j = 0; j < SAMPLE_SPLITS; ++j) acc[j] += (nib <= j) ? w : 0.0;
            }
        }
        __syncthreads();  // earlier readers of sh.part / sh.total are done
#pragma unroll
        for (u32 j = 0; j < SAMPLE_SPLITS; ++j) {
            const double v = warp_sum_f64(acc[j]);
            if (lane == 0) sh.part[j][warp] = v;
        }
        __syncthreads();
        if (threadIdx.x < SAMPLE_SPLITS) {
            double s = 0.0;
            for (u32 w = 0; w < nwarps; ++w) s += sh.part[threadIdx.x][w];
            sh.total[threadIdx.x] = s;
        }
        __syncthreads();
        u32 best = 0;
        double gbest = glo;
        for (u32 j = 0; j < SAMPLE_SPLITS; ++j) {
            const double g = glo + sh.total[j];
            if (g <= limit) {
                best = j + 1u;
                gbest = g;
            }
        }
        glo = gbest;
        prefix = (prefix << 4) | best;
        if (shift == 0u) break;
        shift -= 4u;
    }
    *g_at = glo;
    return (u32)prefix;
}

struct WeightOne {
    __device__ __forceinline__ double operator()(float) const { return 1.0; }
};
struct WeightProb {
    SampleRow r;
    double z;
    __device__ __forceinline__ double operator()(float s) const {
        return r.in_topk(s) ? r.expo(s) / z : 0.0;
    }
};

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS, 1)
sample_f32(const float* __restrict__ logits, u32 V, float temperature, u32 top_k, float top_p,
           const double* __restrict__ uniforms, u32* __restrict__ out) {
    __shared__ SampleShared sh;
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5, nwarps = blockDim.x >> 5;
    SampleRow r;
    r.x = logits + (u64)blockIdx.x * V;
    r.V = V;
    r.temp = temperature;
    r.use_k = top_k > 0u && top_k < V;
    r.kth = 0.0f;
    r.m = 0.0;

    // Pass 1: max s (fmaxf, as f32::max), and the range of keys.
    float mx = NEG_INF;
    u32 kmin = 0xFFFFFFFFu, kmax = 0u;
    #pragma unroll 1
    for (u32 i = tid; i < V; i += blockDim.x) {
        const float s = r.score(i);
        const u32 k = order_key(s);
        mx = fmaxf(mx, s);
        kmin = min(kmin, k);
        kmax = max(kmax, k);
    }
    mx = warp_max(mx);
    kmin = __reduce_min_sync(0xFFFFFFFFu, kmin);
    kmax = __reduce_max_sync(0xFFFFFFFFu, kmax);
    if (lane == 0) {
        sh.fmax[warp] = mx;
        sh.umin[warp] = kmin;
        sh.umax[warp] = kmax;
    }
    __syncthreads();
    for (u32 w = 0; w < nwarps; ++w) {
        mx = fmaxf(mx, sh.fmax[w]);
        kmin = min(kmin, sh.umin[w]);
        kmax = max(kmax, sh.umax[w]);
    }
    r.m = (double)mx;

    // Top-k: the k-th largest key (exact counts).
    if (r.use_k) {
        double g;
        const u32 kk = radix_select(r, kmin, kmax, (double)(V - top_k), WeightOne{}, &g, sh);
        r.kth = key_value(kk);
    }

    // Top-p: drop (key, index) <= (Kb, first_tie) - i.e. keep key > Kb, or key == Kb and
    // index >= first_tie. Off: Kb = 0, first_tie = 0 keeps everything.
    u32 kb = 0u, first_tie = 0u;
    if (top_p < 1.0f) {
        const double thr = 1.0 - (double)top_p;
        double z = 0.0;
        #pragma unroll 1
        for (u32 i = tid; i < V; i += blockDim.x) {
            const float s = r.score(i);
            if (r.in_topk(s)) z += r.expo(s);
        }
        z = block_sum_f64(z, sh);
        double c0;
        const u32 k = radix_select(r, kmin, kmax, thr, WeightProb{r, z}, &c0, sh);
        const bool only_last = k > kmax;  // every cumulative sum stayed <= thr
        kb = only_last ? kmax : k;
        // The tie group at kb, in index order over warp-contiguous segments.
        const u32 seg = ((V + nwarps - 1u) / nwarps + 31u) & ~31u;
        const u32 beg = (u32)min((u64)warp * seg, (u64)V), end = (u32)min((u64)beg + seg, (u64)V);
        u32 cnt = 0;
        #pragma unroll 1
        for (u32 c = beg; c < end; c += 32u) {
            const u32 i = c + lane;
            bool match = false;
            if (i < end) {
                const float s = r.score(i);
                match = order_key(s) == kb && r.in_topk(s);
            }
            cnt += __popc(__ballot_sync(0xFFFFFFFFu, match));
        }
        __syncthreads();
        if (lane == 0) sh.cnt[warp] = cnt;
        __syncthreads();
        if (tid == 0) {
            u32 n = 0;
            for (u32 w = 0; w < nwarps; ++w) n += sh.cnt[w];
            u32 keep_from = SAMPLE_NONE;  // rank of the first kept tie; NONE: keep key > kb only
            if (n > 0u) {
                u32 nd;  // ties dropped
                if (only_last) {
                    nd = n - 1u;
                } else {
                    const float sb = key_value(kb);
                    const double p = r.in_topk(sb) ? r.expo(sb) / z : 0.0;
                    if (n <= SAMPLE_TIE_SIM_MAX) {
                        double cum = c0;
                        nd = 0;
                        for (u32 j = 1; j <= n; ++j) {
                            cum += p;
                            if (cum <= thr) nd = j; else break;
                        }
                    } else {
                        const double t = (thr - c0) / p;
                        nd = !(t > 0.0) ? 0u : (t >= (double)n ? n : (u32)t);
                        while (nd < n && c0 + (double)(nd + 1u) * p <= thr) ++nd;
                        while (nd > 0u && c0 + (double)nd * p > thr) --nd;
                    }
                    if (nd >= n && kb == kmax) nd = n - 1u;  // the largest element is always kept
                }
                if (nd < n) keep_from = nd;
            }
            sh.ctl[0] = keep_from;
            sh.ctl[1] = SAMPLE_NONE;
        }
        __syncthreads();
        const u32 keep_from = sh.ctl[0];
        if (keep_from != SAMPLE_NONE) {
            // The warp whose segment holds tie number keep_from walks it with ballots.
            u32 before = 0;
            for (u32 w = 0; w < warp; ++w) before += sh.cnt[w];
            if (keep_from >= before && keep_from < before + sh.cnt[warp]) {
                u32 want = keep_from - before;
                #pragma unroll 1
                for (u32 c = beg; c < end; c += 32u) {
                    const u32 i = c + lane;
                    bool match = false;
                    if (i < end) {
                        const float s = r.score(i);
                        match = order_key(s) == kb && r.in_topk(s);
                    }
                    u32 b = __ballot_sync(0xFFFFFFFFu, match);
                    const u32 nb = __popc(b);
                    if (want < nb) {
                        for (u32 t = 0; t < want; ++t) b &= b - 1u;
                        if (lane == 0) sh.ctl[1] = c + (u32)(__ffs(b) - 1);
                        break;
                    }
                    want -= nb;
                }
            }
        }
        __syncthreads();
        first_tie = sh.ctl[1];  // NONE when the whole group is dropped
    }

    // z2: the sum of the kept e_i (index order per thread, then the block tree).
    double z2 = 0.0;
    #pragma unroll 1
    for (u32 i = tid; i < V; i += blockDim.x) {
        const float s = r.score(i);
        const u32 k = order_key(s);
        if (r.in_topk(s) && (k > kb || (k == kb && i >= first_tie))) z2 += r.expo(s);
    }
    z2 = block_sum_f64(z2, sh);

    // Inverse CDF: warp w owns [beg, end); pass 1 sums its q, pass 2 walks from its prefix.
    const u32 seg = ((V + nwarps - 1u) / nwarps + 31u) & ~31u;
    const u32 beg = (u32)min((u64)warp * seg, (u64)V), end = (u32)min((u64)beg + seg, (u64)V);
    double run = 0.0;
    for (int walk = 0; walk < 2; ++walk) {
        if (walk == 1) {
            __syncthreads();
            if (lane == 0) sh.part[0][warp] = run;
            __syncthreads();
            run = 0.0;
            for (u32 w = 0; w < warp; ++w) run += sh.part[0][w];
        }
        const double u = uniforms[blockIdx.x];
        u32 hit = SAMPLE_NONE, lastnz = SAMPLE_NONE;
        #pragma unroll 1
        for (u32 c = beg; c < end; c += 32u) {
            const u32 i = c + lane;
            double q = 0.0;
            if (i < end) {
                const float s = r.score(i);
                const u32 k = order_key(s);
                if (r.in_topk(s) && (k > kb || (k == kb && i >= first_tie))) q = r.expo(s) / z2;
            }
            const double incl = warp_scan_f64(q, lane);
            if (walk == 1) {
                const double cum = run + incl;
                const u32 h = __ballot_sync(0xFFFFFFFFu, q > 0.0 && u < cum);
                const u32 nz = __ballot_sync(0xFFFFFFFFu, q > 0.0);
                if (nz != 0u) lastnz = c + 31u - (u32)__clz(nz);
                if (h != 0u) {
                    hit = c + (u32)(__ffs(h) - 1);
                    break;
                }
            }
            run = run + __shfl_sync(0xFFFFFFFFu, incl, 31);
        }
        if (walk == 1 && lane == 0) {
            sh.hit[warp] = hit;
            sh.lastnz[warp] = lastnz;
        }
    }
    __syncthreads();
    if (tid == 0) {
        u32 best = SAMPLE_NONE, last = SAMPLE_NONE;
        for (u32 w = 0; w < nwarps; ++w) {
            best = min(best, sh.hit[w]);
            if (sh.lastnz[w] != SAMPLE_NONE) last = (last == SAMPLE_NONE) ? sh.lastnz[w] : max(last, sh.lastnz[w]);
        }
        out[blockIdx.x] = best != SAMPLE_NONE ? best : (last != SAMPLE_NONE ? last : 0u);
    }
}
