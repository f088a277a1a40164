// Host emulation of the CUDA subset the kernels in kernels/*.cu use, to run them on the CPU from
// the same source under AddressSanitizer, UBSan and ThreadSanitizer (gpu/emulation.py drives it).
//
// Model: every CUDA thread of a block is a std::thread; __syncthreads is a barrier of the block;
// warp intrinsics exchange values through per-warp slots between two per-warp barriers. The
// barrier is our own (atomics + a raw futex), not std::barrier: libstdc++'s waits go through a
// process-wide pool of atomic counters, which ThreadSanitizer reads as synchronisation between
// unrelated barriers (a warp's lanes and another warp's), hiding real races between warps.
// Blocks of a launch run one after another in a shuffled order, with the same threads; dynamic
// shared memory is an exact-size heap buffer filled with 0xff bytes (NaN floats) before every
// block, so reads of unwritten or out-of-range shared memory show. Stricter than the hardware:
// a warp intrinsic's mask must name exactly the lanes present in the warp (a full mask over a
// partial warp is undefined behaviour in CUDA and aborts here), and a divergent __syncthreads
// deadlocks (the driver's alarm ends it).

#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

using std::max;
using std::min;

struct bincam_dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local bincam_dim3 threadIdx, blockIdx;
inline bincam_dim3 blockDim, gridDim;  // written before a launch's threads start, then read-only

namespace bincam_emu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "emulation: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

// A reusable barrier of n threads whose only synchronisation is its own two atomics: arrivals
// are acq_rel RMWs on `arrived` (a release sequence), the last arrival runs `done` and then
// publishes the next generation with a release store that the waiters acquire. The futex is a
// raw system call, which ThreadSanitizer does not treat as synchronisation.
class Barrier {
public:
    explicit Barrier(int n, void (*done)(void*) noexcept = nullptr, void* arg = nullptr)
        : n_(n), done_(done), arg_(arg) {}

    void arrive_and_wait() {
        const unsigned gen = generation_.load(std::memory_order_acquire);  // wraps: unsigned
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            arrived_.store(0, std::memory_order_relaxed);
            if (done_) done_(arg_);
            generation_.store(gen + 1, std::memory_order_release);
            wake();
            return;
        }
        while (generation_.load(std::memory_order_acquire) == gen) sleep(gen);
    }

private:
    void sleep(unsigned gen) {
#ifdef __linux__
        syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAIT_PRIVATE, (int)gen,
                nullptr, nullptr, 0);
#else
        std::this_thread::yield();
#endif
    }
    void wake() {
#ifdef __linux__
        syscall(SYS_futex, reinterpret_cast<int*>(&generation_), FUTEX_WAKE_PRIVATE, INT_MAX,
                nullptr, nullptr, 0);
#endif
    }
    static_assert(sizeof(std::atomic<unsigned>) == sizeof(int), "the futex word is the atomic");
    const int n_;
    void (*done_)(void*) noexcept;
    void* arg_;
    std::atomic<int> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

struct Warp {
    explicit Warp(int n) : lanes(n), sync(n) {}
    int lanes;
    Barrier sync;
    uint64_t slots[32];
};

struct Block {
    std::unique_ptr<Barrier> sync;
    std::vector<std::unique_ptr<Warp>> warps;
    unsigned char* shared = nullptr;
    size_t shared_bytes = 0;
};

inline Block* current = nullptr;

inline Warp& warp() { return *current->warps[threadIdx.x / 32]; }

inline unsigned present_lanes() {
    const int lanes = warp().lanes;
    return lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
}

// Every present lane publishes `value`; returns the value of lane `src` (poison if absent).
inline uint64_t exchange(unsigned mask, uint64_t value, int src, uint64_t poison) {
    if (mask != present_lanes())
        fail("warp intrinsic with a mask other than the warp's present lanes");
    Warp& w = warp();
    const int lane = threadIdx.x & 31;
    w.slots[lane] = value;
    w.sync.arrive_and_wait();
    const uint64_t out = (src >= 0 && src < w.lanes) ? w.slots[src] : poison;
    w.sync.arrive_and_wait();  // slots are rewritten by the next exchange
    return out;
}

inline uint64_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float bits_float(uint64_t b) {
    const uint32_t u = (uint32_t)b;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Run body() as grid × threads CUDA threads with `shared_bytes` of dynamic shared memory.
template <class Body>
void launch(bincam_dim3 grid, int threads, size_t shared_bytes, unsigned seed, Body body) {
    if (threads < 1 || threads > 1024) fail("block size outside 1..1024");
    Block block;
    block.sync = std::make_unique<Barrier>(threads);
    for (int w = 0; w * 32 < threads; ++w)
        block.warps.push_back(std::make_unique<Warp>(std::min(32, threads - 32 * w)));
    block.shared_bytes = shared_bytes;
    block.shared = static_cast<unsigned char*>(std::malloc(shared_bytes ? shared_bytes : 1));
    std::memset(block.shared, 0xff, shared_bytes);
    const long total = (long)grid.x * grid.y * grid.z;
    std::vector<long> order(total);
    for (long i = 0; i < total; ++i) order[i] = i;
    for (long i = total - 1; i > 0; --i) {  // blocks may run in any order: shuffle them
        seed = seed * 1664525u + 1013904223u;
        std::swap(order[i], order[seed % (unsigned long)(i + 1)]);
    }
    blockDim = {(unsigned)threads, 1, 1};
    gridDim = grid;
    current = &block;
    auto repoison = [](void* b) noexcept {
        std::memset(static_cast<Block*>(b)->shared, 0xff, static_cast<Block*>(b)->shared_bytes);
    };
    Barrier between(threads, repoison, &block);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (long i = 0; i < total; ++i) {
                const long id = order[i];
                threadIdx = {(unsigned)t, 0, 0};
                blockIdx = {(unsigned)(id % grid.x), (unsigned)((id / grid.x) % grid.y),
                            (unsigned)(id / ((long)grid.x * grid.y))};
                body();
                between.arrive_and_wait();
            }
        });
    for (auto& th : pool) th.join();
    current = nullptr;
    std::free(block.shared);
}

}  // namespace bincam_emu

inline void __syncthreads() { bincam_emu::current->sync->arrive_and_wait(); }

template <class T>
inline T* bincam_host_shared() {
    return reinterpret_cast<T*>(bincam_emu::current->shared);
}

inline float __shfl_down_sync(unsigned mask, float v, unsigned delta) {
    const int lane = threadIdx.x & 31, src = lane + (int)delta;
    // a source beyond the warp's 32 lanes returns the caller's own value (CUDA's definition);
    // an absent lane's value is undefined: NaN
    const uint64_t own = bincam_emu::float_bits(v);
    const uint64_t got = bincam_emu::exchange(mask, own, src >= 32 ? lane : src, 0x7fc00000u);
    return bincam_emu::bits_float(got);
}

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    const int lane = threadIdx.x & 31;
    return bincam_emu::bits_float(bincam_emu::exchange(mask, bincam_emu::float_bits(v),
                                                       lane ^ lane_mask, 0x7fc00000u));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    if (mask != bincam_emu::present_lanes())
        bincam_emu::fail("warp intrinsic with a mask other than the warp's present lanes");
    bincam_emu::Warp& w = bincam_emu::warp();
    const int lane = threadIdx.x & 31;
    w.slots[lane] = predicate ? 1 : 0;
    w.sync.arrive_and_wait();
    unsigned out = 0;
    for (int i = 0; i < w.lanes; ++i) out |= (unsigned)w.slots[i] << i;
    w.sync.arrive_and_wait();
    return out;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

// cvt.rni.s32.f32: round half to even; NaN → 0; saturating
inline int __float2int_rn(float f) {
    if (f != f) return 0;
    if (f >= 2147483647.f) return 2147483647;
    if (f <= -2147483648.f) return (-2147483647 - 1);
    return (int)std::nearbyint(f);
}

// cvt.rn.f16.f32: IEEE binary16 bits, round to nearest even; NaN → 0x7fff
inline unsigned short bincam_host_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return 0x7fff;
    if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to infinity
    if (abs >= 0x38800000u) {                                          // normal half
        uint32_t h = (abs >> 13) - (112u << 10);
        const uint32_t rest = abs & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    // subnormal half: units of 2^-24; the scaling is exact, nearbyint rounds half to even
    return (unsigned short)(sign | (uint32_t)std::nearbyint(std::fabs(f) * 16777216.f));
}

// cvt.f32.f16: exact
inline float bincam_host_from_half(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {  // zero or subnormal: man · 2^-24, exact in float
        const float f = (float)man * (1.f / 16777216.f);
        return sign ? -f : f;
    }
    const uint32_t bits = sign | (exp == 31 ? (0xffu << 23) | (man << 13)
                                            : ((exp + 112u) << 23) | (man << 13));
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
