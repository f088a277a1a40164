// Fused binary-CAM epilogue: an engine's output buffers (activations, gradients or factored
// channel weights, logits), read in place, to raw maps, final maps and masked energies.
//
// For map n = b·K + k with sign s (mode: predicted → sign(z[b,k]) (NaN for a NaN logit),
// positive → +1, negative → −1):
//   gradients  G[c,p] = grads[b,k,c,p]                       (dense layout)
//              G[c,p] = W[k,c] · M[c,p], M = 1[A[b,c,p] > 0] (factored layout, mask_positive)
//              G[c,p] = W[k,c]                                (factored layout, no mask)
//   with g = s·G and A = A[b,c,p]:
//   Grad-CAM             raw[p] = Σ_c (mean_p' g[c,p']) · A
//   HiResCAM             raw[p] = Σ_c g · A
//   Grad-CAM element-w.  raw[p] = Σ_c ReLU(g · A)
//   XGrad-CAM            raw[p] = Σ_c (Σ_p' g·A / (Σ_p' A + 1e-7)) · A
//   Grad-CAM++           raw[p] = Σ_c (Σ_p' ReLU(g)·g²/(2g² + Σ_p'' A · g³ + 1e-6), 0 where g=0) · A
//   LayerCAM             raw[p] = Σ_c ReLU(g) · A
//   epilogue   x = ReLU(raw);  x = (x − min x) / (max x − min x + 1e-7)            (h×w)
//              U = bilinear(x) to H×W, half-pixel centres, clamped edges;  U = ReLU(U)
//              F = (U − min U) / (max U − min U + 1e-7)                            (H×W)
//   outputs    raw (float), F as float / half / uint8 (round(255·F)), and the masked energies
//              energy[n] = (Σ_{mask k} F, Σ F), so PE = energy[n,0] / energy[n,1].
// NaN propagates as in NumPy (ReLU, min and max keep NaN).
//
// Four kernels, launched in this order on one stream (gpu/geometry.py computes the geometry):
//  1. bincam_partials_dense    grid (B·K, S): block (n, split) sums channels of its split into
//     partial[n, split, :]; channel tiles are copied to shared memory with coalesced loads (the
//     [C, h·w] slab of a map is contiguous), per-channel weights are read from there.
//  1. bincam_partials_factored grid (B, S, ⌈K/kc⌉): the activations of image b are read once for
//     kc attributes: every method is then raw[k,:] = Σ_c coef[k,c]·X[c,:] (X = A, M⊙A or A⁺,
//     plus (s·W)⁻·A⁻ for the unmasked element-wise method), a [kc,C]×[C,h·w] product.
//  2. bincam_finish            grid (B·K, T): partial sums in fixed order, first min-max, the
//     extremes of U on run-end rows × columns only (U is bilinear within each pair of feature
//     cells, so it is extreme at the first or last sample of a run), then rows of tile t of F.
//  3. bincam_energy            grid ⌈B·K/block⌉: Σ of the T tiles' energies (fixed order).
// Activations and dense gradients may be float32 or binary16 (an fp16 engine's own outputs,
// read without a cast pass); channel weights, logits and the arithmetic are float32, except
// channel sums and Grad-CAM++'s α denominator: double.
// Deterministic (no atomics). Any block size from 1 to 512 is correct (partial warps use exact
// masks). Dynamic shared memory: gpu/geometry.py (partials_shared_bytes, finish_shared_bytes).
// No headers: compiles with NVRTC as is; the lines that differ on the host emulator
// (kernels/emulation) are under __CUDA_ARCH__.

#define BINCAM_EPS 1e-7f
#define BINCAM_XGRAD_EPS 1e-7
#define BINCAM_PLUSPLUS_EPS 1e-6
#define BINCAM_MAX_THREADS 512  // __launch_bounds__: ≤ 128 registers, ptxas picks ~40

enum { BINCAM_GRADCAM = 0, BINCAM_HIRESCAM = 1, BINCAM_ELEMENTWISE = 2, BINCAM_XGRADCAM = 3,
       BINCAM_GRADCAMPP = 4, BINCAM_LAYERCAM = 5 };
enum { BINCAM_DENSE = 0, BINCAM_FACTORED = 1 };
enum { BINCAM_PREDICTED = 0, BINCAM_POSITIVE = 1, BINCAM_NEGATIVE = 2 };
enum { BINCAM_MIN = 0, BINCAM_MAX = 1, BINCAM_SUM = 2 };

__device__ __forceinline__ unsigned short bincam_to_half(float f) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    return bincam_host_to_half(f);
#endif
}

__device__ __forceinline__ float bincam_from_half(unsigned short h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return bincam_host_from_half(h);
#endif
}

// Element i of an engine output that is float32 (half = 0) or IEEE binary16 bits (half = 1).
__device__ __forceinline__ float bincam_load(const void* p, size_t i, int half) {
    return half ? bincam_from_half(((const unsigned short*)p)[i]) : ((const float*)p)[i];
}

__device__ __forceinline__ float bincam_nan() { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ float bincam_inf() { return __int_as_float(0x7f800000); }
// NaN-propagating ReLU, min and max (fmaxf/fminf would drop NaN)
__device__ __forceinline__ float bincam_relu(float v) { return v < 0.f ? 0.f : v; }
__device__ __forceinline__ float bincam_neg(float v) { return v > 0.f ? 0.f : v; }
// M ⊙ A with M = 1[A > 0]: A, or 0·A (−0 for finite A, NaN for NaN or −inf)
__device__ __forceinline__ float bincam_masked(float a) { return a > 0.f ? a : 0.f * a; }

template <int OP>
__device__ __forceinline__ float bincam_combine(float a, float b) {
    if (OP == BINCAM_SUM) return a + b;
    if (a != a || b != b) return a + b;  // NaN
    return OP == BINCAM_MIN ? (b < a ? b : a) : (b > a ? b : a);
}

template <int OP>
__device__ __forceinline__ float bincam_identity() {
    return OP == BINCAM_MIN ? bincam_inf() : (OP == BINCAM_MAX ? -bincam_inf() : 0.f);
}

__device__ __forceinline__ float bincam_sign(float z, int mode) {
    if (mode == BINCAM_POSITIVE) return 1.f;
    if (mode == BINCAM_NEGATIVE) return -1.f;
    return z > 0.f ? 1.f : (z < 0.f ? -1.f : (z == 0.f ? 0.f : bincam_nan()));
}

// Lanes present in this thread's warp (the last warp of a block may be partial) and their mask.
__device__ __forceinline__ int bincam_warp_lanes() {
    const int rest = (int)blockDim.x - (int)(threadIdx.x & ~31u);
    return rest < 32 ? rest : 32;
}
__device__ __forceinline__ unsigned bincam_warp_mask() {
    const int lanes = bincam_warp_lanes();
    return lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
}

// Reduce v over the present lanes of the warp; the result is in lane 0.
template <int OP>
__device__ __forceinline__ float bincam_warp_reduce(float v) {
    const unsigned mask = bincam_warp_mask();
    const int lanes = bincam_warp_lanes(), lane = threadIdx.x & 31;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_down_sync(mask, v, offset);
        if (lane + offset < lanes) v = bincam_combine<OP>(v, other);
    }
    return v;
}

// Reduce (a, b) over the block with (OP1, OP2); every thread gets both. scratch: 64 floats.
template <int OP1, int OP2>
__device__ void bincam_block_reduce2(float* a, float* b, float* scratch) {
    float x = bincam_warp_reduce<OP1>(*a), y = bincam_warp_reduce<OP2>(*b);
    const int warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // earlier readers of scratch are done
    if ((threadIdx.x & 31) == 0) {
        scratch[warp] = x;
        scratch[32 + warp] = y;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < warps; ++i) {  // fixed order: deterministic
            x = bincam_combine<OP1>(x, scratch[i]);
            y = bincam_combine<OP2>(y, scratch[32 + i]);
        }
        scratch[0] = x;
        scratch[32] = y;
    }
    __syncthreads();
    *a = scratch[0];
    *b = scratch[32];
}

// Row stride of a channel in a shared tile: h·w made odd, so that a thread per channel reading
// its row hits distinct banks.
__device__ __forceinline__ int bincam_stride(int hw) { return hw | 1; }

// Row and column (i, j) of the flat index q = i·n + j, moved on by a block stride without a
// division per step: the stride's rows and columns are split once (one division per block).
struct bincam_walk {
    int i, j, di, dj, n;
    __device__ __forceinline__ bincam_walk(int q, int stride, int n_) : n(n_) {
        i = q / n;
        j = q - i * n;
        di = stride / n;
        dj = stride - di * n;
    }
    __device__ __forceinline__ void next() {
        i += di;
        j += dj;
        if (j >= n) {
            j -= n;
            ++i;
        }
    }
};

// i / d and i % d for 0 ≤ i, d < 2¹⁶ by a multiply-high with m = ⌈2³²/d⌉, computed once per
// block: exact there, as i·(m·d − 2³²) < 2¹⁶·d ≤ 2³² (a channel tile holds < 2¹⁶ elements).
struct bincam_divider {
    unsigned m;
    int d;
    __device__ __forceinline__ explicit bincam_divider(int d_)
        : m((unsigned)(0xffffffffu / (unsigned)d_) + 1u), d(d_) {}
    __device__ __forceinline__ int div(int i) const {
        return d == 1 ? i : (int)__umulhi((unsigned)i, m);
    }
};

// Channels [c_lo, c_hi) of split `split` of `splits`.
__device__ __forceinline__ void bincam_split(int C, int splits, int split, int* c_lo, int* c_hi) {
    const int per = (C + splits - 1) / splits;
    *c_lo = min(C, split * per);
    *c_hi = min(C, *c_lo + per);
}

// Grad-CAM++'s α = g² / (2g² + Σ_hw A · g³ + 1e-6) for g ≠ 0, its denominator in double: where
// Σ_hw A · g nears −2 it cancels down to the 1e-6, and in float32 (Σ_hw A rounded to 24 bits) it
// would be off by up to 1e-3 relative in the channel that then dominates the map. The quotient
// is float32 (1e-7 relative; a double division spilled on sm_90): valid for |g³·Σ_hw A| < 3e38.
__device__ __forceinline__ float bincam_plusplus_alpha(float g, double sum_a) {
    const double gv = g, g2 = gv * gv;
    return (float)g2 / (float)(2.0 * g2 + sum_a * g2 * gv + BINCAM_PLUSPLUS_EPS);
}

// Channel weight of a weighted method from a shared row: g (signed), a; sums in double.
__device__ float bincam_channel_weight(int method, const float* g, const float* a, int hw) {
    double sum_g = 0.0, sum_ga = 0.0, sum_a = 0.0;
    for (int p = 0; p < hw; ++p) {
        sum_g += g[p];
        sum_ga += (double)g[p] * a[p];
        sum_a += a[p];
    }
    if (method == BINCAM_GRADCAM) return (float)(sum_g / hw);
    if (method == BINCAM_XGRADCAM) return (float)(sum_ga / (sum_a + BINCAM_XGRAD_EPS));
    double w = 0.0;  // Grad-CAM++
    for (int p = 0; p < hw; ++p)
        if (g[p] != 0.f) w += bincam_relu(g[p]) * bincam_plusplus_alpha(g[p], sum_a);
    return (float)w;
}

// Shared: g[tile·stride] | a[tile·stride] | alpha[tile] | acc[groups·hw], groups = max(1, block/hw)
extern "C" __global__ void __launch_bounds__(BINCAM_MAX_THREADS) bincam_partials_dense(
    const void* __restrict__ acts,       // [B, C, h·w] float32, or binary16 with half
    const void* __restrict__ grads,      // [B, K, C, h·w] the same type
    const float* __restrict__ logits,    // [B, K]
    int K, int C, int hw, int method, int mode, int half, int splits, int tile,
    float* __restrict__ partial)         // [B·K, splits, h·w]
{
#ifdef __CUDA_ARCH__
    extern __shared__ float smem[];
#else
    float* smem = bincam_host_shared<float>();
#endif
    const int stride = bincam_stride(hw), groups = max(1, (int)blockDim.x / hw);
    float* gt = smem;
    float* at = gt + tile * stride;
    float* alpha = at + tile * stride;
    float* acc = alpha + tile;
    const int n = blockIdx.x, split = blockIdx.y, b = n / K, t = threadIdx.x;
    const float s = bincam_sign(logits[n], mode);
    const bool weighted = method == BINCAM_GRADCAM || method == BINCAM_XGRADCAM ||
                          method == BINCAM_GRADCAMPP;
    int c_lo, c_hi;
    bincam_split(C, splits, split, &c_lo, &c_hi);
    const size_t a0 = (size_t)b * C * hw, g0 = (size_t)n * C * hw;
    const bincam_divider by_hw(hw);
    for (int i = t; i < groups * hw; i += blockDim.x) acc[i] = 0.f;  // slot i: thread i % block
    __syncthreads();  // zeroing before any read of acc, even where the split is empty
    for (int c0 = c_lo; c0 < c_hi; c0 += tile) {
        const int nt = min(tile, c_hi - c0);
        for (int i = t; i < nt * hw; i += blockDim.x) {  // coalesced: one contiguous range
            const int c = by_hw.div(i), p = i - c * hw;
            gt[c * stride + p] = s * bincam_load(grads, g0 + (size_t)c0 * hw + i, half);
            at[c * stride + p] = bincam_load(acts, a0 + (size_t)c0 * hw + i, half);
        }
        __syncthreads();
        if (weighted) {
            for (int c = t; c < nt; c += blockDim.x)
                alpha[c] = bincam_channel_weight(method, gt + c * stride, at + c * stride, hw);
            __syncthreads();
        }
        for (int slot = t; slot < groups * hw; slot += blockDim.x) {
            const int grp = slot / hw, p = slot - grp * hw;
            float v = 0.f;
            for (int c = grp; c < nt; c += groups) {
                const float av = at[c * stride + p], gv = gt[c * stride + p];
                v += weighted ? alpha[c] * av
                   : (method == BINCAM_HIRESCAM ? gv * av
                   : (method == BINCAM_ELEMENTWISE ? bincam_relu(gv * av)
                                                   : bincam_relu(gv) * av));  // LayerCAM
            }
            acc[slot] += v;
        }
        __syncthreads();  // the next tile overwrites gt and at
    }
    for (int p = t; p < hw; p += blockDim.x) {
        float v = 0.f;
        for (int grp = 0; grp < groups; ++grp) v += acc[grp * hw + p];
        partial[((size_t)n * splits + split) * hw + p] = v;
    }
}

// Shared: sum_a, pos_a, count [tile] (double) | a[tile·stride] | coef[kc·tile] | coef2[kc·tile]
//         | sign[kc] | acc[kc·hw]
extern "C" __global__ void __launch_bounds__(BINCAM_MAX_THREADS) bincam_partials_factored(
    const void* __restrict__ acts,       // [B, C, h·w] float32, or binary16 with half
    const float* __restrict__ weights,   // [K, C] channel weights (float32: part of the head)
    const float* __restrict__ logits,    // [B, K]
    int K, int C, int hw, int method, int mode, int mask_positive, int half, int splits,
    int tile, int kc,
    float* __restrict__ partial)         // [B·K, splits, h·w]
{
#ifdef __CUDA_ARCH__
    extern __shared__ double smem_d[];
#else
    double* smem_d = bincam_host_shared<double>();
#endif
    const int stride = bincam_stride(hw);
    double* sum_a = smem_d;
    double* pos_a = sum_a + tile;
    double* count = pos_a + tile;
    float* at = (float*)(count + tile);
    float* coef = at + tile * stride;
    float* coef2 = coef + kc * tile;
    float* sign = coef2 + kc * tile;
    float* acc = sign + kc;
    const int b = blockIdx.x, split = blockIdx.y, k0 = blockIdx.z * kc, t = threadIdx.x;
    const int nk = min(kc, K - k0);
    const bool two_terms = method == BINCAM_ELEMENTWISE && !mask_positive;
    const bool masked_x = mask_positive && (method == BINCAM_HIRESCAM ||
                          method == BINCAM_ELEMENTWISE || method == BINCAM_LAYERCAM);
    int c_lo, c_hi;
    bincam_split(C, splits, split, &c_lo, &c_hi);
    const size_t a0 = (size_t)b * C * hw;
    for (int i = t; i < nk; i += blockDim.x) sign[i] = bincam_sign(logits[b * K + k0 + i], mode);
    // no barrier here: slot i of acc is zeroed, accumulated and stored by thread i % block
    // alone, and sign is first read after the tile loop's first barrier (never if the split
    // is empty)
    for (int i = t; i < nk * hw; i += blockDim.x) acc[i] = 0.f;
    for (int c0 = c_lo; c0 < c_hi; c0 += tile) {
        const int nt = min(tile, c_hi - c0);
        bincam_walk cp(t, blockDim.x, hw);  // channel cp.i, cell cp.j of element i
        for (int i = t; i < nt * hw; i += blockDim.x, cp.next())  // coalesced: contiguous
            at[cp.i * stride + cp.j] = bincam_load(acts, a0 + (size_t)c0 * hw + i, half);
        __syncthreads();
        for (int c = t; c < nt; c += blockDim.x) {  // per-channel statistics of A
            double sa = 0.0, sp = 0.0, np_ = 0.0;
            for (int p = 0; p < hw; ++p) {
                const float v = at[c * stride + p];
                sa += v;
                sp += bincam_masked(v);
                np_ += v > 0.f ? 1.0 : 0.0;
            }
            sum_a[c] = sa, pos_a[c] = sp, count[c] = np_;
        }
        __syncthreads();
        bincam_walk kc_(t, blockDim.x, nt);  // attribute kc_.i, channel kc_.j of entry i
        for (int i = t; i < nk * nt; i += blockDim.x, kc_.next()) {  // coef[k, c], w = s·W[k, c]
            const int k = kc_.i, c = kc_.j;
            const float w = sign[k] * weights[(size_t)(k0 + k) * C + c0 + c];
            const double cnt = mask_positive ? count[c] : (double)hw;
            float v;
            if (method == BINCAM_GRADCAM) {
                v = w * (float)(cnt / hw);
            } else if (method == BINCAM_XGRADCAM) {
                const double num = mask_positive ? pos_a[c] : sum_a[c];
                v = w * (float)(num / (sum_a[c] + BINCAM_XGRAD_EPS));
            } else if (method == BINCAM_GRADCAMPP) {
                const float al = w != 0.f ? bincam_plusplus_alpha(w, sum_a[c]) : 0.f;
                v = bincam_relu(w) * al * (float)cnt;
            } else if (method == BINCAM_HIRESCAM) {
                v = w;
            } else {  // element-wise (w⁺ on X⁺) and LayerCAM (w⁺ on X)
                v = bincam_relu(w);
            }
            coef[i] = v;
            coef2[i] = two_terms ? bincam_neg(w) : 0.f;  // element-wise, unmasked: w⁻ on A⁻
        }
        __syncthreads();
        bincam_walk kp(t, blockDim.x, hw);  // attribute kp.i, cell kp.j of output o
        for (int o = t; o < nk * hw; o += blockDim.x, kp.next()) {
            const int k = kp.i, p = kp.j;
            float v = 0.f;
            for (int c = 0; c < nt; ++c) {
                const float av = at[c * stride + p];
                const float x = masked_x ? bincam_masked(av)
                              : (method == BINCAM_ELEMENTWISE ? bincam_relu(av) : av);
                v += coef[k * nt + c] * x;
                if (two_terms) v += coef2[k * nt + c] * bincam_neg(av);
            }
            acc[o] += v;
        }
        __syncthreads();  // the next tile overwrites at, coef and the statistics
    }
    for (int o = t; o < nk * hw; o += blockDim.x) {
        const int k = o / hw, p = o - k * hw;
        partial[(((size_t)b * K + k0 + k) * splits + split) * hw + p] = acc[o];
    }
}

// Source cell of output index o for a resize in → out (half-pixel centres, clamped).
__device__ __forceinline__ void bincam_source(int o, int in, int out, int* i0, int* i1,
                                              float* frac) {
    float src = (o + 0.5f) * ((float)in / (float)out) - 0.5f;
    src = fminf(fmaxf(src, 0.f), (float)(in - 1));
    const int lo = (int)floorf(src);
    *i0 = lo;
    *i1 = min(lo + 1, in - 1);
    *frac = src - (float)lo;
}

__device__ __forceinline__ int bincam_cell(int o, int in, int out) {
    int i0, i1;
    float frac;
    bincam_source(o, in, out, &i0, &i1, &frac);
    return i0;
}

// o is the first or last sample of a run of samples between the same two cells.
__device__ __forceinline__ bool bincam_run_end(int o, int in, int out) {
    const int cell = bincam_cell(o, in, out);
    return o == 0 || o == out - 1 || bincam_cell(o - 1, in, out) != cell ||
           bincam_cell(o + 1, in, out) != cell;
}

__device__ __forceinline__ float bincam_upsampled(const float* x, int h, int w, int H, int W,
                                                  int i, int j) {
    int y0, y1, x0, x1;
    float fy, fx;
    bincam_source(i, h, H, &y0, &y1, &fy);
    bincam_source(j, w, W, &x0, &x1, &fx);
    const float top = x[y0 * w + x0] * (1.f - fx) + x[y0 * w + x1] * fx;
    const float bottom = x[y1 * w + x0] * (1.f - fx) + x[y1 * w + x1] * fx;
    return bincam_relu(top * (1.f - fy) + bottom * fy);
}

// Run-end indices of a resize in → out into list (by warp 0, in order); returns their count.
__device__ int bincam_run_ends(int in, int out, int* list, int* count) {
    if (threadIdx.x < 32) {
        const unsigned mask = bincam_warp_mask();
        const int lanes = bincam_warp_lanes(), lane = threadIdx.x;
        int found = 0;
        for (int base = 0; base < out; base += lanes) {
            const int o = base + lane;
            const bool end = o < out && bincam_run_end(o, in, out);
            const unsigned ballot = __ballot_sync(mask, end);
            if (end) list[found + __popc(ballot & ((1u << lane) - 1u))] = o;
            found += __popc(ballot);
        }
        if (lane == 0) *count = found;
    }
    __syncthreads();  // the list and its count are complete
    return *count;
}

// Shared: map[hw] | scratch[64] | rows[H] | cols[W] | counts[2]
extern "C" __global__ void __launch_bounds__(BINCAM_MAX_THREADS) bincam_finish(
    const float* __restrict__ partial,        // [B·K, splits, h·w]
    const unsigned char* __restrict__ masks,  // [K, H, W] of 0/1, or null
    int K, int h, int w, int H, int W, int splits, int tiles,
    float* __restrict__ raw_out,              // [B, K, h, w] or null
    float* __restrict__ maps_f32,             // [B, K, H, W] or null
    unsigned short* __restrict__ maps_f16,    // [B, K, H, W] binary16 bits, or null
    unsigned char* __restrict__ maps_u8,      // [B, K, H, W] or null
    float* __restrict__ tile_energy)          // [B·K, tiles, 2] or null
{
#ifdef __CUDA_ARCH__
    extern __shared__ float smem[];
#else
    float* smem = bincam_host_shared<float>();
#endif
    const int hw = h * w, n = blockIdx.x, tile = blockIdx.y, k = n % K, t = threadIdx.x;
    float* map = smem;
    float* scratch = map + hw;
    int* rows = (int*)(scratch + 64);
    int* cols = rows + H;
    int* counts = cols + W;

    // 1. raw map: the splits' partial sums in fixed order; ReLU and min-max at h×w
    float lo = bincam_identity<BINCAM_MIN>(), hi = bincam_identity<BINCAM_MAX>();
    for (int p = t; p < hw; p += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) v += partial[((size_t)n * splits + s) * hw + p];
        if (raw_out && tile == 0) raw_out[(size_t)n * hw + p] = v;
        map[p] = bincam_relu(v);
        lo = bincam_combine<BINCAM_MIN>(lo, map[p]);
        hi = bincam_combine<BINCAM_MAX>(hi, map[p]);
    }
    bincam_block_reduce2<BINCAM_MIN, BINCAM_MAX>(&lo, &hi, scratch);
    const float scale = 1.f / ((hi - lo) + BINCAM_EPS);
    for (int p = t; p < hw; p += blockDim.x) map[p] = (map[p] - lo) * scale;  // own p only

    // 2. extremes of U on run-end rows × columns
    const int nr = bincam_run_ends(h, H, rows, counts);  // its __syncthreads also orders map
    const int nc = bincam_run_ends(w, W, cols, counts + 1);
    float ulo = bincam_identity<BINCAM_MIN>(), uhi = bincam_identity<BINCAM_MAX>();
    bincam_walk rc(t, blockDim.x, nc);
    for (int i = t; i < nr * nc; i += blockDim.x, rc.next()) {
        const float u = bincam_upsampled(map, h, w, H, W, rows[rc.i], cols[rc.j]);
        ulo = bincam_combine<BINCAM_MIN>(ulo, u);
        uhi = bincam_combine<BINCAM_MAX>(uhi, u);
    }
    bincam_block_reduce2<BINCAM_MIN, BINCAM_MAX>(&ulo, &uhi, scratch);
    const float uscale = 1.f / ((uhi - ulo) + BINCAM_EPS);

    // 3. this tile's rows of F, and its energies
    const int per_tile = (H + tiles - 1) / tiles;
    const int q_lo = min(H, tile * per_tile) * W, q_hi = min(H, (tile + 1) * per_tile) * W;
    const unsigned char* mask = masks ? masks + (size_t)k * H * W : nullptr;
    const size_t out = (size_t)n * H * W;
    float inside = 0.f, total = 0.f;
    bincam_walk ij(q_lo + t, blockDim.x, W);  // pixel (ij.i, ij.j) = q: no division per pixel
    for (int q = q_lo + t; q < q_hi; q += blockDim.x, ij.next()) {
        const float f = (bincam_upsampled(map, h, w, H, W, ij.i, ij.j) - ulo) * uscale;
        if (maps_f32) maps_f32[out + q] = f;
        if (maps_f16) maps_f16[out + q] = bincam_to_half(f);
        if (maps_u8) maps_u8[out + q] = (unsigned char)__float2int_rn(f * 255.f);
        total += f;
        if (mask && mask[q]) inside += f;
    }
    if (tile_energy) {
        bincam_block_reduce2<BINCAM_SUM, BINCAM_SUM>(&inside, &total, scratch);
        if (t == 0) {
            tile_energy[((size_t)n * tiles + tile) * 2] = inside;
            tile_energy[((size_t)n * tiles + tile) * 2 + 1] = total;
        }
    }
}

extern "C" __global__ void __launch_bounds__(BINCAM_MAX_THREADS) bincam_energy(
    const float* __restrict__ tile_energy,    // [B·K, tiles, 2]
    int maps, int tiles,
    float* __restrict__ energy)               // [B, K, 2]
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= maps) return;
    float inside = 0.f, total = 0.f;
    for (int t = 0; t < tiles; ++t) {
        inside += tile_energy[((size_t)n * tiles + t) * 2];
        total += tile_energy[((size_t)n * tiles + t) * 2 + 1];
    }
    energy[2 * n] = inside;
    energy[2 * n + 1] = total;
}
