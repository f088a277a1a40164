// Runs the fused epilogue's kernels (kernels/binary_cam_epilogue.cu, included from the path in
// BINCAM_KERNEL_SOURCE) on the CPU through cuda_host.h, launched as gpu/launcher.py launches them.
//
//   driver CASES.bin OUT.bin [TIMEOUT_S]     run every case of CASES.bin, outputs to OUT.bin
//   driver --half IN.f32 OUT.u16             bincam_to_half of every float (conversion check)
//   driver --from-half IN.u16 OUT.f32        bincam_from_half of every binary16 pattern
//
// CASES.bin: int32 case count, then per case 26 int32 fields (see FIELDS below) and the arrays
// acts [B,C,h·w] and dense grads [B,K,C,h·w] (f32, or f16 bits with half_inputs), factored
// grads f32 [K,C], logits f32 [B,K],
// masks u8 [K,H,W] (if has_masks). OUT.bin: per case the requested outputs in the order raw f32,
// maps f32, maps f16 bits, maps u8, energy f32. Every buffer is an exact-size heap allocation,
// inputs copied in and outputs and workspaces filled with NaN first.

#include "cuda_host.h"

#include <csignal>
#include <string>
#include <unistd.h>

#include BINCAM_KERNEL_SOURCE

namespace {

enum FIELDS { LAYOUT, METHOD, MODE, MASK_POSITIVE, B, K, C, H_IN, W_IN, H_OUT, W_OUT, BLOCK,
              SPLITS, TILE, KC, TILES, SMEM_PARTIALS, SMEM_FINISH, WANT_RAW, WANT_F32, WANT_F16,
              WANT_U8, WANT_ENERGY, HAS_MASKS, SEED, HALF_INPUTS, NFIELDS };

template <class T>
std::vector<T> read_array(FILE* f, size_t n) {
    std::vector<T> v(n);
    if (n && std::fread(v.data(), sizeof(T), n, f) != n) bincam_emu::fail("truncated case file");
    return v;
}

// An exact-size heap copy (AddressSanitizer sees any access past its end).
template <class T>
struct Buffer {
    explicit Buffer(size_t n, unsigned char fill = 0xff) : size(n) {
        data = static_cast<T*>(std::malloc(n ? n * sizeof(T) : 1));
        std::memset(data, fill, n * sizeof(T));
    }
    Buffer(const std::vector<T>& v) : Buffer(v.size()) {
        if (!v.empty()) std::memcpy(data, v.data(), v.size() * sizeof(T));
    }
    ~Buffer() { std::free(data); }
    Buffer(const Buffer&) = delete;
    T* data;
    size_t size;
};

template <class T>
void write(FILE* f, const Buffer<T>& b) {
    if (b.size && std::fwrite(b.data, sizeof(T), b.size, f) != b.size)
        bincam_emu::fail("cannot write the outputs");
}

void run_case(FILE* in, FILE* out) {
    int v[NFIELDS];
    if (std::fread(v, sizeof(int), NFIELDS, in) != NFIELDS) bincam_emu::fail("truncated header");
    const size_t b = v[B], k = v[K], c = v[C], hw = (size_t)v[H_IN] * v[W_IN];
    const size_t HW = (size_t)v[H_OUT] * v[W_OUT], maps = b * k;
    // activations (and dense gradients) as float32, or as binary16 bits with half_inputs
    const size_t item = v[HALF_INPUTS] ? 2 : 4, n_grads = v[LAYOUT] == BINCAM_DENSE ? maps * c * hw : k * c;
    Buffer<unsigned char> acts(read_array<unsigned char>(in, b * c * hw * item));
    Buffer<unsigned char> grads(read_array<unsigned char>(
        in, n_grads * (v[LAYOUT] == BINCAM_DENSE ? item : 4)));
    Buffer<float> logits(read_array<float>(in, maps));
    Buffer<unsigned char> masks(read_array<unsigned char>(in, v[HAS_MASKS] ? k * HW : 0));
    Buffer<float> partial(maps * v[SPLITS] * hw), tile_energy(maps * v[TILES] * 2);
    Buffer<float> raw(v[WANT_RAW] ? maps * hw : 0), f32(v[WANT_F32] ? maps * HW : 0);
    Buffer<unsigned short> f16(v[WANT_F16] ? maps * HW : 0);
    Buffer<unsigned char> u8(v[WANT_U8] ? maps * HW : 0);
    Buffer<float> energy(v[WANT_ENERGY] ? maps * 2 : 0);
    const unsigned seed = (unsigned)v[SEED];
    if (v[LAYOUT] == BINCAM_DENSE) {
        bincam_emu::launch({(unsigned)maps, (unsigned)v[SPLITS], 1}, v[BLOCK], v[SMEM_PARTIALS],
                           seed, [&] {
            bincam_partials_dense(acts.data, grads.data, logits.data, v[K], v[C], (int)hw,
                                  v[METHOD], v[MODE], v[HALF_INPUTS], v[SPLITS], v[TILE],
                                  partial.data);
        });
    } else {
        const unsigned groups = (unsigned)((v[K] + v[KC] - 1) / v[KC]);
        bincam_emu::launch({(unsigned)b, (unsigned)v[SPLITS], groups}, v[BLOCK], v[SMEM_PARTIALS],
                           seed, [&] {
            bincam_partials_factored(acts.data, reinterpret_cast<const float*>(grads.data),
                                     logits.data, v[K], v[C], (int)hw, v[METHOD], v[MODE],
                                     v[MASK_POSITIVE], v[HALF_INPUTS], v[SPLITS], v[TILE],
                                     v[KC], partial.data);
        });
    }
    auto ptr = [](auto& buffer) { return buffer.size ? buffer.data : nullptr; };
    bincam_emu::launch({(unsigned)maps, (unsigned)v[TILES], 1}, v[BLOCK], v[SMEM_FINISH], seed + 1,
                       [&] {
        bincam_finish(partial.data, ptr(masks), v[K], v[H_IN], v[W_IN], v[H_OUT], v[W_OUT],
                      v[SPLITS], v[TILES], ptr(raw), ptr(f32), ptr(f16), ptr(u8),
                      v[WANT_ENERGY] ? tile_energy.data : nullptr);
    });
    if (v[WANT_ENERGY]) {
        const unsigned grid = (unsigned)((maps + v[BLOCK] - 1) / v[BLOCK]);
        bincam_emu::launch({grid, 1, 1}, v[BLOCK], 0, seed + 2, [&] {
            bincam_energy(tile_energy.data, (int)maps, v[TILES], energy.data);
        });
    }
    write(out, raw), write(out, f32), write(out, f16), write(out, u8), write(out, energy);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--half") {
        FILE* in = std::fopen(argv[2], "rb");
        FILE* out = std::fopen(argv[3], "wb");
        if (!in || !out) bincam_emu::fail("cannot open the files");
        float f;
        while (std::fread(&f, 4, 1, in) == 1) {
            const unsigned short h = bincam_to_half(f);
            std::fwrite(&h, 2, 1, out);
        }
        std::fclose(in), std::fclose(out);
        return 0;
    }
    if (argc == 4 && std::string(argv[1]) == "--from-half") {
        FILE* in = std::fopen(argv[2], "rb");
        FILE* out = std::fopen(argv[3], "wb");
        if (!in || !out) bincam_emu::fail("cannot open the files");
        unsigned short h;
        while (std::fread(&h, 2, 1, in) == 1) {
            const float f = bincam_from_half(h);
            std::fwrite(&f, 4, 1, out);
        }
        std::fclose(in), std::fclose(out);
        return 0;
    }
    if (argc < 3) bincam_emu::fail("usage: driver CASES.bin OUT.bin [TIMEOUT_S]");
    alarm(argc > 3 ? (unsigned)std::atoi(argv[3]) : 600);  // a deadlock (divergent barrier) ends
    FILE* in = std::fopen(argv[1], "rb");
    FILE* out = std::fopen(argv[2], "wb");
    if (!in || !out) bincam_emu::fail("cannot open the case or output file");
    int cases;
    if (std::fread(&cases, sizeof(int), 1, in) != 1) bincam_emu::fail("empty case file");
    for (int i = 0; i < cases; ++i) run_case(in, out);
    std::fclose(in), std::fclose(out);
    return 0;
}
