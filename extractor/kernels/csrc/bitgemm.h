// Shared declarations for the XOR-popcount GEMM micro-kernels (one translation unit per ISA).
#pragma once
#include <cstdint>

namespace headhub {

// Weights are interleaved in groups of 8 output channels: Bi[(g * Kw + k) * 8 + j] is word k of
// output channel 8g + j (zero rows pad O up to a multiple of 8). One 512-bit load (or two 256-bit
// loads) then holds word k of 8 outputs, so counts accumulate per output lane and no horizontal
// reduction is needed.
//
// C[r * ldc + 8g + j] = sum_k popcount(A[r * lda + k] ^ Bi[(g * Kw + k) * 8 + j])
// for r < R, g < G, j < 8. The +/-1 dot product is then K - 2 * C.
//
// `Bi` is the *prepared* weight buffer of the kernel (see `prepare_weights`): the interleaved
// layout above for every kernel except AVX2, which stores each interleaved vector twice, split into
// its low and high nibbles. `scratch` holds at least 2 * R * Kw words.
constexpr int kGroup = 8;

using GemmFn = void (*)(const uint64_t* A, int64_t R, int64_t lda, const uint64_t* Bi, int64_t G,
                        int64_t Kw, int32_t* C, int64_t ldc, uint64_t* scratch);

#define HEADHUB_GEMM_DECL                                                                       \
  void gemm(const uint64_t* A, int64_t R, int64_t lda, const uint64_t* Bi, int64_t G, int64_t Kw, \
            int32_t* C, int64_t ldc, uint64_t* scratch)

namespace isa_generic { HEADHUB_GEMM_DECL; }
namespace isa_popcnt { HEADHUB_GEMM_DECL; }
namespace isa_avx2 { HEADHUB_GEMM_DECL; }
namespace isa_avx512 { HEADHUB_GEMM_DECL; }

}  // namespace headhub
