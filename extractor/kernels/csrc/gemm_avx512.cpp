// AVX-512 VPOPCNTDQ path: a 512-bit vector holds word k of the 8 outputs of a group; broadcast
// input word, XOR, vpopcntq, vpaddq: 3 instructions for 512 binary multiply-adds, one count per
// 64-bit lane = per output channel.
#include "bitgemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512vpopcntdq,popcnt")
// GCC 12's _mm512_cvtepi64_epi32 passes an undefined vector as its merge source (by design) and
// then warns about it under -O3.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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
  for (int i = 0; i < MR; ++i)  // 8 counts (< 2^31) per vector -> 8 int32 with one vpmovqd
    for (int g = 0; g < NG; ++g)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + i * ldc + g * kGroup),
                          _mm512_cvtepi64_epi32(acc[i][g]));
}

// Rows in blocks of MR, output groups in blocks of NG (then NG = 1 for the remainder).
template <int MR, int NG>
inline int64_t groups(const uint64_t* A, int64_t R, int64_t lda, const uint64_t* Bi, int64_t g,
                      int64_t G, int64_t Kw, int32_t* C, int64_t ldc) {
  for (; g + NG <= G; g += NG) {
    const uint64_t* Bg = Bi + g * Kw * kGroup;
    int64_t r = 0;
    for (; r + MR <= R; r += MR) block<MR, NG>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
    for (; r < R; ++r) block<1, NG>(A + r * lda, lda, Bg, Kw, C + r * ldc + g * kGroup, ldc);
  }
  return g;
}

}  // namespace

HEADHUB_GEMM_DECL {
  (void)scratch;
  // 4 rows x 32 outputs: 16 accumulators + 4 weight vectors of the 32 zmm registers. Wide blocks
  // matter for short rows (Kw = 9 words for a 3x3 conv on 64 channels), where the per-block
  // set-up and stores are a large share of the work.
  int64_t g = groups<4, 4>(A, R, lda, Bi, 0, G, Kw, C, ldc);
  g = groups<4, 2>(A, R, lda, Bi, g, G, Kw, C, ldc);
  groups<4, 1>(A, R, lda, Bi, g, G, Kw, C, ldc);
}

}  // namespace headhub::isa_avx512
#pragma GCC pop_options
#else
namespace headhub::isa_avx512 {
HEADHUB_GEMM_DECL { isa_generic::gemm(A, R, lda, Bi, G, Kw, C, ldc, scratch); }
}  // namespace headhub::isa_avx512
#endif
