// Fused binary-CAM epilogue: one thread block per (image, attribute) map, reading an engine's
// output buffers in place (activations, gradients or factored channel weights, logits).
//
// For map n = b·K + k with sign s (mode: predicted → sign(z[b,k]), positive → +1, negative → −1):
//   gradients  G[c,p] = grads[b,k,c,p]                       (dense layout)
//              G[c,p] = W[k,c] · 1[A[b,c,p] > 0]             (factored layout, mask_positive)
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
//              energy[n] = (Σ_{mask k} F, Σ F), so PE = energy[n,0] / energy[n,1] (0 if Σ F = 0).
//
// U is computed twice (min/max pass, then the writing pass) instead of being stored: 4 taps per
// pixel are cheaper than a round trip through global memory. Any output pointer may be null.
// Launch: grid = B·K blocks, block = a multiple of 32 threads (256 suggested), dynamic shared
// memory = 4·(C + h·w + blockDim.x + 32) bytes. No headers: compiles with NVRTC as is; half
// outputs are IEEE binary16 bit patterns (uint16), converted with round-to-nearest-even.

#define BINCAM_EPS 1e-7f

enum { BINCAM_GRADCAM = 0, BINCAM_HIRESCAM = 1, BINCAM_ELEMENTWISE = 2, BINCAM_XGRADCAM = 3,
       BINCAM_GRADCAMPP = 4, BINCAM_LAYERCAM = 5 };
enum { BINCAM_DENSE = 0, BINCAM_FACTORED = 1 };
enum { BINCAM_PREDICTED = 0, BINCAM_POSITIVE = 1, BINCAM_NEGATIVE = 2 };
enum { BINCAM_MIN = 0, BINCAM_MAX = 1, BINCAM_SUM = 2 };

// Shared floats: alpha[C] | map[hw] | partial[blockDim] | scratch[32].

__device__ __forceinline__ unsigned short bincam_to_half(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

template <int OP>
__device__ __forceinline__ float bincam_combine(float a, float b) {
    return OP == BINCAM_MIN ? fminf(a, b) : (OP == BINCAM_MAX ? fmaxf(a, b) : a + b);
}

template <int OP>
__device__ __forceinline__ float bincam_identity() {
    return OP == BINCAM_MIN ? __int_as_float(0x7f800000)                       // +inf
                            : (OP == BINCAM_MAX ? -__int_as_float(0x7f800000) : 0.f);
}

// Reduce v over the block; every thread gets the result. scratch: 32 floats.
template <int OP>
__device__ float bincam_block_reduce(float v, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = bincam_combine<OP>(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // earlier readers of scratch are done
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? scratch[threadIdx.x] : bincam_identity<OP>();
    if (warp == 0) {
        for (int offset = 16; offset > 0; offset >>= 1)
            v = bincam_combine<OP>(v, __shfl_xor_sync(0xffffffffu, v, offset));
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

// Source coordinate of output index o for a resize in → out (half-pixel centres, clamped).
__device__ __forceinline__ void bincam_source(int o, int in, int out, int* i0, int* i1,
                                              float* frac) {
    float src = (o + 0.5f) * ((float)in / (float)out) - 0.5f;
    src = fminf(fmaxf(src, 0.f), (float)(in - 1));
    const int lo = (int)floorf(src);
    *i0 = lo;
    *i1 = min(lo + 1, in - 1);
    *frac = src - (float)lo;
}

__device__ __forceinline__ float bincam_upsampled(const float* x, int h, int w, int H, int W,
                                                  int q) {
    int y0, y1, x0, x1;
    float fy, fx;
    bincam_source(q / W, h, H, &y0, &y1, &fy);
    bincam_source(q % W, w, W, &x0, &x1, &fx);
    const float top = x[y0 * w + x0] * (1.f - fx) + x[y0 * w + x1] * fx;
    const float bottom = x[y1 * w + x0] * (1.f - fx) + x[y1 * w + x1] * fx;
    return fmaxf(top * (1.f - fy) + bottom * fy, 0.f);
}

__device__ __forceinline__ float bincam_gradient(const float* g, const float* a, int layout,
                                                 int mask_positive, int c, int p, int hw) {
    if (layout == BINCAM_DENSE) return g[(size_t)c * hw + p];
    return (!mask_positive || a[(size_t)c * hw + p] > 0.f) ? g[c] : 0.f;
}

extern "C" __global__ void bincam_fused_epilogue(
    const float* __restrict__ acts,            // [B, C, h, w]
    const float* __restrict__ grads,           // dense [B, K, C, h, w] | factored [K, C]
    const float* __restrict__ logits,          // [B, K]
    const unsigned char* __restrict__ masks,   // [K, H, W] of 0/1, or null
    int K, int C, int h, int w, int H, int W,
    int method, int layout, int mode, int mask_positive,
    float* __restrict__ raw_out,               // [B, K, h, w] or null
    float* __restrict__ maps_f32,              // [B, K, H, W] or null
    unsigned short* __restrict__ maps_f16,     // [B, K, H, W] binary16 bits, or null
    unsigned char* __restrict__ maps_u8,       // [B, K, H, W] or null
    float* __restrict__ energy)                // [B, K, 2] or null
{
    extern __shared__ float smem[];
    const int hw = h * w;
    float* alpha = smem;
    float* map = alpha + C;
    float* partial = map + hw;
    float* scratch = partial + blockDim.x;

    const int n = blockIdx.x, b = n / K, k = n % K;
    const float z = logits[n];
    const float s = mode == BINCAM_PREDICTED ? (z > 0.f ? 1.f : (z < 0.f ? -1.f : 0.f))
                                             : (mode == BINCAM_POSITIVE ? 1.f : -1.f);
    const float* a = acts + (size_t)b * C * hw;
    const float* g = layout == BINCAM_DENSE ? grads + (size_t)n * C * hw : grads + (size_t)k * C;

    // 1. channel weights alpha[c] of the methods that have them
    const bool weighted = method == BINCAM_GRADCAM || method == BINCAM_XGRADCAM ||
                          method == BINCAM_GRADCAMPP;
    if (weighted) {
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float* ac = a + (size_t)c * hw;
            float sum_a = 0.f;
            if (method != BINCAM_GRADCAM)
                for (int p = 0; p < hw; ++p) sum_a += ac[p];
            float acc = 0.f;
            for (int p = 0; p < hw; ++p) {
                const float gv = s * bincam_gradient(g, a, layout, mask_positive, c, p, hw);
                if (method == BINCAM_GRADCAM) {
                    acc += gv;
                } else if (method == BINCAM_XGRADCAM) {
                    acc += gv * ac[p];
                } else if (gv != 0.f) {  // Grad-CAM++
                    const float g2 = gv * gv;
                    acc += fmaxf(gv, 0.f) * (g2 / (2.f * g2 + sum_a * g2 * gv + 1e-6f));
                }
            }
            alpha[c] = method == BINCAM_GRADCAM ? acc / (float)hw
                     : (method == BINCAM_XGRADCAM ? acc / (sum_a + 1e-7f) : acc);
        }
        __syncthreads();
    }

    // 2. raw[p]: thread t sums channels c ≡ t / hw (mod groups) for pixel t % hw
    const int groups = max(1, (int)blockDim.x / hw);
    for (int base = 0; base < hw; base += blockDim.x) {  // hw > blockDim: tile the pixels
        const int t = threadIdx.x, p = base + (hw <= (int)blockDim.x ? t % hw : t);
        const int grp = hw <= (int)blockDim.x ? t / hw : 0;
        float acc = 0.f;
        if (grp < groups && p < hw) {
            for (int c = grp; c < C; c += groups) {
                const float ac = a[(size_t)c * hw + p];
                if (weighted) {
                    acc += alpha[c] * ac;
                } else {
                    const float gv = s * bincam_gradient(g, a, layout, mask_positive, c, p, hw);
                    acc += method == BINCAM_HIRESCAM ? gv * ac
                         : (method == BINCAM_ELEMENTWISE ? fmaxf(gv * ac, 0.f)
                                                         : fmaxf(gv, 0.f) * ac);  // LayerCAM
                }
            }
        }
        partial[t] = acc;
        __syncthreads();
        if (hw <= (int)blockDim.x) {
            if (t < hw) {
                float sum = 0.f;
                for (int q = 0; q < groups; ++q) sum += partial[q * hw + t];
                map[t] = sum;
            }
        } else if (p < hw) {
            map[p] = partial[t];
        }
        __syncthreads();
        if (hw <= (int)blockDim.x) break;
    }
    if (raw_out)
        for (int p = threadIdx.x; p < hw; p += blockDim.x) raw_out[(size_t)n * hw + p] = map[p];

    // 3. ReLU and the first min-max at feature resolution
    float lo = bincam_identity<BINCAM_MIN>(), hi = bincam_identity<BINCAM_MAX>();
    for (int p = threadIdx.x; p < hw; p += blockDim.x) {
        const float v = fmaxf(map[p], 0.f);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    lo = bincam_block_reduce<BINCAM_MIN>(lo, scratch);
    hi = bincam_block_reduce<BINCAM_MAX>(hi, scratch);
    const float scale = 1.f / ((hi - lo) + BINCAM_EPS);
    for (int p = threadIdx.x; p < hw; p += blockDim.x) map[p] = (fmaxf(map[p], 0.f) - lo) * scale;
    __syncthreads();

    // 4. upsample: min and max of U, then write F and the energies
    const int HW = H * W;
    float ulo = bincam_identity<BINCAM_MIN>(), uhi = bincam_identity<BINCAM_MAX>();
    for (int q = threadIdx.x; q < HW; q += blockDim.x) {
        const float u = bincam_upsampled(map, h, w, H, W, q);
        ulo = fminf(ulo, u);
        uhi = fmaxf(uhi, u);
    }
    ulo = bincam_block_reduce<BINCAM_MIN>(ulo, scratch);
    uhi = bincam_block_reduce<BINCAM_MAX>(uhi, scratch);
    const float uscale = 1.f / ((uhi - ulo) + BINCAM_EPS);
    const unsigned char* mask = masks ? masks + (size_t)k * HW : nullptr;
    const size_t out = (size_t)n * HW;
    float inside = 0.f, total = 0.f;
    for (int q = threadIdx.x; q < HW; q += blockDim.x) {
        const float f = (bincam_upsampled(map, h, w, H, W, q) - ulo) * uscale;
        if (maps_f32) maps_f32[out + q] = f;
        if (maps_f16) maps_f16[out + q] = bincam_to_half(f);
        if (maps_u8) maps_u8[out + q] = (unsigned char)__float2int_rn(f * 255.f);
        total += f;
        if (mask && mask[q]) inside += f;
    }
    if (energy) {
        inside = bincam_block_reduce<BINCAM_SUM>(inside, scratch);
        total = bincam_block_reduce<BINCAM_SUM>(total, scratch);
        if (threadIdx.x == 0) {
            energy[2 * n] = inside;
            energy[2 * n + 1] = total;
        }
    }
}
