// AVX-512 VPOPCNTDQ path: a 512-bit vector holds word k of the 8 outputs of a group; broadcast
// input word, XOR, vpopcntq, vpaddq: 3 instructions for 512 binary multiply-adds, one count per
// 64-bit lane = per output channel.
#include "bitgemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vpopcntdq,popcnt")
namespace headhub::isa_avx512 {
namespace {

template <int MR, int NG>
inline void block(const uint64_t* A, int64_t lda, const uint64_t* Bg, int64_t Kw, int32_t* C,
                  int64_t ldc) {
  __m512i acc[MR][NG];
  for (int i = 0; i < MR; ++i)
    for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_setzero_si512();
  for (int64_t k = 0; k < Kw; ++k) {
    __m512i w[NG];
    for (int g = 0; g < NG; ++g) w[g] = _mm512_loadu_si512(Bg + (g * Kw + k) * kGroup);
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(A[i * lda + k]));
      for (int g = 0; g < NG; ++g)
        acc[i][g] = _mm512_add_epi64(acc[i][g], _mm512_popcnt_epi64(_mm512_xor_si512(a, w[g])));
    }
  }
  alignas(64) uint64_t lanes[kGroup];
  for (int i = 0; i < MR; ++i)
    for (int g = 0; g < NG; ++g) {
      _mm512_store_si512(lanes, acc[i][g]);
      for (int j = 0; j < kGroup; ++j) C[i * ldc + g * kGroup + j] = static_cast<int32_t>(lanes[j]);
    }
}

}  // namespace

HEADHUB_GEMM_DECL {
  (void)scratch;
  constexpr int MR = 4, NG = 2;
  int64_t g = 0;
  for (; g + NG <= G; g += NG) {
    const uint64_t* Bg = Bi + g * Kw * kGroup;
    int64_t r = 0;
    for (; r + MR <= R; r += MR) block<MR, NG>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
    for (; r < R; ++r) block<1, NG>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
  }
  for (; g < G; ++g) {
    const uint64_t* Bg = Bi + g * Kw * kGroup;
    int64_t r = 0;
    for (; r + MR <= R; r += MR) block<MR, 1>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
    for (; r < R; ++r) block<1, 1>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
  }
}

}  // namespace headhub::isa_avx512
#pragma GCC pop_options
#else
namespace headhub::isa_avx512 {
HEADHUB_GEMM_DECL { isa_generic::gemm(A, R, lda, Bi, G, Kw, C, ldc, scratch); }
}  // namespace headhub::isa_avx512
#endif
